#!/usr/bin/env python
"""IFEval greedy generation: HF `generate()` vs the fast backend (sftbench/engine/fast_generate.py), side by side
in one process, under one GPU memory cap.

What it measures (GPU):
  1. HF generate(): a short probe at each --hf-batch-sizes (tokens/s; OOM noted), the best batch that fits
     the cap at full length (KV formula, shared/NOTES.md), then the real run at that batch over prompts
     sorted longest first (as lm-eval), batch by batch until --hf-time-budget-s would be exceeded.
  2. Fast backend: checkpoint 1 (plan + compile + CUDA-graph capture + generate), checkpoint 2
     (load_weights from a fresh copy + generate: the "after the first" number), the same prompt subset that
     HF finished (like-for-like ratio), variants without torch.compile / without CUDA graphs, and a timed
     decode window at full batch against its memory-traffic floor.
  3. Agreement: identical responses (token ids) fast vs HF on the prompts both generated.
  4. With --sample: the fast backend sampling --sample-n answers per prompt (--sample-temperature, --sample-top-p,
     --sample-top-k) against greedy over the same prompts repeated --sample-n times (the same sequences, slots and cap):
     tokens/s and ms per decode step of each, and their ratio (the issue's bar: sampling within 1.25x of greedy).
Prints a table last; writes bench_summary.json, fast_responses.jsonl, hf_responses.jsonl to --out-dir.

Scoring (lm-eval's checkers, CPU, no GPU needed):  --score DIR  reads those files and prints the four
IFEval accuracies of both backends on the shared prompts, and their differences.

Smoke run on a CPU:  python scripts/bench_generate.py --model tiny --device cpu --limit 12 --max-new-tokens 24
Sampling vs greedy only:  python scripts/bench_generate.py --skip-hf --variants "" --sample
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
GIB = 1024**3


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring as the epilog, and every default next to its option."""


def parse_args(argv=None):
    from sftbench.eval.config import EvalConfig
    from sftbench.core.cli import config_defaults

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=_Formatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", default="smollm2-135m-instruct-offline",
                   help="A model directory, a .gguf file (converted with sftbench.model.offline into a temporary directory), "
                        "`smollm2-135m-instruct-offline`, or `tiny` (random 2-layer Llama for smoke runs).")
    p.add_argument("--data", default=None,
                   help="IFEval jsonl (default: .bench-data/input_data.jsonl if present, else ../shared/data/ifeval/input_data.jsonl).")
    p.add_argument("--limit", type=int, default=None, help="Only the first N prompts (smoke runs).")
    p.add_argument("--max-new-tokens", type=int, default=config_defaults(EvalConfig)["max_new_tokens"],
                   help="Generation cap per answer (sftbench.eval.config.EvalConfig's default).")
    p.add_argument("--memory-cap-gib", type=float, default=8.0,
                   help="Device memory cap (NVML total, GiB) applied with sftbench.core.memory.apply_memory_cap; 0 = none.")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cuda, cpu.")
    p.add_argument("--hf-batch-sizes", default="32,64,128,192",
                   help="Comma-separated batch sizes to probe for HF generate().")
    p.add_argument("--hf-probe-tokens", type=int, default=16, help="New tokens per HF probe (forced with min_new_tokens).")
    p.add_argument("--hf-time-budget-s", type=float, default=270.0,
                   help="Stop starting new HF batches once the next one could end past this many seconds.")
    p.add_argument("--skip-hf", action="store_true", help="Only the fast backend.")
    p.add_argument("--variants", default="nocompile,nograph",
                   help="Extra fast-backend runs: nocompile (CUDA graph, eager kernels), nograph (no graph, no "
                        "compile). Empty for none.")
    p.add_argument("--deadline-s", type=float, default=470.0,
                   help="Skip the optional fast-backend variants once this many seconds have passed since start.")
    p.add_argument("--sample", action="store_true",
                   help="Also time the fast backend's sampling against greedy at the same batch (see 4. below).")
    p.add_argument("--sample-n", type=int, default=4, help="--sample: answers per prompt.")
    p.add_argument("--sample-temperature", type=float, default=0.7, help="--sample: temperature (> 0).")
    p.add_argument("--sample-top-p", type=float, default=1.0, help="--sample: nucleus share (1 = no truncation).")
    p.add_argument("--sample-top-k", type=int, default=0,
                   help="--sample: draw among the k most likely tokens only, then top-p among them (0 = no limit).")
    p.add_argument("--out-dir", default=None, help="Where to write results ($OUT if set, else ./bench-out).")
    p.add_argument("--score", default=None, metavar="DIR",
                   help="Score DIR/fast_responses.jsonl and DIR/hf_responses.jsonl with lm-eval's checkers and exit.")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------- inputs

