#!/usr/bin/env python
"""Training throughput and memory under an 8 GiB cap: the 8 GB homework recipe, TRL+Liger at its fastest
setting, our reference engine and our fast engine, side by side on the same data, printing real tokens/s, peak
VRAM, model FLOPs utilisation and ratios to the peer's best.

Each row runs in its own subprocess (clean CUDA context, so NVML and torch peaks belong to that row alone),
under `sftbench.core.memory.apply_memory_cap(--cap-gib)`.  Rows:

  hf_trainer  HF Trainer, micro-batch 1, fp16 AMP, gradient checkpointing (the homework's 8 GB recipe)
  trl_search  TRL SFTTrainer + Liger kernels, bf16, at each --trl-search setting (micro-batches with and without
              gradient checkpointing, one subprocess each, a direction stopped at its first OOM); every ratio
              is to its fastest setting (optional deps: trl, liger-kernel, datasets; skipped with a note)
  trl_liger   one TRL+Liger setting: micro-batch --trl-batch (retried at half on OOM), or trl_liger@MB[:nogc]
  reference   the trainer's own ReferenceEngine.window (sftbench.train.engines): padded micro-batches in data
              order, HF forward + masked CE, bf16 autocast, the trainer's AdamW, HF gradient checkpointing
  fast        the trainer's own FastEngine.window: packed rows of --token-budget tokens, attention per conversation
              (--attention auto: varlen flash on sm80+, SDPA per length bucket on T4/P100), compiled layer, fused
              chunked CE, the trainer's AdamW (fused on CUDA), bf16 autocast over fp32 masters
  fast@B:K[:fused][:ATTENTION][:fp16]
              extra fast configurations (token budget B, K checkpointed layers or 'auto'), throughput only;
              fast@16384:30:fused:buckets:fp16 is the T4/P100 path (its first step s = cold start with a fresh
              TORCHINDUCTOR_CACHE_DIR)

Correctness and speed are measured by different rows:
- reference vs fast: --steps (200) optimizer steps of --batch-convs (8) conversations, the same conversations
  in each step, same init and LR; their per-step losses are compared pairwise against the reference's own
  step-to-step noise.  The eager reference is slow on this box (~100 us per op), hence the small step.
- fast@BUDGET:K rows: the throughput headline, --peer-steps steps of --sweep-batch-convs (128, the homework's
  batch) conversations, so that packing fills several BUDGET-token rows per step.
- hf_trainer (--hf-steps) and trl_liger (--peer-steps) at --batch-convs per step; hf_trainer reads our order,
  TRL shuffles with its own sampler.
Tokens/s counts real (non-padding) input tokens, each once, after the warm-up steps (compilation and allocator
warm-up excluded; the first step's seconds are reported too).  MFU counts FLOPs per real token from the model
shape (FLOPS_FORMULA below) against --peak-tflops.  The row named by --profile-row profiles one
more step and writes the top device kernels to profile.txt.

Data: --data FILE.jsonl with {"input_ids", "labels"} rows (see `prepare`), or `synthetic` (lengths log-normal,
median 450, max 1024).  Model: random-init SmolLM2-135M shape (throughput does not depend on the weights).

  python scripts/bench_train.py prepare --out .bench-data/chat_smollm2.jsonl      # CPU, once
  python scripts/bench_train.py --data .bench-data/chat_smollm2.jsonl --out $OUT  # GPU
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

IGN = -100
PAD_ID = 2  # <|im_end|>, SmolLM2's pad in this project
TRL_LIGER_PEER = 57933  # TRL+Liger's best under the 8 GiB cap (micro-batch 32, H200, 2026-12-01); only if no setting runs


# ---------------------------------------------------------------------------------------------------------------
# data and model
# ---------------------------------------------------------------------------------------------------------------

def load_examples(spec: str, n_synthetic: int = 2000, seed: int = 0) -> list[dict]:
    if spec == "synthetic":
        rng = random.Random(seed)
        out = []
        for _ in range(n_synthetic):
            n = max(16, min(1024, int(rng.lognormvariate(math.log(450), 0.6))))
            ids = [rng.randrange(3, 49152) for _ in range(n)]
            p = rng.randrange(4, n // 2)
            out.append({"input_ids": ids, "labels": [IGN] * p + ids[p:]})
        return out
    from sftbench.core.io import read_jsonl

    rows = read_jsonl(spec)
    return [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows]


def step_windows(n_examples: int, steps: int, batch_convs: int, seed: int = 0) -> list[list[int]]:
    """Example indices of each optimizer step: epochs of seeded permutations, cut into windows."""
    order: list[int] = []
    epoch = 0
    while len(order) < steps * batch_convs:
        perm = list(range(n_examples))
        random.Random(seed + epoch).shuffle(perm)
        order.extend(perm)
        epoch += 1
    return [order[k * batch_convs:(k + 1) * batch_convs] for k in range(steps)]


def smollm2_135m_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                       rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                       bos_token_id=1, eos_token_id=2, pad_token_id=PAD_ID)


def model_config(tiny: bool = False):
    cfg = smollm2_135m_config()
    if tiny:  # --_cpu-debug
        cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size = 2, 64, 128
        cfg.num_attention_heads, cfg.num_key_value_heads = 4, 2
    return cfg


def build_model(seed: int = 0, attn: str = "sdpa", tiny: bool = False):
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = model_config(tiny)
    cfg._attn_implementation = attn
    return LlamaForCausalLM(cfg)


def prepare(out: str, data_dir: str, max_length: int) -> None:
    """Tokenise the chat data with the real SmolLM2 tokenizer (offline GGUF) via conversation_func."""
    from conversation_func import build_examples, load_tokenizer
    from sftbench.core.io import atomic_write_jsonl

    tok = load_tokenizer("smollm2-135m-instruct-offline")
    exs, stats = build_examples(data_dir, tok, max_length=max_length, max_rounds=None, progress=True,
                                on_bad_record="skip")
    atomic_write_jsonl(out, ({"input_ids": e["input_ids"], "labels": e["labels"]} for e in exs))
    lens = sorted(len(e["input_ids"]) for e in exs)
    print(f"wrote {out}: {len(exs)} examples, median {lens[len(lens) // 2]} tokens, max {lens[-1]}; {stats}")


# ---------------------------------------------------------------------------------------------------------------
# one row (runs in a subprocess)
# ---------------------------------------------------------------------------------------------------------------

def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Meter:
    """Real tokens and wall time of each optimizer step (device-synchronised at step ends)."""

    def __init__(self):
        import torch

        self.torch = torch
        self.t0 = None
        self.step_ends: list[float] = []
        self.step_tokens: list[int] = []

    def start(self):
        _sync()
        self.t0 = time.perf_counter()

    def step(self, tokens: int):
        _sync()
        self.step_ends.append(time.perf_counter())
        self.step_tokens.append(int(tokens))

    def summary(self, warmup: int) -> dict:
        n = len(self.step_ends)
        w = min(warmup, max(n - 2, 0))
        t_start = self.t0 if w == 0 else self.step_ends[w - 1]
        toks = sum(self.step_tokens[w:])
        secs = self.step_ends[-1] - t_start if n else float("nan")
        return {"steps": n, "timed_steps": n - w, "timed_tokens": toks, "timed_s": round(secs, 3),
                "tokens_per_s": round(toks / secs, 1) if secs > 0 else None,
                "total_wall_s": round(self.step_ends[-1] - self.t0, 2) if n else None,
                "total_tokens": sum(self.step_tokens),
                "first_step_s": round(self.step_ends[0] - self.t0, 2) if n else None}


def trainer_config(a, engine: str, precision: str, **flags):
    """The TrainConfig of a row: what the trainer runs for these flags (AdamW at --lr without weight decay,
    gradient norm clipped at 1, a constant LR after --warmup-lr-steps of linear warm-up)."""
    from sftbench.config.train import TrainConfig
    from sftbench.core.cli import config_from_flat

    return config_from_flat(TrainConfig, {"engine": engine, "precision": precision, "learning_rate": a.lr,
                                          "weight_decay": 0.0, "max_grad_norm": 1.0,
                                          "lr_scheduler_type": "constant_with_warmup",
                                          "warmup_steps": a.warmup_lr_steps, **flags})


def trainer_pieces(cfg, model, device, total_steps: int, checkpoint_layers: int | None = None):
    """The trainer's own set-up of a row (sftbench.train.step / engines, what train() runs): the model prepared,
    precision and gradient scaler (bf16, or fp16 with a scaler, autocast on a GPU; fp32 on the CPU), the engine
    with the trainer's attention choice, AdamW and the LR schedule.  Returns (engine, optimizer, scheduler)."""
    from sftbench.train.dist import Dist
    from sftbench.train.engines import make_engine
    from sftbench.train.step import optimizer_and_schedule, precision_and_scaler, prepare_model

    prepare_model(model, cfg, device)
    prec, scaler = precision_and_scaler(cfg, device)
    engine = make_engine(model, cfg, device, Dist(), prec, scaler, pad_id=PAD_ID, explicit=True,
                         checkpoint_layers=checkpoint_layers)
    opt, sched = optimizer_and_schedule(model, cfg, device, total_steps)
    return engine, opt, sched


