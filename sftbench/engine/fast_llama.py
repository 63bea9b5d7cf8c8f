"""Our own Llama forward for greedy decoding, on weights copied out of an HF `LlamaForCausalLM`.

Why our own: HF's forward costs ~100 ms of Python and launches per decode step, and its static-cache
variant is memory-bound on `repeat_kv` over the whole cache (shared/NOTES.md).  Here the weights live in
fixed buffers (so a captured CUDA graph can be replayed for a new checkpoint after `load_from`), q/k/v and
gate/up are fused into one matmul each, and attention reads only the filled prefix (fast_attention.py).

The maths mirrors transformers' LlamaDecoderLayer op for op (RMSNorm in fp32 then cast then scale, RoPE
(both from sftbench/model/llama.py, shared with the training engine) from the model's own rotary module so rope_theta / rope scaling match, SiLU-gated MLP, tied or untied
head); tests check greedy tokens against `generate()` on CPU in fp32.

Shapes: tokens are flattened to rows, x [N, hidden]; q [N, H, D], k/v [N, KVH, D].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sftbench.model.llama import apply_rope, head_dim as _head_dim, rms_norm, rope_tables, unsupported_reasons  # noqa: F401


@dataclass(frozen=True)
class LlamaShape:
    """The architecture numbers the generator's buffers depend on (equal shapes => load_weights reuses them)."""

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    tie_word_embeddings: bool

    @classmethod
    def from_model(cls, model) -> "LlamaShape":
        cfg = model.config
        check_supported(model)
        emb = model.get_input_embeddings().weight
        head = model.get_output_embeddings().weight
        return cls(
            num_layers=cfg.num_hidden_layers,
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_heads=cfg.num_attention_heads,
            num_kv_heads=getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
            head_dim=_head_dim(cfg),
            vocab_size=emb.shape[0],
            rms_norm_eps=float(cfg.rms_norm_eps),
            tie_word_embeddings=head is emb or head.data_ptr() == emb.data_ptr(),
        )

    @property
    def qkv_dim(self) -> int:
        return (self.num_heads + 2 * self.num_kv_heads) * self.head_dim

    def weight_numel(self) -> int:
        h, i = self.hidden_size, self.intermediate_size
        per_layer = h * self.qkv_dim + self.num_heads * self.head_dim * h + 3 * h * i + 2 * h
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return self.vocab_size * h + head + self.num_layers * per_layer + h


def check_supported(model) -> None:
    """Raise NotImplementedError for models this forward would not reproduce exactly."""
    why = unsupported_reasons(model, dynamic_rope=True)
    if why:
        raise NotImplementedError("the fast generation backend does not support this model: " + ", ".join(why)
                                  + ". Use --backend hf.")


class DecodeWeights:
    """Fixed-address weight buffers in the generation dtype, one tensor per layer and role.

    Per-layer tensors (not one stacked tensor) so that a compiled layer function sees the same
    size/stride/offset for every layer and compiles once.
    """

    def __init__(self, shape: LlamaShape, device, dtype):
        s = shape
        kw = dict(device=device, dtype=dtype)
        self.shape, self.device, self.dtype = shape, torch.device(device), dtype
        self.embed = torch.empty(s.vocab_size, s.hidden_size, **kw)
        self.lm_head = self.embed if s.tie_word_embeddings else torch.empty(s.vocab_size, s.hidden_size, **kw)
        self.final_norm = torch.empty(s.hidden_size, **kw)
        self.ln1 = [torch.empty(s.hidden_size, **kw) for _ in range(s.num_layers)]
        self.ln2 = [torch.empty(s.hidden_size, **kw) for _ in range(s.num_layers)]
        self.wqkv = [torch.empty(s.qkv_dim, s.hidden_size, **kw) for _ in range(s.num_layers)]
        self.wo = [torch.empty(s.hidden_size, s.num_heads * s.head_dim, **kw) for _ in range(s.num_layers)]
        self.wgu = [torch.empty(2 * s.intermediate_size, s.hidden_size, **kw) for _ in range(s.num_layers)]
        self.wd = [torch.empty(s.hidden_size, s.intermediate_size, **kw) for _ in range(s.num_layers)]

    @torch.no_grad()
    def load_from(self, model) -> None:
        """Copy an HF LlamaForCausalLM's weights in place (any device/dtype; cast to ours)."""
        shape = LlamaShape.from_model(model)
        if shape != self.shape:
            raise ValueError(f"load_weights: architecture differs from the one this generator was built for "
                             f"({shape} vs {self.shape}); build a new FastGenerator.")
        m = model.model
        self.embed.copy_(m.embed_tokens.weight)
        if not self.shape.tie_word_embeddings:
            self.lm_head.copy_(model.get_output_embeddings().weight)
        self.final_norm.copy_(m.norm.weight)
        for i, layer in enumerate(m.layers):
            a, mlp = layer.self_attn, layer.mlp
            self.ln1[i].copy_(layer.input_layernorm.weight)
            self.ln2[i].copy_(layer.post_attention_layernorm.weight)
            self.wqkv[i].copy_(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight], 0))
            self.wo[i].copy_(a.o_proj.weight)
            self.wgu[i].copy_(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight], 0))
            self.wd[i].copy_(mlp.down_proj.weight)

    def nbytes(self) -> int:
        return self.shape.weight_numel() * self.embed.element_size()


