"""The fast engine's forward pass: packed rows through an HF Llama, attention kept per conversation.

The model stays the user's `LlamaForCausalLM` (same parameters, same checkpoints); only the forward is
ours, so that it can
- run one packed row [1, T] of several conversations with attention kept inside each one:
  varlen flash attention (`torch.nn.attention.varlen`, the conversations' boundaries as cu_seqlens) on
  sm80+ GPUs in bf16/fp16; `buckets` (the conversations gathered into a few length buckets, SDPA's
  memory-efficient causal kernel per bucket, scattered back) on other GPUs (T4, P100: no flash attention, no
  bf16) and in fp32; dense SDPA with a boolean [T, T] mask on the CPU; FlexAttention (block-sparse mask) on
  request.  Neither varlen nor buckets needs an attention compile, while FlexAttention's forward+backward
  takes minutes to compile on a cold machine (figures: docs/bench_train.md);
- compile ONE decoder-layer function whose weights are arguments, so the 30 layers share one graph and a
  new shape costs seconds, not minutes;
- recompute (activation-checkpoint) the first `checkpoint_layers` layers, chosen to fit a memory budget;
- end at the final norm, leaving the LM head to the fused chunked cross-entropy (sftbench.loss).

Everything else is HF's own code (embedding, rotary embedding incl. rope scaling, final norm), and the
per-layer maths mirrors `LlamaDecoderLayer` (RMSNorm in fp32 and RoPE from sftbench/model/llama.py, shared with
the decoding engine sftbench/engine/fast_llama.py; SwiGLU, GQA); tests check it against the
unpacked HF forward to 1e-5 in fp32 on CPU.

Entry points for the trainer:
    prepare_fast_model(model, compile=..., checkpoint_layers=..., attention=...)   once, after .to(device)
    packed_loss_sum(model, batch)  -> (loss_sum, num_targets)   per packed micro-batch (sftbench.loss.packed_ce_sum)
    packed_forward_hidden(model, batch) -> [1, T, H]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from sftbench.model.llama import apply_rope, head_dim as _head_dim, rms_norm as _rms, unsupported_reasons
from sftbench.loss import IGNORE_INDEX, packed_ce_sum

GIB = 1024**3
ATTENTIONS = ("varlen", "buckets", "flex", "sdpa")


@dataclass
class FastSettings:
    """How the fast forward runs (stored on the model by prepare_fast_model)."""

    attention: str = "auto"
    """varlen (flash attention over cu_seqlens), buckets (SDPA per length bucket of conversations), flex
    (FlexAttention, block-sparse), sdpa (dense boolean mask), or auto (pick_attention: varlen where it runs,
    else buckets on CUDA, sdpa on CPU)."""
    max_seqlen: int | None = None
    """varlen: the longest segment of a packed row (pack with make_packed_batch(..., max_seqlen=)); None =
    the row's length.  A constant, so the compiled layer is not specialised per batch."""
    compile: bool = False
    """torch.compile the decoder-layer function and the CE chunk (CUDA; one graph per token budget)."""
    checkpoint_layers: int = 0
    """Recompute the first N decoder layers in the backward pass instead of storing their activations."""
    ce_chunk_size: int = 1024
    """Rows of logits alive at once in the fused cross-entropy ([chunk, vocab] fp32)."""
    fuse_projections: bool = False
    """One matmul for q/k/v and one for gate/up (weights concatenated inside the compiled layer): fewer
    kernel launches per layer, same maths (the speed-up: docs/bench_train.md).  The trainer turns it on
    (--fuse_projections)."""
    layer_fns: dict = field(default_factory=dict, repr=False)


def check_supported(model) -> None:
    """Raise NotImplementedError (with the reason) for models this forward does not reproduce exactly."""
    why = unsupported_reasons(model, dropout=True)
    if why:
        raise NotImplementedError("the fast engine does not support this model: " + ", ".join(why) +
                                  ". Use the reference engine (--engine reference).")


def varlen_supported(device) -> str | None:
    """None when varlen flash attention can run on `device`, else why not (sftbench.core.capabilities decides)."""
    from sftbench.core.capabilities import probe

    return probe(device).varlen_missing


