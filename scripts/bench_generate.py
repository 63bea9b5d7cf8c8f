#!/usr/bin/env python
"""IFEval greedy generation: HF `generate()` vs the fast backend (ifeval/fast_generate.py), side by side
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
Prints a table last; writes bench_summary.json, fast_responses.jsonl, hf_responses.jsonl to --out-dir.

Scoring (lm-eval's checkers, CPU, no GPU needed):  --score DIR  reads those files and prints the four
IFEval accuracies of both backends on the shared prompts, and their differences.

Smoke run on a CPU:  python scripts/bench_generate.py --model tiny --device cpu --limit 12 --max-new-tokens 24
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
GIB = 1024**3


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", default="smollm2-135m-instruct-offline",
                   help="A model directory, a .gguf file (converted with sftbench.models into a temporary directory), "
                        "`smollm2-135m-instruct-offline`, or `tiny` (random 2-layer Llama for smoke runs).")
    p.add_argument("--data", default=None,
                   help="IFEval jsonl (default: .bench-data/input_data.jsonl if present, else ../shared/data/ifeval/input_data.jsonl).")
    p.add_argument("--limit", type=int, default=None, help="Only the first N prompts (smoke runs).")
    p.add_argument("--max-new-tokens", type=int, default=1280, help="Generation cap per answer (lm-eval: 1280).")
    p.add_argument("--memory-cap-gib", type=float, default=8.0,
                   help="Device memory cap (NVML total, GiB) applied with sftbench.memory.apply_memory_cap; 0 = none.")
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

    from sftbench.tiny import build_tiny_model, build_tiny_tokenizer

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
    from sftbench.models import convert_gguf_to_hf, resolve_model_path

    if spec == "tiny":
        return make_tiny_dir(Path(tempfile.mkdtemp(prefix="bench-tiny-")))
    if spec.endswith(".gguf"):
        t = time.perf_counter()
        d = convert_gguf_to_hf(spec, Path(tempfile.mkdtemp(prefix="bench-model-")) / "hf-model")
        print(f"[bench] converted {spec} -> {d} in {time.perf_counter() - t:.1f} s", flush=True)
        return d
    return Path(resolve_model_path(spec))


def load_model(model_dir: Path, dtype, device="cpu"):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()


# ------------------------------------------------------------------------------------------- HF baseline

def cut_at_stop(toks: list[int], stop: set[int], max_new: int) -> tuple[list[int], bool]:
    """(generated ids up to and including the first stop token, hit_cap)."""
    for i, t in enumerate(toks):
        if t in stop:
            return toks[: i + 1], False
    toks = toks[:max_new]
    return toks, len(toks) >= max_new


def hf_generate(model, batch: list[list[int]], max_new: int, stop_ids: list[int], pad_id: int, min_new: int | None = None):
    import torch
    from transformers import GenerationConfig

    dev = next(model.parameters()).device
    width = max(len(p) for p in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, p in enumerate(batch):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    gc_ = GenerationConfig(max_new_tokens=max_new, min_new_tokens=min_new, do_sample=False, num_beams=1,
                           eos_token_id=list(stop_ids), pad_token_id=pad_id)
    with torch.inference_mode():
        out = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), generation_config=gc_)
    return out[:, width:].tolist()


def hf_memory_estimate(shape, bs: int, max_prompt: int, max_new: int, dtype_bytes: int = 2) -> int:
    """Bytes HF generate() needs at batch bs when a row runs to the cap: weights, the DynamicCache, the
    per-layer GQA expansion (repeat_kv with a padding mask) and cache growth copies, logits, slack."""
    from ifeval.fast_generate import kv_bytes_per_token

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
        from sftbench.memory import MemoryMonitor

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


def run(args) -> int:
    import torch

    from ifeval.data import load_jsonl
    from ifeval.fast_generate import FastGenerator
    from ifeval.fast_llama import LlamaShape
    from ifeval.generate import encode, load_tokenizer, render_prompts, stop_token_ids
    from sftbench.io import atomic_write_json, atomic_write_jsonl
    from sftbench.memory import apply_memory_cap

    out_dir = Path(args.out_dir or os.environ.get("OUT") or "bench-out")
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if (args.device == "auto" and torch.cuda.is_available()) else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    summary: dict = {"device": str(device), "max_new_tokens": args.max_new_tokens, "memory_cap_gib": args.memory_cap_gib}
    if device.type == "cuda":
        summary["gpu"] = torch.cuda.get_device_name(device)
        summary["torch"] = torch.__version__
        import transformers

        summary["transformers"] = transformers.__version__
        if args.memory_cap_gib:
            msg = apply_memory_cap(args.memory_cap_gib, device)
            print(f"[bench] {msg}", flush=True)
            summary["cap"] = msg

    model_dir = resolve_model(args.model, out_dir)
    tok = load_tokenizer(str(model_dir))
    data = Path(args.data) if args.data else default_data()
    examples = load_jsonl(data)
    if args.limit:
        examples = examples[: args.limit]
    texts = render_prompts(tok, [e.prompt for e in examples], system_prompt="default")
    ids = encode(tok, texts)
    keys = [e.key for e in examples]
    m0 = load_model(model_dir, dtype)
    stop = stop_token_ids(tok, m0.generation_config)
    pad = tok.pad_token_id
    shape = LlamaShape.from_model(m0)
    max_new = args.max_new_tokens
    print(f"[bench] {len(ids)} prompts from {data} (lengths {min(map(len, ids))}..{max(map(len, ids))}), "
          f"stop ids {stop}, model {model_dir}, {device}, {dtype}", flush=True)
    summary.update({"prompts": len(ids), "data": str(data), "stop_ids": stop, "model": str(args.model),
                    "prompt_tokens": sum(map(len, ids)), "max_prompt_len": max(map(len, ids))})
    rows: list[dict] = []
    hf_tokens: dict[int, list[int]] = {}
    hf_order: list[int] = []

    # ---------------------------------------------------------------- 1. HF generate()
    if not args.skip_hf:
        try:
            hf_model = load_model(model_dir, dtype, device)
            order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
            probes = []
            from ifeval.fast_generate import available_memory_bytes

            avail = available_memory_bytes(device) if device.type == "cuda" else None
            hf_generate(hf_model, [ids[order[-1]]] * 2, 2, stop, pad)  # warm-up: CUDA/cuBLAS init out of the probes
            for bs in [int(b) for b in args.hf_batch_sizes.split(",") if b.strip()]:
                bs = min(bs, len(ids))
                batch = [ids[i] for i in order[:bs]]
                est = hf_memory_estimate(shape, bs, len(batch[0]), max_new)
                fits = avail is None or est <= avail
                try:
                    with Phase(device) as ph:
                        hf_generate(hf_model, batch, args.hf_probe_tokens, stop, pad, min_new=args.hf_probe_tokens)
                    tps = bs * args.hf_probe_tokens / ph.wall
                    probes.append({"batch": bs, "wall_s": round(ph.wall, 3), "tokens_per_s": round(tps, 1),
                                   "step_ms": round(1000 * ph.wall / args.hf_probe_tokens, 1), "est_full_gib": round(est / GIB, 2),
                                   "fits_full_length": fits, "torch_peak_gib": ph.torch_peak_gib})
                except Exception as e:
                    if not is_oom(e):
                        raise
                    probes.append({"batch": bs, "oom": True, "est_full_gib": round(est / GIB, 2), "fits_full_length": False})
                    reset_peaks(device)
                print(f"[bench] HF probe {probes[-1]}", flush=True)
            ok = [p for p in probes if p.get("fits_full_length") and not p.get("oom")]
            best = max(ok, key=lambda p: p["tokens_per_s"]) if ok else min(probes, key=lambda p: p["batch"])
            bs = best["batch"]
            summary["hf_probes"] = probes
            summary["hf_batch"] = bs
            pending = [order[i: i + bs] for i in range(0, len(order), bs)]
            n_batches = len(pending)
            done_batches, batch_times, oom_retries = 0, [], []
            with Phase(device) as ph:
                t0 = time.perf_counter()
                while pending:
                    b = pending[0]
                    elapsed = time.perf_counter() - t0
                    guess = max(batch_times) if batch_times else max_new * best.get("step_ms", 100) / 1000
                    if done_batches and elapsed + guess > args.hf_time_budget_s:
                        break
                    tb = time.perf_counter()
                    try:
                        outs = hf_generate(hf_model, [ids[i] for i in b], max_new, stop, pad)
                    except Exception as e:
                        if not is_oom(e) or len(b) == 1:
                            raise
                        reset_peaks(device)
                        # Over the cap at this batch: halve it for the rest of the run (the failed try stays in
                        # the wall time, as it would for a user).
                        bs = max(1, len(b) // 2)
                        rest = [i for bb in pending for i in bb]
                        pending = [rest[i: i + bs] for i in range(0, len(rest), bs)]
                        n_batches = done_batches + len(pending)
                        oom_retries.append({"after_s": round(time.perf_counter() - tb, 1), "new_batch": bs})
                        print(f"[bench] HF ran out of memory at batch {len(b)}; retrying at {bs}", flush=True)
                        continue
                    pending.pop(0)
                    batch_times.append(time.perf_counter() - tb)
                    for i, o in zip(b, outs):
                        hf_tokens[i] = cut_at_stop(o, set(stop), max_new)[0]
                        hf_order.append(i)
                    done_batches += 1
                    print(f"[bench] HF batch {done_batches}/{n_batches}: {len(b)} prompts in {batch_times[-1]:.1f} s",
                          flush=True)
            summary["hf_oom_retries"] = oom_retries
            summary["hf_batch"] = bs
            if not hf_order:
                raise RuntimeError("HF generate() finished no batch under the cap")
            hf_gen = sum(len(hf_tokens[i]) for i in hf_order)
            hf_cap = sum(1 for i in hf_order if len(hf_tokens[i]) >= max_new and hf_tokens[i][-1] not in stop)
            full = not pending
            note = "all prompts" if full else f"{done_batches}/{n_batches} batches (time budget)"
            if oom_retries:
                note += f"; OOM at a larger batch first ({oom_retries[0]['after_s']} s lost)"
            rows.append(row(f"HF generate() bs={bs}", bs, len(hf_order), ph.wall, hf_gen, ph.torch_peak_gib,
                            ph.nvml_peak_gib, hf_cap, note))
            summary["hf"] = {**rows[-1], "batch_times_s": [round(t, 2) for t in batch_times], "complete": full,
                             "projected_full_s": round(ph.wall * n_batches / max(done_batches, 1), 3)}
            del hf_model
            reset_peaks(device)
        except Exception as e:  # keep the fast measurements even if the baseline breaks
            if not is_oom(e):
                import traceback

                traceback.print_exc()
            print(f"[bench] HF phase failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
            summary["hf_error"] = f"{type(e).__name__}: {str(e)[:500]}"
            hf_model = None
            reset_peaks(device)

    # ---------------------------------------------------------------- 2. fast backend
    fast_rows = {}

    def fast_run(name, gen, prompt_idx, note=""):
        with Phase(device) as ph:
            res = gen.generate([ids[i] for i in prompt_idx], progress=False)
        st = gen.last_stats
        r = row(name, st["slots"], len(prompt_idx), ph.wall, st["generated_tokens"], ph.torch_peak_gib,
                ph.nvml_peak_gib, st["hit_cap"], note)
        r["stats"] = {k: v for k, v in st.items() if k != "plan"}
        rows.append(r)
        fast_rows[name] = r
        print(f"[bench] {name}: {r['wall_s']} s, {r['tokens_per_s']} tok/s, stats {r['stats']}", flush=True)
        return {i: x["token_ids"] for i, x in zip(prompt_idx, res)}

    all_idx = list(range(len(ids)))
    with Phase(device) as ph_build:
        gen = FastGenerator(m0, tok, max_new_tokens=max_new, stop_token_ids=stop, device=device, dtype=dtype)
    fast1 = fast_run("fast ckpt1 (plan+compile+graph)", gen, all_idx, f"+{ph_build.wall:.1f} s build")
    summary["fast_plan"] = gen.plan.describe()
    print(f"[bench] plan: {summary['fast_plan']}", flush=True)
    t = time.perf_counter()
    m2 = load_model(model_dir, dtype)
    load_s = time.perf_counter() - t
    with Phase(device) as ph_lw:
        gen.load_weights(m2)
    fast2 = fast_run("fast ckpt2 (load_weights+generate)", gen, all_idx,
                     f"+{ph_lw.wall:.2f} s load_weights, +{load_s:.1f} s from_pretrained")
    summary["fast_ckpt2_total_s"] = round(fast_rows["fast ckpt2 (load_weights+generate)"]["wall_s"] + ph_lw.wall, 3)
    fast_sub = None
    if hf_order and "hf" in summary and len(hf_order) < len(ids):
        fast_sub = fast_run("fast, HF's prompts only", gen, sorted(hf_order), "like-for-like with the HF row")

    # decode window at full batch vs its memory floor (all slots active, positions spread over the cap)
    if device.type == "cuda" and gen._graph is not None:
        B, P = gen.plan.slots, max(map(len, ids))
        g = torch.Generator(device="cpu").manual_seed(0)
        pos = torch.randint(P, P + max_new - gen.sync_every - 1, (B,), generator=g)
        gen.pos.copy_(pos)
        gen.done.fill_(False)
        gen.n_gen.fill_(1)
        gen._graph.replay()
        torch.cuda.synchronize(device)
        ev0, ev1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        gen.pos.copy_(pos)
        gen.n_gen.fill_(1)
        gen.done.fill_(False)
        ev0.record()
        gen._graph.replay()
        ev1.record()
        torch.cuda.synchronize(device)
        step_ms = ev0.elapsed_time(ev1) / gen.sync_every
        kv_read = float((pos.double() + gen.sync_every / 2).sum()) * gen.plan.kv_bytes_per_token
        bytes_step = gen.weights.nbytes() + kv_read
        floor_ms = bytes_step / 3.0e12 * 1e3  # ~3.0 TB/s device-to-device on this H100 (KINDS.md)
        summary["decode_window"] = {"slots": B, "mean_pos": round(float(pos.double().mean()), 1), "step_ms": round(step_ms, 3),
                                    "bytes_per_step_gb": round(bytes_step / 1e9, 3), "floor_ms_at_3TBps": round(floor_ms, 3),
                                    "num_splits": gen.num_splits}
        print(f"[bench] decode window: {summary['decode_window']}", flush=True)
        gen.done.fill_(True)
        gen.pos.zero_()

    # Triton attention vs the SDPA reference on real-size random data
    if device.type == "cuda" and gen.attention == "triton":
        from ifeval.fast_attention import decode_attention_torch, decode_attention_triton

        g = torch.Generator(device=device).manual_seed(1)
        B, L = 64, gen.plan.slot_len
        mk = lambda *s: torch.randn(*s, device=device, generator=g).to(dtype)  # noqa: E731
        q, kn, vn = mk(B, shape.num_heads, shape.head_dim), mk(B, shape.num_kv_heads, shape.head_dim), mk(B, shape.num_kv_heads, shape.head_dim)
        kc, vc = mk(B, L, shape.num_kv_heads, shape.head_dim), mk(B, L, shape.num_kv_heads, shape.head_dim)
        pos = torch.randint(0, L, (B,), device=device, generator=g)
        ref = decode_attention_torch(q.float(), kn.float(), vn.float(), kc.float().clone(), vc.float().clone(), pos)
        got = decode_attention_triton(q, kn, vn, kc, vc, pos, gen.num_splits)
        summary["triton_attention_relerr"] = float((got.float() - ref).norm() / ref.norm())
        print(f"[bench] triton attention rel. error vs fp32 SDPA: {summary['triton_attention_relerr']:.2e}", flush=True)

    del gen
    reset_peaks(device)
    variants = [v.strip() for v in args.variants.split(",") if v.strip() and v.strip() != "none"] if device.type == "cuda" else []
    var_tokens = {}
    for v in variants:
        if time.perf_counter() - T0 > args.deadline_s:
            print(f"[bench] skipping variant {v}: past --deadline-s", flush=True)
            continue
        kw = {"nocompile": dict(compile=False), "nograph": dict(compile=False, cuda_graph=False)}.get(v)
        if kw is None:
            print(f"[bench] unknown variant {v!r} (known: nocompile, nograph, none); skipped", flush=True)
            continue
        gv = FastGenerator(m2, tok, max_new_tokens=max_new, stop_token_ids=stop, device=device, dtype=dtype, **kw)
        var_tokens[v] = fast_run(f"fast {v} (1st call incl. setup)", gv, all_idx)
        if v == "nocompile":
            fast_run(f"fast {v} (2nd call)", gv, all_idx)
        del gv
        reset_peaks(device)

    # ---------------------------------------------------------------- 3. agreement + ratios
    agree = {}
    n_same, n, pre = same_count(fast1, fast2, all_idx)
    agree["fast_ckpt1_vs_ckpt2"] = {"identical": n_same, "of": n}
    for v, toks in var_tokens.items():
        n_same, n, pre = same_count(fast1, toks, all_idx)
        agree[f"fast_vs_{v}"] = {"identical": n_same, "of": n, "median_common_prefix_of_differing": pre}
    if hf_order and "hf" in summary:
        n_same, n, pre = same_count(fast1, hf_tokens, hf_order)
        agree["fast_vs_hf"] = {"identical": n_same, "of": n, "median_common_prefix_of_differing": pre}
    summary["agreement"] = agree
    summary["rows"] = rows
    ratios = {}
    if hf_order and "hf" in summary:
        hf_row = summary["hf"]
        if fast_sub is not None:
            ratios["like_for_like_hf_subset"] = round(hf_row["wall_s"] / fast_rows["fast, HF's prompts only"]["wall_s"], 1)
        else:
            ratios["all_prompts_vs_ckpt2"] = round(hf_row["wall_s"] / fast_rows["fast ckpt2 (load_weights+generate)"]["wall_s"], 1)
        ratios["hf_projected_all_vs_ckpt2"] = round(summary["hf"]["projected_full_s"]
                                                    / fast_rows["fast ckpt2 (load_weights+generate)"]["wall_s"], 1)
        ratios["hf_projected_all_vs_ckpt1"] = round(summary["hf"]["projected_full_s"]
                                                    / fast_rows["fast ckpt1 (plan+compile+graph)"]["wall_s"], 1)
    # A projection, not a measurement: HF runs each batch (prompts sorted longest first) for as many steps as its
    # longest answer; take those lengths from the fast backend's answers and the step time from the HF probe.
    if summary.get("hf_probes"):
        order = sorted(all_idx, key=lambda i: -len(ids[i]))
        ckpt2 = fast_rows["fast ckpt2 (load_weights+generate)"]["wall_s"]
        proj = {}
        for p in summary["hf_probes"]:
            if p.get("oom"):
                continue
            secs = sum(max(len(fast1[i]) for i in order[k: k + p["batch"]]) * p["step_ms"] / 1000
                       for k in range(0, len(order), p["batch"]))
            proj[p["batch"]] = {"projected_s": round(secs, 1), "vs_fast_ckpt2": round(secs / ckpt2, 1),
                                "fits_full_length_by_estimate": p["fits_full_length"]}
        summary["hf_projection"] = proj
    summary["speedup"] = ratios

    # ---------------------------------------------------------------- files
    def dump(name, toks_by_idx, idx_list):
        rows_ = []
        for i in idx_list:
            t = toks_by_idx[i]
            ans = t[:-1] if t and t[-1] in stop else t
            rows_.append({"key": keys[i], "prompt": examples[i].prompt, "response": tok.decode(ans, skip_special_tokens=True),
                          "generated_tokens": len(t), "hit_cap": len(t) >= max_new and t[-1] not in stop})
        atomic_write_jsonl(out_dir / name, rows_)

    dump("fast_responses.jsonl", fast1, all_idx)
    if hf_order and "hf" in summary:
        dump("hf_responses.jsonl", hf_tokens, sorted(hf_order))
    atomic_write_json(out_dir / "bench_summary.json", summary)

    print("\n" + "=" * 100)
    print(f"IFEval greedy generation, {len(ids)} prompts, max_new_tokens {max_new}, {summary.get('gpu', device)}, "
          f"cap {args.memory_cap_gib} GiB, {dtype}")
    print(fmt_table(rows))
    if "hf_probes" in summary:
        print("HF probes (batch: tok/s over %d forced tokens): " % args.hf_probe_tokens
              + ", ".join(f"{p['batch']}: {'OOM' if p.get('oom') else p['tokens_per_s']}"
                          f"{'' if p.get('fits_full_length') else ' (full length over cap)'}" for p in summary["hf_probes"]))
    print(f"fast plan: {summary['fast_plan']}")
    if "decode_window" in summary:
        d = summary["decode_window"]
        print(f"decode step at {d['slots']} slots, mean position {d['mean_pos']}: {d['step_ms']} ms "
              f"(memory floor {d['floor_ms_at_3TBps']} ms for {d['bytes_per_step_gb']} GB at 3 TB/s)")
    if "triton_attention_relerr" in summary:
        print(f"Triton decode attention vs fp32 SDPA: rel. error {summary['triton_attention_relerr']:.2e}")
    print("agreement: " + "; ".join(f"{k} {v['identical']}/{v['of']}" for k, v in agree.items()))
    print("speed-up (HF wall / fast wall): " + ", ".join(f"{k} {v}x" for k, v in ratios.items()))
    if summary.get("hf_projection"):
        print("HF projected (probe step time x steps its batches would run, from the fast answers' lengths): "
              + ", ".join(f"bs={b}: {v['projected_s']} s = {v['vs_fast_ckpt2']}x fast ckpt2"
                          f"{'' if v['fits_full_length_by_estimate'] else ' (over the cap)'}"
                          for b, v in summary["hf_projection"].items()))
    if "hf_error" in summary:
        print(f"HF baseline incomplete: {summary['hf_error']}")
    print(f"fast checkpoint after the first: {summary['fast_ckpt2_total_s']} s (load_weights + generate)")
    return 0


def score(dir_: str, data: str | None) -> int:
    """Four IFEval accuracies of both backends on the prompts both answered (CPU)."""
    from ifeval.data import load_jsonl
    from ifeval.scoring import Scorer, aggregate
    from sftbench.io import read_jsonl

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
    args = parse_args(argv)
    if args.score:
        return score(args.score, args.data)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
