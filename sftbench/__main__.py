"""One entry point: `sftbench COMMAND ...` (installed by pip) and `python -m sftbench COMMAND ...` are the same.

    sftbench train [--preset NAME [MODEL [DATA [OUT]]]] [trainer flags]   = python train_hw_parallel.py / bash scripts/sft_NAME.sh
    sftbench eval CKPT RESULTS [flags]                                      = bash ifeval/run.sh
    sftbench sweep RUN RESULTS [flags]                                      = bash scripts/sweep.sh
    sftbench report RESULTS [RESULTS2 ...] [--out DIR]                      = bash scripts/report.sh
    sftbench plan [flags]                                                   = bash scripts/plan.sh
    sftbench search GRID OUT [flags]      (GRID `default`: the shipped grid) = bash scripts/search.sh
    sftbench augment / contamination ...                                    = python -m sftbench.augment / .contamination
    sftbench demo [--out DIR] [--results DIR] [--limit N] ...               = bash scripts/demo.sh (after its set-up)

Every command calls its stage's `main(argv)` in this process: the code the bash launchers run.  `COMMAND --help`
lists that stage's flags.  Several GPUs: `accelerate launch --num_processes N -m sftbench train --preset NAME ...`.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sftbench.core.cli import HelpFormatter, add_config_arguments, config_from_namespace, setting
from sftbench.core.errors import UserError, exit_with_user_error

PROG = "sftbench"
GRIDS = Path(__file__).resolve().parent / "grids"  # the shipped search grids (package data)


def _train(argv: list[str]) -> int:
    """`train [--preset NAME [MODEL [DATA [OUT]]]] [flags]`: the preset's argv is sftbench.presets.preset_argv's, as in bash."""
    if argv[:1] == ["--preset"] or (argv and argv[0].startswith("--preset=")):
        from sftbench.presets import preset_argv

        name, rest = (argv[1] if len(argv) > 1 else "", argv[2:]) if argv[0] == "--preset" else (argv[0].split("=", 1)[1], argv[1:])
        try:
            argv = preset_argv(name, rest, os.environ)
        except ValueError as e:
            exit_with_user_error(UserError(str(e)), f"{PROG} train")
        print("sftbench train: " + " ".join(argv), flush=True)
    import train_hw_parallel

    return train_hw_parallel.main(argv)


def _eval(argv):
    from sftbench.eval.run import main

    return main(argv)


def _sweep(argv):
    from sftbench.eval.sweep import main

    return main(argv)


def _report(argv):
    os.environ.setdefault("MPLBACKEND", "Agg")
    from sftbench.analysis.report import main

    return main(argv)


def _plan(argv):
    from sftbench.plan import main

    return main(argv)


def shipped_grid(arg: str) -> str:
    """GRID as given, or the shipped grid it names: `default`, or a path ending grids/<name>.json that does not exist here."""
    if Path(arg).exists():
        return arg
    stem = Path(arg.replace("\\", "/")).name
    stem = stem[:-5] if stem.endswith(".json") else stem
    shipped = GRIDS / f"{stem}.json"
    legacy = arg.replace("\\", "/").endswith(f"grids/{stem}.json")
    return str(shipped) if shipped.is_file() and (arg == stem or legacy) else arg


def _search(argv):
    from sftbench.search import main

    argv = list(argv)
    for i, a in enumerate(argv):
        if not a.startswith("-") and (i == 0 or argv[i - 1] not in ("--only", "--alpha")):
            argv[i] = shipped_grid(a)
            break
    return main(argv)


def _augment(argv):
    from sftbench.data.augment import main

    return main(argv)


def _contamination(argv):
    from sftbench.data.contamination import main

    return main(argv)


# ------------------------------------------------------------------------------------------------ the demo
DEMO_TRAIN = ["--max_steps", "6", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
              "--learning_rate", "5e-5", "--warmup_ratio", "0.1", "--lr_scheduler_type", "cosine",
              "--model_max_length", "256", "--max_rounds", "6", "--save_steps", "2", "--logging_steps", "1",
              "--save_total_limit", "1", "--seed", "42"]


@dataclass
class DemoConfig:
    out: str = setting("", "Run directory (default: runs/demo-<YYYYmmdd-HHMMSS>).")
    results: str = setting("", "Sweep results and report directory (default: results/demo-<same time>).")
    limit: int = setting(8, "IFEval prompts per model (the first N of the 541): a smoke test, not the benchmark.")
    max_new_tokens: int = setting(64, "New tokens per answer in the sweep.")
    model: str = setting("smollm2-135m-instruct-offline", "The model to fine-tune (as --model_name_or_path).")
    data: str = setting("", "Chat data to train on (default: the trainer's default, the shipped demo set).")


def demo_argvs(cfg: DemoConfig, stamp: str) -> tuple[list[str], list[str], list[str]]:
    """(trainer argv, sweep argv, report argv) of the demo."""
    out = cfg.out or f"runs/demo-{stamp}"
    results = cfg.results or f"results/demo-{stamp}"
    train = ["--model_name_or_path", cfg.model] + (["--data_path", cfg.data] if cfg.data else []) + ["--output_dir", out]
    sweep = [out, results, "--include_base", "--limit", str(cfg.limit), "--max_new_tokens", str(cfg.max_new_tokens),
             "--batch_size", "8"]
    return train + DEMO_TRAIN, sweep, [results]


def _demo(argv):
    import argparse

    p = argparse.ArgumentParser(prog=f"{PROG} demo", formatter_class=HelpFormatter,
                                description="The whole pipeline on the shipped demo data, offline, on CPU in minutes: "
                                "6 optimizer steps (a checkpoint every 2), an IFEval sweep over the start and every "
                                "checkpoint (smoke-sized), and the report.")
    names = add_config_arguments(p, DemoConfig)
    cfg = config_from_namespace(DemoConfig, p.parse_args(argv), names)
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):  # as scripts/demo.sh: nothing downloaded
        os.environ.setdefault(k, "1")
    train, sweep, report = demo_argvs(cfg, time.strftime("%Y%m%d-%H%M%S"))
    for what, fn, args in (("train", _train, train), ("sweep", _sweep, sweep), ("report", _report, report)):
        print(f"sftbench demo: {what} " + " ".join(args), flush=True)
        if what == "sweep":
            print(f"demo: IFEval on the real prompts (Google's 541, shipped in the package), only the first {cfg.limit} "
                  f"with --max_new_tokens {cfg.max_new_tokens}: a smoke test of the pipeline, not scores to compare "
                  "(a GPU evaluates all 541)", flush=True)
        rc = fn(args)
        if rc:
            return rc
    print(f"\ndemo done: run in {train[train.index('--output_dir') + 1]}, results and report in {report[0]}/report.md "
          f"(and report.html)\ndemo: the scores are over {cfg.limit} real IFEval prompts at {cfg.max_new_tokens} new "
          "tokens: a smoke test, not the benchmark")
    return 0


COMMANDS = {
    "train": (_train, "fine-tune (train_hw_parallel.py's flags; --preset NAME [MODEL [DATA [OUT]]] = scripts/sft_NAME.sh)"),
    "eval": (_eval, "IFEval/IFBench one checkpoint (= bash ifeval/run.sh)"),
    "sweep": (_sweep, "evaluate every checkpoint of a run (= bash scripts/sweep.sh)"),
    "report": (_report, "the report of one or several sweeps (= bash scripts/report.sh)"),
    "plan": (_plan, "peak VRAM, fitting GPUs, steps, time before a run (= bash scripts/plan.sh)"),
    "search": (_search, "train, sweep and rank a grid of recipes (= bash scripts/search.sh); GRID `default` is the shipped one"),
    "augment": (_augment, "verifier-checked constraint augmentation of chat data (= python -m sftbench.augment)"),
    "contamination": (_contamination, "overlap of chat data with the evaluation prompts (= python -m sftbench.contamination)"),
    "demo": (_demo, "the whole pipeline on the demo data, on CPU in minutes (= bash scripts/demo.sh)"),
}


def usage() -> str:
    from sftbench.presets import PRESETS

    rows = "\n".join(f"  {name:<14} {text}" for name, (_, text) in COMMANDS.items())
    return (f"usage: {PROG} COMMAND [ARGS ...]   ({PROG} COMMAND --help for its flags)\n\ncommands:\n{rows}\n\n"
            f"presets (sftbench train --preset NAME): {', '.join(PRESETS)}\n")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(), end="")
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(usage(), end="", file=sys.stderr)
        print(f"{PROG}: error: unknown command {argv[0]!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    rc = COMMANDS[argv[0]][0](argv[1:])
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