def pick_attention(device, half_precision: bool) -> tuple[str, str]:
    """(attention, reason): varlen on sm80+ GPUs training in bf16/fp16, `buckets` on other GPUs (T4, P100) and in
    fp32, sdpa on CPU (sftbench.core.capabilities.choose_attention).  buckets needs no attention compile, so its
    cold first step takes seconds where FlexAttention's takes minutes (figures: docs/bench_train.md)."""
    from sftbench.core.capabilities import choose_attention, probe

    return choose_attention(probe(device), "auto", half_precision)


def _varlen_call():
    """varlen_attn with a causal mask and GQA, across the torch versions that have it."""
    import inspect

    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    causal = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    native_gqa = "enable_gqa" in params

    def attend(q, k, v, cu, max_seqlen, scale):
        # q [T, Hq, D], k/v [T, Hkv, D]
        if k.shape[1] != q.shape[1]:
            if native_gqa:
                return varlen_attn(q, k, v, cu, cu, max_seqlen, max_seqlen, scale=scale, enable_gqa=True, **causal)
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        return varlen_attn(q, k, v, cu, cu, max_seqlen, max_seqlen, scale=scale, **causal)

    return attend


def _make_layer_fn(n_heads: int, n_kv: int, head_dim: int, eps: float, attention: str, fuse: bool = False,
                   max_seqlen: int | None = None, op: bool = False):
    """One decoder layer as a pure function of (x, cos, sin, mask, 9 weights); shapes [B, T, H].

    `mask` is a BlockMask (flex), a boolean [1, 1, T, T] tensor (sdpa), cu_seqlens [k+1] int32 (varlen,
    B == 1) or cu_seqlens on the host (buckets, B == 1; `op`: through the custom op, for torch.compile)."""
    scale = head_dim**-0.5
    gqa = n_kv != n_heads
    if attention == "flex":
        from torch.nn.attention.flex_attention import flex_attention
    attend = _varlen_call() if attention == "varlen" else None
    if attention == "buckets":  # mask = cu_seqlens on the host; the custom op keeps it out of the compiled graph
        if op:
            attend = lambda q, k, v, cu, _m, sc: torch.ops.sftbench.bucket_attn(q, k, v, cu, sc)  # noqa: E731
        else:
            attend = lambda q, k, v, cu, _m, sc: bucket_attention(q, k, v, bucket_plan(cu, q.device), sc)  # noqa: E731

    def layer(x, cos, sin, mask, ln1, wq, wk, wv, wo, ln2, wg, wu, wd):
        b, t, _ = x.shape
        h = _rms(x, ln1, eps)
        if fuse:
            q, k, v = F.linear(h, torch.cat([wq, wk, wv], 0)).split(
                [n_heads * head_dim, n_kv * head_dim, n_kv * head_dim], dim=-1)
        else:
            q, k, v = F.linear(h, wq), F.linear(h, wk), F.linear(h, wv)
        if attention in ("varlen", "buckets"):  # token-major [T, heads, D]: the layout varlen takes, no transposes
            q, k, v = (z.reshape(t, -1, head_dim) for z in (q, k, v))
            c, s = cos[0].unsqueeze(1), sin[0].unsqueeze(1)
            q, k = apply_rope(q, c, s).to(v.dtype), apply_rope(k, c, s).to(v.dtype)
            a = attend(q, k, v, mask, max_seqlen or t, scale).reshape(b, t, n_heads * head_dim)
        else:
            q = q.reshape(b, t, n_heads, head_dim).transpose(1, 2)
            k = k.reshape(b, t, n_kv, head_dim).transpose(1, 2)
            v = v.reshape(b, t, n_kv, head_dim).transpose(1, 2)
            c, s = cos.unsqueeze(1), sin.unsqueeze(1)
            q, k = apply_rope(q, c, s).to(v.dtype), apply_rope(k, c, s).to(v.dtype)
            if attention == "flex":
                a = flex_attention(q, k, v, block_mask=mask, scale=scale, enable_gqa=gqa)
            else:
                a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
            a = a.transpose(1, 2).reshape(b, t, n_heads * head_dim)
        x = x + F.linear(a, wo)
        h = _rms(x, ln2, eps)
        if fuse:
            g, u = F.linear(h, torch.cat([wg, wu], 0)).chunk(2, dim=-1)
        else:
            g, u = F.linear(h, wg), F.linear(h, wu)
        return x + F.linear(F.silu(g) * u, wd)

    return layer


