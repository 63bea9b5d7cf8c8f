"""Conversations -> (input_ids, labels) for supervised fine-tuning.

records (JSONL / JSON / a folder / a HF dataset id)
  -> normalised messages [{"role": "system"|"user"|"assistant", "content": str}]   (validated, all of them first)
  -> first `max_rounds` user->assistant rounds
  -> rendered with a chat template, tokenised once with character offsets
  -> labels = -100 everywhere except the supervised tokens
  -> truncated to `max_length`; examples left with no target are dropped and counted.

Masks are computed from character offsets in the rendered string (where each assistant message starts and ends,
found by rendering message prefixes), not from `return_assistant_tokens_mask`, which is silently all-zero or
all-one for templates without `{% generation %}` markers (transformers #34172).

Modes:
- "assistant" (default): train each assistant message's content and its end-of-turn token (`<|im_end|>`),
  nothing else: not the `<|im_start|>assistant\\n` header, not the newline after `<|im_end|>`.
- "homework": the COMP4901B homework's exact format and labels: its template emits a stray leading "\\n",
  and the whole assistant turn `<|im_start|>assistant\\n ... <|im_end|>\\n` is trained (header and trailing
  newline included).  Checked token for token against the homework's golden ids (tests/test_homework_golden.py).

Run `python conversation_func.py --help` to tokenise a file and eyeball the mask.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

from sftbench.chat_template import IM_END, PLAIN_CHATML
from sftbench.errors import UserError

IGNORE_INDEX = -100

# Bump when the masking/truncation logic changes, so that cached examples built by older code are not reused.
MASKING_VERSION = 1

MODES = ("assistant", "homework")
TRUNCATION_SIDES = ("right", "left", "rounds")

# The homework's template: plain ChatML (no injected system prompt) preceded by one stray "\n".
HOMEWORK_CHATML = "\n" + PLAIN_CHATML

ROLE_ALIASES: dict[str, str] = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
}

CONVERSATION_KEYS = ("messages", "conversations")
DATA_SUFFIXES = (".jsonl", ".json")


@dataclass
class DataStats:
    """Counts reported in the training log.

    records: records read (good and bad).  examples: examples returned.
    dropped_no_target: examples with no trainable token left after truncation (not returned).
    truncated: examples longer than max_length (cut).  rounds_cut: conversations shortened by max_rounds.
    skipped_bad: bad records skipped (on_bad_record="skip"), by reason.
    """

    records: int = 0
    examples: int = 0
    dropped_no_target: int = 0
    truncated: int = 0
    rounds_cut: int = 0
    skipped_bad: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


class BadRecord(UserError):
    """A record that cannot be used; `reason` is the key counted in DataStats.skipped_bad."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------


def _looks_like_hub_id(path: str) -> bool:
    return path.count("/") == 1 and not path.startswith((".", "/", "~")) and all(path.split("/"))


def _data_files(data_path: str) -> list[Path]:
    p = Path(data_path).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in DATA_SUFFIXES)
        if not files:
            raise UserError(f"{p}: directory has no .json or .jsonl files. Point --data_path at a file or a folder of them.")
        return files
    if p.is_file():
        if p.suffix.lower() not in DATA_SUFFIXES:
            raise UserError(f"{p}: unsupported data file type {p.suffix or '(none)'}; use .jsonl (one conversation per line) or .json (a list of conversations).")
        return [p]
    raise UserError(
        f"{data_path}: data path not found. Give a .jsonl/.json file, a folder of them, or a Hugging Face dataset id "
        f"such as PeterV09/smol-smoltalk-6k."
    )


