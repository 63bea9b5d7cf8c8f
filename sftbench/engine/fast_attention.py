"""Decode-step attention for the fast generator: one new token per slot against that slot's KV cache.

Why not HF's static-cache forward: it runs `repeat_kv` over the *whole* cache every step (9 heads x max
length), so a step costs the full cache whatever was filled (shared/NOTES.md: 23.8 ms at batch 128).  Here
each slot reads only its filled prefix, once per KV head, shared by that head's query group (GQA).

Cache layout (one layer): k_cache, v_cache [slots, max_len, kv_heads, head_dim].  `pos[b]` is the number of
tokens already cached for slot b, i.e. the position of the new token.  Both implementations write the new
token's k/v at `pos[b]` and attend over positions 0..pos[b] inclusive.

- `decode_attention_triton`: split-K "flash decoding" in two Triton kernels (CUDA graph-capturable; reads
  lengths from device memory, so one captured graph serves every step).  Split s of slot b covers cache
  positions [s*chunk, min((s+1)*chunk, pos[b])); splits past the filled prefix exit at once.  Split 0 also
  folds in the new token from registers and writes it into the cache (no other program of this step reads
  position pos[b] from memory, so there is no race).
- `decode_attention_torch`: the same maths with SDPA and a length mask (CPU, and the reference in tests).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

try:  # Triton ships with CUDA builds of torch; CPU-only installs use the torch path.
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except Exception:  # pragma: no cover - depends on the install
    triton = None
    tl = None
    HAVE_TRITON = False


def decode_attention_torch(q, k_new, v_new, k_cache, v_cache, pos, kv_len: int | None = None):
    """Reference decode attention.

    q [B, H, D]; k_new, v_new [B, KVH, D]; k_cache, v_cache [B, L, KVH, D] (written at pos);
    pos [B] int64.  kv_len: attend over cache[:, :kv_len] (default: all L; the mask hides the unfilled
    part, so a static L keeps the shapes fixed for CUDA graphs).  Returns [B, H, D] in q's dtype.
    """
    b = torch.arange(q.shape[0], device=q.device)
    k_cache[b, pos] = k_new
    v_cache[b, pos] = v_new
    length = k_cache.shape[1] if kv_len is None else kv_len
    k = k_cache[:, :length].transpose(1, 2)  # [B, KVH, T, D]
    v = v_cache[:, :length].transpose(1, 2)
    mask = torch.arange(length, device=q.device)[None, :] <= pos[:, None]  # [B, T]
    out = F.scaled_dot_product_attention(q[:, :, None, :], k, v, attn_mask=mask[:, None, None, :], enable_gqa=True)
    return out[:, :, 0, :]


if HAVE_TRITON:

    @triton.jit
    def _decode_split_kernel(
        Q, KN, VN, KC, VC, POS, OP, MP, LP,
        stride_qb, stride_qh,
        stride_kb, stride_kh, stride_vb, stride_vh,
        stride_cb, stride_ct, stride_ch,
        stride_ob, stride_oh, stride_os,
        stride_mb, stride_mh,
        sm_scale, chunk,
        G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        b = tl.program_id(0)
        kvh = tl.program_id(1)
        s = tl.program_id(2)
        pos = tl.load(POS + b).to(tl.int32)
        offs_g = tl.arange(0, G_PAD)
        offs_d = tl.arange(0, D)
        gmask = offs_g < G
        heads = kvh * G + offs_g
        q = tl.load(Q + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :], mask=gmask[:, None], other=0.0)
        start = (s * chunk).to(tl.int32)
        end = tl.minimum(start + chunk, pos).to(tl.int32)
        kc_base = KC + b.to(tl.int64) * stride_cb + kvh * stride_ch
        vc_base = VC + b.to(tl.int64) * stride_cb + kvh * stride_ch

        m_i = tl.full([G_PAD], float("-inf"), tl.float32)
        l_i = tl.zeros([G_PAD], tl.float32)
        acc = tl.zeros([G_PAD, D], tl.float32)
        if s == 0:
            kn = tl.load(KN + b * stride_kb + kvh * stride_kh + offs_d)
            vn = tl.load(VN + b * stride_vb + kvh * stride_vh + offs_d)
            tl.store(kc_base + pos * stride_ct + offs_d, kn.to(KC.dtype.element_ty))
            tl.store(vc_base + pos * stride_ct + offs_d, vn.to(VC.dtype.element_ty))
            m_i = tl.sum(q.to(tl.float32) * kn.to(tl.float32)[None, :], axis=1) * sm_scale
            l_i = tl.full([G_PAD], 1.0, tl.float32)
            acc = tl.zeros([G_PAD, D], tl.float32) + vn.to(tl.float32)[None, :]
        for t in range(start, end, BLOCK_N):
            offs_n = t + tl.arange(0, BLOCK_N)
            nmask = offs_n < end
            k = tl.load(kc_base + offs_n[:, None] * stride_ct + offs_d[None, :], mask=nmask[:, None], other=0.0)
            v = tl.load(vc_base + offs_n[:, None] * stride_ct + offs_d[None, :], mask=nmask[:, None], other=0.0)
            qk = tl.dot(q, tl.trans(k)) * sm_scale  # [G_PAD, BLOCK_N], fp32 accumulate
            qk = tl.where(nmask[None, :], qk, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(qk - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        o_ptrs = OP + b * stride_ob + heads[:, None] * stride_oh + s * stride_os + offs_d[None, :]
        tl.store(o_ptrs, acc, mask=gmask[:, None])
        tl.store(MP + b * stride_mb + heads * stride_mh + s, m_i, mask=gmask)
        tl.store(LP + b * stride_mb + heads * stride_mh + s, l_i, mask=gmask)

    @triton.jit
    def _decode_combine_kernel(
        OP, MP, LP, O,
        stride_ob, stride_oh, stride_os,
        stride_mb, stride_mh,
        stride_xb, stride_xh,
        S, S_PAD: tl.constexpr, D: tl.constexpr,
    ):
        b = tl.program_id(0)
        h = tl.program_id(1)
        offs_s = tl.arange(0, S_PAD)
        offs_d = tl.arange(0, D)
        smask = offs_s < S
        m = tl.load(MP + b * stride_mb + h * stride_mh + offs_s, mask=smask, other=float("-inf"))
        l = tl.load(LP + b * stride_mb + h * stride_mh + offs_s, mask=smask, other=0.0)
        o = tl.load(OP + b * stride_ob + h * stride_oh + offs_s[:, None] * stride_os + offs_d[None, :],
                    mask=smask[:, None], other=0.0)
        m_max = tl.max(m, 0)  # finite: split 0 always holds the new token
        w = tl.exp(m - m_max)
        l_tot = tl.sum(l * w, 0)
        out = tl.sum(o * w[:, None], 0) / l_tot
        tl.store(O + b * stride_xb + h * stride_xh + offs_d, out.to(O.dtype.element_ty))


def pick_num_splits(batch: int, kv_heads: int, max_len: int, num_sms: int = 132, block_n: int = 64) -> int:
    """Splits per (slot, KV head): enough programs to fill the GPU (~8 per SM), never a split shorter than a block."""
    want = max(1, math.ceil(8 * num_sms / max(1, batch * kv_heads)))
    most = max(1, math.ceil(max_len / (2 * block_n)))
    return int(min(want, most, 32))


def decode_attention_triton(q, k_new, v_new, k_cache, v_cache, pos, num_splits: int, block_n: int = 64):
    """Same contract as `decode_attention_torch` (always attends over the filled prefix only)."""
    if not HAVE_TRITON:  # pragma: no cover
        raise RuntimeError("Triton is not installed; use decode_attention_torch.")
    B, H, D = q.shape
    KVH = k_new.shape[1]
    G = H // KVH
    L = k_cache.shape[1]
    assert q.stride(-1) == 1 and k_new.stride(-1) == 1 and v_new.stride(-1) == 1
    assert k_cache.stride() == v_cache.stride() and k_cache.stride(-1) == 1
    chunk = math.ceil(math.ceil(L / num_splits) / block_n) * block_n
    op = torch.empty((B, H, num_splits, D), device=q.device, dtype=torch.float32)
    mp = torch.empty((B, H, num_splits), device=q.device, dtype=torch.float32)
    lp = torch.empty((B, H, num_splits), device=q.device, dtype=torch.float32)
    out = torch.empty((B, H, D), device=q.device, dtype=q.dtype)
    _decode_split_kernel[(B, KVH, num_splits)](
        q, k_new, v_new, k_cache, v_cache, pos, op, mp, lp,
        q.stride(0), q.stride(1),
        k_new.stride(0), k_new.stride(1), v_new.stride(0), v_new.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        op.stride(0), op.stride(1), op.stride(2),
        mp.stride(0), mp.stride(1),
        1.0 / math.sqrt(D), chunk,
        G=G, G_PAD=max(16, triton.next_power_of_2(G)), D=D, BLOCK_N=block_n,
        num_warps=4,
    )
    _decode_combine_kernel[(B, H)](
        op, mp, lp, out,
        op.stride(0), op.stride(1), op.stride(2),
        mp.stride(0), mp.stride(1),
        out.stride(0), out.stride(1),
        num_splits, S_PAD=max(2, triton.next_power_of_2(num_splits)), D=D,
        num_warps=1,
    )
    return out