def _n_targets(exs) -> int:
    from sftbench.train.step import target_count

    return sum(target_count(e) for e in exs)


def _train_steps(cfg, engine, opt, sched, examples, windows, micro: int | None, meter, losses) -> None:
    """Optimizer steps as train() takes them (sftbench.train.step.train_step): the engine's window with the
    window's target count, then clip, step, schedule."""
    from sftbench.train.step import train_step

    for step, win in enumerate(windows):
        exs = [examples[i] for i in win]
        n_window = _n_targets(exs)
        mbs = [exs] if micro is None else [exs[s:s + micro] for s in range(0, len(exs), micro)]
        res = train_step(engine, opt, sched, mbs, n_window, step, cfg.max_grad_norm)
        losses.append(res.ce_sum / max(n_window, 1))
        meter.step(res.real_tokens)


def row_reference(a, examples, windows, model, device) -> dict:
    import torch

    cfg = trainer_config(a, "reference", a.precision, gradient_checkpointing=True, loss_chunk_size=a.ref_ce_chunk,
                         per_device_train_batch_size=a.ref_batch)
    engine, opt, sched = trainer_pieces(cfg, model, device, len(windows))
    meter, losses = Meter(), []
    meter.start()
    _train_steps(cfg, engine, opt, sched, examples, windows, a.ref_batch, meter, losses)
    out = meter.summary(a.warmup_steps)
    out["losses"] = [round(float(x), 5) for x in torch.stack(losses).tolist()]
    out["config"] = {"micro_batch": a.ref_batch, "gradient_checkpointing": True, "precision": engine.prec.name,
                     "loss_chunk_size": a.ref_ce_chunk}
    return out


def parse_fast_row(name: str, a) -> dict:
    """`fast` (the --token-budget/--checkpoint-layers/--attention/--precision flags) or
    `fast@BUDGET:K[:fused][:nograph][:ATTENTION][:fp16|:bf16]` -> row_fast's keyword arguments."""
    if name == "fast":
        return {"budget": a.token_budget, "ckpt": a.checkpoint_layers, "fuse": False, "attention": a.attention,
                "precision": a.precision, "graphs": not a.no_graphs}
    from sftbench.engine.fast_model import ATTENTIONS

    parts = name[5:].split(":")
    if len(parts) < 2 or not parts[0].isdigit():
        raise _user_error(f"--rows: row {name}: expected fast@BUDGET:K[:fused][:nograph][:ATTENTION][:fp16|:bf16]")
    out = {"budget": int(parts[0]), "ckpt": parts[1], "fuse": False, "attention": a.attention, "precision": a.precision,
           "graphs": not a.no_graphs}
    for flag in parts[2:]:
        if flag == "fused":
            out["fuse"] = True
        elif flag == "nograph":
            out["graphs"] = False
        elif flag in ATTENTIONS or flag == "auto":
            out["attention"] = flag
        elif flag in ("fp16", "bf16"):
            out["precision"] = flag
        else:
            raise _user_error(f"--rows: row {name}: unknown flag {flag!r} (fused, nograph, {', '.join(ATTENTIONS)}, auto, "
                              f"fp16, bf16)")
    return out