def make_layer_fns(shape: LlamaShape):
    """(pre_attn, post_attn, head) closures over the shape's constants; pure, so torch.compile-able.

    pre_attn(x [N, hid], ln_w, wqkv, cos [N, D], sin [N, D]) -> q [N, H, D], k [N, KVH, D], v [N, KVH, D]
    post_attn(x, attn [N, H, D], wo, ln2_w, wgu, wd) -> x [N, hid]
    head(x [N, hid], norm_w, lm_head) -> next token ids [N] (greedy; logits in the model dtype as HF)
    """
    eps, H, KVH, D, I = shape.rms_norm_eps, shape.num_heads, shape.num_kv_heads, shape.head_dim, shape.intermediate_size

    def pre_attn(x, ln_w, wqkv, cos, sin):
        n = x.shape[0]
        qkv = F.linear(rms_norm(x, ln_w, eps), wqkv)
        q = qkv[:, : H * D].view(n, H, D)
        k = qkv[:, H * D: (H + KVH) * D].view(n, KVH, D)
        v = qkv[:, (H + KVH) * D:].reshape(n, KVH, D)
        c, s = cos[:, None, :], sin[:, None, :]
        q, k = apply_rope(q, c, s), apply_rope(k, c, s)
        return q, k, v

    def post_attn(x, attn, wo, ln2_w, wgu, wd):
        x = x + F.linear(attn.reshape(x.shape[0], -1), wo)
        gu = F.linear(rms_norm(x, ln2_w, eps), wgu)
        return x + F.linear(F.silu(gu[:, :I]) * gu[:, I:], wd)

    def head(x, norm_w, lm_head):
        logits = F.linear(rms_norm(x, norm_w, eps), lm_head)
        return torch.argmax(logits, dim=-1)

    return pre_attn, post_attn, head


@torch.no_grad()
def prefill(weights: DecodeWeights, fns, prompts: list[list[int]], cos_tab, sin_tab, k_out, v_out) -> torch.Tensor:
    """Run a right-padded batch of prompts from position 0; store their K/V; return the first greedy tokens.

    prompts: n token lists (T = the longest); k_out, v_out: [layers, n, T', KVH, D] with T' >= T (views into
    the staging buffer).  Right padding is harmless under the causal mask: a real token never sees a pad.
    Returns [n] int64 on the weights' device.
    """
    pre, post, head = fns
    s = weights.shape
    dev = weights.device
    n, T = len(prompts), max(len(p) for p in prompts)
    ids = torch.zeros(n, T, dtype=torch.long)
    for j, p in enumerate(prompts):
        ids[j, : len(p)] = torch.tensor(p, dtype=torch.long)
    ids = ids.to(dev, non_blocking=True)
    lens = torch.tensor([len(p) for p in prompts], device=dev)
    x = F.embedding(ids.view(-1), weights.embed)  # [n*T, hid]
    positions = torch.arange(T, device=dev).repeat(n)
    cos, sin = cos_tab[positions], sin_tab[positions]
    for i in range(s.num_layers):
        q, k, v = pre(x, weights.ln1[i], weights.wqkv[i], cos, sin)
        k_out[i, :, :T].copy_(k.view(n, T, s.num_kv_heads, s.head_dim))
        v_out[i, :, :T].copy_(v.view(n, T, s.num_kv_heads, s.head_dim))
        q4 = q.view(n, T, s.num_heads, s.head_dim).transpose(1, 2)
        k4 = k.view(n, T, s.num_kv_heads, s.head_dim).transpose(1, 2)
        v4 = v.view(n, T, s.num_kv_heads, s.head_dim).transpose(1, 2)
        o = F.scaled_dot_product_attention(q4, k4, v4, is_causal=True, enable_gqa=True)
        x = post(x, o.transpose(1, 2).reshape(n * T, s.num_heads, s.head_dim), weights.wo[i], weights.ln2[i],
                 weights.wgu[i], weights.wd[i])
    last = x.view(n, T, -1)[torch.arange(n, device=dev), lens - 1]
    return head(last, weights.final_norm, weights.lm_head)
