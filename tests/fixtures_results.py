"""A small, deterministic fake training run and sweep results, written from code (no committed files).

Prompt-level strict outcomes are built so the statistics are known by hand (60 prompts):

    step (name)            prompts followed   accuracy   vs best (checkpoint-20): McNemar exact p
    0   base               0..14   (15)       25.0%      only-best 15 -> p = 2 / 2**15 = 6.1e-05
    5   checkpoint         0..19   (20)       33.3%      only-best 10 -> p = 0.00195 (Holm x3: 0.00586)
    10  checkpoint         0..25   (26)       43.3%      only-best 4  -> p = 0.125   (Holm x2: 0.25)
    20  checkpoint (best)  0..29   (30)       50.0%
    30  final              0..27   (28)       46.7%      only-best 2  -> p = 0.5     (Holm: 0.5)

So the best is checkpoint-20, the defensible pick (earliest not significantly worse, Holm) is
checkpoint-10, the runner-up checkpoint-30, and best vs last: "beats ... by 3.3 points, p = 0.50".
Against the start (sftbench/analysis/verdict.py, Holm over the 4 trained checkpoints) training helped, and the pick
is checkpoint-10 too (the earliest significantly above the start and not significantly below the best).

`followed` dicts of other shapes (HURT, NO_CHANGE, NO_START below; the issue-12 presets with n=541) feed
the verdict tests (tests/test_report_verdict.py); `make_fake_ifbench` writes RESULTS/ifbench/.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

N_PROMPTS = 60
FOLLOWED = {0: 15, 5: 20, 10: 26, 20: 30, 30: 28}
CATEGORIES = ["keywords", "length_constraints", "detectable_format", "punctuation", "startend"]
SETTINGS = {"backend": "hf", "max_new_tokens": 64, "batch_size": 8, "dtype": "fp32", "device": "cpu",
            "subset": "full", "limit": N_PROMPTS, "data_path": "fake/input_data.jsonl", "data_sha256": "0" * 64,
            "system_prompt": "none", "chat_template": "model", "padding_side": "left", "seed": 0}


# Verdict fixtures (60 prompts, prompts 0..k-1 followed, so a checkpoint's discordance with the start is
# |k - k_start| prompts, all one way).
HURT = {0: 30, 5: 29, 10: 24, 20: 18, 30: 14}       # the start is best; the final is significantly below it
NO_CHANGE = {0: 20, 5: 21, 10: 22, 20: 21, 30: 19}  # within 2 prompts of the start everywhere
NO_START = {5: 20, 10: 26, 20: 30, 30: 28}          # FOLLOWED without step 0 (no --include_base)
# Issue 12, preset A: prompt-level strict 20.3 at the start, then 17.7 .. 14.2 (final), over 541 prompts.
ISSUE_PRESET_A = {0: 110, 50: 96, 100: 95, 150: 94, 200: 85, 250: 83, 300: 77}


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def _write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def fake_model_dir(path: Path, step: int | None = None) -> Path:
    """A directory that *looks* complete to discovery (config.json + weights file); not loadable."""
    path.mkdir(parents=True, exist_ok=True)
    _write_json(path / "config.json", {"model_type": "llama"})
    (path / "model.safetensors").write_bytes(b"\0" * 16)
    if step is not None:
        _write_json(path / "trainer_state.json", {"global_step": step, "epoch": step / 30})
    return path


def make_fake_run(run_dir: Path, steps=(5, 10, 20, 30), final_step: int | None = 30, gpu: bool = True,
                  base: str = "HuggingFaceTB/SmolLM2-135M-Instruct", extra: dict | None = None) -> Path:
    """A training run directory: metrics.jsonl (loss 2.0 - 0.01*step, steps 1..max), sft_config.json,
    memory_samples.jsonl (gpu only), checkpoint-<step>/ dirs and (final_step) the final model in the root."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    last = max([*steps, final_step or 0])
    _write_jsonl(run_dir / "metrics.jsonl", [
        {"step": s, "epoch": s / last, "loss": round(2.0 - 0.01 * s, 4), "lr": 2e-5, "grad_norm": 1.0,
         "tokens_per_s": 1000.0, "real_tokens": 1000 * s, "torch_peak_allocated_gib": 2.0 if gpu else None,
         "nvml_used_gib": 3.2 if gpu else None, "time_s": 2.0 * s} for s in range(1, last + 1)])
    _write_json(run_dir / "sft_config.json", {"model_name_or_path": base, "learning_rate": 2e-5,
                                              "num_train_epochs": 3, "per_device_train_batch_size": 8,
                                              **(extra or {})})
    if gpu:
        _write_jsonl(run_dir / "memory_samples.jsonl",
                     [{"t": 0.5 * i, "nvml_used_gib": round(3.0 + 0.2 * math.sin(i / 5), 3)} for i in range(120)])
    for s in steps:
        fake_model_dir(run_dir / f"checkpoint-{s}", s)
    if final_step is not None:
        fake_model_dir(run_dir, final_step)
    return run_dir


