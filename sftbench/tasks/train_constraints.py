"""Verifiable constraint types for TRAINING only: the project's own, neither IFEval's nor IFBench's test types
(ids under "train:"), so that the benchmarks' held-out types and IFBench measure transfer, not memorised checkers.
IFBench's authors found that a model trained on a small set of verifiable constraints overfits to them and that
more diverse training constraints are what generalise (Pyatkin et al. 2025); these add diversity.  Each checker is
written here from its one-line definition; no IFBench or IFEval code or text is used.

    CHECKERS[iid](response, kwargs) -> bool          (strict: the response as given)

Types (kwargs):
- train:start_phrase {start_phrase}: the reply (leading whitespace ignored) begins with that exact phrase;
- train:end_with_question {}: the reply's last non-space character is "?";
- train:wrap_tag {tag}: the stripped reply starts with <tag> and ends with </tag>;
- train:max_sentence_words {max_words}: no sentence (NLTK punkt, as IFEval counts sentences) has more than
  max_words words (words: runs of letters, digits and apostrophes);
- train:no_digits {}: no character 0-9 anywhere;
- train:line_prefix {prefix}: every non-empty line (one with a non-space character) starts with the prefix
  ("> ", ">> " or "| "), and there is at least one such line;
- train:no_char {char}: the (non-blank) reply never contains the character ("!", ";" or ":");
- train:max_paragraph_sentences {max_sentences}: every paragraph (the stripped text split on blank lines,
  non-empty parts) has at most max_sentences sentences (NLTK punkt, as above), and there is at least one.
The tests (tests/test_augment.py, tests/test_train_constraints.py) check that none of these ids is an IFEval or
IFBench test instruction id.
"""

from __future__ import annotations

import re
from typing import Callable

PREFIX = "train:"


def _sentences(text: str) -> list[str]:
    from nltk.tokenize import PunktTokenizer

    return [text[a:b] for a, b in _punkt(PunktTokenizer).span_tokenize(text)]


def _punkt(cls, _cache={}):
    if "t" not in _cache:
        _cache["t"] = cls("english")
    return _cache["t"]


def sentence_words(text: str) -> list[int]:
    """Words per sentence of `text` (punkt sentences; a word is a run of letters, digits and apostrophes)."""
    return [len(re.findall(r"[A-Za-z0-9']+", s)) for s in _sentences(text.strip())]


def start_phrase(response: str, kw: dict) -> bool:
    return response.lstrip().startswith(kw["start_phrase"])


def end_with_question(response: str, kw: dict) -> bool:
    return response.rstrip().endswith("?")


def wrap_tag(response: str, kw: dict) -> bool:
    r = response.strip()
    return r.startswith(f"<{kw['tag']}>") and r.endswith(f"</{kw['tag']}>") and len(r) > 2 * len(kw["tag"]) + 5


def max_sentence_words(response: str, kw: dict) -> bool:
    counts = sentence_words(response)
    return bool(counts) and max(counts) <= int(kw["max_words"])


def no_digits(response: str, kw: dict) -> bool:
    return bool(response.strip()) and not re.search(r"[0-9]", response)


def line_prefix(response: str, kw: dict) -> bool:
    lines = [ln for ln in response.splitlines() if ln.strip()]
    return bool(lines) and all(ln.startswith(kw["prefix"]) for ln in lines)


def no_char(response: str, kw: dict) -> bool:
    return bool(response.strip()) and kw["char"] not in response


def paragraphs(text: str) -> list[str]:
    """The stripped text split on blank lines, each part stripped, empty ones dropped."""
    return [p.strip() for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]


def paragraph_sentences(text: str) -> list[int]:
    """Sentences per paragraph of `text` (`paragraphs`; punkt sentences)."""
    return [len(_sentences(p)) for p in paragraphs(text)]


def max_paragraph_sentences(response: str, kw: dict) -> bool:
    counts = paragraph_sentences(response)
    return bool(counts) and max(counts) <= int(kw["max_sentences"])


CHECKERS: dict[str, Callable[[str, dict], bool]] = {
    "train:start_phrase": start_phrase,
    "train:end_with_question": end_with_question,
    "train:wrap_tag": wrap_tag,
    "train:max_sentence_words": max_sentence_words,
    "train:no_digits": no_digits,
    "train:line_prefix": line_prefix,
    "train:no_char": no_char,
    "train:max_paragraph_sentences": max_paragraph_sentences,
}


def is_own(iid: str) -> bool:
    return iid in CHECKERS


def failures(constraints: list[dict], response: str) -> list[str]:
    """Ids of the own-type constraints ({"instruction_id", "kwargs"}) `response` does not satisfy."""
    return [c["instruction_id"] for c in constraints if not CHECKERS[c["instruction_id"]](response, c["kwargs"])]
