"""How a training run stops early without losing anything or printing a traceback (docs/GUARANTEES.md):

- SIGINT (Ctrl-C) / SIGTERM: the current optimizer step finishes (a second signal abandons it), no new
  checkpoint is written, the last complete checkpoint is kept, the resume command is printed; exit 130 / 143.
- a non-finite loss or gradient norm: the run stops before logging or saving that step; exit 4.
- weights that are not finite are never written as a checkpoint or final model.
- a checkpoint that cannot be written (disk full, read-only, directory gone): one message; exit 5.
"""

from __future__ import annotations

import math
import os
import shlex
import signal
import sys
import threading
from pathlib import Path

import torch

from sftbench.core.errors import Interrupted, NonFiniteTraining
from sftbench.model.load import all_finite

EXIT_SIGNAL = {signal.SIGINT: 130, getattr(signal, "SIGTERM", 15): 143}
# The settings a resume command must not repeat (they are replaced by --resume_from_checkpoint latest).
_DROP = ("--resume_from_checkpoint", "--start_over")


def resume_command(extra: str = "") -> str:
    """This process's command line with --resume_from_checkpoint latest (and `extra`) in place of any earlier
    --resume_from_checkpoint / --start_over."""
    argv, keep, skip = sys.argv[1:], [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in _DROP:
            skip = True
            continue
        if a.startswith(tuple(f"{d}=" for d in _DROP)):
            continue
        keep.append(a)
    prog = sys.argv[0] if sys.argv else ""
    if os.path.basename(prog) != "train_hw_parallel.py":  # called from Python (a notebook, a test): no argv to echo
        return "the same training command plus --resume_from_checkpoint latest" + (f" {extra}" if extra else "")
    return " ".join(["python", shlex.quote(os.path.relpath(prog) if os.path.isabs(prog) else prog),
                     *map(shlex.quote, keep), "--resume_from_checkpoint", "latest"] + ([extra] if extra else []))


def last_checkpoint(out: Path) -> Path | None:
    """The newest checkpoint that can be resumed (weights + training state), or None."""
    from sftbench.train.checkpoint import list_checkpoints

    have = [p for _, p in list_checkpoints(out) if (p / "training_state" / "optimizer.safetensors").is_file()]
    return have[-1] if have else None


def resume_advice(out: Path, extra: str = "", start_over_extra: str = "") -> str:
    ck = last_checkpoint(out)
    if ck is None:
        cmd = resume_command(start_over_extra).replace("--resume_from_checkpoint latest", "--start_over True")
        cmd = cmd.replace("the same training command", "the same training command (--output_dir unchanged)")
        return f"No checkpoint was written yet; start the run over with: {cmd}"
    return f"The last complete checkpoint, {ck}, is intact; resume from it with: {resume_command(extra)}"


class StopSignals:
    """SIGINT/SIGTERM -> `requested` (finish the step, then stop); a second signal, or one that arrives outside
    the loop (`in_loop` False), raises Interrupted at once.  Handlers are restored on exit; nothing is installed
    outside the main thread (signal.signal would refuse)."""

    def __init__(self, out: Path, main_rank: bool = True):
        self.out, self.main_rank = out, main_rank
        self.requested: int | None = None
        self.in_loop = False
        self._old: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in EXIT_SIGNAL:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    def _handle(self, signum, frame) -> None:
        if self.requested is None and self.in_loop:
            self.requested = signum
            if self.main_rank:
                print(f"[train] {signal.Signals(signum).name}: stopping after this optimizer step "
                      f"({'press Ctrl-C again' if signum == signal.SIGINT else 'send it again'} to abandon the step).",
                      file=sys.stderr, flush=True)
            return
        raise self.error(signum, abandoned=self.in_loop)

    def error(self, signum: int, abandoned: bool = False, step: int | None = None) -> Interrupted:
        name = signal.Signals(signum).name
        when = f"at step {step}" if step is not None else ("during a step (abandoned)" if abandoned else "before training")
        return Interrupted(f"{name}: training stopped {when}. {resume_advice(self.out)}", EXIT_SIGNAL[signum])


def check_finite_step(run, global_step: int, loss: float, grad_norm: float) -> None:
    """NonFiniteTraining when this step's loss or gradient norm is NaN/Inf (scalars the loop syncs anyway)."""
    if math.isfinite(loss) and math.isfinite(grad_norm):
        return
    what = " and ".join(w for w, v in (("the loss", loss), ("the gradient norm", grad_norm)) if not math.isfinite(v))
    raise nonfinite_error(run, global_step, f"{what} is not finite (loss {loss}, gradient norm {grad_norm})")


def nonfinite_error(run, global_step: int, what: str) -> NonFiniteTraining:
    lr = run.cfg.learning_rate
    lower = f"--allow_changed_settings True --learning_rate {lr / 10:g}"
    return NonFiniteTraining(
        f"step {global_step}: {what}: training diverged (--learning_rate {lr:g}). Stopped; nothing of this step was "
        f"logged or saved, and no checkpoint or model with non-finite weights was written. "
        + resume_advice(run.out, extra=lower, start_over_extra=f"--learning_rate {lr / 10:g}")
        + " (a lower --learning_rate, a longer warm-up or --max_grad_norm 1.0 usually help).")


def weights_finite(model) -> bool:
    """Whether every parameter is finite: one pass over the weights, one device sync (run per checkpoint)."""
    return all_finite(model.parameters())


def check_weights_finite(run, global_step: int) -> None:
    if not weights_finite(run.model):
        raise nonfinite_error(run, global_step, "the weights after this step are not finite (an update overflowed)")
