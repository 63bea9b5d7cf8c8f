"""What a training run directory holds, found one way (docs/ARCHITECTURE.md, "A training run directory").

    OUT/checkpoint-<step>/   complete checkpoints: config.json + a weights file (the trainer renames
                             .checkpoint-<step>.tmp into place only once complete; both are checked anyway)
    OUT/ (root)              the final model, when it holds config.json + weights
    OUT/metrics.jsonl        one row per logging step (step, loss, ...)
    OUT/sft_config.json      the resolved training config

Used by the sweep (sftbench/eval/sweep.py) to find what to evaluate and by the trainer's checkpoint IO
(resume, pruning) -- one definition of "a complete checkpoint".  No torch import.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterable

from sftbench.core.io import read_jsonl

CKPT_RE = re.compile(r"^checkpoint-(\d+)$")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "adapter_model.safetensors")


def checkpoint_step(name: str) -> int | None:
    """The step of a directory named checkpoint-<step>; None for any other name (.checkpoint-5.tmp too)."""
    m = CKPT_RE.match(name)
    return int(m.group(1)) if m else None


def is_model_dir(p: str | os.PathLike) -> bool:
    """config.json and a weights file: loadable with from_pretrained."""
    p = Path(p)
    return (p / "config.json").is_file() and any((p / w).is_file() for w in WEIGHT_FILES)


# what a run directory holds and a checkpoint does not: a directory named checkpoint-<step> holding one of
# these is another run (trained with --output_dir RUN/checkpoint-5), never one of RUN's checkpoints
RUN_MARKERS = ("metrics.jsonl", "config_history.jsonl", ".sftbench.lock")


def foreign_checkpoint(p: Path, step: int) -> str | None:
    """Why checkpoint-<step>/ p, though it holds a model, is not a checkpoint of the run around it (None when it
    is): it holds a run's files or checkpoint-*/ folders of its own, or its trainer_state.json has another
    global_step."""
    marks = [m for m in RUN_MARKERS if (p / m).exists()]
    if any(checkpoint_step(c.name) is not None and c.is_dir() for c in p.iterdir()):
        marks.append("checkpoint-<step>/ folders")
    if marks:
        return f"it is another run directory (it holds {', '.join(marks)})"
    gs = global_step(p)
    if gs is not None and gs != step:
        return f"its trainer_state.json says step {gs}, not {step}"
    return None


def list_checkpoints(run_dir: str | os.PathLike, *, require: Iterable[str] = ()) -> list[tuple[int, Path]]:
    """Complete checkpoint-<step>/ directories of a run, sorted by step: [(step, path)].

    Complete = config.json + a weights file, plus every file named in `require` (the trainer asks for
    "trainer_state.json"), and a checkpoint of this run (`foreign_checkpoint`: not another run directory named
    checkpoint-<step>, nor a model whose trainer_state.json has another step).  [] when run_dir does not exist.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    require = tuple(require)
    out = []
    for p in run_dir.iterdir():
        step = checkpoint_step(p.name)
        if (step is not None and p.is_dir() and is_model_dir(p) and all((p / f).is_file() for f in require)
                and foreign_checkpoint(p, step) is None):
            out.append((step, p))
    return sorted(out)


def incomplete_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path, str]]:
    """checkpoint-<step>/ directories that are not complete checkpoints of this run, sorted by step:
    [(step, path, why)] (why: what is missing, or `foreign_checkpoint`'s reason), so that whoever skips them can
    say so.  [] when run_dir does not exist."""
    run_dir = Path(run_dir)
    out = []
    for p in run_dir.iterdir() if run_dir.is_dir() else []:
        step = checkpoint_step(p.name)
        if step is None or not p.is_dir():
            continue
        if is_model_dir(p):
            why = foreign_checkpoint(p, step)
            if why is not None:
                out.append((step, p, why))
            continue
        missing = [] if (p / "config.json").is_file() else ["config.json"]
        if not any((p / w).is_file() for w in WEIGHT_FILES):
            missing.append(f"weights ({', '.join(WEIGHT_FILES[:3])}, ...)")
        out.append((step, p, "no " + " and no ".join(missing)))
    return sorted(out)


def global_step(model_dir: str | os.PathLike) -> int | None:
    """trainer_state.json's global_step; None when absent or unreadable."""
    f = Path(model_dir) / "trainer_state.json"
    if not f.is_file():
        return None
    try:
        step = json.loads(f.read_text(encoding="utf-8")).get("global_step")
    except (json.JSONDecodeError, OSError, AttributeError, ValueError):
        return None
    try:
        return int(step) if isinstance(step, (int, float)) else None
    except (ValueError, OverflowError):
        return None


def model_step(model_path: str | os.PathLike | None) -> int | None:
    """Training step of a model: from a checkpoint-<step> name, else trainer_state.json; None if unknown."""
    if not model_path:
        return None
    m = re.search(r"checkpoint-(\d+)$", str(model_path).rstrip("/"))
    if m:
        return int(m.group(1))
    return global_step(model_path)


def final_model_present(run_dir: str | os.PathLike) -> bool:
    """The run root holds the final model (written when training ends)."""
    return is_model_dir(run_dir)


def load_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """Rows of the run's metrics.jsonl ([] when absent); a half-written last line (training running) is dropped."""
    f = Path(run_dir) / "metrics.jsonl"
    if not f.is_file():
        return []
    return [r for r in read_jsonl(f, tolerate_partial_tail=True) if isinstance(r, dict)]


def last_logged_step(run_dir: str | os.PathLike) -> int | None:
    steps = [r["step"] for r in load_metrics(run_dir) if isinstance(r.get("step"), (int, float))]
    return int(max(steps)) if steps else None


def loss_at_step(metrics: list[dict], step: int) -> tuple[float | None, int | None]:
    """(loss, logged_step) of the nearest logged step <= step; (None, None) when there is none."""
    best = None
    for r in metrics:
        s, loss = r.get("step"), r.get("loss")
        if isinstance(s, (int, float)) and isinstance(loss, (int, float)) and s <= step:
            if best is None or s >= best[1]:
                best = (float(loss), int(s))
    return best if best else (None, None)
