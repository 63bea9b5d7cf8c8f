"""Every cross-entropy of the project, and IGNORE_INDEX, in one place.

Token CE is summed, never averaged per micro-batch: averaging each micro-batch on its own and then over
accumulation steps weights tokens unequally (transformers #34191 and follow-ups).  Each micro-batch returns
the *sum* of its token losses; the trainer divides every micro-batch's sum by the number of target tokens in
the whole window (all micro-batches, all ranks), so micro-batch k x accumulation 1 == micro-batch 1 x
accumulation k.

Shapes: B batch, T sequence, V vocabulary, H hidden, N target rows.  Labels use -100 (IGNORE_INDEX) for
"not a target".

- masked_ce_sum(logits, labels)           full [B,T,V] logits, labels unshifted (shifted here)   reference engine
- chunked_ce_sum(hidden, weight, labels)  the LM head in checkpointed chunks, labels unshifted    reference engine
- fused_linear_ce_sum(hidden, weight, t)  the LM head in chunks with the gradient computed in the same pass,
                                          targets ALREADY shifted                                  fast engine
- packed_ce_sum(hidden, weight, batch)    fused CE over one packed row (sftbench.data.packing)     fast engine
- CausalLMLossSum(model, chunk)           an HF causal LM wrapped to return (CE sum, n targets)    reference engine / DDP
- normalized_loss(sum, n_window)          the one division

The fused linear CE (why): at vocab 49,152 the [tokens, vocab] fp32 logits dominate training memory (8k
tokens -> 1.6 GB, plus their gradient).  Chunking the matmul alone does not help under autograd, which keeps
every chunk's logits for the backward pass.  There each chunk's softmax gradient is turned into d(hidden) and
d(weight) right away (as Liger's fused linear cross-entropy does), so only one chunk of logits is alive at a
time and nothing is recomputed.  Because the loss is a sum, the backward pass only scales the stored
gradients.  Under autocast its two matmuls per chunk run in the autocast dtype (like HF's lm_head under
autocast); log-sum-exp and the softmax are fp32.  On CPU / fp32 it is exact to rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


# ----------------------------------------------------------------------------- unshifted labels (reference)

def _shifted_targets(labels: Tensor) -> tuple[Tensor, Tensor]:
    """(mask [B,T-1] bool of positions with a target, targets [N] long)."""
    shifted = labels[:, 1:]
    mask = shifted != IGNORE_INDEX
    return mask, shifted[mask]


def count_targets(labels: Tensor) -> int:
    """Number of shifted targets in a [B,T] label tensor (labels[:, 1:] != -100)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum().item())


def masked_ce_sum(logits: Tensor, labels: Tensor) -> tuple[Tensor, int]:
    """Sum of token cross-entropies over target positions, in fp32, and the number of targets.

    logits [B,T,V] (any float dtype), labels [B,T] with -100 = ignore.  Only the target rows are cast to fp32,
    so a bf16 [B,T,V] tensor is never copied whole.  Returns (scalar fp32 tensor, n_target); with no target,
    a zero that still backpropagates (zero gradients).
    """
    mask, targets = _shifted_targets(labels)
    n = int(targets.numel())
    rows = logits[:, :-1][mask]  # [N, V]
    if n == 0:
        return rows.float().sum(), 0  # 0.0, connected to the graph
    return F.cross_entropy(rows.float(), targets, reduction="sum"), n


def _chunk_ce_sum(h: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor) -> Tensor:
    logits = F.linear(h, weight, bias)  # [n, V], in the autocast dtype if autocast is on
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def chunked_ce_sum(
    hidden: Tensor, weight: Tensor, labels: Tensor, chunk_size: int = 1024, bias: Tensor | None = None
) -> tuple[Tensor, int]:
    """masked_ce_sum(hidden @ weight.T + bias, labels) without materialising the [B*T, V] logits.

    hidden [B,T,H] (the final hidden states, after the last norm), weight [V,H] (the lm_head / tied
    embedding), labels [B,T].  Target positions are selected first (prompt and padding tokens never reach
    the lm_head), then the targets are processed `chunk_size` rows at a time; each chunk runs under
    activation checkpointing, so the backward also holds one chunk's [chunk, V] logits at a time (the
    logits are recomputed: one extra [chunk, H] x [H, V] matmul per chunk).
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    mask, targets = _shifted_targets(labels)
    n = int(targets.numel())
    h = hidden[:, :-1][mask]  # [N, H]
    if n == 0:
        zero = h.float().sum() + weight.float().sum() * 0.0
        if bias is not None:
            zero = zero + bias.float().sum() * 0.0
        return zero, 0
    need_grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad))
    total = None
    for s in range(0, n, chunk_size):
        hc, tc = h[s : s + chunk_size], targets[s : s + chunk_size]
        if need_grad:
            part = checkpoint(_chunk_ce_sum, hc, weight, bias, tc, use_reentrant=False, preserve_rng_state=False)
        else:
            part = _chunk_ce_sum(hc, weight, bias, tc)
        total = part if total is None else total + part
    return total, n


def normalized_loss(ce_sum: Tensor, n_target_window: int) -> Tensor:
    """ce_sum / max(n_target_window, 1).

    n_target_window: target tokens in the whole accumulation window (all micro-batches, all ranks; the
    trainer all-reduces it).  An all-masked window gives 0, not NaN.
    """
    return ce_sum / max(int(n_target_window), 1)


# ----------------------------------------------------------------------------- fused linear CE (shifted targets)

def _chunk_loss_and_dlogits(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [C, V], targets [C] -> (fp32 sum of CE over valid rows, dlogits [C, V] in logits' dtype)."""
    out_dtype = logits.dtype
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp32 maths (fp64 stays fp64)
    valid = targets != IGNORE_INDEX
    safe = torch.where(valid, targets, torch.zeros_like(targets))
    lse = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(1, safe.unsqueeze(1)).squeeze(1)
    loss = torch.where(valid, lse - picked, torch.zeros_like(lse)).sum()
    vf = valid.to(logits.dtype).unsqueeze(1)
    probs = torch.exp(logits - lse.unsqueeze(1))
    dlogits = probs.scatter_add(1, safe.unsqueeze(1), -torch.ones_like(vf)) * vf  # softmax - onehot, masked
    return loss, dlogits.to(out_dtype)