def outcomes_for(step: int, n: int = N_PROMPTS, followed: dict | None = None):
    """Per prompt: (key, instruction ids, strict list, loose list) for a fake checkpoint at `step`."""
    k = (followed or FOLLOWED)[step]
    rows = []
    for i in range(n):
        ids = [f"{CATEGORIES[(i + j) % len(CATEGORIES)]}:rule{j}" for j in range(1 + i % 3)]
        ok = i < k
        # a failed prompt misses its last instruction; its first one (of several) passes on alternate steps
        strict = [True] * len(ids) if ok else [j == 0 and j < len(ids) - 1 and (i + step) % 2 == 0 for j in range(len(ids))]
        loose = [True] * len(ids) if (ok or i % 7 == 0) else strict
        rows.append((1000 + i, ids, strict, loose))
    return rows


def _acc(x, n):
    v = x / n
    h = 1.96 * math.sqrt(max(v * (1 - v), 1e-12) / n)
    return {"value": v, "ci95": [max(0.0, v - h), min(1.0, v + h)]}


def write_fake_result(out: Path, step: int, model_path: str, gpu: bool = True, settings: dict | None = None,
                      settings_hash: str = "fakehash", followed: dict | None = None, n: int = N_PROMPTS) -> dict:
    """One IFEval result directory as sftbench/eval/run.py writes it (responses, eval results, summary last)."""
    out = Path(out)
    rows = outcomes_for(step, n=n, followed=followed)
    strict_rows, loose_rows, resp = [], [], []
    for key, ids, st, lo in rows:
        prompt = f"Prompt {key}: follow {len(ids)} instruction(s)."
        resp.append({"key": key, "prompt": prompt, "prompt_text": prompt, "response": f"answer {step}",
                     "generated_tokens": 4, "hit_cap": False})
        for dst, fl in ((strict_rows, st), (loose_rows, lo)):
            dst.append({"follow_all_instructions": all(fl), "follow_instruction_list": fl,
                        "instruction_id_list": ids, "prompt": prompt, "response": f"answer {step}", "key": key})
    _write_jsonl(out / "responses.jsonl", resp)
    _write_jsonl(out / "eval_results_strict.jsonl", strict_rows)
    _write_jsonl(out / "eval_results_loose.jsonl", loose_rows)
    if gpu:
        _write_jsonl(out / "memory_samples.jsonl",
                     [{"t": 0.25 * i, "nvml_used_gib": round(1.5 + 0.01 * i + 0.1 * (step / 30), 3)} for i in range(40)])
    n_inst = sum(len(r[1]) for r in rows)

    def cat(idx):
        agg: dict[str, list[int]] = {}
        for _, ids, *fls in rows:
            for iid, f in zip(ids, fls[idx]):
                agg.setdefault(iid.split(":")[0], []).append(int(f))
        return {c: sum(v) / len(v) for c, v in sorted(agg.items())}

    summary = {
        "complete": True, "model_path": model_path, "step": step, "settings": dict(settings or SETTINGS),
        "settings_hash": settings_hash,
        "accuracy": {
            "prompt_strict": _acc(sum(all(r[2]) for r in rows), len(rows)),
            "inst_strict": _acc(sum(sum(r[2]) for r in rows), n_inst),
            "prompt_loose": _acc(sum(all(r[3]) for r in rows), len(rows)),
            "inst_loose": _acc(sum(sum(r[3]) for r in rows), n_inst)},
        "per_category": {"strict": cat(0), "loose": cat(1)},
        "counts": {"prompts": len(rows), "instructions": n_inst, "hit_cap": 0},
        "generation": {"wall_s": 1.0, "generated_tokens": 4 * len(rows), "tokens_per_s": 240.0, "hit_cap_fraction": 0.0},
        "memory": ({"torch_peak_allocated_gib": 1.2, "torch_peak_reserved_gib": 1.4, "nvml_peak_gib": 1.9 + step / 300,
                    "nvml_mean_gib": 1.7, "gpu_name": "Fake GPU", "gpu_total_gib": 8.0} if gpu else
                   {"torch_peak_allocated_gib": None, "torch_peak_reserved_gib": None, "nvml_peak_gib": None,
                    "nvml_mean_gib": None, "gpu_name": None, "gpu_total_gib": None}),
        "git_commit": "fake", "created": "2026-11-24T16:00:00Z", "wall_s": 1.5,
    }
    _write_json(out / "summary.json", summary)
    return summary


