"""What the trainer does on CUDA out-of-memory: release, shrink and retry (--oom_fallback), or advise and exit 3.

    rc = run_with_oom_policy(cfg, train, prog)

Retry: the reference engine halves the micro-batch and doubles the accumulation (same window, same data
order); the fast engine halves the packed token budget (the window is packed into more micro-batches), down
to --model_max_length.  The retry resumes from the last checkpoint with optimizer state, else starts over
with the partial log moved aside.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from sftbench.core.errors import UserError, exit_with_user_error


def run_with_oom_policy(cfg, train_fn, prog: str) -> int:
    while True:
        oom = ""
        try:
            train_fn(cfg)
            return 0
        except UserError as e:  # also RunStopped: non-finite (4), disk (5), SIGINT (130) / SIGTERM (143)
            exit_with_user_error(e, prog)
        except KeyboardInterrupt:  # Ctrl-C outside the loop's own handling (sftbench/train/stop.py)
            from sftbench.train.stop import resume_advice

            print(f"{prog}: error: SIGINT: training stopped. {resume_advice(Path(cfg.output_dir))}", file=sys.stderr)
            return 130
        except torch.cuda.OutOfMemoryError as e:
            oom = (str(e).splitlines() or ["CUDA out of memory"])[0]
            # The traceback's frames hold train()'s model, optimizer and activations: drop them, or the retry
            # (and the advice's own CUDA query) would run with the failed attempt's memory still allocated.
            import traceback

            traceback.clear_frames(e.__traceback__)
        release_cuda_memory()
        if cfg.oom_fallback and shrink_for_retry(cfg):
            prepare_oom_retry(cfg, oom)
            continue
        return report_oom(cfg, oom, prog)


def release_cuda_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    if dist.is_initialized():
        dist.destroy_process_group()


def shrink_for_retry(cfg) -> bool:
    """Make the next attempt's micro-batch half as large; False when it cannot shrink any more."""
    if cfg.engine == "fast" and cfg.token_budget > 0:
        if cfg.token_budget // 2 < cfg.model_max_length:
            return False
        cfg.token_budget //= 2
        return True
    if cfg.per_device_train_batch_size <= 1:
        return False
    cfg.per_device_train_batch_size //= 2
    cfg.gradient_accumulation_steps *= 2
    return True


def prepare_oom_retry(cfg, oom: str) -> None:
    """Resume from the last checkpoint that has optimizer state, or start over with the partial log moved aside."""
    from sftbench.train.checkpoint import list_checkpoints

    out = Path(cfg.output_dir)
    have = [p for _, p in list_checkpoints(out) if (p / "training_state").is_dir()]
    if have:
        cfg.resume_from_checkpoint = "latest"
    elif out.is_dir():  # nothing to resume: move the partial log aside and start over
        for name in ("metrics.jsonl", "sft_config.json"):
            if (out / name).exists():
                os.replace(out / name, out / f"{name}.oom-{int(time.time())}")
    what = (f"packed micro-batches of {cfg.token_budget} tokens" if cfg.engine == "fast" else
            f"micro-batch {cfg.per_device_train_batch_size} x accumulation {cfg.gradient_accumulation_steps}")
    print(f"[train] out of memory ({oom[:120]}); --oom_fallback: retrying with {what}"
          + (" from the last checkpoint" if have else " from the start"), flush=True)


def oom_advice(cfg) -> str:
    if cfg.engine == "fast" and cfg.token_budget > 0:
        half = cfg.token_budget // 2
        return (f"The fast engine packed {cfg.token_budget}-token micro-batches and checkpointed the layers its memory "
                f"model chose for --vram_target_gib {cfg.vram_target_gib:g}"
                + (f" under --memory_cap_gib {cfg.memory_cap_gib:g}" if cfg.memory_cap_gib else "") + ". Try, in this order: "
                + (f"--token_budget {half} (same optimizer steps, more micro-batches); " if half >= cfg.model_max_length else "")
                + f"a lower --vram_target_gib (checkpoints more layers); --oom_fallback True (halves the token budget "
                  f"and retries by itself); --engine reference with the planner's advice (python -m sftbench.plan). "
                  f"Resume from the last checkpoint with --resume_from_checkpoint latest.")
    try:
        from sftbench.plan import oom_advice_for_config

        return oom_advice_for_config(cfg)
    except Exception:
        return ("Try: halve --per_device_train_batch_size and double --gradient_accumulation_steps (same effective "
                "batch), --gradient_checkpointing True, a shorter --model_max_length, or scripts/sft_min_vram.sh. "
                "Resume from the last checkpoint with --resume_from_checkpoint latest.")


def report_oom(cfg, oom: str, prog: str) -> int:
    """The planner's advice instead of a raw CUDA traceback; exit status 3."""
    print(f"{prog}: error: CUDA out of memory: {oom}\n{oom_advice(cfg)}", file=sys.stderr)
    return 3