def default_data() -> Path:
    for cand in (ROOT / ".bench-data" / "input_data.jsonl", ROOT.parent / "shared" / "data" / "ifeval" / "input_data.jsonl"):
        if cand.is_file():
            return cand
    raise SystemExit("bench_generate: no IFEval data found; pass --data PATH (Google's input_data.jsonl format).")


def make_tiny_dir(path: Path) -> Path:
    """A 2-layer Llama with lively random weights (std 0.15: varied continuations) + the tiny tokenizer."""
    import torch
    from transformers import GenerationConfig

    from sftbench.model.tiny import build_tiny_model, build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    model = build_tiny_model(len(tok), seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for prm in model.parameters():
            if prm.dim() == 2:
                prm.normal_(0, 0.15, generator=g)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=[2, 0], pad_token_id=2)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def resolve_model(spec: str, out_dir: Path) -> Path:
    from sftbench.model.offline import convert_gguf_to_hf, resolve_model_path

    if spec == "tiny":
        return make_tiny_dir(Path(tempfile.mkdtemp(prefix="bench-tiny-")))
    if spec.endswith(".gguf"):
        t = time.perf_counter()
        d = convert_gguf_to_hf(spec, Path(tempfile.mkdtemp(prefix="bench-model-")) / "hf-model")
        print(f"[bench] converted {spec} -> {d} in {time.perf_counter() - t:.1f} s", flush=True)
        return d
    return Path(resolve_model_path(spec))


# ------------------------------------------------------------------------------------------- HF baseline

def hf_memory_estimate(shape, bs: int, max_prompt: int, max_new: int, dtype_bytes: int = 2) -> int:
    """Bytes HF generate() needs at batch bs when a row runs to the cap: weights, the DynamicCache, the
    per-layer GQA expansion (repeat_kv with a padding mask) and cache growth copies, logits, slack."""
    from sftbench.engine.fast_generate import kv_bytes_per_token

    L = max_prompt + max_new
    kv = bs * L * kv_bytes_per_token(shape, dtype_bytes)
    per_layer_tmp = bs * L * shape.head_dim * dtype_bytes * 2 * (shape.num_heads + shape.num_kv_heads)
    logits = bs * shape.vocab_size * 4 * 3
    # x1.5: calibrated on an H100 run (transformers 5.17) where bs=128 with this formula's 5.76 GiB ran out of a
    # 7.49 GiB torch budget late in the batch (the DynamicCache grows by torch.cat every step: fragmentation).
    return int(1.5 * (shape.weight_numel() * dtype_bytes + kv + per_layer_tmp + logits) + 256 * 1024**2)


def is_oom(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


# ------------------------------------------------------------------------------------------- helpers

def reset_peaks(device):
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def torch_peak(device) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated(device) / GIB, 3) if device.type == "cuda" else None


class Phase:
    """Wall time + torch peak + NVML peak of one measured region."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        from sftbench.core.memory import MemoryMonitor

        reset_peaks(self.device)
        self.mon = MemoryMonitor(device_index=self.device.index or 0, interval_s=0.05).start() \
            if self.device.type == "cuda" else None
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.wall = time.perf_counter() - self.t0
        self.torch_peak_gib = torch_peak(self.device)
        self.nvml_peak_gib = None
        if self.mon is not None:
            self.mon.stop()
            pk = self.mon.peak_bytes()
            self.nvml_peak_gib = None if pk is None else round(pk / GIB, 3)


def row(name, batch, prompts, wall, tokens, torch_gib, nvml_gib, hit_cap, note=""):
    return {"name": name, "batch": batch, "prompts": prompts, "wall_s": round(wall, 3), "tokens": tokens,
            "tokens_per_s": round(tokens / wall, 1) if wall > 0 else None, "torch_peak_gib": torch_gib,
            "nvml_peak_gib": nvml_gib, "hit_cap": hit_cap, "note": note}


def fmt_table(rows: list[dict]) -> str:
    head = f"{'run':<34} {'batch':>6} {'prompts':>7} {'wall s':>8} {'gen tok':>8} {'tok/s':>9} {'torch GiB':>9} {'NVML GiB':>8} {'cap':>4}  note"
    lines = [head, "-" * len(head)]
    for r in rows:
        f = lambda v, spec: ("-" if v is None else format(v, spec[1:])).rjust(int(spec[:-1].split(".")[0]))  # noqa: E731
        lines.append(f"{r['name']:<34} {str(r['batch']):>6} {r['prompts']:>7} {f(r['wall_s'], '8.2f')} "
                     f"{r['tokens']:>8} {f(r['tokens_per_s'], '9.0f')} {f(r['torch_peak_gib'], '9.2f')} "
                     f"{f(r['nvml_peak_gib'], '8.2f')} {f(r['hit_cap'], '4d')}  {r['note']}")
    return "\n".join(lines)


def same_count(a: dict, b: dict, keys) -> tuple[int, int, float | None]:
    """(identical responses, compared, median common-prefix length among the differing ones)."""
    n_same, prefixes = 0, []
    for k in keys:
        x, y = a[k], b[k]
        if x == y:
            n_same += 1
        else:
            n = 0
            while n < min(len(x), len(y)) and x[n] == y[n]:
                n += 1
            prefixes.append(n)
    prefixes.sort()
    return n_same, len(list(keys)), (prefixes[len(prefixes) // 2] if prefixes else None)


# ------------------------------------------------------------------------------------------- main

T0 = time.perf_counter()


@dataclass
class Bench:
    """What every phase shares: the prompts, the product's generator spec, the summary being filled."""

    args: argparse.Namespace
    out_dir: Path
    device: object
    dtype_name: str
    model_dir: Path
    tok: object
    examples: list
    ids: list[list[int]]
    spec: object            # sftbench.engine.generate.GenSpec: the product's cap, stop ids, pad id
    shape: object           # LlamaShape
    cpu_model: object       # weights on the CPU, copied into the fast engine
    summary: dict
    rows: list[dict] = field(default_factory=list)

    @property
    def dtype(self):
        from sftbench.model.hf import torch_dtype

        return torch_dtype(self.dtype_name)

    @property
    def max_new(self) -> int:
        return self.spec.max_new_tokens


