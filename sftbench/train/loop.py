"""The training loop, on one screen.  Everything it calls is in sftbench/train/setup.py (before, around and
after each step), sftbench/train/step.py (one optimizer step: the engine's window, then clip/step/schedule; the
benchmarks call it too), sftbench/train/engines.py (one accumulation window forward/backward) and
sftbench/train/checkpoint.py (what a checkpoint holds)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from sftbench.config.train import TrainConfig
from sftbench.core.lock import DirLock
from sftbench.train.setup import (build_model_and_engine, finish, log_step, open_run_dir, restore, save_step, start,
                                  window_of)
from sftbench.train.step import train_step
from sftbench.train.stop import StopSignals, check_finite_step, nonfinite_error


def train(cfg: TrainConfig) -> dict:
    """Train; returns {"global_step", "final_loss", "output_dir", "data_stats"}.

    Every check that can fail on bad input runs in start(), before any weights load or anything is written.
    OUT is locked (sftbench/core/lock.py) from before start() to the end: a second run on it is refused.
    Ctrl-C / SIGTERM finish the current step and raise Interrupted; a NaN/Inf loss or gradient norm raises
    NonFiniteTraining before that step is logged or saved (sftbench/train/stop.py).
    """
    cfg.check()  # every setting, once, where it is defined: before OUT is locked (created) or anything loads
    main = int(os.environ.get("RANK", "0")) == 0
    lock = DirLock(cfg.output_dir, what="training run") if main else contextlib.nullcontext()
    with lock, StopSignals(Path(cfg.output_dir), main_rank=main) as signals:
        return _train(cfg, lock if main else None, signals)


def _train(cfg: TrainConfig, lock, signals: StopSignals) -> dict:
    run = start(cfg)  # device, precision, validation, tokenizer, data, the step count
    run.lock = lock
    build_model_and_engine(run)  # fp32 masters, the engine, AdamW, schedule, gradient scaler
    if run.resume:
        restore(run)  # optimizer / schedule / scaler / RNG state: exact resume
    open_run_dir(run)  # sft_config.json, metrics.jsonl, the start-up log, trackers
    d = run.d
    signals.in_loop = True
    try:
        for step in range(run.start_step, run.total_steps):
            t0 = time.time()
            # Normalise by the target tokens of the WHOLE window (all micro-batches, all ranks): the gradient
            # is then the same whatever the micro-batch / accumulation / GPU split.
            mine, n_window = window_of(run, step)
            try:
                r = train_step(run.engine, run.optimizer, run.scheduler, mine, n_window, cfg.seed + step, cfg.max_grad_norm)
            except RuntimeError as e:  # AdamW's scalar maths overflowing float (a learning rate near 1e38)
                if "without overflow" not in str(e):
                    raise
                raise nonfinite_error(run, step + 1, f"the optimizer update overflowed ({e})") from None
            grad_norm, lr = r.grad_norm, r.lr
            ce_total, real_tokens = d.sum(float(r.ce_sum)), int(d.sum(r.real_tokens))
            run.last_loss = ce_total / max(n_window, 1)
            # Two host floats: no extra device sync.  Under fp16's gradient scaler an Inf gradient is routine: the
            # scaler skips that update and lowers its scale, so only the loss is checked then.
            check_finite_step(run, step + 1, run.last_loss, 0.0 if run.scaler.is_enabled() else grad_norm)
            log_step(run, step, grad_norm, lr, real_tokens, n_window, time.time() - t0)
            save_step(run, step + 1)
            stop = signals.requested or 0
            if d.enabled:  # a signal seen by any rank stops every rank after the same step
                stop = int(d.sum(float(stop)))
            if stop and step + 1 < run.total_steps:  # (on the last step the run just finishes)
                raise signals.error(signals.requested or signal.SIGTERM, step=step + 1)
    finally:  # also on an exception (an OOM retry must not leave the sampler thread running)
        signals.in_loop = False
        if run.pbar is not None:
            run.pbar.close()
        run.monitor.stop()
    return finish(run)