def _iter_jsonl_lenient(path: Path, bad: list[BadRecord]) -> Iterable[tuple[int, Any]]:
    """Like sftbench.io.iter_jsonl, but collects malformed lines instead of stopping at the first."""
    with open(path, "r", encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as e:
                bad.append(BadRecord(f"{path}:{i}: malformed JSON ({e.msg} at column {e.colno}). Fix or remove that line.", "malformed_json"))


def _read_json_records(path: Path) -> list[Any]:
    from sftbench.io import read_json

    obj = read_json(path)
    if isinstance(obj, dict):
        for key in ("data", "train"):
            if isinstance(obj.get(key), list):
                return obj[key]
        if any(k in obj for k in CONVERSATION_KEYS):
            return [obj]  # a single conversation
        raise UserError(f"{path}: a .json data file must hold a list of conversations, or an object with the list under \"data\" or \"train\"; found an object with keys {sorted(obj)[:8]}.")
    if isinstance(obj, list):
        return obj
    raise UserError(f"{path}: a .json data file must hold a list of conversations; found {type(obj).__name__}.")


def _load_hub_dataset(data_id: str) -> tuple[list[tuple[str, int, dict]], str]:
    try:
        import datasets

        ds = datasets.load_dataset(data_id, split="train")
    except Exception as e:  # offline, unknown id, no train split, ...
        raise UserError(
            f"{data_id}: not a local path, and loading it as a Hugging Face dataset (split 'train') failed: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. Check the id and your network, or download it to a .jsonl file."
        ) from None
    fingerprint = getattr(ds, "_fingerprint", None) or hashlib.sha256(json.dumps(ds[:], default=str).encode()).hexdigest()
    return [(data_id, i, rec) for i, rec in enumerate(ds, start=1)], f"hf:{data_id}:{fingerprint}"


def _load(data_path: str, lenient: bool) -> tuple[list[tuple[str, int, Any]], list[BadRecord], str]:
    """(records, malformed-line errors (lenient only), content fingerprint for the cache key)."""
    p = Path(data_path).expanduser()
    if not p.exists() and _looks_like_hub_id(data_path):
        recs, fp = _load_hub_dataset(data_path)
        return recs, [], fp
    files = _data_files(data_path)
    h = hashlib.sha256()
    records: list[tuple[str, int, Any]] = []
    bad: list[BadRecord] = []
    for f in files:
        h.update(f.name.encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
        if f.suffix.lower() == ".jsonl":
            if lenient:
                records.extend((str(f), i, r) for i, r in _iter_jsonl_lenient(f, bad))
            else:
                from sftbench.io import iter_jsonl

                records.extend((str(f), i, r) for i, r in iter_jsonl(f))
        else:
            records.extend((str(f), i, r) for i, r in enumerate(_read_json_records(f), start=1))
    return records, bad, "files:" + h.hexdigest()


def load_records(data_path: str) -> list[tuple[str, int, dict]]:
    """Read every record: [(source file or dataset id, 1-based line (JSONL) or record index (JSON/hub), record)].

    Accepts a .jsonl file, a .json file (a list, or an object with a list under "data"/"train"), a directory of
    .json/.jsonl files (sorted by name), or a Hugging Face dataset id ("owner/name", split "train") when no local
    path of that name exists.  UserError naming the path (and file:line for malformed JSON).
    """
    records, _, _ = _load(data_path, lenient=False)
    return records


def where_of(source: str, index: int) -> str:
    """'file:line' for JSONL records; 'file: record N' for JSON lists and hub datasets."""
    if source.lower().endswith(".jsonl"):
        return f"{source}:{index}"
    return f"{source}: record {index}"


# ---------------------------------------------------------------------------------------------------------------
# Validation / normalisation
# ---------------------------------------------------------------------------------------------------------------


def normalize_messages(record: dict, where: str) -> list[dict]:
    """Validate one record and return [{"role": "system"|"user"|"assistant", "content": str}].

    The conversation is under "messages" or "conversations"; each turn is {"role", "content"} (OpenAI style)
    or {"from", "value"} (ShareGPT).  Roles are mapped through ROLE_ALIASES (case-insensitive).  Raises
    BadRecord (a UserError) naming `where` for: no conversation key, unknown role, empty or non-string
    content, no assistant turn.
    """
    if not isinstance(record, dict):
        raise BadRecord(f"{where}: expected a JSON object with a \"messages\" list, found {type(record).__name__}.", "not_an_object")
    key = next((k for k in CONVERSATION_KEYS if k in record), None)
    if key is None:
        raise BadRecord(
            f"{where}: no conversation found: a record needs a \"messages\" (or ShareGPT \"conversations\") list; "
            f"this one has keys {sorted(record)[:8]}.",
            "no_conversation",
        )
    turns = record[key]
    if not isinstance(turns, list) or not turns:
        raise BadRecord(f"{where}: \"{key}\" must be a non-empty list of turns, found {type(turns).__name__ if not isinstance(turns, list) else 'an empty list'}.", "no_conversation")
    out: list[dict] = []
    for t_i, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict):
            raise BadRecord(f"{where}: turn {t_i} must be an object with \"role\" and \"content\", found {type(turn).__name__}.", "bad_turn")
        if "role" in turn or "content" in turn:
            raw_role, content = turn.get("role"), turn.get("content")
            role_key, content_key = "role", "content"
        else:
            raw_role, content = turn.get("from"), turn.get("value")
            role_key, content_key = "from", "value"
        if raw_role is None:
            raise BadRecord(f"{where}: turn {t_i} has no \"role\" (or ShareGPT \"from\"); keys: {sorted(turn)[:8]}.", "bad_turn")
        role = ROLE_ALIASES.get(str(raw_role).strip().lower()) if isinstance(raw_role, str) else None
        if role is None:
            raise BadRecord(
                f"{where}: turn {t_i} has unknown role {raw_role!r}. Known roles: {', '.join(sorted(ROLE_ALIASES))} "
                f"(case-insensitive).",
                "unknown_role",
            )
        if not isinstance(content, str):
            got = "missing" if content is None and content_key not in turn else type(content).__name__
            raise BadRecord(
                f"{where}: turn {t_i} ({role}) \"{content_key}\" must be a string, found {got}. "
                f"(Lists of content parts are not supported; join them into one string.)",
                "non_string_content",
            )
        if not content.strip():
            raise BadRecord(f"{where}: turn {t_i} ({role}) has empty \"{content_key}\". Remove the turn or the record.", "empty_content")
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise BadRecord(f"{where}: no assistant turn, so nothing to train on. Each conversation needs at least one assistant reply.", "no_assistant_turn")
    return out


def _round_starts(messages: list[dict]) -> list[int]:
    """Indices where user->assistant rounds start (each user message after the leading system message)."""
    return [i for i, m in enumerate(messages) if m["role"] == "user"]


def truncate_rounds(messages: list[dict], max_rounds: int | None) -> list[dict]:
    """Keep the leading system message (if any) and the first `max_rounds` user->assistant rounds.

    A round starts at a user message and runs until the next user message.  None, 0 or a negative value keeps
    everything.  Returns a new list; the input is not modified.
    """
    if max_rounds is None or max_rounds <= 0:
        return list(messages)
    starts = _round_starts(messages)
    if len(starts) <= max_rounds:
        return list(messages)
    return list(messages[: starts[max_rounds]])


# ---------------------------------------------------------------------------------------------------------------
# Rendering and masking
# ---------------------------------------------------------------------------------------------------------------


def resolve_template(tokenizer, chat_template: str | None, mode: str) -> str:
    """The template actually used: explicit > (homework mode: HOMEWORK_CHATML) > tokenizer's > PLAIN_CHATML."""
    if chat_template:
        return chat_template
    if mode == "homework":
        return HOMEWORK_CHATML
    return getattr(tokenizer, "chat_template", None) or PLAIN_CHATML


def _render(tokenizer, messages: list[dict], template: str, add_generation_prompt: bool = False) -> str:
    text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt)
    if not isinstance(text, str):  # defensive: some versions return a list for batched input
        text = text[0]
    return text