def _checkpointed(fn):
    from torch.utils.checkpoint import checkpoint

    def run(*args):
        return checkpoint(fn, *args, use_reentrant=False)

    return run


def prepare_fast_model(model, *, attention: str = "auto", compile: bool | None = None,
                       checkpoint_layers: int = 0, ce_chunk_size: int = 1024, fuse_projections: bool = False,
                       max_seqlen: int | None = None, half_precision: bool = True):
    """Attach fast-forward settings to an HF LlamaForCausalLM (in place; returns the model).

    Call after moving the model to its device.  `compile=None` means: compile on CUDA where Triton runs.
    `attention="auto"`: pick_attention(device, half_precision).  `max_seqlen`: see FastSettings.
    Raises NotImplementedError for unsupported architectures (the trainer should fall back).
    """
    check_supported(model)
    dev = next(model.parameters()).device
    if attention == "auto":
        attention, _ = pick_attention(dev, half_precision)
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be {', '.join(ATTENTIONS)} or auto, got {attention!r}")
    if attention == "varlen" and (why := varlen_supported(dev)):
        raise ValueError(f"attention varlen cannot run here: {why}")
    if compile is None:  # on CUDA where Triton runs (not PyTorch's Windows wheels, not sm < 7.0)
        from sftbench.core.capabilities import compile_works

        compile = dev.type == "cuda" and compile_works(dev)
    n_layers = model.config.num_hidden_layers
    model._sftbench_fast = FastSettings(attention=attention, compile=bool(compile), max_seqlen=max_seqlen,
                                        checkpoint_layers=max(0, min(int(checkpoint_layers), n_layers)),
                                        ce_chunk_size=int(ce_chunk_size), fuse_projections=bool(fuse_projections))
    return model


def _settings(model) -> FastSettings:
    st = getattr(model, "_sftbench_fast", None)
    if st is None:
        dev = next(model.parameters()).device
        check_supported(model)
        st = FastSettings(attention="flex" if dev.type == "cuda" else "sdpa", compile=False)
        model._sftbench_fast = st
    return st


def _layer_fn(model, st: FastSettings, checkpointed: bool):
    key = ("ckpt" if checkpointed else "plain")
    fn = st.layer_fns.get(key)
    if fn is None:
        cfg = model.config
        fn = _make_layer_fn(cfg.num_attention_heads, cfg.num_key_value_heads, _head_dim(cfg), cfg.rms_norm_eps, st.attention,
                            fuse=st.fuse_projections, max_seqlen=st.max_seqlen, op=st.compile)
        if checkpointed:
            fn = _checkpointed(fn)
        if st.compile:
            # One graph for all layers (weights are arguments).  Checkpointing goes INSIDE the compiled
            # region: the compiler plans the recompute.  (Checkpoint wrapped around a compiled layer ran for
            # minutes on torch 2.11 + H100 without finishing 8 steps.)
            # varlen: the number of segments (cu_seqlens' length) changes per row and is marked dynamic per
            # call; everything else keeps one static shape per token budget.
            # buckets: likewise for the host-side cu_seqlens (the op's outputs have static shapes).
            fn = torch.compile(fn, dynamic=None if st.attention in ("varlen", "buckets") else False)
        st.layer_fns[key] = fn
    return fn


def build_attention_mask(doc_ids: torch.Tensor, attention: str, compile: bool = False):
    """Causal mask restricted to each conversation, for a packed row.  doc_ids [1, T] (on the device).

    flex -> a FlexAttention BlockMask (block-sparse: blocks between different conversations are skipped);
    sdpa -> a boolean [1, 1, T, T] tensor (True = may attend).
    """
    doc = doc_ids[0]
    t = doc.shape[0]
    if attention == "flex":
        from torch.nn.attention.flex_attention import create_block_mask

        def doc_causal(b, h, q_idx, kv_idx):
            return (doc[q_idx] == doc[kv_idx]) & (q_idx >= kv_idx)

        # A fresh closure per row is fine: dynamo treats the captured tensor as a graph input (no recompile).
        return create_block_mask(doc_causal, None, None, t, t, device=doc.device, _compile=compile)
    same = doc.unsqueeze(0) == doc.unsqueeze(1)
    causal = torch.ones(t, t, dtype=torch.bool, device=doc.device).tril()
    return (same & causal).view(1, 1, t, t)


