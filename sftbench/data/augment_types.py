"""The constraint types `sftbench.data.augment` can add to a conversation, each with its own phrasings and rewrite.

A type is an IFEval instruction id plus four pieces:
- `plan(answer, request, rng) -> dict | None`: the kwargs decided before rewriting (None: this answer does not
  suit the type, e.g. lower-casing an answer with code in it);
- `apply(text, kw) -> str`: the deterministic rewrite (identity for types the answer already satisfies);
- `finalize(text, kw, rng, util) -> dict | None`: kwargs read off the *final* text (keywords the answer uses,
  the word count it stays under); None when no honest value exists;
- `templates`: the project's own phrasings ("{kwarg}" placeholders), keyed by relation where there is one.
  None of them is IFEval's or IFBench's prompt text.
Rewrites run in `ORDER` (cuts first, then text-wide edits, structure, additions, case, line prefixes,
wrapping), so each later step keeps what the earlier ones produced.  Keys starting with "_" in kwargs are
internal (how many sentences to keep, the title text) and never reach the checker or the output.

`CONFLICTS` lists the pairs that cannot share one answer, and why; `HELD_OUT` the IFEval types the default
augmentation never trains, so the report can measure them apart (`split_by_seen`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from random import Random
from typing import Callable, Iterable

from sftbench.tasks.train_constraints import paragraph_sentences, paragraphs

# IFEval instruction types the default augmentation never adds: 5 of IFEval's 25 (a fifth), one in each of
# five categories, so that an IFEval gain on them can only come from transfer, not from training on the type.
# Two of them are types we can write (quotation, multiple_sections), three we cannot yet; the report splits
# its instruction-level accuracy into seen / held-out with `split_by_seen`.
HELD_OUT: tuple[str, ...] = (
    "change_case:capital_word_frequency",
    "detectable_format:multiple_sections",
    "keywords:letter_frequency",
    "length_constraints:nth_paragraph_first_word",
    "startend:quotation",
)


def split_by_seen(instruction_ids: Iterable[str], held_out: Iterable[str] = HELD_OUT) -> dict[str, list[int]]:
    """{"seen": [positions], "held_out": [positions]} of `instruction_ids` (a flat list, e.g. one per IFEval
    instruction), so a report can average per-instruction results over either group."""
    held = set(held_out)
    out: dict[str, list[int]] = {"seen": [], "held_out": []}
    for i, iid in enumerate(instruction_ids):
        out["held_out" if iid in held else "seen"].append(i)
    return out


# ------------------------------------------------------------------------------------------------------------
# Text helpers
# ------------------------------------------------------------------------------------------------------------

_STOP = frozenset("""about above after again against because been before being below between both could does doing
during each from further have having here into itself just more most other over same should some such than that
their theirs them then there these they this those through under until very were what when where which while whom
why will with would your yours also only into like make made many much need using used well even first""".split())

FILLER_WORDS = ("basically", "literally", "obviously", "honestly", "actually", "definitely", "essentially",
                "totally", "seriously", "undoubtedly")
END_PHRASES = ("I hope this helps.", "Let me know if you want more detail.", "That covers the main points.",
               "Feel free to ask a follow-up question.", "Thanks for asking.")
POSTSCRIPT_NOTES = ("I am happy to expand on any part of this.", "Ask me if a step is unclear.",
                    "A follow-up question is always welcome.")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences (NLTK punkt, the tokenizer behind IFEval's sentence counts)."""
    from nltk.tokenize import PunktTokenizer

    return list(_punkt(PunktTokenizer).span_tokenize(text))


def _punkt(cls, _cache={}):
    if "t" not in _cache:
        _cache["t"] = cls("english")
    return _cache["t"]


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z]+", text)


def cut_sentences(text: str, keep: int) -> str:
    """The text up to the end of its `keep`-th sentence (everything when it has no more)."""
    spans = sentence_spans(text)
    if keep >= len(spans):
        return text
    # punkt takes a list number ("3.") for a sentence: never end on a dangling marker or heading.
    cut = text[: spans[keep - 1][1]].rstrip()
    return re.sub(r"(\n\s*(\d+[.)]|[-*#]+))+\s*$", "", cut).rstrip() or cut