def make_fake_sweep(root: Path, name: str = "run1", gpu: bool = True, followed: dict | None = None,
                    extra_config: dict | None = None, n: int = N_PROMPTS) -> tuple[Path, Path]:
    """A fake run (root/ckpt/<name>) and its complete sweep results (root/results/<name>), sweep.csv included.
    Returns (run_dir, results_dir).  n: prompts per checkpoint."""
    from sftbench.eval.results import write_sweep_csv

    root = Path(root)
    steps = sorted(followed or FOLLOWED)
    trained = tuple(s for s in steps if s > 0)
    run_dir = make_fake_run(root / "ckpt" / name, steps=trained, final_step=max(trained), gpu=gpu, extra=extra_config)
    results = root / "results" / name
    entries = {}
    settings = {**SETTINGS, "limit": n}
    for step in steps:
        kind = "base" if step == 0 else "checkpoint"
        path = "HuggingFaceTB/SmolLM2-135M-Instruct" if step == 0 else str((run_dir / f"checkpoint-{step}").resolve())
        write_fake_result(results / f"checkpoint-{step}", step, path, gpu=gpu, followed=followed, n=n,
                          settings=settings)
        entries[f"checkpoint-{step}"] = {"step": step, "kind": kind, "model_path": path,
                                         "settings_hash": "fakehash", "eval_config_hash": "x"}
    state = {"run_dir": str(run_dir.resolve()),
             "include_base": "HuggingFaceTB/SmolLM2-135M-Instruct" if 0 in steps else None,
             "eval_config": {"limit": n, "max_new_tokens": 64, "device": "cpu", "subset": "full"},
             "eval_config_hash": "x", "entries": entries}
    _write_json(results / "sweep.json", state)
    write_sweep_csv(results, run_dir, state)
    return run_dir, results


def make_fake_ifbench(results: Path, run_dir: Path | None = None, followed: dict | None = None,
                      n: int = N_PROMPTS) -> Path:
    """RESULTS/ifbench/ as the sweep writes IFBench results (i12 layout contract): checkpoint-<step>/ result
    dirs whose summary.json settings say "benchmark": "ifbench", and RESULTS/ifbench/sweep.csv (no sweep.json).
    Returns RESULTS/ifbench."""
    from sftbench.eval.results import write_sweep_csv

    ifb = Path(results) / "ifbench"
    settings = {**SETTINGS, "limit": n, "benchmark": "ifbench", "data_path": "fake/ifbench_test.jsonl"}
    for step in sorted(followed or FOLLOWED):
        path = ("HuggingFaceTB/SmolLM2-135M-Instruct" if step == 0 or run_dir is None
                else str((Path(run_dir) / f"checkpoint-{step}").resolve()))
        write_fake_result(ifb / f"checkpoint-{step}", step, path, gpu=False, settings=settings, followed=followed, n=n)
    write_sweep_csv(ifb, run_dir)
    return ifb
