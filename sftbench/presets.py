"""The training presets' flag lists, in one place: `sftbench train --preset NAME` and `bash scripts/sft_NAME.sh`.

A preset is a list of flag overrides of TrainConfig's defaults (everything else is the default; see
`python train_hw_parallel.py --help`).  Both launchers build the trainer's argv with `preset_argv`:

    [--output_dir OUT] [--model_name_or_path MODEL] [--data_path DATA] --precision auto PRESET... USER FLAGS...

MODEL, DATA, OUT come from the leading positional arguments (or the environment variables of those names);
OUT unset: runs/sft_<name>-<YYYYmmdd-HHMMSS>.  The user's flags come last, so they override the preset's.

    python -m sftbench.presets argv NAME [MODEL [DATA [OUT]]] [--flag value ...]   # the argv, one item a line
    python -m sftbench.presets list                                                # the names

No imports from the rest of the package: the bash launchers call this before anything heavy loads.
"""

from __future__ import annotations

import sys
import time
from typing import Mapping, Sequence

# Flags every preset starts with (the presets pick the precision from the GPU).
COMMON = ["--precision", "auto"]

PRESETS: dict[str, list[str]] = {
    # Strategy A for an 8 GB laptop GPU (RTX 4060): effective batch 64, lr 4e-5 (default), 5 epochs (default),
    # warmup 0.2, length 1024 (default), gradient checkpointing, a checkpoint every 20 steps (default).
    "4060_8gb": ["--effective_batch", "64", "--warmup_ratio", "0.2", "--gradient_checkpointing", "True",
                 "--save_total_limit", "2"],
    # Strategy B: effective batch 48, lr 6e-5, 6 epochs, length 768, max_rounds 8, weight decay 0.02.
    "4060_aggressive": ["--effective_batch", "48", "--num_train_epochs", "6", "--learning_rate", "6e-5",
                        "--warmup_ratio", "0.2", "--model_max_length", "768", "--weight_decay", "0.02",
                        "--gradient_checkpointing", "True", "--max_rounds", "8", "--save_total_limit", "2"],
    # Fallback when even strategy A runs out of memory: length 512, effective batch 32, max_rounds 4.
    "min_vram": ["--effective_batch", "32", "--warmup_ratio", "0.2", "--model_max_length", "512",
                 "--gradient_checkpointing", "True", "--max_rounds", "4", "--save_total_limit", "2",
                 "--loss_chunk_size", "256"],
}


def preset_flags(name: str) -> list[str]:
    """The preset's flags (COMMON first); ValueError naming the known presets for an unknown name."""
    if name not in PRESETS:
        raise ValueError(f"no preset named {name!r}; the presets are: {', '.join(sorted(PRESETS))}")
    return COMMON + PRESETS[name]


def preset_argv(name: str, args: Sequence[str], env: Mapping[str, str] | None = None,
                stamp: str | None = None) -> list[str]:
    """Trainer argv for preset `name`: leading positional MODEL DATA OUT (else env MODEL/DATA/OUT), the preset, then args' flags.

    stamp: the time stamp of the default OUT (runs/sft_<name>-<stamp>); now when None.
    """
    flags = preset_flags(name)
    env = {} if env is None else env
    args = list(args)
    pos = []
    while args and not args[0].startswith("--"):
        pos.append(args.pop(0))
    if len(pos) > 3:
        raise ValueError(f"preset {name}: at most three positional arguments (MODEL DATA OUT), got {len(pos)}: "
                         f"{' '.join(pos)}; give the rest as --flags")
    model = pos[0] if len(pos) > 0 else env.get("MODEL", "")
    data = pos[1] if len(pos) > 1 else env.get("DATA", "")
    out = pos[2] if len(pos) > 2 else env.get("OUT", "")
    if not out:
        out = f"runs/sft_{name}-{stamp or time.strftime('%Y%m%d-%H%M%S')}"
    argv = ["--output_dir", out]
    if model:
        argv += ["--model_name_or_path", model]
    if data:
        argv += ["--data_path", data]
    return argv + flags + args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = "python -m sftbench.presets"
    if argv[:1] == ["list"]:
        print("\n".join(sorted(PRESETS)))
        return 0
    if len(argv) >= 2 and argv[0] == "argv":
        import os

        try:
            out = preset_argv(argv[1], argv[2:], os.environ)
        except ValueError as e:
            print(f"{prog}: error: {e}", file=sys.stderr)
            return 2
        sys.stdout.write("".join(a + "\n" for a in out))
        return 0
    print(f"usage: {prog} argv NAME [MODEL [DATA [OUT]]] [--flag value ...] | {prog} list", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