def _has_code(text: str) -> bool:
    return "```" in text or "\n    " in text


def _plain(text: str) -> bool:
    """No markup that the structural rewrites would collide with (lists, stars, rules, code, headings)."""
    return not (_has_code(text) or "*" in text or re.search(r"^\s*(-|\d+[.)]|#)", text, flags=re.M))


def _groups(units: list[str], k: int) -> list[str]:
    """`units` joined into k consecutive groups of near-equal size."""
    size = math.ceil(len(units) / k)
    return [" ".join(units[i:i + size]) for i in range(0, len(units), size)]


def _blocks(text: str, max_n: int = 8) -> list[str] | None:
    """The answer as 2..max_n blocks: its paragraphs, or (one paragraph) its sentences in up to 3 groups."""
    paras = paragraphs(text)
    if len(paras) == 1:
        sents = [text[a:b].strip() for a, b in sentence_spans(paras[0])]
        if len(sents) < 2:
            return None
        paras = _groups(sents, min(3, len(sents)))
    return paras if 2 <= len(paras) <= max_n else None


# ------------------------------------------------------------------------------------------------------------
# Rewrites
# ------------------------------------------------------------------------------------------------------------


def no_comma(text: str, kw: dict) -> str:
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text)  # 1,000 -> 1000
    text = re.sub(r"[ \t]*,[ \t]*", " ", text)
    return re.sub(r" +\n", "\n", text).strip()


def paragraphs_rewrite(text: str, kw: dict) -> str:
    blocks = _blocks(text) or [text.strip()]
    return "\n\n***\n\n".join(blocks)


def sections_rewrite(text: str, kw: dict) -> str:
    blocks = _blocks(text) or [text.strip()]
    return "\n\n".join(f"{kw['section_spliter']} {i}\n{b}" for i, b in enumerate(blocks, start=1))


def bullets_rewrite(text: str, kw: dict) -> str:
    blocks = _blocks(text) or [text.strip()]
    return "\n".join("* " + re.sub(r"\s*\n\s*", " ", b) for b in blocks)


def highlight_rewrite(text: str, kw: dict) -> str:
    """Wrap the first `num_highlights` one-line sentences in *...*."""
    need, out, last = kw["num_highlights"], [], 0
    for a, b in sentence_spans(text):
        s = text[a:b]
        if need and "\n" not in s and "*" not in s and s.strip():
            out.append(text[last:a] + "*" + s + "*")
            last, need = b, need - 1
    return "".join(out) + text[last:]


def title_rewrite(text: str, kw: dict) -> str:
    """<<title>> first; an answer's own "Title: ..." / "# ..." heading line becomes that title."""
    m = re.match(r"\s*(?:title:\s*|#+\s+)([^\n]{3,80})\n", text, flags=re.I) if "_drop_heading" in kw else None
    body = text[m.end():].lstrip() if m else text
    return f"<<{kw['_title']}>>\n\n{body}"


def repeat_rewrite(text: str, kw: dict) -> str:
    return f"{kw['prompt_to_repeat']}\n\n{text}"


def postscript_rewrite(text: str, kw: dict) -> str:
    return f"{text.rstrip()}\n\n{kw['postscript_marker']} {kw['_note']}"


def end_rewrite(text: str, kw: dict) -> str:
    return f"{text.rstrip()}\n\n{kw['end_phrase']}"


def json_rewrite(text: str, kw: dict) -> str:
    return "```json\n" + json.dumps({kw["_key"]: text}, ensure_ascii=False, indent=2) + "\n```"


def _identity(text: str, kw: dict) -> str:
    return text


# ------------------------------------------------------------------------------------------------------------
# Plans (before the rewrite) and finalizers (kwargs read off the final text)
# ------------------------------------------------------------------------------------------------------------


