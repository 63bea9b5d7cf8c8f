"""Masking: one normalised conversation -> (input_ids, labels), and cutting examples to a maximum length.

Masks are computed from character offsets in the rendered string (where each assistant message starts and ends,
found by rendering message prefixes), not from `return_assistant_tokens_mask`, which is silently all-zero or
all-one for templates without `{% generation %}` markers (transformers #34172).

Modes:
- "assistant" (default): train each assistant message's content and its end-of-turn token (`<|im_end|>`),
  nothing else: not the `<|im_start|>assistant\\n` header, not the newline after `<|im_end|>`.
- "homework": the COMP4901B homework's exact format and labels: its template emits a stray leading "\\n",
  and the whole assistant turn `<|im_start|>assistant\\n ... <|im_end|>\\n` is trained (header and trailing
  newline included).  Checked token for token against the homework's golden ids (tests/test_homework_golden.py).

Labels are UNSHIFTED: labels[t] = input_ids[t] for supervised tokens, -100 elsewhere; the loss compares the
prediction made at t-1 with labels[t].
"""

from __future__ import annotations

from sftbench.model.chat_template import HOMEWORK_CHATML, IM_END, resolve_chat_template
from sftbench.data.normalise import round_starts, truncate_rounds
from sftbench.core.errors import UserError
from sftbench.loss import IGNORE_INDEX  # one definition, in the loss home

MODES = ("assistant", "homework")
TRUNCATION_SIDES = ("right", "left", "rounds")


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise UserError(f"unknown masking mode {mode!r}; choose one of {', '.join(MODES)}.")


def check_truncation_side(side: str) -> None:
    if side not in TRUNCATION_SIDES:
        raise UserError(f"unknown truncation side {side!r}; choose one of {', '.join(TRUNCATION_SIDES)}.")


def resolve_template(tokenizer, chat_template: str | None, mode: str) -> str:
    """The template text rendered: `chat_template` (text) when given, HOMEWORK_CHATML in homework mode (its golden
    labels need it), else the tokenizer's as sftbench.model.chat_template.resolve_chat_template reads it (plain ChatML
    when it has none: sftbench.model.hf.load_tokenizer has said so already)."""
    if chat_template:
        return chat_template
    if mode == "homework":
        return HOMEWORK_CHATML
    return resolve_chat_template(None, getattr(tokenizer, "chat_template", None)).text


def render(tokenizer, messages: list[dict], template: str, add_generation_prompt: bool = False) -> str:
    text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt)
    if not isinstance(text, str):  # defensive: some versions return a list for batched input
        text = text[0]
    return text


def special_strings(tokenizer) -> list[str]:
    """The tokenizer's special tokens (and <|im_end|>), longest first."""
    toks = set(getattr(tokenizer, "all_special_tokens", []) or [])
    toks.add(IM_END)
    if getattr(tokenizer, "eos_token", None):
        toks.add(tokenizer.eos_token)
    return sorted((t for t in toks if t), key=len, reverse=True)


def render_empty(tokenizer, template: str) -> str:
    """What the template emits before the first message (e.g. the homework's stray "\\n").

    apply_chat_template refuses an empty conversation, so render the Jinja template directly; "" if that fails.
    """
    try:
        from transformers.utils.chat_template_utils import render_jinja_template

        kwargs = dict(getattr(tokenizer, "special_tokens_map", {}) or {})
        out = render_jinja_template(conversations=[[]], chat_template=template, add_generation_prompt=False, **kwargs)
        if isinstance(out, tuple):  # older transformers: (rendered, generation_indices)
            out = out[0]
        return out[0] if isinstance(out, list) else out
    except Exception:
        return ""


def _prefix_renders(messages: list[dict], tokenizer, template: str, mode: str) -> tuple[str, list[str], bool]:
    """(full text, renders of messages[:k] for k = 0..n, whether each is a prefix of the full text)."""
    full = render(tokenizer, messages, template)
    pre = [render_empty(tokenizer, template)] + [render(tokenizer, messages[: k + 1], template) for k in range(len(messages))]
    pre[-1] = full
    consistent = all(full.startswith(p) for p in pre)
    if not consistent and mode == "homework":
        raise UserError("mode='homework' needs a prefix-consistent chat template (rendering the first k messages must give a prefix of the whole conversation).")
    if not full.startswith(pre[0]):
        pre[0] = ""
    return full, pre, consistent


def _locate(full: str, messages: list[dict], i: int, lo: int, hi: int, tokenizer, template: str,
            consistent: bool) -> tuple[int, int] | None:
    """(start, stop) of message i's content in `full` (assistant: right after the generation prompt), or None."""
    content = messages[i]["content"]
    if messages[i]["role"] == "assistant" and consistent and i > 0:
        gen = render(tokenizer, messages[:i], template, add_generation_prompt=True)
        if full.startswith(gen) and full.startswith(content, len(gen)):
            return len(gen), len(gen) + len(content)
    for c in (content, content.strip()):
        found = full.find(c, lo, hi)
        if found >= 0:
            return found, found + len(c)
    return None


