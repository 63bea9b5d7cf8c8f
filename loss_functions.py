"""Masked token cross-entropy, normalised over the whole gradient-accumulation window.

Why sums and one divisor: averaging each micro-batch on its own and then averaging over accumulation steps
weights tokens unequally (transformers #34191 and follow-ups).  Each micro-batch returns the *sum* of its
token losses; the trainer divides every micro-batch's sum by the number of target tokens in the whole window
(all micro-batches, all ranks), so micro-batch k x accumulation 1 == micro-batch 1 x accumulation k.

Shapes: B batch, T sequence, V vocabulary, H hidden.  Labels use -100 for "not a target" and are shifted
here: logits[:, t] predict labels[:, t + 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


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