def _special_strings(tokenizer) -> list[str]:
    toks = set(getattr(tokenizer, "all_special_tokens", []) or [])
    toks.add(IM_END)
    if getattr(tokenizer, "eos_token", None):
        toks.add(tokenizer.eos_token)
    return sorted((t for t in toks if t), key=len, reverse=True)


def _render_empty(tokenizer, template: str) -> str:
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


def _char_spans(messages: list[dict], tokenizer, template: str, mode: str) -> tuple[str, list[tuple[int, int]]]:
    """(rendered text, character spans to supervise).

    A message's place in the rendered string comes from rendering the message prefixes: message i occupies
    [len(render(messages[:i])), len(render(messages[:i+1]))).  Assistant mode then narrows that to the content
    (located after the generation prompt) plus the first special token after it (the end-of-turn marker).
    When a template is not prefix-consistent (it rewrites earlier turns), contents are searched for in order.
    """
    full = _render(tokenizer, messages, template)
    pre = [_render_empty(tokenizer, template)] + [_render(tokenizer, messages[: k + 1], template) for k in range(len(messages))]
    pre[-1] = full
    consistent = all(full.startswith(p) for p in pre)
    if not consistent and mode == "homework":
        raise UserError("mode='homework' needs a prefix-consistent chat template (rendering the first k messages must give a prefix of the whole conversation).")
    if not full.startswith(pre[0]):
        pre[0] = ""
    specials = _special_strings(tokenizer)
    spans: list[tuple[int, int]] = []
    cursor = len(pre[0])  # where the search for the next message's content starts
    for i, m in enumerate(messages):
        lo, hi = (len(pre[i]), len(pre[i + 1])) if consistent else (cursor, len(full))
        if mode == "homework":
            if m["role"] == "assistant":
                spans.append((lo, hi))
            continue
        content = m["content"]
        start = -1
        if m["role"] == "assistant" and consistent and i > 0:
            gen = _render(tokenizer, messages[:i], template, add_generation_prompt=True)
            if full.startswith(gen) and full.startswith(content, len(gen)):
                start = len(gen)
        if start < 0:
            for c in (content, content.strip()):
                found = full.find(c, lo, hi)
                if found >= 0:
                    start, content = found, c
                    break
        if start < 0:
            if m["role"] != "assistant":
                continue  # a template may rewrite non-assistant turns; only assistant turns must be located
            raise UserError(
                "could not locate an assistant message in the rendered chat template (does the template change "
                "message contents?). Use --chat_template plain, or a template that renders contents verbatim."
            )
        stop = start + len(content)
        cursor = stop
        if m["role"] != "assistant":
            continue
        # The end-of-turn marker: the first special token after the content, within this turn's rendering.
        trailer = full[stop:hi]
        hits = [(trailer.find(s), s) for s in specials if trailer.find(s) >= 0]
        if hits:
            pos, s = min(hits, key=lambda h: (h[0], -len(h[1])))
            spans.append((start, stop + pos + len(s)))
            cursor = stop + pos + len(s)
        else:
            spans.append((start, stop))  # the template closes no turn here: only the content can be trained
    return full, spans