def _end_of_turn(full: str, stop: int, hi: int, specials: list[str]) -> int:
    """End of the supervised span: just after the first special token in full[stop:hi] (else `stop`: the
    template closes no turn here, so only the content can be trained)."""
    trailer = full[stop:hi]
    hits = [(trailer.find(s), s) for s in specials if trailer.find(s) >= 0]
    if not hits:
        return stop
    pos, s = min(hits, key=lambda h: (h[0], -len(h[1])))
    return stop + pos + len(s)


def char_spans(messages: list[dict], tokenizer, template: str, mode: str) -> tuple[str, list[tuple[int, int]]]:
    """(rendered text, character spans to supervise).

    A message's place in the rendered string comes from rendering the message prefixes: message i occupies
    [len(render(messages[:i])), len(render(messages[:i+1]))).  Homework mode supervises that whole range for
    assistant messages.  Assistant mode narrows it to the content (located after the generation prompt) plus
    the first special token after it (the end-of-turn marker).  When a template is not prefix-consistent
    (it rewrites earlier turns), contents are searched for in order.
    """
    full, pre, consistent = _prefix_renders(messages, tokenizer, template, mode)
    if mode == "homework":  # prefix-consistent here
        return full, [(len(pre[i]), len(pre[i + 1])) for i, m in enumerate(messages) if m["role"] == "assistant"]
    specials = special_strings(tokenizer)
    spans: list[tuple[int, int]] = []
    cursor = len(pre[0])  # where the search for the next message's content starts
    for i, m in enumerate(messages):
        lo, hi = (len(pre[i]), len(pre[i + 1])) if consistent else (cursor, len(full))
        found = _locate(full, messages, i, lo, hi, tokenizer, template, consistent)
        if found is None:
            if m["role"] != "assistant":
                continue  # a template may rewrite non-assistant turns; only assistant turns must be located
            raise UserError(
                "could not locate an assistant message in the rendered chat template (does the template change "
                "message contents?). Use --chat_template plain, or a template that renders contents verbatim."
            )
        start, cursor = found
        if m["role"] == "assistant":
            cursor = _end_of_turn(full, cursor, hi, specials)
            spans.append((start, cursor))
    return full, spans


