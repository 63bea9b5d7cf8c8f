"""The fast engine's memory model: packed rows of `token_budget` tokens, checkpointed layers, fused CE.

The number of checkpointed layers is the trainer's own choice (sftbench.engine.fast_model.
choose_checkpoint_layers, with the budget the trainer derives from --vram_target_gib / --memory_cap_gib /
the card), so the plan shows the configuration the trainer will run.  The predicted peak then uses
coefficients calibrated on measured runs (the trainer's choice keeps its own, more conservative 24 KiB per
stored layer so that it errs on the safe side):

    torch peak = 16 B x params (fp32 weights, gradients, two AdamW moments: all alive, the fast engine
                 accumulates into fp32 gradients)
               + fused CE: 8 B x chunk x vocab (logits/softmax of one chunk) + 3 x 4 B x vocab x hidden
               + per token: 4 x hidden B per checkpointed layer (its fp32 input), FAST_STORED_LAYER_BYTES
                 per stored layer, one layer's activations while it is recomputed, 8 x hidden B (final norm)
    NVML       = torch peak x (1 + 3% allocator slack) + FAST_CUDA_CONTEXT_GIB

The coefficients were calibrated on measured runs of the SmolLM2-135M shape; the runs, their GPUs and dates,
and the predicted-vs-measured check are in docs/bench_train.md ("Planner calibration").
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

from sftbench.plan.dims import SMOLLM2_135M, ModelDims
from sftbench.plan.memory import ALLOCATOR_SLACK_FRACTION, GIB, Breakdown
from sftbench.engine.memory_budget import DEFAULT_GPU_TOKEN_BUDGET, choose_checkpoint_layers, torch_budget_bytes

# Activation bytes per token of a stored (not checkpointed) compiled layer, measured (see the docstring).
FAST_STORED_LAYER_BYTES = 2304 + 16384
# NVML minus torch's peak for the compiled engine: CUDA context, cuBLAS and inductor workspaces.
FAST_CUDA_CONTEXT_GIB = 1.35


@dataclass
class FastSpec:
    """One fast-engine configuration, as the memory model sees it."""

    dims: ModelDims = SMOLLM2_135M
    token_budget: int = DEFAULT_GPU_TOKEN_BUDGET   # tokens per packed micro-batch (the trainer's --token_budget)
    ce_chunk_size: int = 1024                      # the trainer's --loss_chunk_size (0 -> 1024, as it does)
    vram_target_gib: float | None = 6.0            # the trainer's --vram_target_gib
    memory_cap_gib: float | None = None            # the trainer's --memory_cap_gib
    checkpoint_layers: int | None = None           # None: the trainer's choice for the card


class _ModelShape:
    """What choose_checkpoint_layers reads from a model (config sizes and parameter count), without weights."""

    def __init__(self, d: ModelDims):
        self.config = SimpleNamespace(num_hidden_layers=d.layers, vocab_size=d.vocab, hidden_size=d.hidden)
        self._n = d.num_params

    def parameters(self):
        return [SimpleNamespace(numel=lambda: self._n)]


def trainer_memory_budget_bytes(gpu_mem_gib: float, vram_target_gib: float | None,
                                memory_cap_gib: float | None) -> int:
    """The torch-allocated budget the trainer gives choose_checkpoint_layers on a card of gpu_mem_gib."""
    return torch_budget_bytes(gpu_mem_gib, vram_target_gib, memory_cap_gib)


def trainer_checkpoint_layers(spec: FastSpec, gpu_mem_gib: float) -> int:
    """Checkpointed layers the trainer picks on this card (its own function, on the model's shape)."""
    if spec.checkpoint_layers is not None:
        return max(0, min(int(spec.checkpoint_layers), spec.dims.layers))
    budget = trainer_memory_budget_bytes(gpu_mem_gib, spec.vram_target_gib, spec.memory_cap_gib)
    return choose_checkpoint_layers(_ModelShape(spec.dims), spec.token_budget, budget,
                                    ce_chunk_size=spec.ce_chunk_size or 1024)


def fast_activation_bytes(d: ModelDims, token_budget: int, checkpoint_layers: int) -> float:
    """Bytes alive for the backward of one packed row: layer inputs / activations, the recompute, final norm."""
    k = max(0, min(checkpoint_layers, d.layers))
    per_token = k * 4 * d.hidden + (d.layers - k) * FAST_STORED_LAYER_BYTES + FAST_STORED_LAYER_BYTES + 8 * d.hidden
    return float(token_budget * per_token)


def estimate_fast_peak_gib(spec: FastSpec, checkpoint_layers: int) -> Breakdown:
    """Predicted peak of a steady-state fast-engine step with `checkpoint_layers` checkpointed (GiB)."""
    d = spec.dims
    P = d.num_params
    chunk = spec.ce_chunk_size or 1024
    act = fast_activation_bytes(d, spec.token_budget, checkpoint_layers)
    loss = 8 * chunk * d.vocab + 3 * 4 * d.vocab * d.hidden
    allocated = (16 * P + act + loss) / GIB
    return Breakdown(weights=4 * P / GIB, gradients=4 * P / GIB, optimizer_state=8 * P / GIB, master_copies=0.0,
                     activations=act / GIB, logits_loss=loss / GIB,
                     allocator_slack=ALLOCATOR_SLACK_FRACTION * allocated, cuda_context=FAST_CUDA_CONTEXT_GIB,
                     activations_no_ckpt=fast_activation_bytes(d, spec.token_budget, 0) / GIB,
                     activations_ckpt=fast_activation_bytes(d, spec.token_budget, d.layers) / GIB,
                     logits_full_ce=0.0, logits_chunked_ce=loss / GIB,
                     phase=f"backward of a packed row ({checkpoint_layers} of {d.layers} layers checkpointed)",
                     trainable_params=int(P), total_params=int(P))


def fast_plan_for_gpu(spec: FastSpec, gpu_mem_gib: float) -> tuple[int, Breakdown]:
    """(checkpointed layers, predicted peak) of the fast engine on a card of gpu_mem_gib."""
    k = trainer_checkpoint_layers(spec, gpu_mem_gib)
    return k, estimate_fast_peak_gib(spec, k)


def max_token_budget(spec: FastSpec, gpu_mem_gib: float, headroom: float = 0.03, step: int = 1024) -> int:
    """Largest token budget (a multiple of `step`) whose all-layers-checkpointed peak fits the card; 0 if none."""
    def ok(t: int) -> bool:
        s = FastSpec(spec.dims, t, spec.ce_chunk_size)
        return estimate_fast_peak_gib(s, spec.dims.layers).total <= gpu_mem_gib * (1 - headroom)

    if not ok(step):
        return 0
    lo, hi = 1, 2
    while ok(hi * step) and hi < 1 << 20:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid * step) else (lo, mid)
    return lo * step