def row_fast(a, examples, windows, model, device, budget: int, ckpt: str, fuse: bool = False,
             attention: str = "auto", precision: str = "bf16", graphs: bool = True) -> dict:
    import torch

    longest = max(len(e["input_ids"]) for e in examples)  # varlen attention's static segment bound
    # ckpt "auto": the trainer's own plan for --target-gib of device memory under the --cap-gib cap
    cfg = trainer_config(a, "fast", precision, token_budget=budget, attention=attention, fuse_projections=fuse,
                         cuda_graphs=graphs, compile="off" if a.no_compile else "auto", loss_chunk_size=a.ce_chunk,
                         model_max_length=longest, vram_target_gib=a.target_gib, memory_cap_gib=a.cap_gib)
    engine, opt, sched = trainer_pieces(cfg, model, device, len(windows),
                                        checkpoint_layers=None if ckpt == "auto" else int(ckpt))
    k = model._sftbench_fast.checkpoint_layers
    meter, losses = Meter(), []
    if a.profile_row == a.row:
        windows, prof_window = windows[:-1], windows[-1]
    meter.start()
    _train_steps(cfg, engine, opt, sched, examples, windows, None, meter, losses)
    out = meter.summary(a.warmup_steps if not a.row.startswith("fast@") else a.peer_warmup_steps)
    out["losses"] = [round(float(x), 5) for x in torch.stack(losses).tolist()]
    n_bins = engine.rows_packed
    if a.profile_row == a.row:
        out["profile"] = _profile_one_step(a, cfg, engine, opt, sched, [examples[i] for i in prof_window], budget, device)
    out["config"] = {"token_budget": budget, "checkpoint_layers": k, "ce_chunk": a.ce_chunk,
                     "attention": model._sftbench_fast.attention, "compile": model._sftbench_fast.compile,
                     "fuse_projections": fuse, "conversations_per_step": len(windows[0]),
                     "micro_batches_per_step": round(n_bins / len(windows), 2),
                     "packing_efficiency": round(sum(meter.step_tokens) / (n_bins * budget), 3),
                     "precision": engine.prec.name,
                     "cuda_graphs": ("off" if engine.graphs is None else f"failed: {engine.graphs.disabled}"
                                     if engine.graphs.disabled else f"{engine.graphs.replays} replays of {engine.graphs.captures} captures")}
    return out


KERNEL_CATEGORIES = (  # (category, substrings of a device kernel's name), first match wins
    ("attention", ("flash", "fmha", "attention", "efficient_attention")),  # before matmul: flash names carry cutlass types
    ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "cublas", "wgmma", "splitk")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("compiled (triton)", ("triton",)),
    ("copy / cast", ("copy", "memcpy", "memset", "cast", "fill")),
    ("elementwise / reduce (eager)", ("elementwise", "reduce", "vectorized", "index", "cat", "scatter", "gather")),
)


def kernel_category(name: str) -> str:
    low = name.lower()
    for cat, keys in KERNEL_CATEGORIES:
        if any(k in low for k in keys):
            return cat
    return "other"


def _profile_one_step(a, cfg, engine, opt, sched, exs, budget, device) -> str:
    """Device-kernel breakdown of one optimizer step (for docs/bench_train.md: where the time goes): time per
    category of kernel, the top kernels, and a Chrome trace (profile_trace.json.gz beside profile.txt)."""
    import gzip
    import tempfile as _tf

    import torch
    from torch.profiler import ProfilerActivity, profile

    _sync()
    rows_before = engine.rows_packed
    t0 = time.perf_counter()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    from sftbench.train.step import train_step

    with profile(activities=acts) as prof:
        train_step(engine, opt, sched, [exs], _n_targets(exs), 0, cfg.max_grad_norm)
        _sync()
    wall = time.perf_counter() - t0
    rows = engine.rows_packed - rows_before
    ka = prof.key_averages()
    cats: dict[str, list[float]] = {}
    dev_us = 0.0
    for e in ka:
        us = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0) or 0.0
        # Only device events (kernels, copies): a CPU op's self device time repeats its kernels' time.
        if us <= 0 or getattr(e, "device_type", None) != torch.autograd.DeviceType.CUDA:
            continue
        dev_us += us
        c = cats.setdefault(kernel_category(e.key), [0.0, 0])
        c[0] += us
        c[1] += e.count
    try:
        table = ka.table(sort_by="self_device_time_total", row_limit=30, max_name_column_width=90)
    except Exception:
        table = ka.table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=90)
    lines = [f"one step, {rows} packed micro-batches of {budget} tokens: wall {wall * 1e3:.1f} ms (profiled), sum of "
             f"device kernel time {dev_us / 1e3:.1f} ms ({dev_us / 1e3 / max(rows, 1):.1f} ms per row) -> GPU busy "
             f"{100 * dev_us / 1e6 / wall:.0f}% under the profiler",
             "| kernels | device ms per row | share | launches per row |", "|---|---|---|---|"]
    for cat, (us, n) in sorted(cats.items(), key=lambda kv: -kv[1][0]):
        lines.append(f"| {cat} | {us / 1e3 / max(rows, 1):.2f} | {100 * us / max(dev_us, 1):.0f}% | {n / max(rows, 1):.0f} |")
    try:
        with _tf.NamedTemporaryFile(suffix=".json", delete=False) as f:
            tmp = f.name
        prof.export_chrome_trace(tmp)
        with open(tmp, "rb") as src, gzip.open(Path(a.out) / "profile_trace.json.gz", "wb") as dst:
            dst.write(src.read())
        os.unlink(tmp)
    except Exception as e:  # the trace is a convenience; the table above is the result
        lines.append(f"(trace not written: {e})")
    return "\n".join(lines) + "\n" + table