def _labels_from_offsets(input_ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
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


def _encode(tokenizer, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    return [(list(ids), [tuple(o) for o in offs]) for ids, offs in zip(enc["input_ids"], enc["offset_mapping"])]


def render_and_mask(messages: list[dict], tokenizer, *, mode: str = "assistant", chat_template: str | None = None) -> tuple[list[int], list[int]]:
    """Render one normalised conversation and return (input_ids, labels), both of length T.

    labels[t] = input_ids[t] for supervised tokens, -100 elsewhere (the loss shifts: logits[t] predict labels[t+1]).
    Template: `chat_template`, else (homework mode) HOMEWORK_CHATML, else the tokenizer's, else PLAIN_CHATML.
    """
    if mode not in MODES:
        raise UserError(f"unknown masking mode {mode!r}; choose one of {', '.join(MODES)}.")
    template = resolve_template(tokenizer, chat_template, mode)
    text, spans = _char_spans(messages, tokenizer, template, mode)
    (ids, offs), = _encode(tokenizer, [text])
    return ids, _labels_from_offsets(ids, offs, spans)


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


def has_target(labels: list[int]) -> bool:
    """True when at least one *shifted* target exists (labels[0] is never predicted)."""
    return any(x != IGNORE_INDEX for x in labels[1:])


# ---------------------------------------------------------------------------------------------------------------
# Dataset building, with an optional text-only cache
# ---------------------------------------------------------------------------------------------------------------


def _tokenizer_fingerprint(tokenizer) -> str:
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str).encode())
    return h.hexdigest()