# -------- buckets: per-conversation SDPA over a few length buckets (GPUs without varlen flash attention) ------
# A packed row's segments (cu_seqlens: its conversations, then the padding pieces) are gathered into a few
# [n, L] batches, one per bucket length L (16, 24, 32, 48, 64, 96, ...: a segment is padded by < 1/3 at its
# end), each attended with SDPA's causal kernel and scattered back.  The padding at a segment's end is
# harmless under a causal mask: a real query only sees keys at or before it, and the pad slots' outputs are
# never read back (their gradients are exactly zero).  Nothing here needs compiling: under torch.compile the
# attention is one opaque custom op (sftbench::bucket_attn) with static output shapes [T, heads, D], so the
# compiled layer has one graph per token budget and the plan (which segment goes where) is rebuilt per row on
# the host, never recompiled.  On CUDA every bucket runs SDPA's memory-efficient kernel (sm50+: T4, P100),
# which needs neither flash attention nor bf16.

_PLAN_CACHE: "dict[tuple, BucketPlan]" = {}
_PLAN_CACHE_SIZE = 8


def bucket_length(n: int) -> int:
    """The bucket a segment of n tokens goes to: the smallest of 16, 24, 32, 48, 64, 96, ... that is >= n."""
    if n <= 16:
        return 16
    p = 1 << (n - 1).bit_length()  # next power of two >= n
    return 3 * p // 4 if n <= 3 * p // 4 else p


@dataclass
class BucketPlan:
    """Where each token of a packed row goes.  For bucket j (length lengths[j], count[j] segments):
    gather[j] [count*L] token index of each slot (pad slots repeat the segment's last token);
    grad_gather[j] the same with pad slots -> T (a zero row appended to the output gradient);
    inverse [T]: each token's slot in the concatenation of all buckets' flattened [count*L] slots."""

    lengths: list
    counts: list
    gather: list
    grad_gather: list
    inverse: torch.Tensor


def bucket_plan(cu_seqlens, device) -> BucketPlan:
    """The plan for segments with boundaries `cu_seqlens` (a CPU tensor or list; cached by content)."""
    cu = [int(c) for c in (cu_seqlens.tolist() if torch.is_tensor(cu_seqlens) else cu_seqlens)]
    key = (tuple(cu), str(device))
    plan = _PLAN_CACHE.get(key)
    if plan is not None:
        return plan
    t = cu[-1]
    groups: dict[int, list[tuple[int, int]]] = {}
    for s, e in zip(cu, cu[1:]):
        if e > s:
            groups.setdefault(bucket_length(e - s), []).append((s, e - s))
    lengths, counts, gather, grad_gather, inverse = [], [], [], [], [0] * t
    offset = 0
    for L in sorted(groups):
        g, gg = [], []
        for s, n in groups[L]:
            for j in range(L):
                real = j < n
                g.append(s + j if real else s + n - 1)
                gg.append(s + j if real else t)
                if real:
                    inverse[s + j] = offset + len(g) - 1
        offset += len(g)
        lengths.append(L)
        counts.append(len(groups[L]))
        gather.append(torch.tensor(g, dtype=torch.long).to(device))
        grad_gather.append(torch.tensor(gg, dtype=torch.long).to(device))
    plan = BucketPlan(lengths, counts, gather, grad_gather, torch.tensor(inverse, dtype=torch.long).to(device))
    if len(_PLAN_CACHE) >= _PLAN_CACHE_SIZE:
        _PLAN_CACHE.pop(next(iter(_PLAN_CACHE)))
    _PLAN_CACHE[key] = plan
    return plan


def _to_bucket(x: torch.Tensor, idx: torch.Tensor, n: int, L: int) -> torch.Tensor:
    """x [T, h, D] -> [n, h, L, D] (slots gathered by idx)."""
    return x.index_select(0, idx).view(n, L, x.shape[1], x.shape[2]).transpose(1, 2)


