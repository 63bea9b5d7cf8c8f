"""Plan a fine-tuning run before starting it: peak VRAM, which GPUs fit, steps, time and cost.

    python -m sftbench.plan --model HuggingFaceTB/SmolLM2-135M --max_length 1024 --micro_batch 1 \
        --grad_accum 64 --data data/demo_chat.jsonl --epochs 5 [--method lora] [--gpu t4]

The memory model follows the trainer's recipe (train_hw_parallel.py) tensor by tensor:
fp32 master weights, fp32 gradients and fp32 AdamW state (16 B per trainable parameter), bf16/fp16 autocast
(which keeps a 2 B/param low-precision copy of the weights it multiplies), the residual stream in fp32,
HF gradient checkpointing (only each layer's fp32 input is kept; one layer is recomputed at a time), and the
loss either over the full [tokens, vocab] logits or in checkpointed chunks (loss_functions.chunked_ce_sum).
The per-token activation coefficients were read off HF's Llama code path and checked with a tensor-level
allocation tracker on CPU (SmolLM2-135M shape, bf16 autocast): see `layer_activation_bytes`.
Everything is "worst case": every micro-batch padded to --max_length, every position a target.

torch's allocated peak = the sum of the parts; NVML (what nvidia-smi and an 8 GB card see) adds the caching
allocator's slack and the CUDA context (~1.2 GiB, measured on the H100).  `scripts/bench_plan.py` measures
both on a GPU and prints predicted vs measured.

API for the trainer: `estimate_peak_gib(spec) -> Breakdown`, `pick_auto_batch(spec, gpu_mem_gib,
effective_batch) -> (micro_batch, grad_accum)`, `oom_advice(spec, gpu_mem_gib) -> str`,
`oom_advice_for_config(train_config)`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from sftbench.errors import UserError, exit_with_user_error
from sftbench.gpus import GPUS, PRICES, PRICES_AS_OF, GPU, get_gpu

GIB = 1024**3
PROG = "python -m sftbench.plan"

# NVML "used" minus torch's reserved memory: CUDA context + cuBLAS/cuDNN workspaces (H100, NOTES.md).
CUDA_CONTEXT_GIB = 1.2
# The caching allocator reserves more than it hands out (block rounding, fragmentation between
# differently sized micro-batches).  Calibrated on "7.6 GiB allocated / 9.0 GiB NVML" (NOTES.md).
ALLOCATOR_SLACK_FRACTION = 0.03
# Bytes per [row, vocab] logit element alive at the peak of the loss.
#   full CE (loss_functions.masked_ce_sum): bf16 logits + the fp32 copy + log_softmax output, and in the
#   backward the log_softmax output + two fp32 gradients + the bf16 gradient: ~12 B.
#   chunked CE: the same per chunk, recomputed under checkpointing in the backward (+ bf16 grad): ~14 B.
FULL_CE_BYTES_PER_LOGIT = 12
CHUNKED_CE_BYTES_PER_LOGIT = 14

# Throughput default: tokens/s of the reference recipe (micro-batch 1, gradient checkpointing) on one H100,
# HF Trainer measured here (NOTES.md: 1,013 real tokens/s).  docs/bench_train.md overrides it when it holds a
# line `plan: h100_tokens_per_s=NNNN micro_batch=M` (written by the training benchmark).
DEFAULT_H100_TOKENS_PER_S = 1013.0
DEFAULT_REF_MICRO_BATCH = 1
REFERENCE_GPU = "h100"
# Model FLOPs utilisation assumed when scaling compute between GPUs.
MFU = 0.35


# ----------------------------------------------------------------------------- model dimensions

@dataclass(frozen=True)
class ModelDims:
    """What the memory model needs from a Llama/Qwen-style causal LM config."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tie_word_embeddings: bool = True
    head_dim: int | None = None
    max_position_embeddings: int | None = None
    name: str = "model"

    @property
    def hd(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def q_dim(self) -> int:
        return self.heads * self.hd

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.hd

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each projection in one decoder layer."""
        h, i = self.hidden, self.intermediate
        return {"q_proj": (h, self.q_dim), "k_proj": (h, self.kv_dim), "v_proj": (h, self.kv_dim),
                "o_proj": (self.q_dim, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def layer_linear_params(self) -> int:
        return sum(a * b for a, b in self.linear_shapes().values())

    @property
    def embed_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def num_params(self) -> int:
        """All parameters (tied embeddings counted once; two RMSNorm weights per layer + the final one)."""
        per_layer = self.layer_linear_params + 2 * self.hidden
        head = 0 if self.tie_word_embeddings else self.embed_params
        return self.embed_params + head + self.layers * per_layer + self.hidden

    def lora_params(self, rank: int) -> int:
        return self.layers * sum(rank * (a + b) for a, b in self.linear_shapes().values())


# SmolLM2-135M (base and Instruct share it), from its config.json: works offline.
SMOLLM2_135M = ModelDims(hidden=576, intermediate=1536, layers=30, heads=9, kv_heads=3, vocab=49152,
                         tie_word_embeddings=True, head_dim=64, max_position_embeddings=8192, name="SmolLM2-135M")
BUILTIN_MODELS = {
    "smollm2-135m-instruct-offline": SMOLLM2_135M,
    "smollm2-offline": SMOLLM2_135M,
    "huggingfacetb/smollm2-135m": SMOLLM2_135M,
    "huggingfacetb/smollm2-135m-instruct": SMOLLM2_135M,
}


def dims_from_config(cfg, name: str = "model") -> ModelDims:
    """ModelDims from a transformers config object or a config.json dict."""
    get = (lambda k, d=None: cfg.get(k, d)) if isinstance(cfg, dict) else (lambda k, d=None: getattr(cfg, k, d))
    text = get("text_config")  # multimodal wrappers keep the LM under text_config
    if text is not None and get("hidden_size") is None:
        return dims_from_config(text, name)
    missing = [k for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
               if get(k) is None]
    if missing:
        raise UserError(f"{name}: config has no {', '.join(missing)}; the planner handles Llama/Qwen/Mistral-style "
                        f"causal LMs (hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, "
                        f"num_key_value_heads, vocab_size, tie_word_embeddings).")
    heads = int(get("num_attention_heads"))
    return ModelDims(hidden=int(get("hidden_size")), intermediate=int(get("intermediate_size")),
                     layers=int(get("num_hidden_layers")), heads=heads,
                     kv_heads=int(get("num_key_value_heads") or heads), vocab=int(get("vocab_size")),
                     tie_word_embeddings=bool(get("tie_word_embeddings", False)),
                     head_dim=get("head_dim"), max_position_embeddings=get("max_position_embeddings"), name=name)


def load_model_dims(name_or_path: str) -> ModelDims:
    """Dimensions of a model: a local dir with config.json, a built-in name, or a hub id (AutoConfig).

    Offline, the SmolLM2-135M names (`smollm2-135m-instruct-offline`, `HuggingFaceTB/SmolLM2-135M[-Instruct]`)
    fall back to the embedded numbers.
    """
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        f = p / "config.json"
        if not f.is_file():
            raise UserError(f"{p}: no config.json in this directory (give a model directory, or a checkpoint-<step>/ inside a run).")
        from sftbench.io import read_json

        return dims_from_config(read_json(f), p.name)
    if p.is_file() and p.name.endswith(".json"):
        from sftbench.io import read_json

        return dims_from_config(read_json(p), p.stem)
    key = name_or_path.strip().lower()
    if key in ("smollm2-135m-instruct-offline", "smollm2-offline"):
        return BUILTIN_MODELS[key]
    if name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/", "~")):
        try:
            from transformers import AutoConfig

            try:  # the local HF cache first: no network round trips (and no retries) when it is there
                return dims_from_config(AutoConfig.from_pretrained(name_or_path, local_files_only=True), name_or_path)
            except UserError:
                raise
            except Exception:
                if key in BUILTIN_MODELS:  # same numbers as the hub's config.json: no need to ask the hub
                    return replace(BUILTIN_MODELS[key], name=name_or_path)
            return dims_from_config(AutoConfig.from_pretrained(name_or_path), name_or_path)
        except UserError:
            raise
        except Exception as e:  # offline, gated, typo: fall back to the embedded numbers if we have them
            if key in BUILTIN_MODELS:
                return replace(BUILTIN_MODELS[key], name=name_or_path)
            raise UserError(f"--model {name_or_path}: could not read its config from the Hugging Face hub "
                            f"({type(e).__name__}). Offline, give a local model directory (with config.json) "
                            f"or the built-in `smollm2-135m-instruct-offline`.") from None
    raise UserError(f"--model {name_or_path}: not a directory, a config.json, a hub id (owner/name) or a built-in "
                    f"name ({', '.join(sorted(BUILTIN_MODELS))}).")


# ----------------------------------------------------------------------------- the spec and the estimate

@dataclass
class PlanSpec:
    """One training configuration, as the memory model sees it."""

    dims: ModelDims = field(default_factory=lambda: SMOLLM2_135M)
    max_length: int = 1024          # tokens per conversation (every micro-batch is assumed padded to it)
    micro_batch: int = 1            # conversations per forward/backward
    grad_accum: int = 64            # micro-batches per optimizer step (>1: gradients live through forwards)
    gradient_checkpointing: bool = True
    method: str = "full"            # full | lora
    lora_rank: int = 16             # LoRA rank on q,k,v,o,gate,up,down
    lora_base_dtype: str = "fp32"   # frozen base weights under LoRA: fp32 | bf16
    precision: str = "bf16"         # bf16 | fp16 (same memory; fp16 adds a scaler) | fp32 (no autocast)
    chunked_ce: bool = True         # loss over chunks of rows (never the full [tokens, vocab] fp32 logits)
    ce_chunk_size: int = 1024       # rows per chunk (the trainer's --loss_chunk_size)
    optimizer: str = "fused"        # fused AdamW (the trainer on CUDA) | foreach (one param-sized temporary)

    def validate(self) -> "PlanSpec":
        for k in ("max_length", "micro_batch", "grad_accum"):
            if getattr(self, k) < 1:
                raise UserError(f"--{k} must be >= 1 (got {getattr(self, k)}).")
        if self.method not in ("full", "lora"):
            raise UserError(f"--method {self.method}: choose full or lora.")
        if self.method == "lora" and self.lora_rank < 1:
            raise UserError(f"--lora_rank must be >= 1 (got {self.lora_rank}).")
        if self.lora_base_dtype not in ("fp32", "bf16"):
            raise UserError(f"--lora_base_dtype {self.lora_base_dtype}: choose fp32 or bf16.")
        if self.precision not in ("bf16", "fp16", "fp32"):
            raise UserError(f"--precision {self.precision}: choose bf16, fp16 or fp32.")
        if self.optimizer not in ("fused", "foreach"):
            raise UserError(f"--optimizer {self.optimizer}: choose fused or foreach.")
        if self.chunked_ce and self.ce_chunk_size < 1:
            raise UserError(f"--loss_chunk_size must be >= 1 with chunked CE (got {self.ce_chunk_size}).")
        return self


@dataclass
class Breakdown:
    """Predicted peak device memory in GiB, by part.  `total` is what NVML would show."""

    weights: float                 # parameters as stored (fp32 masters; LoRA: frozen base + adapters)
    gradients: float               # fp32 gradients of trainable parameters
    optimizer_state: float         # AdamW exp_avg + exp_avg_sq, fp32 (+ a foreach temporary)
    master_copies: float           # bf16/fp16 working copies of the fp32 weights made by autocast
    activations: float             # saved for backward (with the spec's checkpointing setting)
    logits_loss: float             # loss buffers: [rows, vocab] logits, their fp32 copies and gradients
    allocator_slack: float         # caching allocator: reserved minus allocated
    cuda_context: float            # CUDA context and library workspaces (NVML only)
    activations_no_ckpt: float = 0.0   # for comparison: activations without gradient checkpointing
    activations_ckpt: float = 0.0      # ... and with it
    logits_full_ce: float = 0.0        # for comparison: loss buffers with the full-logits CE
    logits_chunked_ce: float = 0.0     # ... and with the chunked CE
    phase: str = ""                    # where the peak happens
    trainable_params: int = 0
    total_params: int = 0

    @property
    def torch_allocated(self) -> float:
        """Predicted torch.cuda.max_memory_allocated() in GiB."""
        return (self.weights + self.gradients + self.optimizer_state + self.master_copies + self.activations
                + self.logits_loss)

    @property
    def total(self) -> float:
        """Predicted NVML peak (device memory used) in GiB."""
        return self.torch_allocated + self.allocator_slack + self.cuda_context

    def as_dict(self) -> dict:
        d = asdict(self)
        d["torch_allocated"] = round(self.torch_allocated, 4)
        d["total"] = round(self.total, 4)
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}


def layer_activation_bytes(d: ModelDims, lora: bool = False) -> float:
    """Bytes saved for backward per token in one decoder layer (bf16/fp16 autocast, no checkpointing).

    fp32 residual stream: the layer input and the mid-layer residual (2 x 4h) and the two RMSNorm outputs
    (2 x 4h); autocast's bf16 copies of the normed input for q, k, v, gate, up (5 x 2h); attention:
    rotated q, rotated k, v, the SDPA output and o_proj's input (3 x 2*q_dim + 2 x 2*kv_dim); MLP: gate, up,
    silu(gate), their product (4 x 2i).  RoPE saves nothing big (cos/sin need no grad).  Checked against a
    tensor-level allocation tracker on CPU: 30.9 KB measured vs 31.5 KB here for SmolLM2-135M.
    LoRA adds the adapters' bf16 inputs (peft casts x to the adapter dtype, autocast back): 2*(5h + q_dim + i).
    """
    h, i = d.hidden, d.intermediate
    b = 26 * h + 6 * d.q_dim + 4 * d.kv_dim + 8 * i
    if lora:
        b += 2 * (5 * h + d.q_dim + i)
    return float(b)


def estimate_peak_gib(spec: PlanSpec) -> Breakdown:
    """Predicted peak memory of one steady-state optimizer step of the trainer, by part (GiB)."""
    spec.validate()
    d = spec.dims
    P = d.num_params
    lora = spec.method == "lora"
    lin_all = d.layers * d.layer_linear_params
    if lora:
        P_tr = d.lora_params(spec.lora_rank)
        base_bytes = 2 if spec.lora_base_dtype == "bf16" else 4
        weights = P * base_bytes + 4 * P_tr
    else:
        P_tr = P
        weights = 4 * P
    grads = 4 * P_tr
    adam = 8 * P_tr
    opt_temp = 4 * P_tr if spec.optimizer == "foreach" else 0
    autocast = spec.precision != "fp32"
    T = spec.micro_batch * spec.max_length     # tokens in one micro-batch (padded, worst case)
    N = spec.micro_batch * (spec.max_length - 1)  # loss rows (every position a target, worst case)
    V, h = d.vocab, d.hidden

    # autocast's low-precision weight copies: cached for every trainable fp32 weight it multiplies (the
    # linears and the lm_head) while the forward runs; a frozen fp32 base is re-cast per use and the copies
    # are kept by autograd only without checkpointing; a bf16 base needs none.
    if not autocast:
        copies_fwd = copies_bwd = 0.0
    elif not lora:
        copies_fwd = 2.0 * (lin_all + d.embed_params)
        copies_bwd = 0.0 if spec.gradient_checkpointing else 2.0 * lin_all
    elif spec.lora_base_dtype == "fp32":
        copies_fwd = copies_bwd = (2.0 * d.layer_linear_params if spec.gradient_checkpointing else 2.0 * lin_all)
    else:
        copies_fwd = copies_bwd = 0.0

    act_scale = 1.0 if autocast else 2.0  # without autocast the bf16 tensors above are fp32
    per_layer = layer_activation_bytes(d, lora) * act_scale
    act_full = d.layers * T * per_layer + T * h * 4 * 2          # + final norm input/output
    act_ckpt = d.layers * T * h * 4 + T * per_layer + T * h * 4 * 2  # layer inputs + one layer recomputed
    act = act_ckpt if spec.gradient_checkpointing else act_full

    rows = min(spec.ce_chunk_size, N)
    wv = 0 if (lora and spec.lora_base_dtype == "bf16") or not autocast else 2 * V * h  # bf16 lm_head cast
    head_grad = 0 if lora else 4 * V * h
    ce_chunked_fwd = N * h * 4 + 10 * rows * V + wv
    ce_chunked_bwd = N * h * 4 + CHUNKED_CE_BYTES_PER_LOGIT * rows * V + wv + head_grad + N * h * 4
    ce_full = FULL_CE_BYTES_PER_LOGIT * N * V + 2 * T * V * 0  # bf16 logits are freed when the forward returns
    if not autocast:
        ce_full = 12 * N * V
    grads_live = grads if spec.grad_accum > 1 else 0.0  # accumulating: last micro-batch's gradients are alive

    phases = {}
    if spec.chunked_ce:
        phases["forward (loss chunk)"] = (copies_fwd, act, ce_chunked_fwd, grads_live)
        phases["backward (loss chunk)"] = (copies_bwd, act, ce_chunked_bwd, grads_live)
    else:
        phases["forward/backward (full logits)"] = (max(copies_fwd, copies_bwd), act, ce_full, grads_live)
    # end of backward: every gradient alive, plus the embedding's own gradient before it is added in
    phases["end of backward"] = (0.0, T * per_layer if spec.gradient_checkpointing else 0.0,
                                 0.0 if lora else 4 * V * h, grads)
    phases["optimizer step"] = (0.0, 0.0, 0.0, grads)
    best, best_total = None, -1.0
    for name, (cp, a, ce, g) in phases.items():
        tot = weights + adam + g + cp + a + ce + (opt_temp if name == "optimizer step" else 0)
        if tot > best_total:
            best, best_total = name, tot
    cp, a, ce, g = phases[best]
    optim = adam + (opt_temp if best == "optimizer step" else 0)
    allocated = best_total / GIB
    ce_chunked_peak = max(ce_chunked_fwd, ce_chunked_bwd)
    return Breakdown(
        weights=weights / GIB, gradients=g / GIB, optimizer_state=optim / GIB, master_copies=cp / GIB,
        activations=a / GIB, logits_loss=ce / GIB,
        allocator_slack=ALLOCATOR_SLACK_FRACTION * allocated, cuda_context=CUDA_CONTEXT_GIB,
        activations_no_ckpt=act_full / GIB, activations_ckpt=act_ckpt / GIB,
        logits_full_ce=ce_full / GIB, logits_chunked_ce=ce_chunked_peak / GIB,
        phase=best, trainable_params=int(P_tr), total_params=int(P))


def fits(spec: PlanSpec, gpu_mem_gib: float, headroom: float = 0.03) -> bool:
    """Does the predicted NVML peak stay under the card's memory, keeping `headroom` (fraction) spare?"""
    return estimate_peak_gib(spec).total <= gpu_mem_gib * (1.0 - headroom)


def max_micro_batch(spec: PlanSpec, gpu_mem_gib: float, limit: int = 1024) -> int:
    """Largest micro-batch at spec.max_length that fits (0 if even 1 does not)."""
    best = 0
    mb = 1
    while mb <= limit and fits(replace(spec, micro_batch=mb), gpu_mem_gib):
        best = mb
        mb = mb * 2 if mb < 8 else mb + 8  # coarse steps: the answer is a planning number
    if best >= 8:  # refine between best and the first miss
        lo, hi = best, min(mb, limit + 1)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(replace(spec, micro_batch=mid), gpu_mem_gib) else (lo, mid)
        best = lo
    return best


def max_length_that_fits(spec: PlanSpec, gpu_mem_gib: float, limit: int | None = None) -> int:
    """Largest max_length (a multiple of 64) at spec.micro_batch that fits (0 if 64 does not)."""
    limit = limit or spec.dims.max_position_embeddings or 131072
    if not fits(replace(spec, max_length=64), gpu_mem_gib):
        return 0
    lo, hi = 1, max(1, limit // 64)
    if fits(replace(spec, max_length=hi * 64), gpu_mem_gib):
        return hi * 64
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(replace(spec, max_length=mid * 64), gpu_mem_gib) else (lo, mid)
    return lo * 64


def pick_auto_batch(spec: PlanSpec, gpu_mem_gib: float, effective_batch: int) -> tuple[int, int]:
    """(micro_batch, grad_accum) with micro_batch * grad_accum == effective_batch and the largest micro-batch
    (a divisor of effective_batch) whose predicted NVML peak fits gpu_mem_gib.  (1, effective_batch) when
    none fits: the caller should then show oom_advice()."""
    if effective_batch < 1:
        raise UserError(f"effective batch must be >= 1 (got {effective_batch}).")
    best = 1
    for mb in range(1, effective_batch + 1):
        if effective_batch % mb:
            continue
        if fits(replace(spec, micro_batch=mb, grad_accum=max(1, effective_batch // mb)), gpu_mem_gib):
            best = mb
        elif mb > best:
            break  # memory grows with the micro-batch: larger divisors will not fit either
    return best, effective_batch // best


def oom_advice(spec: PlanSpec, gpu_mem_gib: float) -> str:
    """One paragraph: what to change so this configuration fits gpu_mem_gib, most effective first."""
    b = estimate_peak_gib(spec)
    lines = [f"Predicted peak for this configuration: {b.total:.2f} GiB on the device (torch {b.torch_allocated:.2f} GiB: "
             f"weights+gradients+AdamW {b.weights + b.gradients + b.optimizer_state:.2f}, activations {b.activations:.2f}, "
             f"logits/loss {b.logits_loss:.2f}; CUDA context ~{b.cuda_context:.1f}) against {gpu_mem_gib:.1f} GiB."]
    tries = []
    if spec.micro_batch > 1:
        s = replace(spec, micro_batch=max(1, spec.micro_batch // 2), grad_accum=spec.grad_accum * 2)
        tries.append((f"halve the micro-batch and double accumulation (--per_device_train_batch_size {s.micro_batch} "
                      f"--gradient_accumulation_steps {s.grad_accum}: same effective batch)", s))
    if not spec.gradient_checkpointing:
        s = replace(spec, gradient_checkpointing=True)
        tries.append(("enable gradient checkpointing (--gradient_checkpointing True)", s))
    if not spec.chunked_ce:
        s = replace(spec, chunked_ce=True)
        tries.append(("use the chunked cross-entropy (--loss_chunk_size 1024) instead of full logits", s))
    elif spec.ce_chunk_size > 256:
        s = replace(spec, ce_chunk_size=256)
        tries.append(("use smaller loss chunks (--loss_chunk_size 256)", s))
    if spec.max_length > 512:
        s = replace(spec, max_length=max(256, spec.max_length // 2))
        tries.append((f"shorten conversations (--model_max_length {s.max_length})", s))
    s = replace(spec, micro_batch=1, grad_accum=spec.micro_batch * spec.grad_accum, gradient_checkpointing=True,
                chunked_ce=True, ce_chunk_size=256, max_length=min(spec.max_length, 512))
    tries.append(("run the minimum-memory preset (bash scripts/sft_min_vram.sh)", s))
    if spec.method == "full":
        s = replace(spec, method="lora", gradient_checkpointing=True)
        tries.append((f"train LoRA adapters instead of all weights (--method lora, rank {spec.lora_rank})", s))
    parts = []
    for what, s in tries:
        t = estimate_peak_gib(s).total
        parts.append(f"{what}: ~{t:.2f} GiB{' (fits)' if t <= gpu_mem_gib * 0.97 else ''}")
    lines.append("Try, in this order: " + "; ".join(parts) + ".")
    lines.append("Resume from the last checkpoint with --resume_from_checkpoint latest. "
                 "Check a plan first with `python -m sftbench.plan` (or bash scripts/plan.sh).")
    return " ".join(lines)


def spec_from_train_config(cfg, dims: ModelDims | None = None) -> PlanSpec:
    """PlanSpec of a sftbench.train.config.TrainConfig (fields read with getattr, so older configs work)."""
    if dims is None:
        name = getattr(cfg, "model_name_or_path", "smollm2-135m-instruct-offline")
        try:
            dims = load_model_dims(name)
        except UserError:
            dims = SMOLLM2_135M
    chunk = int(getattr(cfg, "loss_chunk_size", 1024) or 0)
    precision = "bf16" if getattr(cfg, "bf16", False) else "fp16" if getattr(cfg, "fp16", False) else "fp32"
    return PlanSpec(dims=dims, max_length=int(getattr(cfg, "model_max_length", 1024)),
                    micro_batch=int(getattr(cfg, "per_device_train_batch_size", 1)),
                    grad_accum=int(getattr(cfg, "gradient_accumulation_steps", 1)),
                    gradient_checkpointing=bool(getattr(cfg, "gradient_checkpointing", False)),
                    method=str(getattr(cfg, "method", "full") or "full"),
                    lora_rank=int(getattr(cfg, "lora_rank", 16) or 16),
                    lora_base_dtype=str(getattr(cfg, "lora_base_dtype", "fp32") or "fp32"),
                    precision=precision, chunked_ce=chunk > 0, ce_chunk_size=chunk if chunk > 0 else 1024)


def oom_advice_for_config(cfg, gpu_mem_gib: float | None = None) -> str:
    """oom_advice() for the trainer's config on the current GPU (or gpu_mem_gib / the config's memory cap)."""
    if gpu_mem_gib is None:
        gpu_mem_gib = getattr(cfg, "memory_cap_gib", None)
    if gpu_mem_gib is None:
        try:
            import torch

            gpu_mem_gib = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / GIB
        except Exception:
            gpu_mem_gib = 8.0
    return oom_advice(spec_from_train_config(cfg), float(gpu_mem_gib))


# ----------------------------------------------------------------------------- data, steps, time

@dataclass
class DataSize:
    examples: int
    avg_tokens: float     # per conversation, before truncation
    source: str


def _record_chars(rec) -> tuple[int, int]:
    """(characters of text, number of turns) in one chat record."""
    if isinstance(rec, dict):
        msgs = rec.get("messages") or rec.get("conversations")
        if isinstance(msgs, list):
            chars = 0
            for m in msgs:
                if isinstance(m, dict):
                    c = m.get("content", m.get("value", ""))
                    chars += len(c) if isinstance(c, str) else len(json.dumps(c))
            return chars, len(msgs)
        return sum(len(v) for v in rec.values() if isinstance(v, str)), 1
    return len(json.dumps(rec)), 1


def measure_data(data: str, avg_tokens: float | None = None) -> DataSize:
    """--data: an integer N (conversations) or a .jsonl/.json file (counted; tokens ~ chars/4 + 5 per turn)."""
    s = str(data).strip()
    if re.fullmatch(r"\d+", s):
        n = int(s)
        if n < 1:
            raise UserError("--data: the number of examples must be >= 1.")
        return DataSize(n, float(avg_tokens or 512), f"{n} examples (given)")
    p = Path(s).expanduser()
    repo_p = Path(__file__).resolve().parents[1] / p
    if not p.exists() and not p.is_absolute() and repo_p.exists():
        p = repo_p  # e.g. the default data/demo_chat.jsonl when run from outside the repository
    if not p.exists():
        raise UserError(f"--data {s}: no such file, and not a number of examples. Give a .jsonl/.json chat file or an integer.")
    if p.is_dir():
        raise UserError(f"--data {p}: is a directory; give one .jsonl/.json file or a number of examples.")
    chars = turns = 0
    if p.suffix == ".json":
        from sftbench.io import read_json

        obj = read_json(p)
        recs = obj if isinstance(obj, list) else obj.get("data", obj.get("train", [])) if isinstance(obj, dict) else []
        if not isinstance(recs, list) or not recs:
            raise UserError(f"{p}: expected a JSON list of chat records.")
        for r in recs:
            c, t = _record_chars(r)
            chars, turns = chars + c, turns + t
        n = len(recs)
    else:
        from sftbench.io import iter_jsonl

        n = 0
        for _, r in iter_jsonl(p):
            c, t = _record_chars(r)
            chars, turns, n = chars + c, turns + t, n + 1
        if n == 0:
            raise UserError(f"{p}: no records (empty file).")
    est = (chars / 4 + 5 * turns) / n  # ~4 characters per token; <|im_start|>role\n ... <|im_end|>\n per turn
    return DataSize(n, float(avg_tokens) if avg_tokens else est,
                    f"{p} ({n} records, ~{est:.0f} tokens each by chars/4" + (f"; --avg_tokens {avg_tokens} used)" if avg_tokens else ")"))


def reference_throughput(root: Path | None = None) -> tuple[float, int, str]:
    """(tokens/s on an H100, micro-batch it was measured at, where the number comes from)."""
    root = root or Path(__file__).resolve().parents[1]
    f = root / "docs" / "bench_train.md"
    if f.is_file():
        m = re.search(r"plan:\s*h100_tokens_per_s\s*=\s*([0-9][0-9_.,]*)(?:\s+micro_batch\s*=\s*(\d+))?", f.read_text())
        if m:
            return float(m.group(1).replace(",", "").replace("_", "")), int(m.group(2) or 1), f"{f.name} (measured)"
    return DEFAULT_H100_TOKENS_PER_S, DEFAULT_REF_MICRO_BATCH, "default: HF Trainer on one H100 (NOTES.md), micro-batch 1"


def train_flops_per_token(spec: PlanSpec, seq: float) -> float:
    """Matmul FLOPs per trained token: forward 2x params (+ attention), backward 2x (inputs) + 2x (weights,
    full only), + one extra forward with checkpointing."""
    d = spec.dims
    fwd = 2.0 * (d.layers * d.layer_linear_params + d.embed_params) + 2.0 * d.layers * d.q_dim * seq  # causal attn
    bwd = fwd * (1.0 if spec.method == "lora" else 2.0)
    return fwd + bwd + (fwd if spec.gradient_checkpointing else 0.0)


def tokens_per_second(spec: PlanSpec, gpu: GPU, ref_tps: float, ref_mb: int, avg_len: float) -> float:
    """Throughput on `gpu`: a fixed per-micro-batch overhead (kernel launches, Python; does not scale with
    TFLOPS) plus compute scaled by the GPU's published peak, both calibrated on the H100 reference."""
    ref = get_gpu(REFERENCE_GPU)
    ref_spec = replace(spec, micro_batch=ref_mb)
    ref_tokens = ref_mb * avg_len
    compute_ref = ref_tokens * train_flops_per_token(ref_spec, avg_len) / (ref.tflops * 1e12 * MFU)
    overhead = max(ref_tokens / ref_tps - compute_ref, 0.0)
    tokens = spec.micro_batch * avg_len
    compute = tokens * train_flops_per_token(spec, avg_len) / (gpu.tflops * 1e12 * MFU)
    return tokens / (overhead + compute)


@dataclass
class GpuRow:
    gpu: GPU
    fits: bool
    total_gib: float
    max_micro_batch: int
    max_length: int
    tokens_per_s: float
    hours: float
    cost_usd: float


def plan_rows(spec: PlanSpec, data: DataSize, epochs: float, num_gpus: int = 1, gpus: list[GPU] | None = None,
              ref: tuple[float, int, str] | None = None, prices: dict | None = None) -> tuple[int, list[GpuRow]]:
    """(optimizer steps, one row per GPU)."""
    ref_tps, ref_mb, _ = ref or reference_throughput()
    prices = PRICES if prices is None else prices
    window = spec.micro_batch * spec.grad_accum * num_gpus
    steps_per_epoch = data.examples // window
    steps = max(1, math.ceil(epochs * steps_per_epoch)) if steps_per_epoch else 0
    avg_len = min(data.avg_tokens, spec.max_length)
    tokens = steps * window * avg_len
    b = estimate_peak_gib(spec)
    rows = []
    for g in gpus or GPUS:
        tps = tokens_per_second(spec, g, ref_tps, ref_mb, avg_len) * num_gpus
        hours = tokens / tps / 3600 if tps > 0 else float("inf")
        rows.append(GpuRow(g, b.total <= g.mem_gib * 0.97, b.total, max_micro_batch(spec, g.mem_gib),
                           max_length_that_fits(spec, g.mem_gib), tps, hours,
                           hours * num_gpus * prices.get(g.key, float("nan"))))
    return steps, rows


# ----------------------------------------------------------------------------- CLI

def _bool(s: str) -> bool:
    v = str(s).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Plan a fine-tuning run: predicted peak VRAM by part, which GPUs it fits (and the largest "
        "micro-batch / length on each), optimizer steps, and time and cost per GPU.  Memory follows the trainer's "
        "recipe (fp32 master weights + AdamW, bf16/fp16 autocast, optional gradient checkpointing and chunked CE); "
        "'total' is device memory as NVML / nvidia-smi report it (torch's peak + allocator slack + ~1.2 GiB CUDA "
        "context).  Everything assumes every micro-batch padded to --max_length.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct-offline",
                   help="Model whose config.json to read: a local directory, a hub id (needs network unless "
                        "cached; HuggingFaceTB/SmolLM2-135M[-Instruct] fall back to built-in numbers), or "
                        "`smollm2-135m-instruct-offline`.")
    p.add_argument("--max_length", type=int, default=1024, help="Tokens per conversation (the trainer's --model_max_length).")
    p.add_argument("--micro_batch", type=int, default=1, help="Conversations per micro-batch (--per_device_train_batch_size).")
    p.add_argument("--grad_accum", type=int, default=64, help="Micro-batches per optimizer step (--gradient_accumulation_steps).")
    p.add_argument("--data", default="data/demo_chat.jsonl",
                   help="A .jsonl/.json chat file (records counted, tokens estimated by chars/4) or a number of examples.")
    p.add_argument("--avg_tokens", type=float, default=None,
                   help="Average tokens per conversation (overrides the chars/4 estimate; default 512 when --data is a number).")
    p.add_argument("--epochs", type=float, default=5.0, help="Passes over the data (--num_train_epochs).")
    p.add_argument("--method", choices=["full", "lora"], default="full", help="Train all weights, or LoRA adapters on q,k,v,o,gate,up,down.")
    p.add_argument("--lora_rank", type=int, default=16, help="LoRA rank r (with --method lora).")
    p.add_argument("--lora_base_dtype", choices=["fp32", "bf16"], default="fp32", help="Dtype of the frozen base weights under LoRA.")
    p.add_argument("--gradient_checkpointing", type=_bool, default=True, help="Recompute activations in the backward (true/false).")
    p.add_argument("--loss_chunk_size", type=int, default=1024,
                   help="Rows per chunk of the chunked cross-entropy (the trainer's flag); 0 = full [tokens, vocab] logits.")
    p.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="bf16",
                   help="Autocast dtype (bf16 and fp16 need the same memory; T4/P100 use fp16).")
    p.add_argument("--optimizer", choices=["fused", "foreach"], default="fused",
                   help="AdamW implementation: fused (the trainer on CUDA) or foreach (HF Trainer's default; one more param-sized buffer).")
    p.add_argument("--gpu", default=None,
                   help=f"Only these GPUs (comma-separated keys: {', '.join(g.key for g in GPUS)}). Default: all.")
    p.add_argument("--gpu_mem_gib", type=float, default=None, help="Also plan for a custom card with this much memory (GiB).")
    p.add_argument("--num_gpus", type=int, default=1, help="Data-parallel GPUs (e.g. 2 for Kaggle's T4 x2): divides steps and time.")
    p.add_argument("--tokens_per_s", type=float, default=None,
                   help="Measured H100 training tokens/s to scale from (default: docs/bench_train.md's `plan:` line, else 1013).")
    p.add_argument("--price", action="append", default=[], metavar="KEY=USD_PER_HOUR",
                   help=f"Override a GPU-hour price (table dated {PRICES_AS_OF}); repeatable.")
    p.add_argument("--json", action="store_true", help="Print the plan as JSON instead of tables.")
    return p


def spec_from_args(a) -> PlanSpec:
    dims = load_model_dims(a.model)
    chunk = a.loss_chunk_size
    return PlanSpec(dims=dims, max_length=a.max_length, micro_batch=a.micro_batch, grad_accum=a.grad_accum,
                    gradient_checkpointing=a.gradient_checkpointing, method=a.method, lora_rank=a.lora_rank,
                    lora_base_dtype=a.lora_base_dtype, precision=a.precision, chunked_ce=chunk > 0,
                    ce_chunk_size=chunk if chunk > 0 else 1024, optimizer=a.optimizer).validate()


def format_plan(spec: PlanSpec, data: DataSize, epochs: float, num_gpus: int, gpus: list[GPU], ref, prices) -> str:
    b = estimate_peak_gib(spec)
    d = spec.dims
    steps, rows = plan_rows(spec, data, epochs, num_gpus, gpus, ref, prices)
    out = []
    out.append(f"Model {d.name}: {b.total_params / 1e6:.1f}M parameters (hidden {d.hidden}, intermediate {d.intermediate}, "
               f"{d.layers} layers, {d.heads} heads / {d.kv_heads} KV heads, vocab {d.vocab}, "
               f"{'tied' if d.tie_word_embeddings else 'untied'} embeddings)")
    meth = (f"LoRA r={spec.lora_rank} ({b.trainable_params / 1e6:.2f}M trainable, base {spec.lora_base_dtype})"
            if spec.method == "lora" else "full fine-tuning")
    out.append(f"Run: {meth}, {spec.precision} autocast over fp32 masters, max_length {spec.max_length}, micro-batch "
               f"{spec.micro_batch} x accumulation {spec.grad_accum}" + (f" x {num_gpus} GPUs" if num_gpus > 1 else "")
               + f", gradient checkpointing {'on' if spec.gradient_checkpointing else 'off'}, "
               + (f"chunked CE ({spec.ce_chunk_size} rows)" if spec.chunked_ce else "full-logits CE") + f", AdamW {spec.optimizer}")
    out.append("")
    out.append(f"Peak VRAM (per GPU; peak during: {b.phase})")
    rows_mem = [
        ("weights (fp32 masters" + (", frozen base + adapters)" if spec.method == "lora" else ")"), b.weights),
        ("gradients (fp32)", b.gradients),
        ("optimizer state (AdamW, fp32)", b.optimizer_state),
        (f"{'bf16/fp16' if spec.precision != 'fp32' else 'no'} working copies of the weights (autocast)", b.master_copies),
        (f"activations ({'with' if spec.gradient_checkpointing else 'without'} gradient checkpointing)", b.activations),
        ("logits / loss buffers", b.logits_loss),
        ("= torch peak allocated", b.torch_allocated),
        ("allocator slack (reserved - allocated)", b.allocator_slack),
        ("CUDA context + libraries (NVML only)", b.cuda_context),
        ("= total device memory (NVML)", b.total),
    ]
    for k, v in rows_mem:
        out.append(f"  {k:<58s} {v:7.2f} GiB")
    out.append(f"  for comparison: activations with checkpointing {b.activations_ckpt:.2f} GiB, without {b.activations_no_ckpt:.2f} GiB; "
               f"loss buffers chunked {b.logits_chunked_ce:.2f} GiB, full logits {b.logits_full_ce:.2f} GiB")
    out.append("")
    window = spec.micro_batch * spec.grad_accum * num_gpus
    out.append(f"Data: {data.source}; effective batch {window}; {data.examples // window} optimizer steps per epoch x "
               f"{epochs:g} epochs = {steps} optimizer steps")
    if data.examples < window:
        out.append(f"  WARNING: fewer examples ({data.examples}) than one effective batch ({window}): the trainer will refuse; "
                   f"lower --grad_accum.")
    ref_tps, ref_mb, ref_src = ref
    out.append(f"Throughput scaled from {ref_tps:,.0f} tokens/s on an H100 at micro-batch {ref_mb} ({ref_src}); prices as of "
               f"{PRICES_AS_OF} (sftbench/gpus.py, --price KEY=USD)")
    out.append("")
    hdr = f"  {'GPU':<22s} {'GiB':>5s} {'fits':>5s} {'max micro-batch':>15s} {'max length':>10s} {'tokens/s':>9s} {'hours':>7s} {'cost $':>7s}"
    out.append(f"Per GPU (this config needs {b.total:.2f} GiB; max micro-batch at length {spec.max_length}, max length at micro-batch {spec.micro_batch}):")
    out.append(hdr)
    for r in rows:
        cost = "free" if r.cost_usd == 0 else ("?" if math.isnan(r.cost_usd) else f"{r.cost_usd:.2f}")
        out.append(f"  {r.gpu.name:<22s} {r.gpu.mem_gib:5.1f} {'yes' if r.fits else 'NO':>5s} {r.max_micro_batch:>15d} "
                   f"{r.max_length:>10d} {r.tokens_per_s:>9,.0f} {r.hours:>7.2f} {cost:>7s}")
    misfits = [r for r in rows if not r.fits]
    if misfits:
        out.append("")
        out.append(f"Does not fit {', '.join(r.gpu.key for r in misfits)}. " + oom_advice(spec, min(r.gpu.mem_gib for r in misfits)))
    out.append("")
    out.append("Estimates: worst-case padding; time assumes every conversation at the average length. Check with "
               "scripts/bench_plan.py on a GPU (predicted vs measured).")
    out.append("Memory and time are for the trainer's reference engine. On a CUDA GPU the default --engine auto trains "
               "with the fast engine (packed micro-batches), measured at ~130k tokens/s on one H100 under an 8 GiB cap "
               "with a 5.6 GiB peak (docs/gpu_results.md); its memory is planned by --vram_target_gib.")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        spec = spec_from_args(a)
        if a.num_gpus < 1:
            raise UserError(f"--num_gpus must be >= 1 (got {a.num_gpus}).")
        if a.epochs <= 0:
            raise UserError(f"--epochs must be > 0 (got {a.epochs}).")
        data = measure_data(a.data, a.avg_tokens)
        gpus = [get_gpu(k) for k in a.gpu.split(",") if k.strip()] if a.gpu else list(GPUS)
        if a.gpu_mem_gib:
            gpus.append(GPU("custom", f"custom {a.gpu_mem_gib:g} GiB", a.gpu_mem_gib, get_gpu(REFERENCE_GPU).tflops, True, "--gpu_mem_gib"))
        prices = dict(PRICES)
        for item in a.price:
            k, sep, v = item.partition("=")
            try:
                prices[get_gpu(k).key] = float(v)
            except ValueError:
                raise UserError(f"--price {item}: expected KEY=USD_PER_HOUR, e.g. --price h100=2.10.") from None
        ref = (a.tokens_per_s, 1, "--tokens_per_s") if a.tokens_per_s else reference_throughput()
        if a.json:
            b = estimate_peak_gib(spec)
            steps, rows = plan_rows(spec, data, a.epochs, a.num_gpus, gpus, ref, prices)
            print(json.dumps({"spec": {k: v for k, v in asdict(spec).items() if k != "dims"}, "model": asdict(spec.dims),
                              "breakdown_gib": b.as_dict(), "examples": data.examples, "avg_tokens": data.avg_tokens,
                              "optimizer_steps": steps, "prices_as_of": PRICES_AS_OF,
                              "gpus": [{"gpu": r.gpu.key, "mem_gib": r.gpu.mem_gib, "fits": r.fits,
                                        "max_micro_batch": r.max_micro_batch, "max_length": r.max_length,
                                        "tokens_per_s": round(r.tokens_per_s, 1), "hours": round(r.hours, 3),
                                        "cost_usd": None if math.isnan(r.cost_usd) else round(r.cost_usd, 2)} for r in rows]},
                             indent=2))
        else:
            print(format_plan(spec, data, a.epochs, a.num_gpus, gpus, ref, prices))
    except UserError as e:
        exit_with_user_error(e, PROG)
    return 0


if __name__ == "__main__":
    sys.exit(main())