def setup(args) -> Bench:
    """Device, dtype, memory cap, model and prompts: the same functions sftbench/eval/run.py uses."""
    import torch

    from sftbench.tasks.data import load_jsonl
    from sftbench.engine.fast_llama import LlamaShape
    from sftbench.engine.generate import GenSpec, encode, pick_generation_dtype, render_prompts
    from sftbench.model.hf import load_tokenizer, stop_token_ids
    from sftbench.model.load import load_model
    from sftbench.core.device import pick_device
    from sftbench.core.memory import apply_memory_cap

    out_dir = Path(args.out_dir or os.environ.get("OUT") or "bench-out")
    out_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    dtype_name = pick_generation_dtype("auto", device)
    summary: dict = {"device": str(device), "max_new_tokens": args.max_new_tokens, "memory_cap_gib": args.memory_cap_gib}
    if device.type == "cuda":
        import transformers

        summary.update(gpu=torch.cuda.get_device_name(device), torch=torch.__version__,
                       transformers=transformers.__version__)
        if args.memory_cap_gib:
            msg = apply_memory_cap(args.memory_cap_gib, device)
            print(f"[bench] {msg}", flush=True)
            summary["cap"] = msg
    model_dir = resolve_model(args.model, out_dir)
    tok = load_tokenizer(str(model_dir), padding_side="left")
    data = Path(args.data) if args.data else default_data()
    examples = load_jsonl(data)[: args.limit or None]
    ids = encode(tok, render_prompts(tok, [e.prompt for e in examples], system_prompt="default"))
    m0 = load_model(str(model_dir), dtype_name, "cpu")
    spec = GenSpec(args.max_new_tokens, stop_token_ids(tok, m0.generation_config), int(tok.pad_token_id))
    print(f"[bench] {len(ids)} prompts from {data} (lengths {min(map(len, ids))}..{max(map(len, ids))}), "
          f"stop ids {spec.stop_ids}, model {model_dir}, {device}, {dtype_name}", flush=True)
    summary.update({"prompts": len(ids), "data": str(data), "stop_ids": spec.stop_ids, "model": str(args.model),
                    "prompt_tokens": sum(map(len, ids)), "max_prompt_len": max(map(len, ids))})
    return Bench(args, out_dir, device, dtype_name, model_dir, tok, examples, ids, spec, LlamaShape.from_model(m0),
                 m0, summary)


