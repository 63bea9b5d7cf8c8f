#!/usr/bin/env python
"""Before/after identity check of a refactor: the same fixed inputs through two trees of this project.

    git worktree add /tmp/pre 1ef06e8              # the tree before
    python scripts/check_identity.py /tmp/pre      # this tree is "after"; CPU, about a minute

1. Training: the tiny model (sftbench.model.tiny), a fixed chat file and a fixed seed, 6 optimizer steps with a
   checkpoint at step 3, for each engine (reference; fast with --attention sdpa), run as
   `python train_hw_parallel.py ...` inside each tree.  Compared: every metrics.jsonl value that is not a
   wall-clock time (loss, grad_norm, lr, real/target tokens, epoch) for equality, and every weight tensor of
   checkpoint-3 and of the final model bit for bit.
2. Sweep + report on fixed results: a fake run and its IFEval results (tests/fixtures_results.py) are written
   once; in each tree the tree's own Sweep evaluates the run with an evaluator that copies those results in
   (no model runs), then the tree's own report writes report.md.  Compared: every file the sweep and the report
   wrote, byte for byte, after the trees' working directories are replaced by a placeholder (and, in sweep.json,
   without its clock: wall_s, updated); a differing text file's first changed lines are printed.

Prints one line per comparison and exits 0 when everything is identical, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TIMING_KEYS = ("time_s", "tokens_per_s")  # wall-clock: never identical
ENGINES = {"reference": {}, "fast": {"attention": "sdpa", "token_budget": 256}}

# Runs inside each tree (its own modules first on sys.path): the tree's Sweep over RUN with an evaluator that
# copies the fixed results in, then the tree's report.
SWEEP_DRIVER = r"""
import dataclasses, json, shutil, sys
from pathlib import Path
run, res, fixed = map(Path, sys.argv[1:4])
try:
    from sftbench.eval.sweep import Sweep
    from sftbench.analysis.report import main as report
except ImportError:  # the layout before the layers
    from ifeval.sweep import Sweep
    from analysis.report import main as report

@dataclasses.dataclass
class Cfg:  # the fixed results' settings (tests/fixtures_results.py SETTINGS)
    limit: int = 60
    max_new_tokens: int = 64
    device: str = "cpu"
    subset: str = "full"
    benchmark: str = "ifeval"

def evaluate(model_path, out_dir, cfg, **kw):
    src = fixed / Path(out_dir).name
    shutil.copytree(src, out_dir, dirs_exist_ok=True)
    return json.loads((Path(out_dir) / "summary.json").read_text())