def _plan_cut(answer: str, request: str, rng: Random) -> dict | None:
    n = len(sentence_spans(answer))
    if _has_code(answer) or n < 1:
        return None
    if n >= 3 and rng.random() < 0.7:  # keep 40-80% of the sentences, cut at a sentence boundary
        return {"relation": "less than", "_keep": max(1, math.ceil(n * rng.uniform(0.4, 0.8)))}
    return {"relation": "at least", "_keep": n}


def _fin_words(text, kw, rng, util):
    n = util.count_words(text)
    if kw["relation"] == "less than":
        return {**kw, "num_words": (n // 10 + 1) * 10}
    return {**kw, "num_words": n // 10 * 10} if n >= 10 else None


def _fin_sentences(text, kw, rng, util):
    n = util.count_sentences(text)
    if kw["relation"] == "less than":
        return {**kw, "num_sentences": n + rng.randint(1, 2)}
    return {**kw, "num_sentences": max(1, n - rng.randint(0, 1))}


def _plan_blocks(answer, request, rng):
    return {} if _plain(answer) and _blocks(answer) else None


def _fin_paragraphs(text, kw, rng, util):
    return {**kw, "num_paragraphs": len(text.split("\n\n***\n\n"))}


def _fin_bullets(text, kw, rng, util):
    return {**kw, "num_bullets": len(re.findall(r"^\* ", text, flags=re.M))}


def _plan_sections(answer, request, rng):
    return {"section_spliter": rng.choice(("Section", "SECTION"))} if _plan_blocks(answer, request, rng) is not None else None


def _fin_sections(text, kw, rng, util):
    return {**kw, "num_sections": len(re.findall(rf"^{kw['section_spliter']} \d+$", text, flags=re.M))}


def _plan_highlights(answer, request, rng):
    one_line = [1 for a, b in sentence_spans(answer) if "\n" not in answer[a:b]]
    if "*" in answer or _has_code(answer) or not one_line:
        return None
    return {"num_highlights": rng.randint(1, min(3, len(one_line)))}


_LEAD = frozenset("can could would will you please help me i tell write give explain describe elaborate on "
                  "what how why is are do the a an".split())


def _plan_title(answer, request, rng):
    """A title from the answer's own heading ("Title: ..." / "# ..."), else from the request's first words."""
    if "<<" in answer:
        return None
    m = re.match(r"\s*(?:title:\s*|#+\s+)([^\n]{3,80})\n", answer, flags=re.I)
    if m:
        return {"_title": m.group(1).strip().strip("*").strip(), "_drop_heading": m.end()}
    words = re.findall(r"[A-Za-z0-9']+", request.strip().split("\n")[0])
    while words and words[0].lower() in _LEAD:
        words = words[1:]
    if not words:
        return None
    return {"_title": " ".join(w[:1].upper() + w[1:] for w in words[:6])}


def _plan_repeat(answer, request, rng):
    return {"prompt_to_repeat": request.strip()} if len(request) <= 500 and "\n" not in request.strip() else None


def _plan_text_edit(answer, request, rng):
    return None if _has_code(answer) else {}


def _plan_postscript(answer, request, rng):
    if re.search(r"p\.\s?s\.|p\.\s?p\.\s?s", answer, flags=re.I):
        return None
    return {"postscript_marker": rng.choice(("P.S.", "P.P.S")), "_note": rng.choice(POSTSCRIPT_NOTES)}


def _plan_end(answer, request, rng):
    return {"end_phrase": rng.choice(END_PHRASES)}


def _plan_json(answer, request, rng):
    return {"_key": rng.choice(("answer", "response", "reply"))}


def _plan_always(answer, request, rng):
    return {}


def _candidates(text: str, min_len: int = 6) -> list[str]:
    text = re.sub(r"\\[nrtu\"\\]", " ", text)  # JSON escapes (\nThe) are not words
    return sorted({w.lower() for w in _words(text) if len(w) >= min_len and w.lower() not in _STOP})


def _fin_existence(text, kw, rng, util):
    cands = _candidates(text)
    return {"keywords": rng.sample(cands, min(len(cands), rng.randint(1, 2)))} if cands else None


def _fin_frequency(text, kw, rng, util):
    counts = {w: len(re.findall(w, text, flags=re.I)) for w in _candidates(text, 4)}
    multi = sorted(w for w, c in counts.items() if c >= 2)
    if multi and rng.random() < 0.6:
        w = rng.choice(multi)
        return {"keyword": w, "frequency": counts[w], "relation": "at least"}
    if not counts:
        return None
    w = rng.choice(sorted(counts))
    return {"keyword": w, "frequency": counts[w] + rng.randint(1, 2), "relation": "less than"}


def _fin_forbidden(text, kw, rng, util):
    absent = lambda w: not re.search(r"\b" + w + r"\b", text, flags=re.I)  # noqa: E731
    pool = [w for w in FILLER_WORDS if absent(w)]
    return {"forbidden_words": rng.sample(pool, min(len(pool), rng.randint(1, 3)))} if pool else None


def _fin_letter(text, kw, rng, util):
    low = text.lower()
    letter = rng.choice([c for c in "abcdefghijklmnopqrstuvwxyz" if c in low] or ["z"])
    n = low.count(letter)
    if n >= 2 and rng.random() < 0.6:
        return {"letter": letter, "let_frequency": max(1, n - n // 4), "let_relation": "at least"}
    return {"letter": letter, "let_frequency": n + rng.randint(1, 3), "let_relation": "less than"}


# ------------------------------------------------------------------------------------------------------------
# The project's own training-only types (checkers: sftbench.tasks.train_constraints; ids "train:...")
# ------------------------------------------------------------------------------------------------------------

START_PHRASES = ("Here is my answer.", "Short answer first:", "Good question.", "Let me explain.", "Sure thing.")
QUESTIONS = ("Would you like more detail on any part?", "Does that answer your question?",
             "Shall I add an example?")
_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
         "seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """An integer 0 <= n < 10^12 in English words ("two million one hundred thousand")."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else "-" + _ONES[n % 10])
    if n < 1000:
        return _ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + number_words(n % 100))
    for size, name in ((10**9, "billion"), (10**6, "million"), (10**3, "thousand")):
        if n >= size:
            return number_words(n // size) + " " + name + ("" if n % size == 0 else " " + number_words(n % size))
    raise ValueError(n)


def spell_numbers(text: str, kw: dict | None = None) -> str:
    """Every number written with digits ("2,100,000", "42", "3.5") spelt out in words; None-safe for big ones."""
    def one(m):
        whole, frac = m.group(1).replace(",", ""), m.group(2)
        if len(whole) > 12:
            return m.group(0)
        out = number_words(int(whole))
        return out + (" point " + " ".join(_ONES[int(d)] for d in frac[1:]) if frac else "")

    return re.sub(r"(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?", one, text)


def _plan_no_digits(answer, request, rng):
    return None if _has_code(answer) or re.search(r"\d{13}", answer) else {}


def _fin_sentence_words(text, kw, rng, util):
    from sftbench.tasks.train_constraints import sentence_words

    counts = sentence_words(text)
    return {"max_words": max(counts) + rng.randint(0, 3)} if counts and max(counts) <= 40 else None


def _plan_start(answer, request, rng):
    return {"start_phrase": rng.choice(START_PHRASES)}


def start_rewrite(text: str, kw: dict) -> str:
    return f"{kw['start_phrase']} {text.lstrip()}"


def _plan_question(answer, request, rng):
    return {"_question": rng.choice(QUESTIONS)}


def question_rewrite(text: str, kw: dict) -> str:
    return text if text.rstrip().endswith("?") else f"{text.rstrip()}\n\n{kw['_question']}"


def _plan_tag(answer, request, rng):
    return None if "</" in answer else {"tag": rng.choice(("answer", "reply", "response"))}


def tag_rewrite(text: str, kw: dict) -> str:
    return f"<{kw['tag']}>\n{text.strip()}\n</{kw['tag']}>"


LINE_PREFIXES = ("> ", ">> ", "| ")  # not "- " or "* ": IFEval's bullet checker counts lines starting with those
NO_CHARS = {"!": ".", ";": ",", ":": " -"}  # the character a reply must avoid -> what the rewrite writes instead


def _plan_prefix(answer, request, rng):
    return None if _has_code(answer) else {"prefix": rng.choice(LINE_PREFIXES)}


def prefix_rewrite(text: str, kw: dict) -> str:
    """Every non-empty line behind the prefix; blank (or all-space) lines become empty."""
    return "\n".join(kw["prefix"] + ln if ln.strip() else "" for ln in text.split("\n"))


def _plan_no_char(answer, request, rng):
    """One of NO_CHARS at random; not ":" when the answer has one inside a token (a URL, a time like 10:30),
    which " -" would mangle."""
    if _has_code(answer):
        return None
    pool = [c for c in NO_CHARS if c != ":" or not re.search(r"\S:\S", answer)]
    return {"char": rng.choice(pool)}


def no_char_rewrite(text: str, kw: dict) -> str:
    """The character replaced ("!" -> ".", ";" -> ",", ":" -> " -"); no replacement contains any of NO_CHARS."""
    c = kw["char"]
    if c == "!":
        return re.sub(r"!+", ".", re.sub(r"([?.])!+", r"\1", text))
    if c == ";":
        return re.sub(r"[ \t]*;", ",", text)
    # a colon opening a line is dropped: " -" there would read as a "-" bullet to IFEval's bullet checker
    text = re.sub(r"(?m)^([ \t]*):+[ \t]*", r"\1", text)
    return re.sub(r"[ \t]*:+", " -", text)


def _fin_no_char(text, kw, rng, util):
    """The planned character if the final text is free of it; else (a later addition, e.g. the start phrase
    "Short answer first:" or a title taken from a "Title: ..." heading, brought it back) another of NO_CHARS the
    final text does not use; None when it uses all three."""
    if kw["char"] not in text:
        return kw
    absent = [c for c in NO_CHARS if c not in text]
    return {**kw, "char": rng.choice(absent)} if absent else None


def _plan_paragraph_sentences(answer, request, rng):
    """Only answers of two or more paragraphs (a one-paragraph answer would make it a plain sentence cap, which
    length_constraints:number_sentences trains) and without code (punkt's sentences mean little there)."""
    return None if _has_code(answer) or len(paragraphs(answer)) < 2 else {}


def _fin_paragraph_sentences(text, kw, rng, util):
    """The longest paragraph's sentence count in the final text, plus 0 or 1; None when it is over 8 (no longer a
    short-paragraph constraint).  A final text that a cut left with one paragraph still gets its honest cap."""
    counts = paragraph_sentences(text)
    return {**kw, "max_sentences": max(counts) + rng.randint(0, 1)} if counts and max(counts) <= 8 else None


# ------------------------------------------------------------------------------------------------------------
# The types
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConstraintType:
    iid: str
    templates: dict[str, tuple[str, ...]]  # variant ("" or the relation) -> phrasings
    plan: Callable[[str, str, Random], dict | None]
    apply: Callable[[str, dict], str] = _identity
    finalize: Callable | None = None  # (text, kw, rng, instructions_util) -> kwargs | None
    cuts: bool = False  # apply() keeps the first kw["_keep"] sentences
    changes_text: bool = False  # rewrites words/characters (not only adds or wraps)

    def describe(self, kw: dict, rng: Random) -> str:
        variant = kw.get("relation") or kw.get("let_relation") or ""
        shown = {k: _show(v) for k, v in kw.items()}
        return rng.choice(self.templates[variant]).format(**shown)


def _show(v) -> str:
    if isinstance(v, list):
        return " and ".join(f'"{w}"' for w in v)
    return str(v)


def _cut(text: str, kw: dict) -> str:
    return cut_sentences(text, kw["_keep"])


_TYPES = [
    ConstraintType("length_constraints:number_words", {
        "less than": ("Keep the whole reply under {num_words} words.", "Answer in fewer than {num_words} words.",
                      "Your response must stay below {num_words} words in total."),
        "at least": ("Write no fewer than {num_words} words.", "Make the reply {num_words} words long or longer.",
                     "Use a minimum of {num_words} words.")}, _plan_cut, _cut, _fin_words, cuts=True),
    ConstraintType("length_constraints:number_sentences", {
        "less than": ("Use fewer than {num_sentences} sentences.", "Keep it to under {num_sentences} sentences.",
                      "The reply should have less than {num_sentences} sentences."),
        "at least": ("Write {num_sentences} sentences or more.", "Include no fewer than {num_sentences} sentences.",
                     "Your answer needs a minimum of {num_sentences} sentences.")}, _plan_cut, _cut, _fin_sentences,
        cuts=True),
    ConstraintType("train:max_sentence_words", {"": (
        "Keep every sentence to at most {max_words} words.", "No sentence in your reply may run longer than {max_words} words.",
        "Write short sentences: {max_words} words per sentence at most.")}, _plan_text_edit, finalize=_fin_sentence_words),
    ConstraintType("train:max_paragraph_sentences", {"": (
        "Keep each paragraph to {max_sentences} sentences or fewer.",
        "No paragraph of your answer may hold more than {max_sentences} sentences.",
        "Write in short paragraphs, at most {max_sentences} sentences apiece.")}, _plan_paragraph_sentences,
        finalize=_fin_paragraph_sentences),
    ConstraintType("train:no_char", {"": (
        "Do not use the character \"{char}\" anywhere in your reply.",
        "Your answer must not contain a single \"{char}\" character.",
        "Leave out the symbol \"{char}\" entirely when you write the response.")}, _plan_no_char, no_char_rewrite,
        _fin_no_char, changes_text=True),
    ConstraintType("punctuation:no_comma", {"": (
        "Do not put a single comma anywhere in the reply.", "Write the answer without using any commas.",
        "Avoid commas entirely.", "No commas are allowed in your response.")}, _plan_text_edit, no_comma,
        changes_text=True),
    ConstraintType("train:no_digits", {"": (
        "Do not write any digits; spell every number out in words.", "Avoid numerals (0-9) entirely in your answer.",
        "Use no digit characters at all: write numbers as words.")}, _plan_no_digits, spell_numbers, changes_text=True),
    ConstraintType("length_constraints:number_paragraphs", {"": (
        "Split the answer into {num_paragraphs} paragraphs separated by a line with ***.",
        "Give exactly {num_paragraphs} paragraphs and put the markdown divider *** between them.",
        "Organise the reply as {num_paragraphs} paragraphs; mark each break with ***.")}, _plan_blocks,
        paragraphs_rewrite, _fin_paragraphs),
    ConstraintType("detectable_format:multiple_sections", {"": (
        "Divide the reply into {num_sections} parts, each starting with '{section_spliter} X' where X is its number.",
        "Structure the answer as {num_sections} numbered sections headed '{section_spliter} 1', '{section_spliter} 2' and so on.",
        "Use {num_sections} sections and label each one '{section_spliter}' followed by its number.")},
        _plan_sections, sections_rewrite, _fin_sections),
    ConstraintType("detectable_format:number_bullet_lists", {"": (
        "Format the reply as exactly {num_bullets} bullet points written with '* '.",
        "Answer with {num_bullets} markdown bullets (each line starting with an asterisk) and nothing else.",
        "Put the content into precisely {num_bullets} bullet points such as:\n* first point\n* second point")},
        _plan_blocks, bullets_rewrite, _fin_bullets),
    ConstraintType("detectable_format:number_highlighted_sections", {"": (
        "Emphasise at least {num_highlights} passages with markdown, like *this passage*.",
        "Mark {num_highlights} or more parts of the answer in italics using single asterisks, e.g. *key point*.",
        "Highlight no fewer than {num_highlights} sentences by wrapping them in asterisks (*like so*).")},
        _plan_highlights, highlight_rewrite),
    ConstraintType("detectable_format:title", {"": (
        "Begin with a title in double angle brackets, for example <<My Title>>.",
        "Give the reply a title wrapped like <<this>>.", "Include a title enclosed in << and >>.")},
        _plan_title, title_rewrite),
    ConstraintType("combination:repeat_prompt", {"": (
        "Before answering, copy my request above word for word (without this instruction), then respond.",
        "Start by restating the request exactly as written above (leave out these instructions), then give your answer.",
        "Echo the question verbatim first (only the question itself), and answer after it.")},
        _plan_repeat, repeat_rewrite),
    ConstraintType("train:start_phrase", {"": (
        "Begin your reply with the exact words \"{start_phrase}\"", "Open your answer with this phrase, word for word: {start_phrase}",
        "The very first words of your response must be \"{start_phrase}\"")}, _plan_start, start_rewrite),
    ConstraintType("detectable_content:postscript", {"": (
        "Close with a note that begins with {postscript_marker}", "Append a short postscript introduced by {postscript_marker}",
        "After the main answer include a short {postscript_marker} note.")}, _plan_postscript, postscript_rewrite),
    ConstraintType("startend:end_checker", {"": (
        "Finish the reply with the exact sentence \"{end_phrase}\" and write nothing after it.",
        "The last words of your answer must be: {end_phrase}",
        "End with this phrase, exactly: \"{end_phrase}\"")}, _plan_end, end_rewrite),
    ConstraintType("train:end_with_question", {"": (
        "End your reply with a question for me.", "Make the last sentence of your answer a question.",
        "Finish with a follow-up question addressed to me.")}, _plan_question, question_rewrite),
    ConstraintType("change_case:english_lowercase", {"": (
        "Write everything in lowercase letters; no capitals at all.", "Use only lowercase English letters in the reply.",
        "Do not use any uppercase letters anywhere in your answer.")}, _plan_text_edit, lambda t, kw: t.lower(),
        changes_text=True),
    ConstraintType("change_case:english_capital", {"": (
        "Write the entire response in capital letters.", "Reply in English using ALL CAPS only.",
        "Every letter of your answer must be uppercase.")}, _plan_text_edit, lambda t, kw: t.upper(),
        changes_text=True),
    ConstraintType("train:line_prefix", {"": (
        "Begin every line of text in your reply with \"{prefix}\" (blank lines may stay empty).",
        "Each non-empty line of the answer has to start with the marker \"{prefix}\".",
        "Put \"{prefix}\" in front of every line you write; leave empty lines as they are.")},
        _plan_prefix, prefix_rewrite),
    ConstraintType("startend:quotation", {"": (
        "Put the whole reply inside double quotation marks.", "Wrap your entire answer in double quotes.",
        "Enclose the complete response in a pair of double quotes.")}, _plan_always,
        lambda t, kw: '"' + t.strip() + '"'),
    ConstraintType("detectable_format:json_format", {"": (
        "Return the reply as valid JSON; a markdown code block around it is fine.",
        "Format your whole output as a JSON object.", "Give the answer in JSON format only.")},
        _plan_json, json_rewrite),
    ConstraintType("train:wrap_tag", {"": (
        "Enclose the entire reply between <{tag}> and </{tag}> tags.",
        "Put your whole answer inside an XML-style <{tag}> element.",
        "Start with the tag <{tag}> and close with </{tag}>; everything goes between them.")}, _plan_tag, tag_rewrite),
    ConstraintType("keywords:existence", {"": (
        "Make sure the reply mentions {keywords}.", "Use the word(s) {keywords} somewhere in your answer.",
        "Your response has to include {keywords}.")}, _plan_always, finalize=_fin_existence),
    ConstraintType("keywords:frequency", {
        "at least": ("Use the word \"{keyword}\" {frequency} times or more.",
                     "The word \"{keyword}\" should show up at least {frequency} times.",
                     "Mention \"{keyword}\" no fewer than {frequency} times."),
        "less than": ("Use the word \"{keyword}\" fewer than {frequency} times.",
                      "The word \"{keyword}\" may appear less than {frequency} times.",
                      "Keep \"{keyword}\" below {frequency} occurrences.")}, _plan_always, finalize=_fin_frequency),
    ConstraintType("keywords:forbidden_words", {"": (
        "Do not use the words {forbidden_words}.", "Avoid {forbidden_words} in your answer.",
        "The reply must not contain {forbidden_words}.")}, _plan_always, finalize=_fin_forbidden),
    ConstraintType("keywords:letter_frequency", {
        "at least": ("The letter '{letter}' should appear {let_frequency} times or more.",
                     "Use the letter {letter} no fewer than {let_frequency} times.",
                     "Count your letters: '{letter}' needs to occur at least {let_frequency} times."),
        "less than": ("Use the letter '{letter}' fewer than {let_frequency} times.",
                      "The letter {letter} may occur less than {let_frequency} times.",
                      "Count your letters: '{letter}' must occur under {let_frequency} times.")}, _plan_always,
        finalize=_fin_letter),
]
TYPES: dict[str, ConstraintType] = {t.iid: t for t in _TYPES}
# Pipeline position of each type: cuts, text edits, structure, highlights, title, repeat, additions, case,
# line prefixes, wraps.
ORDER: tuple[str, ...] = tuple(t.iid for t in _TYPES)

_SHAPE = {"length_constraints:number_paragraphs", "detectable_format:multiple_sections",
          "detectable_format:number_bullet_lists"}
_CASE = {"change_case:english_lowercase", "change_case:english_capital"}


def _conflict_pairs() -> set[frozenset]:
    pairs: set[frozenset] = set()

    def add(a, bs, why):  # `why` documents the pair; kept in the call for readers
        for b in bs:
            if a != b:
                pairs.add(frozenset((a, b)))

    add("change_case:english_lowercase", ["change_case:english_capital"], "one case only")
    add("length_constraints:number_words", ["length_constraints:number_sentences"], "two cuts of one answer")
    for s in _SHAPE:
        add(s, _SHAPE, "one layout of the blocks only")
        add(s, ["detectable_format:number_highlighted_sections"], "stars of bullets and rules clash with *highlights*")
    add("detectable_format:multiple_sections", _CASE, "the section word is matched case-sensitively")
    add("startend:quotation", ["detectable_format:title"], "lm-eval's INSTRUCTION_CONFLICTS pairs them")
    add("train:start_phrase", ["change_case:english_lowercase", "change_case:english_capital", "startend:quotation",
                               "train:wrap_tag"], "the phrase must open the reply as written")
    add("train:end_with_question", ["startend:end_checker", "detectable_content:postscript", "startend:quotation",
                                    "train:wrap_tag"], "something else must end the reply")
    add("train:wrap_tag", ["startend:quotation", "change_case:english_capital", "startend:end_checker"],
        "the tags open and close the reply, in lowercase")
    add("train:no_digits", ["detectable_format:multiple_sections", "detectable_format:title"],
        "section numbers; a title taken from the request may hold digits")
    add("train:line_prefix", ["startend:quotation", "train:wrap_tag", "train:start_phrase", "detectable_format:title",
                              "length_constraints:number_paragraphs", "detectable_format:multiple_sections",
                              "detectable_format:number_bullet_lists"],
        "the prefix comes first on every line: nothing else can open the reply (quotes, tag, phrase, a title that "
        "should begin it) and markers read at a line's start (the *** divider, 'SECTION n', '* ' bullets) are hidden")
    add("train:max_paragraph_sentences", ["detectable_format:number_bullet_lists"],
        "the bullets join the whole answer into a single paragraph")
    # train:no_char: its rewrite runs before the additions and _fin_no_char switches to another absent character
    # when one of them brings the planned one back; its ";" -> "," runs before punctuation:no_comma removes commas.
    # Repeating the request puts the user's own text first: it may carry commas or capitals, and it counts
    # towards lengths and keywords; keep it with the additions that cannot interfere.
    add("combination:repeat_prompt", set(TYPES) - {"detectable_format:title", "detectable_content:postscript",
                                                    "startend:end_checker", "keywords:existence"}, "repeat")
    # JSON wrapping changes the text's shape (escapes, braces): only word-presence checks survive it.
    add("detectable_format:json_format", set(TYPES) - {"keywords:existence", "keywords:forbidden_words"}, "json")
    return pairs


CONFLICTS: frozenset[frozenset] = frozenset(_conflict_pairs())


def compatible(a: str, b: str) -> bool:
    return frozenset((a, b)) not in CONFLICTS