# ---------------------------------------------------------------- 1. HF generate()
def hf_probes(b: Bench, hf, order: list[int]) -> dict:
    """A short forced-length run at each --hf-batch-sizes; returns the best probe that fits at full length."""
    from sftbench.engine.fast_generate import available_memory_bytes

    args, probes = b.args, []
    avail = available_memory_bytes(b.device) if b.device.type == "cuda" else None
    hf.generate([b.ids[order[-1]]] * 2, 2)  # warm-up: CUDA/cuBLAS init out of the probes
    for bs in [int(x) for x in args.hf_batch_sizes.split(",") if x.strip()]:
        bs = min(bs, len(b.ids))
        batch = [b.ids[i] for i in order[:bs]]
        est = hf_memory_estimate(b.shape, bs, len(batch[0]), b.max_new)
        fits = avail is None or est <= avail
        try:
            with Phase(b.device) as ph:
                hf.generate(batch, args.hf_probe_tokens, min_new_tokens=args.hf_probe_tokens)
            tps = bs * args.hf_probe_tokens / ph.wall
            probes.append({"batch": bs, "wall_s": round(ph.wall, 3), "tokens_per_s": round(tps, 1),
                           "step_ms": round(1000 * ph.wall / args.hf_probe_tokens, 1), "est_full_gib": round(est / GIB, 2),
                           "fits_full_length": fits, "torch_peak_gib": ph.torch_peak_gib})
        except Exception as e:
            if not is_oom(e):
                raise
            probes.append({"batch": bs, "oom": True, "est_full_gib": round(est / GIB, 2), "fits_full_length": False})
            reset_peaks(b.device)
        print(f"[bench] HF probe {probes[-1]}", flush=True)
    ok = [p for p in probes if p.get("fits_full_length") and not p.get("oom")]
    b.summary["hf_probes"] = probes
    return max(ok, key=lambda p: p["tokens_per_s"]) if ok else min(probes, key=lambda p: p["batch"])


