#!/usr/bin/env python
"""Multi-turn SFT: loss on the assistant's tokens only, fp32 master weights under autocast,
atomic checkpoints, exact resume, one process per GPU (DDP) when launched with accelerate/torchrun.

    python train_hw_parallel.py --help
    bash scripts/sft_4060_8gb.sh                      # the 8 GB preset ("strategy A")
    accelerate launch --num_processes 2 train_hw_parallel.py ...

The homework's entry point; the trainer lives in sftbench/train/: the loop (loop.py: train()), its steps
(setup.py), the engines (engines.py), checkpoints (checkpoint.py), the OOM policy (oom.py), the config
and its CLI (config.py).  Data -> conversation_func.py, loss -> sftbench/loss.py (loss_functions.py),
precision -> sftbench/core/device.py.
"""

from __future__ import annotations

import sys

from sftbench.loss import CausalLMLossSum  # noqa: F401  (the reference engine's loss module; tests patch it here)
from sftbench.config.train import TrainConfig, parse_train_config  # noqa: F401
from sftbench.train.loop import train
from sftbench.train.oom import run_with_oom_policy

PROG = "train_hw_parallel.py"


def main(argv: list[str] | None = None) -> int:
    return run_with_oom_policy(parse_train_config(argv, prog=PROG), train, PROG)


if __name__ == "__main__":
    sys.exit(main())