def _from_buckets(parts: list, inverse: torch.Tensor) -> torch.Tensor:
    """[n, H, L, D] per bucket -> [T, H, D] (each token read from its own slot)."""
    flat = torch.cat([p.transpose(1, 2).reshape(-1, p.shape[1], p.shape[3]) for p in parts])
    return flat.index_select(0, inverse)


def _causal_sdpa(qb, kb, vb, scale):
    """[n, Hq, L, D] x [n, Hkv, L, D] -> [n, Hq, L, D], causal.  On CUDA restricted to the memory-efficient
    kernel (sm50+; what a T4/P100 runs), so a big GPU measures the same path; math on the CPU."""
    if kb.shape[1] != qb.shape[1]:
        rep = qb.shape[1] // kb.shape[1]
        kb, vb = kb.repeat_interleave(rep, dim=1), vb.repeat_interleave(rep, dim=1)
    if not qb.is_cuda:
        return F.scaled_dot_product_attention(qb, kb, vb, is_causal=True, scale=scale)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
        return F.scaled_dot_product_attention(qb, kb, vb, is_causal=True, scale=scale)


def bucket_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: BucketPlan, scale: float) -> torch.Tensor:
    """Causal attention inside each segment; q [T, Hq, D], k/v [T, Hkv, D] -> [T, Hq, D].  Differentiable
    through autograd (eager runs); the compiled layer calls the custom op below instead."""
    parts = [_causal_sdpa(*(_to_bucket(z, idx, n, L) for z in (q, k, v)), scale)
             for L, n, idx in zip(plan.lengths, plan.counts, plan.gather)]
    return _from_buckets(parts, plan.inverse)


@torch.library.custom_op("sftbench::bucket_attn", mutates_args=())
def _bucket_attn_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, scale: float) -> torch.Tensor:
    return bucket_attention(q, k, v, bucket_plan(cu_seqlens, q.device), scale)  # below autograd: no graph kept


@_bucket_attn_op.register_fake
def _(q, k, v, cu_seqlens, scale):
    return q.new_empty(q.shape)  # contiguous, like the real output


