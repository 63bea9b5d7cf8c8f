"""Llama building blocks shared by the training engine (sftbench/engine/fast_model.py) and the decoding
engine (sftbench/engine/fast_llama.py): written once so that both reproduce transformers' LlamaDecoderLayer the same way.

- rms_norm: LlamaRMSNorm's op order (normalise in fp32, cast back, then scale);
- rotate_half / apply_rope / rope_tables: RoPE with cos/sin from the model's own rotary module (rope scaling included);
- unsupported_reasons: the config features neither engine reproduces exactly (each engine words its error).
"""

from __future__ import annotations

import copy

import torch


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., H], w [H] -> [..., H] in x's dtype (as LlamaRMSNorm: fp32 normalise, cast back, then scale)."""
    dt = x.dtype
    xf = x.to(torch.float32)
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * xf.to(dt)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., D] with cos/sin broadcastable to it (already unsqueezed over the heads axis)."""
    return (x * cos) + (rotate_half(x) * sin)


def head_dim(cfg) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def unsupported_reasons(model, *, dropout: bool = False, dynamic_rope: bool = False) -> list[str]:
    """Why our Llama maths would not reproduce this model exactly ([] = supported).

    dropout: also refuse attention_dropout > 0 (training); dynamic_rope: also refuse rope types whose
    frequencies change with the sequence length (decoding precomputes one table)."""
    cfg = model.config
    why = []
    if getattr(cfg, "model_type", None) != "llama":
        why.append(f"model_type {getattr(cfg, 'model_type', None)!r} (only 'llama' is supported)")
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(cfg, flag, False):
            why.append(f"{flag}=True")
    if getattr(cfg, "hidden_act", "silu") != "silu":
        why.append(f"hidden_act {cfg.hidden_act!r}")
    if dropout and float(getattr(cfg, "attention_dropout", 0.0) or 0.0) > 0.0:
        why.append("attention_dropout > 0")
    if getattr(cfg, "pretraining_tp", 1) not in (1, None):
        why.append("pretraining_tp > 1")
    if dynamic_rope:
        rot = getattr(getattr(model, "model", None), "rotary_emb", None)
        if rot is not None and getattr(rot, "rope_type", "default") in ("dynamic", "longrope"):
            why.append(f"rope_type {rot.rope_type!r} (its frequencies change with the sequence length)")
    return why


@torch.no_grad()
def rope_tables(rotary, max_positions: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [max_positions, head_dim] from the model's own rotary module (model.model.rotary_emb),
    computed on `device` (so the values are bit-identical to what HF computes there, rope scaling included)."""
    rot = copy.deepcopy(rotary).to(device)
    pos = torch.arange(max_positions, device=device)[None, :]
    probe = torch.empty(0, device=device, dtype=dtype)
    cos, sin = rot(probe, pos)
    return cos[0].to(dtype).contiguous(), sin[0].to(dtype).contiguous()