class _TokenCounter:
    """Forward pre-hook: adds the real tokens of every micro-batch (attention_mask sum) on the device."""

    def __init__(self, model, device):
        import torch

        self.count = torch.zeros((), dtype=torch.long, device=device)
        self.handle = model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        am = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids", args[0] if args else None)
        if am is not None and am.dim() == 2:
            self.count += am.sum()
        elif kwargs.get("position_ids") is not None and ids is not None:  # padding-free: everything is real
            self.count += ids.numel()
        elif ids is not None:
            self.count += (ids != PAD_ID).sum()
        return None


def _hf_callback(meter_box):
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            meter_box["meter"].start()
            meter_box["last"] = 0

        def on_step_end(self, args, state, control, **kw):
            c = int(meter_box["counter"].count.item())
            meter_box["meter"].step(c - meter_box["last"])
            meter_box["last"] = c

    return Timer()


def _trainer_losses(trainer) -> list[float]:
    return [round(float(h["loss"]), 5) for h in trainer.state.log_history if "loss" in h]


def row_hf_trainer(a, examples, windows, model, device, tmp: str) -> dict:
    import torch
    from torch.utils.data import IterableDataset
    from transformers import Trainer, TrainingArguments

    from conversation_func import collate

    rows = [examples[i] for w in windows for i in w]

    class InOrder(IterableDataset):  # no shuffling: the same conversations in the same order as our rows
        def __iter__(self):
            return iter(rows)

    args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=1,
                             gradient_accumulation_steps=a.batch_convs, max_steps=len(windows),
                             learning_rate=a.lr, weight_decay=0.0, lr_scheduler_type="constant",
                             fp16=device.type == "cuda", gradient_checkpointing=True, use_cpu=device.type == "cpu", logging_steps=1, save_strategy="no",
                             report_to="none", dataloader_num_workers=0, seed=0, max_grad_norm=1.0)
    box = {"meter": Meter(), "counter": _TokenCounter(model, device)}
    trainer = Trainer(model=model, args=args, train_dataset=InOrder(),
                      data_collator=lambda b: collate(b, PAD_ID), callbacks=[_hf_callback(box)])
    trainer.train()
    out = box["meter"].summary(a.peer_warmup_steps)
    out["losses"] = _trainer_losses(trainer)
    out["config"] = {"micro_batch": 1, "gradient_accumulation": a.batch_convs, "fp16": args.fp16,
                     "gradient_checkpointing": True}
    return out


def parse_trl_row(name: str, a) -> tuple[int, bool]:
    """`trl_liger` (micro-batch --trl-batch, checkpointing on) or `trl_liger@MB[:nogc]` -> (micro-batch, checkpointing)."""
    if name == "trl_liger":
        return a.trl_batch, True
    mb, _, flag = name[len("trl_liger@"):].partition(":")
    if not name.startswith("trl_liger@") or not mb.isdigit() or flag not in ("", "gc", "nogc"):
        raise _user_error(f"--rows: row {name}: expected trl_liger or trl_liger@MICRO_BATCH[:gc|:nogc]")
    return int(mb), flag != "nogc"


def row_trl_liger(a, examples, windows, model, device, tmp: str, mb: int, gc: bool = True) -> dict:
    import datasets
    from trl import SFTConfig, SFTTrainer

    rows = [examples[i] for w in windows for i in w]
    ds = datasets.Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
    ga = max(1, len(windows[0]) // mb)
    args = SFTConfig(output_dir=tmp, per_device_train_batch_size=mb, gradient_accumulation_steps=ga,
                     max_steps=len(windows), learning_rate=a.lr, weight_decay=0.0, lr_scheduler_type="constant",
                     bf16=device.type == "cuda", use_liger_kernel=device.type == "cuda", max_length=1024, packing=False,
                     gradient_checkpointing=gc, logging_steps=1,
                     save_strategy="no", report_to="none", dataloader_num_workers=0, seed=0,
                     max_grad_norm=1.0, use_cpu=device.type == "cpu")
    tok = _tiny_pad_tokenizer()
    box = {"meter": Meter(), "counter": _TokenCounter(model, device)}
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                         callbacks=[_hf_callback(box)])
    box["counter"].handle.remove()
    box["counter"] = _TokenCounter(trainer.model, device)
    trainer.train()
    out = box["meter"].summary(a.peer_warmup_steps)
    out["losses"] = _trainer_losses(trainer)
    out["config"] = {"micro_batch": mb, "gradient_accumulation": ga, "bf16": args.bf16, "liger": args.use_liger_kernel,
                     "gradient_checkpointing": bool(args.gradient_checkpointing)}
    return out


def _tiny_pad_tokenizer():
    """TRL wants a processing_class for its pad id; the data are already token ids, so any tokenizer whose
    pad id is 2 (<|im_end|>) does: the project's tiny tokenizer has SmolLM2's special ids."""
    from sftbench.model.tiny import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    assert tok.pad_token_id == PAD_ID
    return tok


def run_row(a) -> dict:
    import torch

    from sftbench.core.memory import MemoryMonitor, apply_memory_cap, torch_peak_gib

    device = torch.device("cuda", 0) if not a.cpu_debug else torch.device("cpu")
    cap_line = apply_memory_cap(a.cap_gib, device)
    examples = load_examples(a.data)
    if a.cpu_debug:  # a smoke test of the code paths on a CPU: short examples, tiny model
        examples = [{"input_ids": e["input_ids"][:96], "labels": e["labels"][:96]} for e in examples]
    name = a.row
    trl = parse_trl_row(name, a) if name.startswith("trl_liger") else None
    steps = a.hf_steps if name == "hf_trainer" else a.peer_steps if (trl or name.startswith("fast@")) else a.steps
    convs = a.sweep_batch_convs if name.startswith("fast@") else max(a.batch_convs, trl[0]) if trl else a.batch_convs
    windows = step_windows(len(examples), steps + (1 if name == a.profile_row else 0), convs)
    model = build_model(seed=0, tiny=a.cpu_debug).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    mon = MemoryMonitor(device_index=0, interval_s=0.05).start()
    t0 = time.time()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if name == "reference":
                res = row_reference(a, examples, windows, model, device)
            elif name == "fast" or name.startswith("fast@"):
                res = row_fast(a, examples, windows, model, device, **parse_fast_row(name, a))
            elif name == "hf_trainer":
                res = row_hf_trainer(a, examples, windows, model, device, tmp)
            elif trl:
                res = row_trl_liger(a, examples, windows, model, device, tmp, *trl)
            else:
                raise _user_error(f"--rows: unknown row {name}")
        res["status"] = "ok"
    except torch.OutOfMemoryError as e:
        res = {"status": "oom", "error": str(e).splitlines()[0][:300]}
    finally:
        mon.stop()
    res.update(torch_peak_gib(device))
    res.update(mon.summary())
    res["cap"] = cap_line
    res["row"] = name
    res["row_wall_s"] = round(time.time() - t0, 1)
    return res