Sweep(run, res, Cfg(), evaluate, include_base="HuggingFaceTB/SmolLM2-135M-Instruct", log=lambda *a: None).run_once()
rc = report([str(res)])
sys.exit(rc or 0)
"""


def tree_env(tree: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONHASHSEED="0")
    return env


def run_in(tree: Path, argv: list[str], log: Path) -> None:
    p = subprocess.run([sys.executable, *argv], cwd=tree, env=tree_env(tree), capture_output=True, text=True)
    log.write_text(p.stdout + p.stderr, encoding="utf-8")
    if p.returncode:
        raise SystemExit(f"check_identity: {' '.join(argv[:2])} failed in {tree} (exit {p.returncode}); see {log}\n"
                         + (p.stdout + p.stderr)[-3000:])


def train_flags(model: Path, data: Path, out: Path, engine: str) -> list[str]:
    flags = dict(model_name_or_path=model, data_path=data, output_dir=out, max_steps=6, save_steps=3,
                 per_device_train_batch_size=2, gradient_accumulation_steps=2, learning_rate=3e-3,
                 lr_scheduler_type="cosine", warmup_steps=2, weight_decay=0.01, model_max_length=96, max_rounds=-1,
                 logging_steps=1, seed=1234, data_cache_dir="none", progress=False, loss_chunk_size=32, device="cpu",
                 engine=engine, **ENGINES[engine])
    return [x for k, v in flags.items() for x in (f"--{k}", str(v))]


def compare_weights(a: Path, b: Path) -> list[str]:
    from safetensors.torch import load_file

    wa, wb = load_file(str(a)), load_file(str(b))
    diffs = [f"keys differ: {sorted(set(wa) ^ set(wb))[:4]}"] if set(wa) != set(wb) else []
    for k in sorted(set(wa) & set(wb)):
        if wa[k].dtype != wb[k].dtype or wa[k].shape != wb[k].shape or not bool((wa[k] == wb[k]).all()):
            diffs.append(f"{k}: max |diff| {float((wa[k].double() - wb[k].double()).abs().max()):.3g}")
    return diffs


def compare_metrics(a: Path, b: Path) -> list[str]:
    ra = [json.loads(l) for l in a.read_text().splitlines() if l.strip()]
    rb = [json.loads(l) for l in b.read_text().splitlines() if l.strip()]
    if len(ra) != len(rb):
        return [f"{len(ra)} rows vs {len(rb)}"]
    out = []
    for x, y in zip(ra, rb):
        for k in sorted(set(x) | set(y)):
            if k not in TIMING_KEYS and x.get(k) != y.get(k):
                out.append(f"step {x.get('step')}: {k} {x.get(k)!r} vs {y.get(k)!r}")
    return out


def check_training(pre: Path, post: Path, work: Path, model: Path, data: Path) -> bool:
    ok = True
    for engine in ENGINES:
        outs = {}
        for name, tree in (("before", pre), ("after", post)):
            out = work / name / engine
            run_in(tree, ["train_hw_parallel.py", *train_flags(model, data, out, engine)], work / f"{name}_{engine}.log")
            outs[name] = out
        b, a = outs["before"], outs["after"]
        m = compare_metrics(b / "metrics.jsonl", a / "metrics.jsonl")
        w3 = compare_weights(b / "checkpoint-3" / "model.safetensors", a / "checkpoint-3" / "model.safetensors")
        wf = compare_weights(b / "model.safetensors", a / "model.safetensors")
        losses = [json.loads(l)["loss"] for l in (a / "metrics.jsonl").read_text().splitlines() if l.strip()]
        for what, d in (("metrics.jsonl (all but times)", m), ("checkpoint-3 weights", w3), ("final weights", wf)):
            print(f"training {engine:9s} {what:30s} {'IDENTICAL' if not d else 'DIFFERENT: ' + '; '.join(d[:5])}")
            ok &= not d
        print(f"training {engine:9s} losses {losses}")
    return ok


CLOCK_KEYS = ("wall_s", "updated")  # sweep.json's record of when and how long: never identical


def _drop_clock(obj):
    if isinstance(obj, dict):
        return {k: _drop_clock(v) for k, v in obj.items() if k not in CLOCK_KEYS}
    if isinstance(obj, list):
        return [_drop_clock(v) for v in obj]
    return obj


def normalised(p: Path, roots: list[Path]) -> bytes:
    """The file's bytes with the tree's working directory replaced by <WORK> (a .json: its clock keys dropped)."""
    text = p.read_bytes()
    for r in roots:
        for form in {str(r), str(r.resolve())}:
            text = text.replace(form.encode(), b"<WORK>")
    if p.suffix == ".json":
        text = json.dumps(_drop_clock(json.loads(text)), indent=1, sort_keys=True).encode()
    return text


def check_sweep_report(pre: Path, post: Path, work: Path) -> bool:
    sys.path.insert(0, str(ROOT / "tests"))
    from fixtures_results import make_fake_sweep

    fixed_root = work / "fixed"
    fixed_run, fixed_res = make_fake_sweep(fixed_root)
    outs = {}
    for name, tree in (("before", pre), ("after", post)):
        base = work / f"sweep_{name}"
        run = base / "ckpt" / "run1"
        shutil.copytree(fixed_run, run)
        res = base / "results" / "run1"
        driver = work / "sweep_driver.py"
        driver.write_text(SWEEP_DRIVER, encoding="utf-8")
        run_in(tree, [str(driver), str(run), str(res), str(fixed_res)], work / f"sweep_{name}.log")
        outs[name] = (base, res)
    (bb, rb), (ba, ra) = outs["before"], outs["after"]
    files_b = sorted(p.relative_to(rb) for p in rb.rglob("*") if p.is_file())
    files_a = sorted(p.relative_to(ra) for p in ra.rglob("*") if p.is_file())
    ok = True
    if files_b != files_a:
        print(f"sweep+report files differ: only before {sorted(set(files_b) - set(files_a))}, "
              f"only after {sorted(set(files_a) - set(files_b))}")
        ok = False
    written = [f for f in files_a if f in set(files_b) and (f.parent == Path(".") or f.name == "sweep.csv")]
    for f in written:
        nb, na = normalised(rb / f, [bb]), normalised(ra / f, [ba])
        same = nb == na
        print(f"sweep+report {str(f):34s} {'IDENTICAL (apart from paths' + (', times)' if f.suffix == '.json' else ')') if same else 'DIFFERENT'}")
        if not same and f.suffix in (".md", ".csv", ".json", ".html"):
            import difflib

            for line in list(difflib.unified_diff(nb.decode().splitlines(), na.decode().splitlines(), "before",
                                                  "after", n=0, lineterm=""))[2:12]:
                print(f"    {line[:200]}")
        ok &= same
    if "report.md" not in {str(f) for f in written}:
        print("sweep+report: no report.md written")
        ok = False
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pre_tree", help="the tree before (e.g. a `git worktree add` of the old commit)")
    p.add_argument("--post_tree", default=str(ROOT), help="the tree after (default: this one)")
    p.add_argument("--work", default=None, help="keep the runs here (default: a temporary folder, removed)")
    a = p.parse_args(argv)
    pre, post = Path(a.pre_tree).resolve(), Path(a.post_tree).resolve()
    if not (pre / "train_hw_parallel.py").is_file():
        p.error(f"{pre}: not a tree of this project (no train_hw_parallel.py)")
    work = Path(a.work or tempfile.mkdtemp(prefix="check_identity_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        from sftbench.data.demo import make_conversations
        from sftbench.model.tiny import make_tiny_model_dir

        model = make_tiny_model_dir(work / "tiny_model")
        data = work / "chat.jsonl"
        data.write_text("".join(json.dumps(c) + "\n" for c in make_conversations(24, seed=1)), encoding="utf-8")
        ok = check_training(pre, post, work, model, data)
        ok &= check_sweep_report(pre, post, work)
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print("IDENTICAL" if ok else "DIFFERENCES FOUND")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