_compiled_chunk = None


def _chunk_fn(compile: bool):
    global _compiled_chunk
    if not compile:
        return _chunk_loss_and_dlogits
    if _compiled_chunk is None:
        _compiled_chunk = torch.compile(_chunk_loss_and_dlogits, dynamic=False)
    return _compiled_chunk


class _FusedLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size, compute_dtype, compile):
        n = hidden.shape[0]
        h = hidden.to(compute_dtype)
        w = weight.to(compute_dtype)
        grad_h = torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device) if hidden.requires_grad else None
        acc = torch.promote_types(weight.dtype, torch.float32)
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if weight.requires_grad else None
        total = torch.zeros((), dtype=acc, device=hidden.device)
        fn = _chunk_fn(compile)
        for s in range(0, n, chunk_size):
            e = min(s + chunk_size, n)
            t = targets[s:e]
            hc = h[s:e]
            loss, dlogits = fn(hc @ w.t(), t)
            total = total + loss
            d = dlogits.to(compute_dtype)  # already this dtype; a no-op
            if grad_h is not None:
                grad_h[s:e] = (d @ w).to(grad_h.dtype)
            if grad_w is not None:
                grad_w += (d.t() @ hc).to(acc)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        gh = None if grad_h is None else grad_h * grad_out.to(grad_h.dtype)
        gw = None if grad_w is None else (grad_w * grad_out).to(ctx.weight_dtype)
        return gh, gw, None, None, None, None


def fused_linear_ce_sum(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = 2048,
    compile: bool = False,
) -> torch.Tensor:
    """Sum over positions of CE(hidden @ weight.T, targets), ignoring targets == -100.

    hidden [N, H], weight [V, H] (the lm_head / tied embedding weight), targets [N] ALREADY SHIFTED
    (targets[t] is what position t predicts).  Returns a 0-dim fp32 tensor (fp64 for fp64 inputs; the sum, not the mean:
    the trainer divides by the target count of the whole accumulation window).
    Never holds more than [chunk_size, V] logits.  `compile` fuses the per-chunk softmax (GPU).
    """
    if hidden.dim() != 2 or targets.dim() != 1 or hidden.shape[0] != targets.shape[0]:
        raise ValueError(f"fused_linear_ce_sum: hidden {tuple(hidden.shape)} / targets {tuple(targets.shape)}")
    dev = hidden.device.type
    if torch.is_autocast_enabled(dev):
        compute_dtype = torch.get_autocast_dtype(dev)
    else:
        compute_dtype = torch.promote_types(hidden.dtype, weight.dtype)
    with torch.autocast(device_type=dev, enabled=False):
        return _FusedLinearCE.apply(hidden, weight, targets, int(chunk_size), compute_dtype, bool(compile))


# ----------------------------------------------------------------------------- packed rows (fast engine)

def packed_ce_sum(hidden: Tensor, weight: Tensor, batch: dict, chunk_size: int = 1024,
                  compile: bool = False) -> tuple[Tensor, int]:
    """(CE sum, n targets) of one packed row: hidden [1, T, H] (after the final norm), weight [V, H],
    batch from sftbench.data.packing.make_packed_batch (`shift_labels` [1, T]; `num_targets` counted on the
    CPU at packing time, so no device sync)."""
    targets = batch["shift_labels"][0]
    loss_sum = fused_linear_ce_sum(hidden[0], weight, targets, chunk_size=chunk_size, compile=compile)
    n = batch.get("num_targets")
    if n is None:
        n = int((targets != IGNORE_INDEX).sum())
    return loss_sum, int(n)


# ----------------------------------------------------------------------------- an HF model as a loss module

class CausalLMLossSum(torch.nn.Module):
    """Wraps an HF causal LM so DDP sees one forward that returns (sum of token CE in fp32, n targets).

    With `chunk_size > 0` the CE runs over the final hidden states in chunks (chunked_ce_sum), never
    materialising the full [tokens, vocab] fp32 logits; 0 = masked_ce_sum over the full logits.
    """

    def __init__(self, model, chunk_size: int):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size

    def forward(self, input_ids, attention_mask, labels):
        if self.chunk_size > 0:
            hidden = self.model.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
            return chunked_ce_sum(hidden, self.model.lm_head.weight, labels, chunk_size=self.chunk_size)
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return masked_ce_sum(logits, labels)