def labels_from_offsets(input_ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """Label a token when its characters overlap a supervised span (tokens with empty offsets are never labelled)."""
    labels = [IGNORE_INDEX] * len(input_ids)
    if not spans:
        return labels
    j = 0
    spans = sorted(spans)
    for k, (tid, (a, b)) in enumerate(zip(input_ids, offsets)):
        if b <= a:
            continue
        while j < len(spans) and spans[j][1] <= a:
            j += 1
        if j < len(spans) and spans[j][0] < b:
            labels[k] = tid
    return labels


SPECIAL_TOKEN_POLICIES = ("text", "refuse")


def check_special_token_policy(policy: str) -> None:
    if policy not in SPECIAL_TOKEN_POLICIES:
        raise UserError(f"unknown special_tokens_in_content {policy!r}; choose one of {', '.join(SPECIAL_TOKEN_POLICIES)}.")


def special_in_content(messages: list[dict], specials: list[str]) -> tuple[int, str] | None:
    """(1-based turn, special token text) of the first content that holds a special token's text, else None."""
    for t_i, m in enumerate(messages, start=1):
        for s in specials:
            if s in m["content"]:
                return t_i, s
    return None


def content_spans(full: str, messages: list[dict], tokenizer, template: str) -> list[tuple[int, int]]:
    """Where each message's content lies in the rendered `full`: [(start, stop)] in message order.

    Rendered once more with each content replaced by a sentinel, so the template's own text is known exactly;
    when putting the contents back does not give `full` (a template that rewrites contents), each content is
    searched for in order instead."""
    sentinels = [f"\x00{k}\x00" for k in range(len(messages))]
    skeleton = render(tokenizer, [dict(m, content=x) for m, x in zip(messages, sentinels)], template)
    spans, pos, shift, parts = [], 0, 0, []
    for m, x in zip(messages, sentinels):
        at = skeleton.find(x, pos)
        if at < 0:
            break
        spans.append((at + shift, at + shift + len(m["content"])))
        parts += [skeleton[pos:at], m["content"]]
        shift += len(m["content"]) - len(x)
        pos = at + len(x)
    if len(spans) == len(messages) and "".join(parts) + skeleton[pos:] == full:
        return spans
    spans, cursor = [], 0
    for m in messages:
        at = full.find(m["content"], cursor)
        spans.append((at, at + len(m["content"])) if at >= 0 else (cursor, cursor))
        cursor = at + len(m["content"]) if at >= 0 else cursor
    return spans


def literal_spans(full: str, messages: list[dict], tokenizer, template: str) -> list[tuple[int, int]]:
    """The contents (character spans of `full`) that hold a special token's text: to be tokenised as plain text."""
    specials = special_strings(tokenizer)
    if special_in_content(messages, specials) is None:
        return []
    spans = content_spans(full, messages, tokenizer, template)
    return [(a, b) for m, (a, b) in zip(messages, spans) if b > a and any(s in full[a:b] for s in specials)]


def _encode_pieces(tokenizer, text: str, literal: list[tuple[int, int]]) -> tuple[list[int], list[tuple[int, int]]]:
    """Tokenise `text` with the `literal` spans as plain text (no special-token parsing there)."""
    ids: list[int] = []
    offs: list[tuple[int, int]] = []
    pieces, pos = [], 0
    for a, b in sorted(literal):
        pieces += [(pos, a, False), (a, b, True)]
        pos = b
    pieces.append((pos, len(text), False))
    for a, b, lit in pieces:
        if b <= a:
            continue
        enc = tokenizer(text[a:b], add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=lit)
        ids += list(enc["input_ids"])
        offs += [(x + a, y + a) for x, y in enc["offset_mapping"]]
    return ids, offs


def encode(tokenizer, texts: list[str], literal: list[list[tuple[int, int]]] | None = None
           ) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """Tokenise rendered texts (no added special tokens): [(input_ids, character offsets)] per text.

    literal[i]: character spans of texts[i] (contents holding a special token's text) tokenised as plain text,
    so that a content's "<|im_end|>" is never the end-of-turn control token."""
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    out = [(list(ids), [tuple(o) for o in offs]) for ids, offs in zip(enc["input_ids"], enc["offset_mapping"])]
    for i, spans in enumerate(literal or []):
        if spans:
            out[i] = _encode_pieces(tokenizer, texts[i], spans)
    return out


def render_and_mask(messages: list[dict], tokenizer, *, mode: str = "assistant", chat_template: str | None = None) -> tuple[list[int], list[int]]:
    """Render one normalised conversation and return (input_ids, labels), both of length T.

    labels[t] = input_ids[t] for supervised tokens, -100 elsewhere (the loss shifts: logits[t] predict labels[t+1]).
    Template: `chat_template`, else (homework mode) HOMEWORK_CHATML, else the tokenizer's, else PLAIN_CHATML.
    Contents are text: a special token's text inside a content is tokenised as plain characters.
    """
    check_mode(mode)
    template = resolve_template(tokenizer, chat_template, mode)
    text, spans = char_spans(messages, tokenizer, template, mode)
    (ids, offs), = encode(tokenizer, [text], [literal_spans(text, messages, tokenizer, template)])
    return ids, labels_from_offsets(ids, offs, spans)


def truncate_example(input_ids: list[int], labels: list[int], max_length: int, side: str = "right") -> tuple[list[int], list[int]]:
    """Cut to `max_length` tokens: side "right" keeps the beginning, "left" keeps the end."""
    if max_length <= 0:
        raise UserError(f"max_length must be positive, got {max_length}.")
    if len(input_ids) <= max_length:
        return list(input_ids), list(labels)
    if side == "left":
        return list(input_ids[-max_length:]), list(labels[-max_length:])
    if side in ("right", "rounds"):
        return list(input_ids[:max_length]), list(labels[:max_length])
    raise UserError(f"unknown truncation side {side!r}; choose one of {', '.join(TRUNCATION_SIDES)}.")


def fit_rounds(messages: list[dict], tokenizer, template: str, mode: str, max_length: int) -> tuple[list[int], list[int]]:
    """Drop whole trailing rounds until the conversation fits (never half a turn); the first round is kept.
    Still too long with one round: returned as is, for the caller to cut on the right."""
    best = None
    for k in range(len(round_starts(messages)) - 1, 0, -1):
        cut = truncate_rounds(messages, k)
        if not any(m["role"] == "assistant" for m in cut):
            continue
        best = render_and_mask(cut, tokenizer, mode=mode, chat_template=template)
        if len(best[0]) <= max_length:
            return best
    if best is None:
        return render_and_mask(messages, tokenizer, mode=mode, chat_template=template)
    return best


def has_target(labels: list[int]) -> bool:
    """True when at least one *shifted* target exists (labels[0] is never predicted)."""
    return any(x != IGNORE_INDEX for x in labels[1:])


def highlight(input_ids: list[int], labels: list[int], tokenizer, open_mark: str = "[[", close_mark: str = "]]") -> str:
    """Decode an example with each run of supervised tokens wrapped in [[ ]]."""
    out: list[str] = []
    run: list[int] = []
    trained = None
    for tid, lab in zip(input_ids, labels):
        t = lab != IGNORE_INDEX
        if trained is not None and t != trained:
            text = tokenizer.decode(run, skip_special_tokens=False)
            out.append(f"{open_mark}{text}{close_mark}" if trained else text)
            run = []
        run.append(tid)
        trained = t
    if run:
        text = tokenizer.decode(run, skip_special_tokens=False)
        out.append(f"{open_mark}{text}{close_mark}" if trained else text)
    return "".join(out)
