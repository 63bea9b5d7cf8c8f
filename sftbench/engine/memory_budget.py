"""The fast engine's memory policy, torch-free so the planner can run it without torch.

The trainer (sftbench/train/engines.py), the bench (scripts/bench_train.py) and the planner
(sftbench/plan/fast.py) all call these, so the plan shows the configuration the trainer runs.
"""

from __future__ import annotations

GIB = 1024**3
# Tokens per packed micro-batch when --token_budget is 0 on a GPU.
DEFAULT_GPU_TOKEN_BUDGET = 16384
# An NVML (device) budget becomes a torch-allocated budget as (GiB - context) x fraction.
CONTEXT_GIB = 1.3
BUDGET_FRACTION = 0.9
# Activation bytes kept per token per decoder layer under bf16 autocast with the compiled layer (SmolLM2-135M
# shape): measured above ~17 KiB/token/layer (docs/bench_train.md); we plan with 24 KiB.  A checkpointed layer keeps only its fp32 input (hidden x 4 B = 2.25 KiB at hidden 576).
ACT_BYTES_PER_TOKEN_LAYER = 24 * 1024
CKPT_BYTES_PER_TOKEN_LAYER = 2560


def default_token_budget(on_gpu: bool, micro_batch: int, max_length: int) -> int:
    """--token_budget 0: 16,384 on a GPU; micro-batch x max length on CPU (same rows as the reference engine)."""
    return DEFAULT_GPU_TOKEN_BUDGET if on_gpu else micro_batch * max_length


def torch_budget_bytes(device_gib: float, vram_target_gib: float | None = None,
                       memory_cap_gib: float | None = None) -> int:
    """The torch-allocated bytes the fast engine plans for on a card of `device_gib` (NVML total)."""
    cap = min(memory_cap_gib or device_gib, device_gib, vram_target_gib or device_gib)
    return int((cap - CONTEXT_GIB) * BUDGET_FRACTION * GIB)


def choose_checkpoint_layers(model, token_budget: int, memory_budget_bytes: int,
                             act_bytes: int = ACT_BYTES_PER_TOKEN_LAYER,
                             ckpt_bytes: int = CKPT_BYTES_PER_TOKEN_LAYER,
                             ce_chunk_size: int = 1024) -> int:
    """Fewest layers to checkpoint so that torch's allocated peak fits `memory_budget_bytes`.

    `model` needs `.config` (num_hidden_layers, vocab_size, hidden_size) and `.parameters()` (objects with
    `.numel()`).  Static estimate: 16 B/parameter (fp32 weights, grads, two Adam moments); the fused CE
    (~8 B x chunk x vocab of logits/softmax, three fp32 [vocab, hidden] weight-gradient buffers); one layer's
    recompute and the final hidden states; then `act_bytes` per token per stored layer and `ckpt_bytes` per
    token per checkpointed layer (predicted vs measured peaks: docs/bench_train.md).  Returns num_hidden_layers
    when even full checkpointing does not fit (the caller should then lower the token budget).
    """
    cfg = model.config
    n_layers = cfg.num_hidden_layers
    n_params = sum(p.numel() for p in model.parameters())
    fixed = (16 * n_params + 8 * ce_chunk_size * cfg.vocab_size + 3 * 4 * cfg.vocab_size * cfg.hidden_size
             + (act_bytes + 8 * cfg.hidden_size) * token_budget)
    for k in range(n_layers + 1):
        if fixed + token_budget * ((n_layers - k) * act_bytes + k * ckpt_bytes) <= memory_budget_bytes:
            return k
    return n_layers