def cache_key(data_fingerprint: str, tokenizer, template: str, **settings) -> str:
    payload = {
        "data": data_fingerprint,
        "tokenizer": _tokenizer_fingerprint(tokenizer),
        "template": template,
        "masking_version": MASKING_VERSION,
        **settings,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _read_cache(path: Path, key: str) -> tuple[list[dict], DataStats] | None:
    if not path.is_file():
        return None
    try:
        with open(path, "r", encoding="utf-8") as f:
            header = json.loads(f.readline())
            if header.get("key") != key:
                return None
            examples = [json.loads(line) for line in f if line.strip()]
        stats = DataStats(**header["stats"])
        if len(examples) != stats.examples:
            return None  # incomplete or edited: rebuild
        return examples, stats
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return None


def _write_cache(path: Path, key: str, examples: list[dict], stats: DataStats) -> None:
    from sftbench.io import atomic_write_jsonl

    atomic_write_jsonl(path, [{"key": key, "masking_version": MASKING_VERSION, "stats": stats.as_dict()}, *examples])


def build_examples(
    data_path: str,
    tokenizer,
    *,
    max_length: int,
    max_rounds: int | None,
    mode: str = "assistant",
    truncation_side: str = "right",
    chat_template: str | None = None,
    on_bad_record: str = "error",
    cache_dir: str | None = None,
    progress: bool = True,
) -> tuple[list[dict], DataStats]:
    """Load, validate (all records, before any tokenising), render, mask and truncate a data set.

    Returns ([{"input_ids": list[int], "labels": list[int]}], DataStats).  Examples with no trainable token after
    truncation are dropped and counted in stats.dropped_no_target.  on_bad_record="error" raises a UserError for
    the first bad record (saying how many there are); "skip" counts them in stats.skipped_bad[reason].
    truncation_side: "right" (keep the start), "left" (keep the end), or "rounds" (drop whole trailing rounds
    until the conversation fits; cut on the right only when even the first round is too long).
    With cache_dir, the result is stored as JSONL keyed by a sha256 of everything that determines it.
    """
    if mode not in MODES:
        raise UserError(f"unknown masking mode {mode!r}; choose one of {', '.join(MODES)}.")
    if truncation_side not in TRUNCATION_SIDES:
        raise UserError(f"unknown truncation side {truncation_side!r}; choose one of {', '.join(TRUNCATION_SIDES)}.")
    if on_bad_record not in ("error", "skip"):
        raise UserError(f"on_bad_record must be 'error' or 'skip', got {on_bad_record!r}.")
    if max_length is None or max_length <= 1:
        raise UserError(f"max_length must be at least 2, got {max_length}.")

    records, bad, data_fp = _load(data_path, lenient=on_bad_record == "skip")
    template = resolve_template(tokenizer, chat_template, mode)

    cache_path = None
    key = None
    if cache_dir:
        key = cache_key(
            data_fp, tokenizer, template, max_length=max_length, max_rounds=max_rounds or None, mode=mode,
            truncation_side=truncation_side, on_bad_record=on_bad_record,
        )
        cache_path = Path(cache_dir) / f"examples-{key[:24]}.jsonl"
        hit = _read_cache(cache_path, key)
        if hit is not None:
            return hit

    stats = DataStats(records=len(records) + len(bad))
    convs: list[list[dict]] = []
    for source, idx, rec in records:
        try:
            convs.append(normalize_messages(rec, where_of(source, idx)))
        except BadRecord as e:
            bad.append(e)
    if bad:
        if on_bad_record == "error":
            more = f" ({len(bad) - 1} more bad record(s) in this data; pass --on_bad_record skip to skip and count them)" if len(bad) > 1 else ""
            raise UserError(f"{bad[0]}{more}")
        for e in bad:
            stats.skipped_bad[e.reason] = stats.skipped_bad.get(e.reason, 0) + 1

    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    examples: list[dict] = []
    batch = 256  # tokenise in batches: the fast tokenizer's batch call is several times faster per text
    bar = tqdm(total=len(convs), desc="tokenizing", unit="conv", disable=not progress or tqdm is None, file=sys.stderr) if tqdm else None
    for b0 in range(0, len(convs), batch):
        chunk = []
        for msgs in convs[b0 : b0 + batch]:
            cut = truncate_rounds(msgs, max_rounds)
            if len(cut) < len(msgs):
                stats.rounds_cut += 1
            chunk.append(cut)
        rendered = [_char_spans(m, tokenizer, template, mode) for m in chunk]
        encoded = _encode(tokenizer, [text for text, _ in rendered])
        for msgs, (text, spans), (ids, offs) in zip(chunk, rendered, encoded):
            labels = _labels_from_offsets(ids, offs, spans)
            if len(ids) > max_length:
                stats.truncated += 1
                if truncation_side == "rounds":
                    ids, labels = _fit_rounds(msgs, tokenizer, template, mode, max_length)
                ids, labels = truncate_example(ids, labels, max_length, truncation_side)
            if not has_target(labels):
                stats.dropped_no_target += 1
                continue
            examples.append({"input_ids": ids, "labels": labels})
        if bar:
            bar.update(len(chunk))
    if bar:
        bar.close()
    stats.examples = len(examples)
    if cache_path is not None:
        _write_cache(cache_path, key, examples, stats)
    return examples, stats


def _fit_rounds(messages: list[dict], tokenizer, template: str, mode: str, max_length: int) -> tuple[list[int], list[int]]:
    """Drop whole trailing rounds until the conversation fits (never half a turn); the first round is kept."""
    n = len(_round_starts(messages))
    best = None
    for k in range(n - 1, 0, -1):
        cut = truncate_rounds(messages, k)
        if not any(m["role"] == "assistant" for m in cut):
            continue
        ids, labels = render_and_mask(cut, tokenizer, mode=mode, chat_template=template)
        best = (ids, labels)
        if len(ids) <= max_length:
            return ids, labels
    if best is None:
        return render_and_mask(messages, tokenizer, mode=mode, chat_template=template)
    return best  # still too long: the caller cuts on the right


def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of examples: input_ids [B,T] long (pad_id), labels [B,T] long (-100 on pad),
    attention_mask [B,T] long (1 real, 0 pad), T = the longest example."""
    if not examples:
        raise ValueError("collate() got an empty batch")
    if pad_id is None:
        raise ValueError("collate() needs a pad id (set tokenizer.pad_token, e.g. to <|im_end|>)")
    T = max(len(e["input_ids"]) for e in examples)
    B = len(examples)
    input_ids = torch.full((B, T), int(pad_id), dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        input_ids[i, :n] = torch.as_tensor(e["input_ids"], dtype=torch.long)
        labels[i, :n] = torch.as_tensor(e["labels"], dtype=torch.long)
        attention_mask[i, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


# ---------------------------------------------------------------------------------------------------------------
# CLI: tokenise a data file and show what is trained
# ---------------------------------------------------------------------------------------------------------------


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


def load_tokenizer(name: str):
    """'tiny' (the test tokenizer), 'smollm2-135m-instruct-offline' (GGUF, no conversion), a local dir or a hub id."""
    if name == "tiny":
        from sftbench.tiny import build_tiny_tokenizer

        return build_tiny_tokenizer()
    from sftbench.models import OFFLINE_NAMES

    if name in OFFLINE_NAMES:
        from sftbench.models import load_offline_tokenizer

        return load_offline_tokenizer()
    from transformers import AutoTokenizer

    p = Path(name).expanduser()
    if not p.exists() and not _looks_like_hub_id(name):
        raise UserError(f"{name}: tokenizer/model path not found.")
    try:
        return AutoTokenizer.from_pretrained(str(p) if p.exists() else name)
    except Exception as e:
        raise UserError(f"{name}: could not load a tokenizer ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}).") from None


def template_from_flag(value: str) -> str | None:
    """'model' -> None (the tokenizer's own), 'plain' -> PLAIN_CHATML, 'homework' -> HOMEWORK_CHATML, else a file."""
    if value == "model":
        return None
    if value == "plain":
        return PLAIN_CHATML
    if value == "homework":
        return HOMEWORK_CHATML
    p = Path(value).expanduser()
    if not p.is_file():
        raise UserError(f"--chat_template {value}: not 'model', 'plain', 'homework' or an existing Jinja template file.")
    text = p.read_text(encoding="utf-8")
    import jinja2

    try:  # syntax only (HF's extra tags are unknown to a plain Environment, so only plain Jinja is checked here)
        jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).parse(text)
    except jinja2.TemplateSyntaxError as e:
        if "generation" not in str(e.message):
            raise UserError(f"--chat_template {value}:{e.lineno}: Jinja syntax error ({e.message}).") from None
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="conversation_func.py",
        description="Tokenise a conversation data set exactly as training will, print the counts (DataStats) and "
        "show examples with the supervised tokens wrapped in [[ ]], to check the loss mask by eye.",
    )
    ap.add_argument("data_path", help="a .jsonl file (one {\"messages\": [...]} per line), a .json list, a folder of them, or a HF dataset id (owner/name)")
    ap.add_argument("--tokenizer", default="smollm2-135m-instruct-offline", help="'smollm2-135m-instruct-offline' (real SmolLM2 tokenizer, offline), 'tiny' (test tokenizer), a model directory or a hub id (default: %(default)s)")
    ap.add_argument("--max_length", "--max-length", type=int, default=2048, help="maximum tokens per example (default: %(default)s)")
    ap.add_argument("--max_rounds", "--max-rounds", type=int, default=None, help="keep only the first N user->assistant rounds (default: all)")
    ap.add_argument("--mode", choices=MODES, default="assistant", help="'assistant': train assistant contents + <|im_end|>; 'homework': the homework's exact format and labels (default: %(default)s)")
    ap.add_argument("--truncation_side", "--truncation-side", choices=TRUNCATION_SIDES, default="right", help="'right' keeps the start, 'left' the end, 'rounds' drops whole trailing rounds (default: %(default)s)")
    ap.add_argument("--chat_template", "--chat-template", default="model", help="'model' (the tokenizer's own), 'plain' (ChatML, no system prompt), 'homework' (the homework's), or a Jinja file (default: %(default)s)")
    ap.add_argument("--on_bad_record", "--on-bad-record", choices=("error", "skip"), default="error", help="stop at the first bad record, or skip and count them (default: %(default)s)")
    ap.add_argument("--show", type=int, default=1, help="how many examples to print with the mask highlighted (default: %(default)s)")
    ap.add_argument("--index", type=int, default=0, help="index of the first example to show (default: %(default)s)")
    args = ap.parse_args(argv)
    try:
        template = template_from_flag(args.chat_template)
        tok = load_tokenizer(args.tokenizer)
        examples, stats = build_examples(
            args.data_path, tok, max_length=args.max_length, max_rounds=args.max_rounds, mode=args.mode,
            truncation_side=args.truncation_side, chat_template=template, on_bad_record=args.on_bad_record,
        )
        if stats.records == 0:
            raise UserError(f"{args.data_path}: no records (an empty file?). Each line should hold one "
                            f"{{\"messages\": [...]}} object.")
    except UserError as e:
        from sftbench.errors import exit_with_user_error

        exit_with_user_error(e, ap.prog)
    print(json.dumps(stats.as_dict(), indent=2))
    n_tok = sum(len(e["input_ids"]) for e in examples)
    n_tgt = sum(sum(1 for x in e["labels"][1:] if x != IGNORE_INDEX) for e in examples)
    print(f"tokens: {n_tok}, supervised targets: {n_tgt} ({100.0 * n_tgt / max(n_tok, 1):.1f}%)")
    for e in examples[args.index : args.index + max(args.show, 0)]:
        print("-" * 80)
        print(f"{len(e['input_ids'])} tokens, trained tokens in [[ ]]:")
        print(highlight(e["input_ids"], e["labels"], tok))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