# ---------------------------------------------------------------------------------------------------------------
# orchestration and report
# ---------------------------------------------------------------------------------------------------------------

def _child(a, row: str, extra: list[str]) -> dict:
    out = Path(a.out) / f"row_{row.replace('@', '_').replace(':', '_')}.json"
    cmd = [sys.executable, __file__, "--_row", row, "--_row-out", str(out)] + a._argv + extra
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    print(f"\n=== {row}: {' '.join(extra)}", flush=True)
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, env=env, timeout=a.row_timeout)
    except subprocess.TimeoutExpired:
        return {"row": row, "status": f"timed out after {a.row_timeout} s"}
    if proc.returncode != 0 or not out.is_file():
        return {"row": row, "status": f"failed (exit {proc.returncode}, {time.time() - t0:.0f} s)"}
    return json.loads(out.read_text())


def _user_error(msg: str):
    from sftbench.core.errors import UserError

    return UserError(msg)


def check_rows(a, rows: list[str]) -> None:
    """Every row name parses (UserError before any row runs)."""
    for row in rows:
        if row.startswith("fast@"):
            parse_fast_row(row, a)
        elif row.startswith("trl_liger"):
            parse_trl_row(row, a)
        elif row == "trl_search":
            parse_trl_search(a.trl_search)
        elif row not in ("fast", "reference", "hf_trainer"):
            raise _user_error(f"--rows: unknown row {row!r} (hf_trainer, trl_search, trl_liger[@MB[:nogc]], reference, "
                              f"fast, fast@BUDGET:K[:fused][:nograph][:ATTENTION][:fp16]).")


def _reused(a, results: list[dict]) -> list[dict]:
    """--reuse-rows: the earlier run's rows that this call did not run, marked as reused."""
    if not a.reuse_rows:
        return []
    from sftbench.core.errors import UserError

    path = Path(a.reuse_rows)
    if not path.is_file():
        raise UserError(f"{path}: --reuse-rows file not found (a summary.json written by an earlier run).")
    ran = {r["row"] for r in results}
    return [dict(r, reused=True) for r in json.loads(path.read_text())["results"] if r["row"] not in ran]


def _deps_available(cpu_debug: bool = False) -> str | None:
    import importlib.util

    need = ("trl", "datasets") if cpu_debug else ("trl", "liger_kernel", "datasets")
    missing = [m for m in need if importlib.util.find_spec(m) is None]
    return None if not missing else "missing " + ", ".join(missing)