def hf_full_run(b: Bench, hf, order: list[int], best: dict) -> dict:
    """The real HF run at the best batch, longest prompts first, until --hf-time-budget-s; halves the batch on OOM.
    Returns {prompt index: Completion} of the prompts it finished (in the order finished)."""
    bs = best["batch"]
    pending = [order[i: i + bs] for i in range(0, len(order), bs)]
    n_batches = len(pending)
    done: dict[int, object] = {}
    batch_times, oom_retries = [], []
    with Phase(b.device) as ph:
        t0 = time.perf_counter()
        while pending:
            batch = pending[0]
            guess = max(batch_times) if batch_times else b.max_new * best.get("step_ms", 100) / 1000
            if batch_times and time.perf_counter() - t0 + guess > b.args.hf_time_budget_s:
                break
            tb = time.perf_counter()
            try:
                outs = hf.generate([b.ids[i] for i in batch])
            except Exception as e:
                if not is_oom(e) or len(batch) == 1:
                    raise
                reset_peaks(b.device)
                # Over the cap at this batch: halve it for the rest of the run (the failed try stays in
                # the wall time, as it would for a user).
                bs = max(1, len(batch) // 2)
                rest = [i for bb in pending for i in bb]
                pending = [rest[i: i + bs] for i in range(0, len(rest), bs)]
                n_batches = len(batch_times) + len(pending)
                oom_retries.append({"after_s": round(time.perf_counter() - tb, 1), "new_batch": bs})
                print(f"[bench] HF ran out of memory at batch {len(batch)}; retrying at {bs}", flush=True)
                continue
            pending.pop(0)
            batch_times.append(time.perf_counter() - tb)
            done.update(zip(batch, outs))
            print(f"[bench] HF batch {len(batch_times)}/{n_batches}: {len(batch)} prompts in {batch_times[-1]:.1f} s",
                  flush=True)
    if not done:
        raise RuntimeError("HF generate() finished no batch under the cap")
    note = "all prompts" if not pending else f"{len(batch_times)}/{n_batches} batches (time budget)"
    if oom_retries:
        note += f"; OOM at a larger batch first ({oom_retries[0]['after_s']} s lost)"
    b.rows.append(row(f"HF generate() bs={bs}", bs, len(done), ph.wall, sum(c.generated_tokens for c in done.values()),
                      ph.torch_peak_gib, ph.nvml_peak_gib, sum(c.hit_cap for c in done.values()), note))
    b.summary.update(hf_oom_retries=oom_retries, hf_batch=bs)
    b.summary["hf"] = {**b.rows[-1], "batch_times_s": [round(t, 2) for t in batch_times], "complete": not pending,
                       "projected_full_s": round(ph.wall * n_batches / max(len(batch_times), 1), 3)}
    return done


def hf_phase(b: Bench) -> dict:
    """HF generate() through the product's HFGenerator; {} when it failed (the fast rows are kept)."""
    from sftbench.engine.generate import HFGenerator
    from sftbench.model.load import load_model

    try:
        hf = HFGenerator(load_model(str(b.model_dir), b.dtype_name, b.device), b.tok, b.spec)
        order = sorted(range(len(b.ids)), key=lambda i: -len(b.ids[i]))
        best = hf_probes(b, hf, order)
        b.summary["hf_batch"] = best["batch"]
        done = hf_full_run(b, hf, order, best)
        del hf
        reset_peaks(b.device)
        return done
    except Exception as e:  # keep the fast measurements even if the baseline breaks
        if not is_oom(e):
            import traceback

            traceback.print_exc()
        print(f"[bench] HF phase failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
        b.summary["hf_error"] = f"{type(e).__name__}: {str(e)[:500]}"
        reset_peaks(b.device)
        return {}


# ---------------------------------------------------------------- 2. fast backend
def fast_run(b: Bench, name: str, gen, prompt_idx: list[int], note: str = "") -> dict:
    """One measured call of a FastBackend; its row is added; returns {prompt index: Completion}."""
    with Phase(b.device) as ph:
        res = gen.generate([b.ids[i] for i in prompt_idx])
    st = gen.engine.last_stats
    r = row(name, st["slots"], len(prompt_idx), ph.wall, st["generated_tokens"], ph.torch_peak_gib,
            ph.nvml_peak_gib, st["hit_cap"], note)
    r["stats"] = {k: v for k, v in st.items() if k != "plan"}
    b.rows.append(r)
    print(f"[bench] {name}: {r['wall_s']} s, {r['tokens_per_s']} tok/s, stats {r['stats']}", flush=True)
    return dict(zip(prompt_idx, res))


def fast_phase(b: Bench, hf_done: dict):
    """Checkpoint 1 (build), checkpoint 2 (load + generate), HF's prompts only; returns (gen, ckpt-1 and ckpt-2 answers, reloaded model)."""
    from sftbench.engine.generate import make_fast_generator
    from sftbench.model.load import load_model

    all_idx = list(range(len(b.ids)))
    with Phase(b.device) as ph_build:
        gen = make_fast_generator(b.cpu_model, b.tok, b.spec, None, b.device, b.dtype_name)
    fast1 = fast_run(b, CKPT1, gen, all_idx, f"+{ph_build.wall:.1f} s build")
    b.summary["fast_plan"] = gen.engine.plan.describe()
    print(f"[bench] plan: {b.summary['fast_plan']}", flush=True)
    t = time.perf_counter()
    m2 = load_model(str(b.model_dir), b.dtype_name, "cpu")
    load_s = time.perf_counter() - t
    with Phase(b.device) as ph_lw:
        gen.load(m2)
    fast2 = fast_run(b, CKPT2, gen, all_idx, f"+{ph_lw.wall:.2f} s load_weights, +{load_s:.1f} s from_pretrained")
    b.summary["fast_ckpt2_total_s"] = round(_row(b, CKPT2)["wall_s"] + ph_lw.wall, 3)
    if hf_done and len(hf_done) < len(b.ids):
        fast_run(b, SUBSET, gen, sorted(hf_done), "like-for-like with the HF row")
    return gen, fast1, fast2, m2


def sample_phase(b: Bench, gen) -> None:
    """Sampling vs greedy on the same number of sequences (prompts x --sample-n), the same engine and slots; each
    row's time is its decode loop (stats generate_s), set-up (plan, compile, the sampling graph's capture) apart."""
    args, n = b.args, b.args.sample_n
    ids = b.ids
    rows = {}
    for name, kw, prompts in (
            (f"fast greedy x{n}", {}, [p for p in ids for _ in range(n)]),
            (f"fast sample n={n} T={args.sample_temperature} top_p={args.sample_top_p} top_k={args.sample_top_k}",
             dict(n=n, temperature=args.sample_temperature, top_p=args.sample_top_p, top_k=args.sample_top_k,
                  seed=0), ids)):
        with Phase(b.device) as ph:  # the timed part is the decode loop (generate_s): planning, compiling
            gen.engine.generate(prompts, progress=False, **kw)  # and capturing the sampling graph are set-up
        st = gen.engine.last_stats
        r = row(name, st["slots"], len(prompts) * kw.get("n", 1), st["generate_s"], st["generated_tokens"], ph.torch_peak_gib,
                ph.nvml_peak_gib, st["hit_cap"], f"{1000 * st['generate_s'] / max(st['decode_steps'], 1):.3f} ms/step")
        r["stats"] = {k: v for k, v in st.items() if k != "plan"}
        b.rows.append(r)
        rows[name] = r
        print(f"[bench] {name}: {r['wall_s']} s, {r['tokens_per_s']} tok/s, stats {r['stats']}", flush=True)
    g, smp = rows.values()
    step = lambda r: r["stats"]["generate_s"] / max(r["stats"]["decode_steps"], 1)  # noqa: E731
    b.summary["sampling"] = {
        "greedy_tokens_per_s": g["tokens_per_s"], "sample_tokens_per_s": smp["tokens_per_s"],
        "greedy_over_sample_tokens_per_s": round(g["tokens_per_s"] / max(smp["tokens_per_s"], 1e-9), 3),
        "greedy_ms_per_step": round(1000 * step(g), 3), "sample_ms_per_step": round(1000 * step(smp), 3),
        "slots": smp["stats"]["slots"], "n": n, "temperature": args.sample_temperature, "top_p": args.sample_top_p,
        "top_k": args.sample_top_k}


def decode_window(b: Bench, eng) -> None:
    """One timed graph replay at full batch (all slots active, positions spread over the cap) vs its memory floor."""
    import torch

    B, P = eng.plan.slots, max(map(len, b.ids))
    g = torch.Generator(device="cpu").manual_seed(0)
    pos = torch.randint(P, P + b.max_new - eng.sync_every - 1, (B,), generator=g)
    eng.pos.copy_(pos)
    eng.done.fill_(False)
    eng.n_gen.fill_(1)
    eng._graph.replay()
    torch.cuda.synchronize(b.device)
    ev0, ev1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    eng.pos.copy_(pos)
    eng.n_gen.fill_(1)
    eng.done.fill_(False)
    ev0.record()
    eng._graph.replay()
    ev1.record()
    torch.cuda.synchronize(b.device)
    step_ms = ev0.elapsed_time(ev1) / eng.sync_every
    kv_read = float((pos.double() + eng.sync_every / 2).sum()) * eng.plan.kv_bytes_per_token
    bytes_step = eng.weights.nbytes() + kv_read
    floor_ms = bytes_step / 3.0e12 * 1e3  # ~3.0 TB/s device-to-device on this H100 (KINDS.md)
    b.summary["decode_window"] = {"slots": B, "mean_pos": round(float(pos.double().mean()), 1),
                                  "step_ms": round(step_ms, 3), "bytes_per_step_gb": round(bytes_step / 1e9, 3),
                                  "floor_ms_at_3TBps": round(floor_ms, 3), "num_splits": eng.num_splits}
    print(f"[bench] decode window: {b.summary['decode_window']}", flush=True)
    eng.done.fill_(True)
    eng.pos.zero_()


def triton_check(b: Bench, eng) -> None:
    """Triton attention vs the SDPA reference on real-size random data."""
    import torch

    from sftbench.engine.fast_attention import decode_attention_torch, decode_attention_triton

    s, dev = b.shape, b.device
    g = torch.Generator(device=dev).manual_seed(1)
    B, L = 64, eng.plan.slot_len
    mk = lambda *sz: torch.randn(*sz, device=dev, generator=g).to(b.dtype)  # noqa: E731
    q, kn, vn = mk(B, s.num_heads, s.head_dim), mk(B, s.num_kv_heads, s.head_dim), mk(B, s.num_kv_heads, s.head_dim)
    kc, vc = mk(B, L, s.num_kv_heads, s.head_dim), mk(B, L, s.num_kv_heads, s.head_dim)
    pos = torch.randint(0, L, (B,), device=dev, generator=g)
    ref = decode_attention_torch(q.float(), kn.float(), vn.float(), kc.float().clone(), vc.float().clone(), pos)
    got = decode_attention_triton(q, kn, vn, kc, vc, pos, eng.num_splits)
    b.summary["triton_attention_relerr"] = float((got.float() - ref).norm() / ref.norm())
    print(f"[bench] triton attention rel. error vs fp32 SDPA: {b.summary['triton_attention_relerr']:.2e}", flush=True)


def variants(b: Bench, model) -> dict:
    """The fast engine without torch.compile / without CUDA graphs (GPU only, until --deadline-s)."""
    from sftbench.engine.generate import make_fast_generator

    if b.device.type != "cuda":
        return {}
    out = {}
    all_idx = list(range(len(b.ids)))
    for v in [v.strip() for v in b.args.variants.split(",") if v.strip() and v.strip() != "none"]:
        if time.perf_counter() - T0 > b.args.deadline_s:
            print(f"[bench] skipping variant {v}: past --deadline-s", flush=True)
            continue
        kw = {"nocompile": dict(compile=False), "nograph": dict(compile=False, cuda_graph=False)}.get(v)
        if kw is None:
            print(f"[bench] unknown variant {v!r} (known: nocompile, nograph, none); skipped", flush=True)
            continue
        gv = make_fast_generator(model, b.tok, b.spec, None, b.device, b.dtype_name, **kw)
        out[v] = fast_run(b, f"fast {v} (1st call incl. setup)", gv, all_idx)
        if v == "nocompile":
            fast_run(b, f"fast {v} (2nd call)", gv, all_idx)
        del gv
        reset_peaks(b.device)
    return out


# ---------------------------------------------------------------- 3. agreement + ratios
CKPT1, CKPT2, SUBSET = "fast ckpt1 (plan+compile+graph)", "fast ckpt2 (load_weights+generate)", "fast, HF's prompts only"


def _row(b: Bench, name: str) -> dict:
    return next(r for r in b.rows if r["name"] == name)


def agreement(fast1: dict, fast2: dict, var: dict, hf_done: dict) -> dict:
    ids = lambda d: {i: c.token_ids for i, c in d.items()}  # noqa: E731
    all_idx = list(fast1)
    n_same, n, _ = same_count(ids(fast1), ids(fast2), all_idx)
    agree = {"fast_ckpt1_vs_ckpt2": {"identical": n_same, "of": n}}
    for v, res in var.items():
        n_same, n, pre = same_count(ids(fast1), ids(res), all_idx)
        agree[f"fast_vs_{v}"] = {"identical": n_same, "of": n, "median_common_prefix_of_differing": pre}
    if hf_done:
        n_same, n, pre = same_count(ids(fast1), ids(hf_done), list(hf_done))
        agree["fast_vs_hf"] = {"identical": n_same, "of": n, "median_common_prefix_of_differing": pre}
    return agree


def speedups(b: Bench, fast1: dict, hf_done: dict) -> dict:
    """HF wall / fast wall ratios, and a projection of HF over all prompts (summary["hf_projection"])."""
    ratios = {}
    ckpt2 = _row(b, CKPT2)["wall_s"]
    if hf_done:
        hf_row = b.summary["hf"]
        if any(r["name"] == SUBSET for r in b.rows):
            ratios["like_for_like_hf_subset"] = round(hf_row["wall_s"] / _row(b, SUBSET)["wall_s"], 1)
        else:
            ratios["all_prompts_vs_ckpt2"] = round(hf_row["wall_s"] / ckpt2, 1)
        ratios["hf_projected_all_vs_ckpt2"] = round(hf_row["projected_full_s"] / ckpt2, 1)
        ratios["hf_projected_all_vs_ckpt1"] = round(hf_row["projected_full_s"] / _row(b, CKPT1)["wall_s"], 1)
    # A projection, not a measurement: HF runs each batch (prompts sorted longest first) for as many steps as its
    # longest answer; take those lengths from the fast backend's answers and the step time from the HF probe.
    if b.summary.get("hf_probes"):
        order = sorted(fast1, key=lambda i: -len(b.ids[i]))
        proj = {}
        for p in b.summary["hf_probes"]:
            if p.get("oom"):
                continue
            secs = sum(max(fast1[i].generated_tokens for i in order[k: k + p["batch"]]) * p["step_ms"] / 1000
                       for k in range(0, len(order), p["batch"]))
            proj[p["batch"]] = {"projected_s": round(secs, 1), "vs_fast_ckpt2": round(secs / ckpt2, 1),
                                "fits_full_length_by_estimate": p["fits_full_length"]}
        b.summary["hf_projection"] = proj
    return ratios


# ---------------------------------------------------------------- files + table
def dump(b: Bench, name: str, done: dict) -> None:
    """{key, prompt, response, generated_tokens, hit_cap} per prompt (the Completion's fields)."""
    from sftbench.core.io import atomic_write_jsonl

    atomic_write_jsonl(b.out_dir / name, [
        {"key": b.examples[i].key, "prompt": b.examples[i].prompt, "response": done[i].text,
         "generated_tokens": done[i].generated_tokens, "hit_cap": done[i].hit_cap} for i in sorted(done)])


def print_report(b: Bench) -> None:
    s, args = b.summary, b.args
    print("\n" + "=" * 100)
    print(f"IFEval greedy generation, {len(b.ids)} prompts, max_new_tokens {b.max_new}, {s.get('gpu', b.device)}, "
          f"cap {args.memory_cap_gib} GiB, {b.dtype}")
    print(fmt_table(b.rows))
    if "hf_probes" in s:
        print("HF probes (batch: tok/s over %d forced tokens): " % args.hf_probe_tokens
              + ", ".join(f"{p['batch']}: {'OOM' if p.get('oom') else p['tokens_per_s']}"
                          f"{'' if p.get('fits_full_length') else ' (full length over cap)'}" for p in s["hf_probes"]))
    print(f"fast plan: {s['fast_plan']}")
    if "decode_window" in s:
        d = s["decode_window"]
        print(f"decode step at {d['slots']} slots, mean position {d['mean_pos']}: {d['step_ms']} ms "
              f"(memory floor {d['floor_ms_at_3TBps']} ms for {d['bytes_per_step_gb']} GB at 3 TB/s)")
    if "triton_attention_relerr" in s:
        print(f"Triton decode attention vs fp32 SDPA: rel. error {s['triton_attention_relerr']:.2e}")
    print("agreement: " + "; ".join(f"{k} {v['identical']}/{v['of']}" for k, v in s["agreement"].items()))
    print("speed-up (HF wall / fast wall): " + ", ".join(f"{k} {v}x" for k, v in s["speedup"].items()))
    if s.get("hf_projection"):
        print("HF projected (probe step time x steps its batches would run, from the fast answers' lengths): "
              + ", ".join(f"bs={bs}: {v['projected_s']} s = {v['vs_fast_ckpt2']}x fast ckpt2"
                          f"{'' if v['fits_full_length_by_estimate'] else ' (over the cap)'}"
                          for bs, v in s["hf_projection"].items()))
    if "hf_error" in s:
        print(f"HF baseline incomplete: {s['hf_error']}")
    print(f"fast checkpoint after the first: {s['fast_ckpt2_total_s']} s (load_weights + generate)")
    if "sampling" in s:
        m = s["sampling"]
        print(f"sampling (n={m['n']}, T={m['temperature']}, top_p={m['top_p']}, top_k={m.get('top_k', 0)}, "
              f"{m['slots']} slots): "
              f"{m['sample_tokens_per_s']} tok/s vs greedy {m['greedy_tokens_per_s']} "
              f"(greedy/sampling tokens/s = {m['greedy_over_sample_tokens_per_s']}; issue 22's bar: at most 1.25); "
              f"decode step {m['sample_ms_per_step']} ms vs "
              f"{m['greedy_ms_per_step']} ms")


def run(args) -> int:
    """HF generate() and the fast backend, both through sftbench.engine.generate's Generator interface, side by side."""
    from sftbench.core.io import atomic_write_json

    b = setup(args)
    hf_done = {} if args.skip_hf else hf_phase(b)
    gen, fast1, fast2, m2 = fast_phase(b, hf_done)
    if b.device.type == "cuda" and gen.engine._graph is not None:
        decode_window(b, gen.engine)
    if b.device.type == "cuda" and gen.engine.attention == "triton":
        triton_check(b, gen.engine)
    if args.sample:
        sample_phase(b, gen)
    del gen
    reset_peaks(b.device)
    var = variants(b, m2)
    b.summary["agreement"] = agreement(fast1, fast2, var, hf_done)
    b.summary["rows"] = b.rows
    b.summary["speedup"] = speedups(b, fast1, hf_done)
    dump(b, "fast_responses.jsonl", fast1)
    if hf_done:
        dump(b, "hf_responses.jsonl", hf_done)
    atomic_write_json(b.out_dir / "bench_summary.json", b.summary)
    print_report(b)
    return 0


def score(dir_: str, data: str | None) -> int:
    """Four IFEval accuracies of both backends on the prompts both answered (CPU)."""
    from sftbench.tasks.data import load_jsonl
    from sftbench.tasks.scoring import Scorer, aggregate
    from sftbench.core.io import read_jsonl

    d = Path(dir_)
    exs = {e.key: e for e in load_jsonl(Path(data) if data else default_data())}
    fast = {r["key"]: r for r in read_jsonl(d / "fast_responses.jsonl")}
    hf = {r["key"]: r for r in read_jsonl(d / "hf_responses.jsonl")} if (d / "hf_responses.jsonl").is_file() else {}
    sc = Scorer(seed=0)
    out = {}
    sets = [("fast, all prompts", fast, sorted(fast))]
    if hf:
        shared = sorted(set(hf) & set(fast))
        sets += [("fast, HF's prompts", fast, shared), ("HF, HF's prompts", hf, shared)]
    for name, resp, ks in sets:
        strict, loose = sc.score_all([exs[k] for k in ks], [resp[k]["response"] for k in ks])
        acc = aggregate(strict, loose, n_boot=200)["accuracy"]
        out[name] = {k: round(100 * v["value"], 2) for k, v in acc.items()}
        out[name]["prompts"] = len(ks)
    print(f"{'responses':<22} {'prompts':>7} {'prompt_strict':>13} {'inst_strict':>11} {'prompt_loose':>12} {'inst_loose':>10}")
    for name, a in out.items():
        print(f"{name:<22} {a['prompts']:>7} {a['prompt_strict']:>13.2f} {a['inst_strict']:>11.2f} "
              f"{a['prompt_loose']:>12.2f} {a['inst_loose']:>10.2f}")
    if hf:
        f, h = out["fast, HF's prompts"], out["HF, HF's prompts"]
        print("difference fast - HF (points): " + ", ".join(
            f"{k} {f[k] - h[k]:+.2f}" for k in ("prompt_strict", "inst_strict", "prompt_loose", "inst_loose")))
    return 0


def main(argv=None) -> int:
    from sftbench.core.errors import UserError, exit_with_user_error

    args = parse_args(argv)
    try:
        if args.score:
            return score(args.score, args.data)
        return run(args)
    except UserError as e:
        exit_with_user_error(e, "bench_generate")


if __name__ == "__main__":
    raise SystemExit(main())
