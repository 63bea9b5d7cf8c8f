"""Cross-entropy over the LM head in chunks, with the gradient computed in the same pass.

Why: at vocab 49,152 the [tokens, vocab] fp32 logits dominate training memory (8k tokens -> 1.6 GB, plus
their gradient).  Chunking the matmul alone does not help under autograd, which keeps every chunk's logits
for the backward pass.  Here each chunk's softmax gradient is turned into d(hidden) and d(weight) right
away (as Liger's fused linear cross-entropy does), so only one chunk of logits is alive at a time and
nothing is recomputed.  Because the loss is a sum, the backward pass only scales the stored gradients.

Numerics: under autocast the two matmuls per chunk run in the autocast dtype (like HF's lm_head under
autocast); log-sum-exp and the softmax are fp32.  On CPU / fp32 it is exact to rounding.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


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