@torch.library.custom_op("sftbench::bucket_attn_bwd", mutates_args=())
def _bucket_attn_bwd_op(grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                        scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # Recompute each bucket's attention and take its vector-Jacobian product with torch.func (a custom op's body
    # runs below autograd, where torch.autograd.grad would see no graph); pad slots get a zero output gradient.
    plan = bucket_plan(cu_seqlens, q.device)
    g_ext = torch.cat([grad.to(q.dtype), grad.new_zeros((1,) + tuple(grad.shape[1:]), dtype=q.dtype)])
    dqs, dks, dvs = [], [], []
    for L, n, idx, gidx in zip(plan.lengths, plan.counts, plan.gather, plan.grad_gather):
        _, vjp = torch.func.vjp(lambda a, b, c: _causal_sdpa(a, b, c, scale), *(_to_bucket(z, idx, n, L) for z in (q, k, v)))
        dq, dk, dv = vjp(_to_bucket(g_ext, gidx, n, L))
        dqs.append(dq), dks.append(dk), dvs.append(dv)
    return tuple(_from_buckets(d, plan.inverse).to(z.dtype) for d, z in ((dqs, q), (dks, k), (dvs, v)))


@_bucket_attn_bwd_op.register_fake
def _(grad, q, k, v, cu_seqlens, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _bucket_attn_setup(ctx, inputs, output):
    q, k, v, cu, scale = inputs
    ctx.save_for_backward(q, k, v, cu)
    ctx.scale = scale


def _bucket_attn_backward(ctx, grad):
    q, k, v, cu = ctx.saved_tensors
    dq, dk, dv = _bucket_attn_bwd_op(grad.contiguous(), q, k, v, cu, ctx.scale)
    return dq, dk, dv, None, None


_bucket_attn_op.register_autograd(_bucket_attn_backward, setup_context=_bucket_attn_setup)


def packed_forward_hidden(model, batch: dict) -> torch.Tensor:
    """Final hidden states [1, T, H] (after the final norm) of a packed row from make_packed_batch.

    batch: input_ids, position_ids, doc_ids [1, T] on the model's device.  Attention never crosses
    conversations; positions restart per conversation, so each conversation sees exactly what it would
    see alone (up to floating-point summation order).
    """
    st = _settings(model)
    core = model.model
    input_ids, position_ids = batch["input_ids"], batch["position_ids"]
    mask = batch.get("_attn_mask")
    if st.attention == "varlen":
        if input_ids.shape[0] != 1:
            raise ValueError("varlen attention takes one packed row (batch size 1)")
        if st.max_seqlen is not None and batch.get("max_seqlen", input_ids.shape[1]) > st.max_seqlen:
            raise ValueError(f"a segment of {batch.get('max_seqlen')} tokens exceeds the model's max_seqlen "
                             f"{st.max_seqlen}: pack with make_packed_batch(..., max_seqlen={st.max_seqlen})")
        mask = batch["cu_seqlens"]
        if st.compile:
            torch._dynamo.mark_dynamic(mask, 0)
    elif st.attention == "buckets":
        if input_ids.shape[0] != 1:
            raise ValueError("buckets attention takes one packed row (batch size 1)")
        mask = batch["cu_seqlens"].cpu()  # one host copy per row; the plan is built (and cached) from it
        bucket_plan(mask, input_ids.device)
        if st.compile:
            torch._dynamo.mark_dynamic(mask, 0)
    elif mask is None:
        mask = build_attention_mask(batch["doc_ids"], st.attention, compile=st.compile and input_ids.is_cuda)
    x = core.embed_tokens(input_ids)
    cos, sin = core.rotary_emb(x, position_ids)
    plain = _layer_fn(model, st, checkpointed=False)
    ckpt = _layer_fn(model, st, checkpointed=True) if st.checkpoint_layers else None
    for i, layer in enumerate(core.layers):
        at, mlp = layer.self_attn, layer.mlp
        fn = ckpt if i < st.checkpoint_layers and torch.is_grad_enabled() else plain
        x = fn(x, cos, sin, mask, layer.input_layernorm.weight, at.q_proj.weight, at.k_proj.weight,
               at.v_proj.weight, at.o_proj.weight, layer.post_attention_layernorm.weight,
               mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight)
    return core.norm(x)


def packed_loss_sum(model, batch: dict, chunk_size: int | None = None) -> tuple[torch.Tensor, int]:
    """(sum of token cross-entropies over the row, number of target tokens) for a packed micro-batch.

    Uses the fused chunked CE over the LM-head weight: no [T, vocab] logits are materialised.  The caller
    normalises over the whole accumulation window (sftbench.loss.normalized_loss(sum, n_window)).
    `num_targets` comes from the batch (computed on the CPU at packing time: no device sync).
    """
    st = _settings(model)
    hidden = packed_forward_hidden(model, batch)
    return packed_ce_sum(hidden, model.lm_head.weight, batch, chunk_size=chunk_size or st.ce_chunk_size,
                         compile=st.compile and hidden.is_cuda)


def packed_token_losses(model, batch: dict) -> torch.Tensor:
    """Per-position CE [T] (0 where the shifted label is -100), through full logits: for tests and checks."""
    hidden = packed_forward_hidden(model, batch)
    logits = model.lm_head(hidden)[0].float()
    return F.cross_entropy(logits, batch["shift_labels"][0], ignore_index=IGNORE_INDEX, reduction="none")


def make_fused_adamw(params, lr: float, **kwargs) -> torch.optim.AdamW:
    """AdamW with the fused CUDA kernel where possible (one launch for all parameters), else foreach."""
    params = list(params)
    on_cuda = all(p.is_cuda for p in params if isinstance(p, torch.Tensor)) and torch.cuda.is_available()
    if on_cuda:
        return torch.optim.AdamW(params, lr=lr, fused=True, **kwargs)
    return torch.optim.AdamW(params, lr=lr, foreach=True, **kwargs)


# -------- memory planning: choose_checkpoint_layers lives torch-free in sftbench/engine/memory_budget.py ----
from sftbench.engine.memory_budget import choose_checkpoint_layers  # noqa: E402,F401  (re-exported)
