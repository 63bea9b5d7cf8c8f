"""The trainer's speed paths side by side, each forced through the product's own command line, on one GPU.

Each row is a fresh `python train_hw_parallel.py` process (cold: the first step includes any compile) with the
8 GB preset's flags (sftbench/presets.py), `--max_steps N` and the row's own flags; a row may also hide Triton from
the process (`import triton` fails, as in PyTorch's Windows wheels).  From each run's metrics.jsonl it prints the
first step's wall time, the median real tokens/s of the steps after the second, the NVML peak, the path line the
trainer logged, and how far its per-step losses are from the reference engine's row at the same precision.

    python scripts/bench_paths.py --model M --data chat.jsonl --out /tmp/paths [--steps 8] [--rows a,b,...]

Rows: reference_bf16, reference_fp16, fast_no_triton (the fast engine with `import triton` failing), buckets_fp16,
varlen_bf16 (what --engine auto picks on an sm80+ GPU with Triton).  Prints a markdown table last and writes OUT/paths.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sftbench.presets import preset_flags  # noqa: E402

# name -> (trainer flags, hide Triton?, reference row to compare losses with)
ROWS = {
    "reference_bf16": (["--engine", "reference", "--precision", "bf16", "--per_device_train_batch_size", "8"], False, None),
    "reference_fp16": (["--engine", "reference", "--precision", "fp16", "--per_device_train_batch_size", "8"], False, None),
    "fast_no_triton": (["--engine", "fast"], True, "reference_bf16"),
    "buckets_fp16": (["--engine", "fast", "--attention", "buckets", "--precision", "fp16"], False, "reference_fp16"),
    "varlen_bf16": (["--engine", "fast", "--attention", "varlen", "--precision", "bf16"], False, "reference_bf16"),
}


def run_row(name: str, args, out: Path) -> dict:
    flags, hide_triton, _ = ROWS[name]
    run_dir = out / name
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if hide_triton:
        shim = out / "_notriton"
        shim.mkdir(parents=True, exist_ok=True)
        (shim / "sitecustomize.py").write_text("import sys\nsys.modules['triton'] = None  # as in PyTorch's Windows wheels\n")
        env["PYTHONPATH"] = os.pathsep.join([str(shim)] + [p for p in [env.get("PYTHONPATH")] if p])
    argv = [sys.executable, str(ROOT / "train_hw_parallel.py"), *preset_flags("4060_8gb"),
            "--model_name_or_path", args.model, "--data_path", args.data, "--output_dir", str(run_dir),
            "--max_steps", str(args.steps), "--save_steps", str(10 ** 6), "--progress", "False",
            "--memory_cap_gib", str(args.cap), *flags]
    t0 = time.time()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=ROOT)
    wall = time.time() - t0
    log = proc.stdout + proc.stderr
    (out / f"{name}.log").write_text(log)
    path_line = next((ln.strip() for ln in log.splitlines() if "path: " in ln), "")
    rows = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        rows = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()]
    res = {"row": name, "rc": proc.returncode, "wall_s": round(wall, 1), "path": path_line,
           "losses": [r.get("loss") for r in rows],
           "first_step_s": rows[0].get("time_s") if rows else None,
           "tokens_per_s": statistics.median([r["tokens_per_s"] for r in rows[2:]]) if len(rows) > 2 else None,
           "nvml_peak_gib": max((r.get("nvml_used_gib") or 0 for r in rows), default=None),
           "tail": "" if proc.returncode == 0 else log[-1500:]}
    print(json.dumps({k: v for k, v in res.items() if k != "tail"}), flush=True)
    if res["tail"]:
        print(res["tail"], flush=True)
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model directory (or a name the trainer resolves)")
    p.add_argument("--data", required=True, help="chat data (.jsonl)")
    p.add_argument("--out", required=True, help="where the runs, logs and paths.json go")
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per row")
    p.add_argument("--cap", type=float, default=8.0, help="--memory_cap_gib for every row")
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows, in order: " + ", ".join(ROWS))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    results = {n: run_row(n, args, out) for n in names}
    lines = ["| row | rc | path (the trainer's line) | first step s | real tokens/s (median, steps 3+) | NVML peak GiB | "
             "loss vs reference: max / mean abs diff |", "|---|---|---|---|---|---|---|"]
    for n, r in results.items():
        ref = results.get(ROWS[n][2] or "")
        diff = "-"
        if ref and r["losses"] and ref["losses"]:
            d = [abs(a - b) for a, b in zip(r["losses"], ref["losses"]) if a is not None and b is not None]
            if d:
                diff = f"{max(d):.4f} / {statistics.mean(d):.4f} (vs {ROWS[n][2]})"
        tps = f"{r['tokens_per_s']:.0f}" if r["tokens_per_s"] else "-"
        lines.append(f"| {n} | {r['rc']} | {r['path'].replace('|', '/')[:160]} | {r['first_step_s']} | {tps} | "
                     f"{r['nvml_peak_gib']} | {diff} |")
    table = "\n".join(lines)
    (out / "paths.json").write_text(json.dumps(results, indent=1))
    (out / "table.md").write_text(table + "\n")
    print(table)
    return 0 if all(r["rc"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