def compare_curves(ref: list[float], fast: list[float], window: int = 11) -> dict:
    """Paired per-step comparison (same conversations in each step) against the reference's own noise."""
    import numpy as np

    r, f = np.asarray(ref, float), np.asarray(fast, float)
    n = min(len(r), len(f))
    r, f = r[:n], f[:n]
    d = f - r
    half = n // 2
    k = np.ones(window) / window
    smooth = np.convolve(r, k, mode="same")
    inner = slice(max(half, window), n - window // 2)
    noise = float(np.std((r - smooth)[inner])) if n > 2 * window else float("nan")
    last = min(20, n)
    res = {
        "steps": n,
        "mean_abs_diff": float(np.mean(np.abs(d))),
        "mean_abs_diff_2nd_half": float(np.mean(np.abs(d[half:]))),
        "max_abs_diff": float(np.max(np.abs(d))),
        "mean_diff_2nd_half": float(np.mean(d[half:])),
        "ref_step_noise_std": noise,
        "ref_final_mean": float(np.mean(r[-last:])),
        "fast_final_mean": float(np.mean(f[-last:])),
        "ref_first": float(r[0]), "fast_first": float(f[0]),
    }
    res["match"] = bool(res["mean_abs_diff_2nd_half"] < noise and abs(res["mean_diff_2nd_half"]) < noise / 2)
    return res


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


# ---------------------------------------------------------------------------------------------------------------
# the peer's best setting: TRL+Liger's micro-batch and checkpointing searched under the same cap
# ---------------------------------------------------------------------------------------------------------------

TRL_SEARCH = "gc:16,32,48,64;nogc:8,16"


def parse_trl_search(spec: str) -> list[list[str]]:
    """'gc:16,32,48,64;nogc:8,16' -> one list of row names per direction, micro-batches ascending:
    [['trl_liger@16', ..., 'trl_liger@64'], ['trl_liger@8:nogc', 'trl_liger@16:nogc']]."""
    directions = []
    for part in [p.strip() for p in spec.split(";") if p.strip()]:
        mode, _, sizes = part.partition(":")
        if mode not in ("gc", "nogc") or not sizes:
            raise _user_error(f"--trl-search {spec!r}: each part is gc:MB,MB,... or nogc:MB,MB,... (parts separated by ';').")
        mbs = sorted({int(x) for x in sizes.split(",") if x.strip()})
        directions.append([f"trl_liger@{mb}" + (":nogc" if mode == "nogc" else "") for mb in mbs])
    return directions


def peer_search(directions: list[list[str]], run) -> tuple[list[dict], dict | None]:
    """Run each direction's settings in order (`run(row) -> result`, one subprocess each), stopping a direction
    at its first setting that does not finish ok (out of memory, failure, timeout): a larger micro-batch
    needs more memory.  Returns (every result, the fastest ok one or None)."""
    results = []
    for rows in directions:
        for row in rows:
            r = dict(run(row), row=row, search=True)
            results.append(r)
            if r.get("status") != "ok" or not r.get("tokens_per_s"):
                break
    ok = [r for r in results if r.get("status") == "ok" and r.get("tokens_per_s")]
    return results, (max(ok, key=lambda r: r["tokens_per_s"]) if ok else None)


# ---------------------------------------------------------------------------------------------------------------
# model FLOPs per trained token and utilisation
# ---------------------------------------------------------------------------------------------------------------

FLOPS_FORMULA = ("FLOPs per real token = 6 x (matmul params per layer x layers + LM head) + 2 x matmul params "
                 "per layer x checkpointed layers (recompute) + attention 2 x heads x head_dim x (L+1) per layer "
                 "(QK^T and PV over the causal keys, mean over a conversation of L tokens; no padding) x (3 layers' "
                 "worth + 1 per recomputed layer)")


def train_flops_per_token(cfg, lengths: list[int], checkpointed_layers: int) -> float:
    """Mean training FLOPs per real token (FLOPS_FORMULA) for conversations of these lengths."""
    d, n = cfg.hidden_size, cfg.num_hidden_layers
    hq, hkv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or d // hq
    per_layer = d * hq * hd * 2 + d * hkv * hd * 2 + 3 * d * cfg.intermediate_size  # q, o; k, v; gate, up, down
    head = d * cfg.vocab_size
    tokens = sum(lengths)
    # forward attention per layer: QK^T and PV, 2 x 2 x hd FLOPs per head per (query, key <= query) pair
    attn_fwd = sum(2 * 2 * hq * hd * L * (L + 1) / 2 for L in lengths) / max(tokens, 1)
    k = max(0, min(int(checkpointed_layers), n))
    return 6 * (per_layer * n + head) + 2 * per_layer * k + attn_fwd * (3 * n + k)


def row_checkpointed_layers(r: dict, n_layers: int) -> int:
    cfg = r.get("config", {})
    if "checkpoint_layers" in cfg:
        return int(cfg["checkpoint_layers"])
    return n_layers if cfg.get("gradient_checkpointing", True) else 0


def mfu(r: dict, cfg, lengths: list[int], peak_tflops: float) -> float | None:
    tps = r.get("tokens_per_s") if r.get("status") == "ok" else None
    if not tps or not peak_tflops:
        return None
    return tps * train_flops_per_token(cfg, lengths, row_checkpointed_layers(r, cfg.num_hidden_layers)) / (peak_tflops * 1e12)


# ---------------------------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------------------------

def _peer_baseline(results: list[dict]) -> tuple[float, str]:
    """(tokens/s, label) of the fastest TRL+Liger setting that ran ok, else the earlier measurement."""
    trl = [r for r in results if r["row"].startswith("trl_liger") and r.get("status") == "ok" and r.get("tokens_per_s")]
    if trl:
        best = max(trl, key=lambda r: r["tokens_per_s"])
        cfg = best.get("config", {})
        return best["tokens_per_s"], (f"TRL+Liger best ({best['row']}: micro-batch {cfg.get('micro_batch')}, gradient "
                                      f"checkpointing {'on' if cfg.get('gradient_checkpointing') else 'off'})")
    return TRL_LIGER_PEER, f"TRL+Liger (no setting ran here: the earlier measurement, {TRL_LIGER_PEER} tok/s)"


def _search_table(a, search: list[dict], model_cfg, lengths) -> str:
    lines = [f"TRL+Liger search under the {a.cap_gib:g} GiB cap (--trl-search {a.trl_search}; a direction stops at its "
             f"first setting that does not finish):",
             "| setting | status | micro-batch | grad ckpt | real tokens/s | MFU % | torch peak alloc GiB | torch peak reserved GiB | NVML peak GiB | row wall s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in search:
        m = mfu(r, model_cfg, lengths, a.peak_tflops)
        mb, gc = parse_trl_row(r["row"], a)
        lines.append(f"| {r['row']} | {r.get('status')} | {mb} | {'on' if gc else 'off'} | {fmt(r.get('tokens_per_s'), ',.0f')} | "
                     f"{fmt(None if m is None else 100 * m, '.1f')} | {fmt(r.get('torch_peak_allocated_gib'), '.2f')} | "
                     f"{fmt(r.get('torch_peak_reserved_gib'), '.2f')} | {fmt(r.get('nvml_peak_gib'), '.2f')} | "
                     f"{fmt(r.get('row_wall_s'), '.0f')} |")
    return "\n".join(lines) + "\n"


def report(a, results: list[dict], model_cfg=None, lengths: list[int] | None = None) -> str:
    model_cfg = model_cfg or smollm2_135m_config()
    lengths = lengths or [450]
    by = {r["row"]: r for r in results}
    peer_tps, peer_label = _peer_baseline(results)
    search = [r for r in results if r.get("search")]
    text = (_search_table(a, search, model_cfg, lengths) + "\n") if search else ""
    text += f"ratios (x peer) are to {peer_label}: {peer_tps:,.0f} real tokens/s\n"
    lines = [
        f"| row | status | steps timed | real tokens/s | x peer | MFU % | torch peak alloc GiB | torch peak reserved GiB | NVML peak GiB | NVML <= {a.target_gib:g} GiB | first step s | final loss | config |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in [r for r in results if not r.get("search")]:
        tps = r.get("tokens_per_s")
        losses = r.get("losses") or []
        cfg = r.get("config", {})
        nv = r.get("nvml_peak_gib")
        m = mfu(r, model_cfg, lengths, a.peak_tflops)
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            r["row"] + (" (reused)" if r.get("reused") else ""), r.get("status"), r.get("timed_steps", "-"),
            fmt(tps, ",.0f"), fmt(tps / peer_tps if tps else None, ".2f"), fmt(None if m is None else 100 * m, ".1f"),
            fmt(r.get("torch_peak_allocated_gib"), ".2f"), fmt(r.get("torch_peak_reserved_gib"), ".2f"), fmt(nv, ".2f"),
            "-" if nv is None else ("yes" if nv <= a.target_gib else "no"), fmt(r.get("first_step_s"), ".1f"),
            fmt(losses[-1] if losses else None, ".4f"), ", ".join(f"{k}={v}" for k, v in cfg.items())))
    text += "\n".join(lines) + "\n"
    text += (f"MFU: {FLOPS_FORMULA}; mean over the data's conversations = "
             f"{train_flops_per_token(model_cfg, lengths, model_cfg.num_hidden_layers) / 1e9:.3f} GFLOP with every layer "
             f"recomputed, {train_flops_per_token(model_cfg, lengths, 0) / 1e9:.3f} with none; against a peak of "
             f"{a.peak_tflops:g} TFLOP/s (--peak-tflops)\n")
    fast_rows = [r for r in results if r["row"].startswith("fast") and r.get("status") == "ok" and r.get("tokens_per_s")]
    fit = [r for r in fast_rows if r.get("nvml_peak_gib") is not None and r["nvml_peak_gib"] <= a.target_gib]
    for label, pool in ((f"NVML <= {a.target_gib:g} GiB", fit), (f"under the {a.cap_gib:g} GiB cap", fast_rows)):
        if pool:
            best = max(pool, key=lambda r: r["tokens_per_s"])
            text += (f"\nfastest fast row {label}: {best['row']} {best['tokens_per_s']:,.0f} real tokens/s = "
                     f"{best['tokens_per_s'] / peer_tps:.2f}x {peer_label}, NVML peak {best.get('nvml_peak_gib')} GiB")
    for r in fast_rows:
        if r.get("config", {}).get("attention") in ("buckets", "flex") or r.get("config", {}).get("precision") == "fp16":
            text += (f"\n{r['row']}: first step (compile included) {fmt(r.get('first_step_s'), '.1f')} s, attention "
                     f"{r['config'].get('attention')}, {r['config'].get('precision')}")
    text += "\n"
    fast_curve = "fast" if "fast" in by else None
    if "reference" in by and fast_curve and by["reference"].get("losses") and by[fast_curve].get("losses"):
        c = compare_curves(by["reference"]["losses"], by[fast_curve]["losses"])
        fc = by[fast_curve].get("config", {})
        text += (
            f"\nloss curves, fast ({fc.get('attention')}, {fc.get('precision')}) vs reference, {c['steps']} optimizer "
            f"steps with the same conversations per step:\n"
            f"  first step {c['ref_first']:.4f} vs {c['fast_first']:.4f}; mean of last 20 steps "
            f"{c['ref_final_mean']:.4f} (ref) vs {c['fast_final_mean']:.4f} (fast)\n"
            f"  |fast - ref| per step: mean {c['mean_abs_diff']:.4f}, 2nd half {c['mean_abs_diff_2nd_half']:.4f} "
            f"(signed {c['mean_diff_2nd_half']:+.4f}), max {c['max_abs_diff']:.4f}\n"
            f"  reference step-to-step noise (std around an 11-step moving average, 2nd half): {c['ref_step_noise_std']:.4f}\n"
            f"  verdict: {'MATCH' if c['match'] else 'DIFFERENT'} (match = mean |diff| over the 2nd half below the "
            f"reference's step noise and the signed mean diff below half of it)\n")
        by[fast_curve]["curve_comparison"] = c
    return text


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", nargs="?", default="run", choices=["run", "prepare"],
                   help="run (default): the benchmark on a CUDA GPU; prepare: tokenise chat data (CPU)")
    p.add_argument("--data", default=".bench-data/chat_smollm2.jsonl",
                   help="JSONL of {input_ids, labels} rows (from `prepare`), or 'synthetic'")
    p.add_argument("--source", default=str(ROOT.parent / "shared" / "data" / "chat"), help="prepare: chat data dir")
    p.add_argument("--max-length", type=int, default=1024, help="prepare: truncate conversations to this length")
    p.add_argument("--out", default="runs/bench_train", help="run: folder for row JSONs, summary.json, table.md; "
                   "prepare: the JSONL file to write")
    p.add_argument("--rows", default="fast,reference,fast@16384:30:fused,fast@32768:30:fused,trl_search,hf_trainer",
                   help="comma list of rows: hf_trainer; trl_search (TRL+Liger at each --trl-search setting, one "
                        "subprocess each: ratios are to its fastest); trl_liger (micro-batch --trl-batch) or "
                        "trl_liger@MB[:nogc]; reference; fast; fast@BUDGET:K[:fused][:nograph][:ATTENTION][:fp16] (K = "
                        "checkpointed layers or auto; fused = one matmul for q/k/v and one for gate/up; ATTENTION = "
                        "varlen, buckets, flex, sdpa or auto; fp16 = fp16 autocast with a gradient scaler, as on a "
                        "T4/P100; e.g. fast@16384:30:fused:buckets:fp16 times the T4 path's cold first step)")
    p.add_argument("--trl-search", default=TRL_SEARCH,
                   help="trl_search: gc:MB,...;nogc:MB,... micro-batches with gradient checkpointing on / off, each "
                        "direction ascending and stopped at its first setting that does not finish (out of memory)")
    p.add_argument("--peak-tflops", type=float, default=790.0,
                   help="peak dense TFLOP/s the MFU column divides by (where the default comes from: docs/bench_train.md); "
                        "give your GPU's")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp16"],
                   help="reference, fast and fast@ rows (unless the row says :fp16/:bf16): autocast dtype (fp16 with a "
                        "gradient scaler)")
    p.add_argument("--reuse-rows", default=None, help="summary.json of an earlier run: its rows that this call does not "
                   "run (e.g. the TRL+Liger search and the reference curve) join the report and its ratios")
    p.add_argument("--sweep-batch-convs", type=int, default=128,
                   help="conversations per optimizer step for the fast@ rows (the homework's batch size is 128; "
                        "packing needs windows several times the token budget)")
    p.add_argument("--profile-row", default="fast@16384:30:fused", help="after its timed steps, profile one more step of this "
                   "fast row and write the top device kernels to profile.txt")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps for reference and fast")
    p.add_argument("--peer-steps", type=int, default=8, help="optimizer steps for trl_liger and fast@ rows")
    p.add_argument("--hf-steps", type=int, default=4, help="optimizer steps for hf_trainer (~4 s each at 8 conversations)")
    p.add_argument("--batch-convs", type=int, default=8,
                   help="conversations per optimizer step for reference, fast, trl_liger and hf_trainer (small, so "
                        "that the eager reference finishes 200 steps in ~2 minutes on this box)")
    p.add_argument("--warmup-steps", type=int, default=10, help="steps excluded from the timing (reference, fast)")
    p.add_argument("--peer-warmup-steps", type=int, default=1, help="steps excluded from the timing (peers, fast@)")
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (AdamW, no weight decay)")
    p.add_argument("--warmup-lr-steps", type=int, default=10, help="linear LR warm-up steps (reference, fast)")
    p.add_argument("--cap-gib", type=float, default=8.0, help="device memory cap per row (NVML total)")
    p.add_argument("--target-gib", type=float, default=6.0, help="fast: device memory to plan checkpointing for")
    p.add_argument("--token-budget", type=int, default=4096,
                   help="fast: tokens per packed micro-batch (fast@ rows set their own)")
    p.add_argument("--checkpoint-layers", default="30", help="fast: layers to recompute (int or auto)")
    p.add_argument("--ce-chunk", type=int, default=1024, help="fast: rows of logits per CE chunk")
    p.add_argument("--attention", default="auto", choices=["auto", "varlen", "buckets", "flex", "sdpa"],
                   help="fast and fast@ rows (unless the row names one): attention kernel (auto: the trainer's choice)")
    p.add_argument("--no-compile", action="store_true", help="fast: skip torch.compile")
    p.add_argument("--no-graphs", action="store_true", help="fast: run rows eagerly, not as CUDA graphs (the trainer's "
                   "--cuda_graphs False); a fast@ row's `nograph` flag does the same for that row")
    p.add_argument("--ref-ce-chunk", type=int, default=0, help="reference: --loss_chunk_size of the engine (0 = full-logits "
                   "CE, as this row measured before; the trainer's default is 1024)")
    p.add_argument("--ref-batch", type=int, default=8, help="reference: conversations per padded micro-batch (halved once on OOM)")
    p.add_argument("--trl-batch", type=int, default=8, help="trl_liger: micro-batch (halved once on OOM)")
    p.add_argument("--row-timeout", type=int, default=240, help="seconds before a row's subprocess is killed")
    p.add_argument("--_row", dest="row", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_cpu-debug", dest="cpu_debug", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--_row-out", dest="row_out", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a._argv = [x for x in (argv if argv is not None else sys.argv[1:]) if x not in ("run",)]
    return a


def main(argv=None) -> int:
    a = parse(argv)
    from sftbench.core.errors import UserError, exit_with_user_error

    try:
        if a.command == "prepare":
            prepare(a.out, a.source, a.max_length)
            return 0
        if a.row:
            from sftbench.core.io import atomic_write_json

            res = run_row(a)
            atomic_write_json(a.row_out, res)
            print(json.dumps({k: v for k, v in res.items() if k != "losses"}), flush=True)
            return 0
        import torch

        if not torch.cuda.is_available() and not a.cpu_debug:
            raise UserError("bench_train: the benchmark needs a CUDA GPU (run `prepare` on the CPU).")
        if a.data != "synthetic" and not Path(a.data).is_file():
            raise UserError(f"{a.data}: data file not found; run `python scripts/bench_train.py prepare` first, "
                            f"or pass --data synthetic.")
        if a.reuse_rows and not Path(a.reuse_rows).is_file():
            raise UserError(f"{a.reuse_rows}: --reuse-rows file not found (a summary.json written by an earlier run).")
        rows = [r.strip() for r in a.rows.split(",") if r.strip()]
        check_rows(a, rows)
        Path(a.out).mkdir(parents=True, exist_ok=True)
        results = []
        for row in rows:
            if row.startswith("trl_") and _deps_available(a.cpu_debug):
                results.append({"row": row, "status": f"skipped ({_deps_available(a.cpu_debug)})"})
                continue
            if row == "trl_search":
                results.extend(peer_search(parse_trl_search(a.trl_search), lambda r: _child(a, r, []))[0])
                continue
            res = _child(a, row, [])
            if row == "trl_liger" and res.get("status") == "oom" and a.trl_batch > 1:
                res = _child(a, row, ["--trl-batch", str(a.trl_batch // 2)])
            if row == "reference" and res.get("status") == "oom" and a.ref_batch > 1:
                res = _child(a, row, ["--ref-batch", str(a.ref_batch // 2)])
            results.append(res)
        results = _reused(a, results) + results
        examples = load_examples(a.data)
        lengths = [min(len(e["input_ids"]), 96) if a.cpu_debug else len(e["input_ids"]) for e in examples]
        text = report(a, results, model_config(a.cpu_debug), lengths)
        import transformers

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (debug run)"
        head = (f"bench_train: {gpu}, torch {torch.__version__}, transformers {transformers.__version__}, "
                f"{time.strftime('%Y-%m-%d', time.gmtime())}; data {a.data}; {a.batch_convs} conversations/step "
                f"(fast@: {a.sweep_batch_convs}); cap {a.cap_gib} GiB; MFU against {a.peak_tflops:g} TFLOP/s\n")
        from sftbench.core.io import atomic_write_json, atomic_write_text

        atomic_write_json(Path(a.out) / "summary.json", {"args": {k: v for k, v in vars(a).items() if k != "_argv"},
                                                         "results": results})
        atomic_write_text(Path(a.out) / "table.md", head + text)
        for r in results:
            if r.get("profile"):
                atomic_write_text(Path(a.out) / "profile.txt", f"{r['row']}\n{r['profile']}\n")
        print("\n" + head + text, flush=True)
        return 0
    except UserError as e:
        exit_with_user_error(e, "bench_train")


if __name__ == "__main__":
    raise SystemExit(main())
