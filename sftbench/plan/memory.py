"""The reference engine's memory model: peak VRAM by part, fits decisions, auto batch, OOM advice.

The model follows the trainer's reference recipe (sftbench/train, `--engine reference`) tensor by tensor:
fp32 master weights, fp32 gradients and fp32 AdamW state (16 B per trainable parameter), bf16/fp16 autocast
(which keeps a 2 B/param low-precision copy of the weights it multiplies), the residual stream in fp32,
HF gradient checkpointing (only each layer's fp32 input is kept; one layer is recomputed at a time), and the
loss either over the full [tokens, vocab] logits or in checkpointed chunks (loss_functions.chunked_ce_sum).
The per-token activation coefficients were read off HF's Llama code path and checked with a tensor-level
allocation tracker on CPU (SmolLM2-135M shape, bf16 autocast): see `layer_activation_bytes`.
Everything is "worst case": every micro-batch padded to max_length, every position a target.

torch's allocated peak = the sum of the parts; NVML (what nvidia-smi and an 8 GB card see) adds the caching
allocator's slack and the CUDA context (~1.2 GiB, measured on the H100).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from sftbench.core.errors import UserError
from sftbench.plan.dims import SMOLLM2_135M, ModelDims, load_model_dims

GIB = 1024**3

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
        for k, flag in (("max_length", "--model_max_length"), ("micro_batch", "--per_device_train_batch_size"),
                        ("grad_accum", "--gradient_accumulation_steps")):
            if getattr(self, k) < 1:
                raise UserError(f"{flag} must be >= 1 (got {getattr(self, k)}).")
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


def _trainable_bytes(spec: PlanSpec) -> tuple[float, float, float, float, float]:
    """(weights, gradients, AdamW state, foreach temporary, trainable params) in bytes."""
    d = spec.dims
    P = d.num_params
    if spec.method == "lora":
        P_tr = d.lora_params(spec.lora_rank)
        weights = P * (2 if spec.lora_base_dtype == "bf16" else 4) + 4 * P_tr
    else:
        P_tr, weights = P, 4 * P
    return weights, 4 * P_tr, 8 * P_tr, (4 * P_tr if spec.optimizer == "foreach" else 0), P_tr


def _autocast_copies(spec: PlanSpec) -> tuple[float, float]:
    """(forward, backward) bytes of autocast's low-precision weight copies.

    Cached for every trainable fp32 weight it multiplies (the linears and the lm_head) while the forward
    runs; a frozen fp32 base is re-cast per use and the copies are kept by autograd only without
    checkpointing; a bf16 base needs none."""
    d = spec.dims
    lin_all = d.layers * d.layer_linear_params
    if spec.precision == "fp32":
        return 0.0, 0.0
    if spec.method != "lora":
        return 2.0 * (lin_all + d.embed_params), (0.0 if spec.gradient_checkpointing else 2.0 * lin_all)
    if spec.lora_base_dtype == "fp32":
        c = 2.0 * d.layer_linear_params if spec.gradient_checkpointing else 2.0 * lin_all
        return c, c
    return 0.0, 0.0


def _activation_bytes(spec: PlanSpec) -> tuple[float, float, float]:
    """(without checkpointing, with it, one layer's recompute) in bytes for one micro-batch."""
    d = spec.dims
    T, h = spec.micro_batch * spec.max_length, d.hidden
    act_scale = 1.0 if spec.precision != "fp32" else 2.0  # without autocast the bf16 tensors are fp32
    per_layer = layer_activation_bytes(d, spec.method == "lora") * act_scale
    act_full = d.layers * T * per_layer + T * h * 4 * 2          # + final norm input/output
    act_ckpt = d.layers * T * h * 4 + T * per_layer + T * h * 4 * 2  # layer inputs + one layer recomputed
    return act_full, act_ckpt, T * per_layer


def _loss_bytes(spec: PlanSpec) -> tuple[float, float, float]:
    """(chunked CE forward, chunked CE backward, full-logits CE) peak bytes of the loss."""
    d = spec.dims
    lora, autocast = spec.method == "lora", spec.precision != "fp32"
    N = spec.micro_batch * (spec.max_length - 1)  # loss rows (every position a target, worst case)
    V, h = d.vocab, d.hidden
    rows = min(spec.ce_chunk_size, N)
    wv = 0 if (lora and spec.lora_base_dtype == "bf16") or not autocast else 2 * V * h  # bf16 lm_head cast
    head_grad = 0 if lora else 4 * V * h
    fwd = N * h * 4 + 10 * rows * V + wv
    bwd = N * h * 4 + CHUNKED_CE_BYTES_PER_LOGIT * rows * V + wv + head_grad + N * h * 4
    full = FULL_CE_BYTES_PER_LOGIT * N * V  # bf16 logits are freed when the forward returns (12 B in fp32 too)
    return fwd, bwd, full


def estimate_peak_gib(spec: PlanSpec) -> Breakdown:
    """Predicted peak memory of one steady-state optimizer step of the reference engine, by part (GiB)."""
    spec.validate()
    d = spec.dims
    weights, grads, adam, opt_temp, P_tr = _trainable_bytes(spec)
    copies_fwd, copies_bwd = _autocast_copies(spec)
    act_full, act_ckpt, one_layer = _activation_bytes(spec)
    act = act_ckpt if spec.gradient_checkpointing else act_full
    ce_fwd, ce_bwd, ce_full = _loss_bytes(spec)
    grads_live = grads if spec.grad_accum > 1 else 0.0  # accumulating: last micro-batch's gradients are alive
    phases = {}
    if spec.chunked_ce:
        phases["forward (loss chunk)"] = (copies_fwd, act, ce_fwd, grads_live)
        phases["backward (loss chunk)"] = (copies_bwd, act, ce_bwd, grads_live)
    else:
        phases["forward/backward (full logits)"] = (max(copies_fwd, copies_bwd), act, ce_full, grads_live)
    # end of backward: every gradient alive, plus the embedding's own gradient before it is added in
    phases["end of backward"] = (0.0, one_layer if spec.gradient_checkpointing else 0.0,
                                 0.0 if spec.method == "lora" else 4 * d.vocab * d.hidden, grads)
    phases["optimizer step"] = (0.0, 0.0, 0.0, grads)

    def total(name):
        cp, a, ce, g = phases[name]
        return weights + adam + g + cp + a + ce + (opt_temp if name == "optimizer step" else 0)

    best = max(phases, key=total)  # first of equal totals, as before
    cp, a, ce, g = phases[best]
    optim = adam + (opt_temp if best == "optimizer step" else 0)
    allocated = total(best) / GIB
    return Breakdown(
        weights=weights / GIB, gradients=g / GIB, optimizer_state=optim / GIB, master_copies=cp / GIB,
        activations=a / GIB, logits_loss=ce / GIB,
        allocator_slack=ALLOCATOR_SLACK_FRACTION * allocated, cuda_context=CUDA_CONTEXT_GIB,
        activations_no_ckpt=act_full / GIB, activations_ckpt=act_ckpt / GIB,
        logits_full_ce=ce_full / GIB, logits_chunked_ce=max(ce_fwd, ce_bwd) / GIB,
        phase=best, trainable_params=int(P_tr), total_params=int(d.num_params))


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
    """PlanSpec of a sftbench.config.train.TrainConfig (fields read with getattr, so older configs work)."""
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
