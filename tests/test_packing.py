"""Packing + the fast forward: same per-token losses and gradients as each conversation alone, no leakage."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from sftbench.core.errors import UserError
from sftbench.engine.fast_model import (
    choose_checkpoint_layers,
    packed_forward_hidden,
    packed_loss_sum,
    packed_token_losses,
    prepare_fast_model,
)
from sftbench.loss import fused_linear_ce_sum
from sftbench.data.packing import make_packed_batch, pack_examples, packing_efficiency

IGN = -100
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def _ex(n, vocab=384, prompt=None, seed=0):
    """A conversation of n tokens whose first `prompt` tokens are untrained (labels unshifted)."""
    rng = random.Random(seed)
    ids = [rng.randrange(3, vocab) for _ in range(n)]
    prompt = n // 3 if prompt is None else prompt
    return {"input_ids": ids, "labels": [IGN] * prompt + ids[prompt:]}


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    m = LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    m.eval()  # no dropout anyway; eval keeps HF from warning
    return m


@pytest.fixture(scope="module")
def convs():
    return [_ex(37, seed=1), _ex(64, prompt=10, seed=2), _ex(20, prompt=19, seed=3), _ex(5, prompt=0, seed=4)]


def _reference_token_losses(model, ex):
    """Each conversation alone through the HF forward: CE of position t predicting label t+1."""
    ids = torch.tensor([ex["input_ids"]])
    labels = torch.tensor(ex["labels"])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    return F.cross_entropy(logits[:-1], labels[1:], ignore_index=IGN, reduction="none")


# ---- pack_examples ---------------------------------------------------------------------------------

def test_pack_examples_first_fit_decreasing_exact():
    lens = [5, 9, 3, 7, 2, 6, 4]
    exs = [{"input_ids": [1] * n, "labels": [1] * n} for n in lens]
    bins = pack_examples(exs, 10)
    # FFD by hand: 9->A(1 left) 7->B(3) 6->C(4) 5->D(5) 4->C(0) 3->B(0) 2->D(3)
    assert bins == [[1], [2, 3], [5, 6], [0, 4]]
    assert sorted(i for b in bins for i in b) == list(range(len(lens)))
    assert all(sum(lens[i] for i in b) <= 10 for b in bins)
    assert pack_examples(exs, 10) == bins  # deterministic
    assert packing_efficiency(bins, exs, 10) == pytest.approx(36 / 40)


def test_pack_examples_seed_shuffles_bin_order_only():
    exs = [{"input_ids": [1] * n, "labels": [1] * n} for n in [5, 9, 3, 7, 2, 6, 4, 8, 1]]
    base = pack_examples(exs, 10)
    a, b = pack_examples(exs, 10, seed=1), pack_examples(exs, 10, seed=1)
    assert a == b
    assert sorted(map(tuple, a)) == sorted(map(tuple, base))
    assert any(pack_examples(exs, 10, seed=s) != base for s in range(5))


def test_pack_examples_rejects_too_long_and_bad_examples():
    with pytest.raises(UserError, match="example 1 has 11 tokens"):
        pack_examples([{"input_ids": [1], "labels": [1]}, {"input_ids": [1] * 11, "labels": [1] * 11}], 10)
    with pytest.raises(ValueError, match="labels has 2"):
        pack_examples([{"input_ids": [1, 2, 3], "labels": [1, 2]}], 10)
    with pytest.raises(ValueError, match="empty"):
        pack_examples([{"input_ids": [], "labels": []}], 10)


# ---- make_packed_batch -----------------------------------------------------------------------------

def test_make_packed_batch_exact_tensors():
    exs = [{"input_ids": [10, 11, 12], "labels": [IGN, 11, 12]}, {"input_ids": [20, 21], "labels": [20, 21]}]
    b = make_packed_batch(exs, 8, pad_id=2)
    assert b["input_ids"].tolist() == [[10, 11, 12, 20, 21, 2, 2, 2]]
    # first token of every conversation -> -100 (so no loss crosses the boundary after the shift)
    assert b["labels"].tolist() == [[IGN, 11, 12, IGN, 21, IGN, IGN, IGN]]
    assert b["shift_labels"].tolist() == [[11, 12, IGN, 21, IGN, IGN, IGN, IGN]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    assert b["doc_ids"].tolist() == [[0, 0, 0, 1, 1, 2, 2, 2]]
    assert b["cu_seqlens"].tolist() == [0, 3, 5, 8]
    assert (b["num_targets"], b["num_real_tokens"], b["num_examples"]) == (3, 5, 2)
    assert b["max_seqlen"] == 3
    full = make_packed_batch(exs, 5, pad_id=2)
    assert full["cu_seqlens"].tolist() == [0, 3, 5] and full["input_ids"].shape == (1, 5)
    # varlen attention: padding cut into segments no longer than max_seqlen; the rest is unchanged
    cut = make_packed_batch(exs, 12, pad_id=2, max_seqlen=3)
    assert cut["cu_seqlens"].tolist() == [0, 3, 5, 8, 11, 12] and cut["max_seqlen"] == 3
    assert cut["doc_ids"].tolist() == [[0, 0, 0, 1, 1] + [2] * 7]
    with pytest.raises(UserError, match="longer than max_seqlen 2"):
        make_packed_batch(exs, 8, pad_id=2, max_seqlen=2)
    with pytest.raises(UserError, match="more than the token budget 4"):
        make_packed_batch(exs, 4, pad_id=2)


# ---- the fast forward vs each conversation alone -----------------------------------------------------

@pytest.mark.parametrize("attention,fuse", [("sdpa", False), ("flex", False), ("sdpa", True), ("flex", True),
                                            ("buckets", False), ("buckets", True)])
def test_packed_per_token_losses_equal_unpacked_reference(model, convs, attention, fuse):
    prepare_fast_model(model, attention=attention, compile=False, fuse_projections=fuse)
    budget = 160
    batch = make_packed_batch(convs, budget, pad_id=2)
    with torch.no_grad():
        packed = packed_token_losses(model, batch)
    start = 0
    for ex in convs:
        n = len(ex["input_ids"])
        ref = _reference_token_losses(model, ex)
        torch.testing.assert_close(packed[start:start + n - 1], ref, atol=1e-5, rtol=1e-5)
        assert packed[start + n - 1].item() == 0.0  # its last token predicts nothing across the boundary
        start += n
    assert packed[start:].abs().sum().item() == 0.0  # padding carries no loss


@pytest.mark.parametrize("attention", ["sdpa", "flex", "buckets"])
def test_no_cross_sample_leakage(model, convs, attention):
    prepare_fast_model(model, attention=attention, compile=False)
    changed = [dict(c) for c in convs]
    rng = random.Random(9)
    changed[1] = {"input_ids": [rng.randrange(3, 384) for _ in convs[1]["input_ids"]], "labels": convs[1]["labels"]}
    with torch.no_grad():
        h0 = packed_forward_hidden(model, make_packed_batch(convs, 160, pad_id=2))[0]
        h1 = packed_forward_hidden(model, make_packed_batch(changed, 160, pad_id=2))[0]
    n0, n1 = len(convs[0]["input_ids"]), len(convs[1]["input_ids"])
    torch.testing.assert_close(h1[:n0], h0[:n0], atol=1e-6, rtol=0)           # before the changed one
    torch.testing.assert_close(h1[n0 + n1:], h0[n0 + n1:], atol=1e-6, rtol=0)  # after it
    assert (h1[n0:n0 + n1] - h0[n0:n0 + n1]).abs().max().item() > 1e-3       # the change is visible


def test_packed_loss_sum_and_gradients_equal_reference(model, convs):
    """Fused chunked CE sum over a packed row == sum of per-conversation HF losses; same gradients.

    (sdpa and buckets: FlexAttention has no backward on CPU; its forward is checked above, its backward on the
    GPU bench.  buckets with padding cut into 64-token pieces too, as the trainer packs.)"""
    for attention, max_seqlen in (("sdpa", None), ("buckets", None), ("buckets", 64)):
        for fuse in (False, True):
            _loss_and_grads_vs_reference(model, convs, fuse, attention, max_seqlen)


def _loss_and_grads_vs_reference(model, convs, fuse, attention="sdpa", max_seqlen=None):
    prepare_fast_model(model, attention=attention, compile=False, ce_chunk_size=48, fuse_projections=fuse)  # 160 = 3x48 + 16
    batch = make_packed_batch(convs, 160, pad_id=2, max_seqlen=max_seqlen)
    model.zero_grad(set_to_none=True)
    s, n = packed_loss_sum(model, batch)
    s.backward()
    fast_grads = {k: p.grad.clone() for k, p in model.named_parameters()}

    model.zero_grad(set_to_none=True)
    ref_sum, ref_n = 0.0, 0
    for ex in convs:
        ids = torch.tensor([ex["input_ids"]])
        labels = torch.tensor(ex["labels"])
        logits = model(input_ids=ids).logits[0].float()
        ref_sum = ref_sum + F.cross_entropy(logits[:-1], labels[1:], ignore_index=IGN, reduction="sum")
        ref_n += int((labels[1:] != IGN).sum())
    ref_sum.backward()
    assert n == ref_n == batch["num_targets"]
    torch.testing.assert_close(s, ref_sum.detach(), atol=1e-4, rtol=1e-5)
    for k, p in model.named_parameters():
        torch.testing.assert_close(fast_grads[k], p.grad, atol=1e-5, rtol=1e-4, msg=lambda m: f"{k}: {m}")
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("attention", ["sdpa", "buckets"])
def test_checkpointed_layers_give_same_loss_and_grads(model, convs, attention):
    batch = make_packed_batch(convs, 160, pad_id=2)
    out = []
    for k in (0, 2):
        prepare_fast_model(model, attention=attention, compile=False, checkpoint_layers=k)
        model.zero_grad(set_to_none=True)
        s, _ = packed_loss_sum(model, batch)
        s.backward()
        out.append((s.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(out[0][0], out[1][0], atol=0, rtol=0)
    for g0, g1 in zip(out[0][1], out[1][1]):
        torch.testing.assert_close(g0, g1, atol=1e-7, rtol=0)
    model.zero_grad(set_to_none=True)


def test_normalisation_over_accumulation_window(model, convs):
    """Two packed micro-batches: sum of sums / total targets == mean token CE over all conversations."""
    prepare_fast_model(model, attention="sdpa", compile=False)
    bins = pack_examples(convs, 80)
    assert len(bins) >= 2
    total, n_window = 0.0, 0
    with torch.no_grad():
        for b in bins:
            s, n = packed_loss_sum(model, make_packed_batch([convs[i] for i in b], 80, pad_id=2))
            total, n_window = total + s, n_window + n
        ref = torch.cat([_reference_token_losses(model, ex)[torch.tensor(ex["labels"][1:]) != IGN] for ex in convs])
    assert n_window == ref.numel()
    torch.testing.assert_close(total / n_window, ref.mean(), atol=1e-5, rtol=1e-5)
    try:
        from loss_functions import normalized_loss
    except ImportError:
        return
    torch.testing.assert_close(normalized_loss(total, n_window), ref.mean(), atol=1e-5, rtol=1e-5)


# ---- fused chunked CE ------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_fused_linear_ce_matches_cross_entropy(chunk):
    g = torch.Generator().manual_seed(chunk)
    h = torch.randn(50, 16, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(300, 16, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 300, (50,), generator=g)
    t[::4] = IGN
    s = fused_linear_ce_sum(h, w, t, chunk_size=chunk)
    (2.5 * s).backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref = F.cross_entropy(h @ w.t(), t, ignore_index=IGN, reduction="sum")
    (2.5 * ref).backward()
    torch.testing.assert_close(s, ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(gh, h.grad, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(gw, w.grad, atol=1e-10, rtol=1e-8)


def test_fused_linear_ce_all_ignored_is_zero():
    h = torch.randn(4, 8, requires_grad=True)
    w = torch.randn(10, 8, requires_grad=True)
    s = fused_linear_ce_sum(h, w, torch.full((4,), IGN), chunk_size=3)
    s.backward()
    assert s.item() == 0.0 and h.grad.abs().sum().item() == 0.0 and w.grad.abs().sum().item() == 0.0


def test_choose_checkpoint_layers_fits_budget(model):
    gib = 1024**3
    n = model.config.num_hidden_layers
    assert choose_checkpoint_layers(model, 1024, 64 * gib) == 0
    assert choose_checkpoint_layers(model, 1024, 1) == n
    ks = [choose_checkpoint_layers(model, 1024, b, act_bytes=10**6, ckpt_bytes=10**4) for b in
          (10**8, 2 * 10**9, 2 * 10**9 + 10**9, 10**11)]
    assert ks == sorted(ks, reverse=True)


def test_unsupported_model_is_refused(tiny_model_dir):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, attention_bias=True)
    with pytest.raises(NotImplementedError, match="attention_bias"):
        prepare_fast_model(LlamaForCausalLM(cfg))


def test_agrees_with_loss_functions_chunked_ce(model, convs):
    """The fused CE on packed shift_labels == loss_functions.chunked_ce_sum on the packed (unshifted) labels."""
    lf = pytest.importorskip("loss_functions")
    prepare_fast_model(model, attention="sdpa", compile=False, ce_chunk_size=32)
    batch = make_packed_batch(convs, 160, pad_id=2)
    with torch.no_grad():
        s, n = packed_loss_sum(model, batch)
        hidden = packed_forward_hidden(model, batch)
        s2, n2 = lf.chunked_ce_sum(hidden, model.lm_head.weight, batch["labels"], chunk_size=32)
        s3, n3 = lf.masked_ce_sum(model.lm_head(hidden), batch["labels"])
    assert n == n2 == n3
    torch.testing.assert_close(s, s2.float(), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(s, s3.float(), atol=1e-4, rtol=1e-5)


# ---- attention choice; varlen flash attention (GPU only) ----------------------------------------------

def test_pick_attention_on_cpu_and_varlen_refused_there(model):
    from sftbench.engine.fast_model import pick_attention, varlen_supported

    assert pick_attention("cpu", half_precision=True)[0] == "sdpa"
    assert varlen_supported("cpu") == "not a CUDA device"
    with pytest.raises(ValueError, match="varlen cannot run here"):
        prepare_fast_model(model, attention="varlen")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (varlen flash attention)")
@pytest.mark.parametrize("compiled", [False, True])
def test_varlen_matches_sdpa_on_gpu(tiny_model_dir, convs, compiled):
    """bf16 on the GPU: varlen (padding cut into max_seqlen pieces) gives dense SDPA's losses and gradients."""
    from transformers import LlamaForCausalLM

    from sftbench.engine.fast_model import varlen_supported
    from sftbench.data.packing import batch_to_device

    if varlen_supported("cuda"):
        pytest.skip(varlen_supported("cuda"))
    out = {}
    for attention in ("sdpa", "varlen"):
        m = LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).cuda()
        prepare_fast_model(m, attention=attention, compile=compiled and attention == "varlen", max_seqlen=64)
        losses = []
        for budget in (160, 192):  # two rows with different numbers of padding pieces (cu_seqlens lengths)
            batch = batch_to_device(make_packed_batch(convs, budget, pad_id=2, max_seqlen=64), "cuda")
            with torch.autocast("cuda", dtype=torch.bfloat16):
                s, _ = packed_loss_sum(m, batch)
            s.float().backward()
            losses.append(float(s))
        out[attention] = (losses, torch.cat([p.grad.flatten() for p in m.parameters()]))
    assert out["varlen"][0] == pytest.approx(out["sdpa"][0], rel=2e-2)
    g_ref, g = out["sdpa"][1], out["varlen"][1]
    assert torch.isfinite(g).all()
    assert float((g - g_ref).norm() / g_ref.norm()) < 3e-2


# ---- buckets: SDPA per length bucket (GPUs without varlen) -------------------------------------------

def test_bucket_lengths_and_plan_exact():
    from sftbench.engine.fast_model import bucket_length, bucket_plan

    assert [bucket_length(n) for n in (1, 16, 17, 24, 25, 33, 48, 49, 97, 600, 1024)] == \
        [16, 16, 24, 24, 32, 48, 48, 64, 128, 768, 1024]
    plan = bucket_plan(torch.tensor([0, 3, 20, 22], dtype=torch.int32), "cpu")
    assert plan.lengths == [16, 24] and plan.counts == [2, 1]
    # bucket 16: segment [0, 3) then [20, 22), pad slots repeat the segment's last token (grad: -> T = 22)
    assert plan.gather[0].tolist() == [0, 1, 2] + [2] * 13 + [20, 21] + [21] * 14
    assert plan.grad_gather[0].tolist() == [0, 1, 2] + [22] * 13 + [20, 21] + [22] * 14
    assert plan.gather[1].tolist() == list(range(3, 20)) + [19] * 7
    assert plan.inverse.tolist() == [0, 1, 2] + list(range(32, 49)) + [16, 17]


def test_bucket_attention_op_matches_per_segment_sdpa_with_gradients():
    """The custom op (what the compiled layer calls; CPU backward written out) and the eager function give each
    segment's own causal SDPA, with GQA, in float64."""
    from sftbench.engine.fast_model import bucket_attention, bucket_plan

    torch.manual_seed(0)
    cu = torch.tensor([0, 37, 101, 121, 126, 160], dtype=torch.int32)
    q = torch.randn(160, 4, 8, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(160, 2, 8, dtype=torch.float64, requires_grad=True) for _ in range(2))
    g = torch.randn(160, 4, 8, dtype=torch.float64)

    def per_segment(q, k, v):
        out = []
        for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
            qq, kk, vv = q[s:e].transpose(0, 1), k[s:e].transpose(0, 1), v[s:e].transpose(0, 1)
            kk, vv = kk.repeat_interleave(2, 0), vv.repeat_interleave(2, 0)
            out.append(F.scaled_dot_product_attention(qq, kk, vv, is_causal=True, scale=0.3).transpose(0, 1))
        return torch.cat(out)

    ref = per_segment(q, k, v)
    ref_g = torch.autograd.grad(ref, (q, k, v), g)
    for fn in (lambda: bucket_attention(q, k, v, bucket_plan(cu, "cpu"), 0.3),
               lambda: torch.ops.sftbench.bucket_attn(q, k, v, cu, 0.3)):
        out = fn()
        torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
        for a, b in zip(torch.autograd.grad(out, (q, k, v), g), ref_g):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_auto_picks_buckets_on_gpus_without_varlen(monkeypatch):
    import sftbench.engine.fast_model as fm

    import sftbench.core.capabilities as capm

    # the decision lives in sftbench.core.capabilities (tests/test_capabilities.py covers each missing feature)
    monkeypatch.setattr(capm, "_cuda_capability", lambda dev: (7, 5))
    monkeypatch.setattr(capm, "_gpu_name", lambda dev: "Tesla T4")
    monkeypatch.setattr(capm, "_import_varlen", lambda: None)
    monkeypatch.setattr(capm, "_bf16_query", lambda dev, cap: False)
    att, why = fm.pick_attention("cuda", half_precision=True)
    assert (att, why) == ("buckets", "no flash varlen: flash needs sm80+, this GPU is sm75")
    monkeypatch.setattr(capm, "_cuda_capability", lambda dev: (9, 0))
    assert fm.pick_attention("cuda", half_precision=True)[0] == "varlen"
    assert fm.pick_attention("cuda", half_precision=False)[0] == "buckets"  # fp32: flash needs bf16/fp16


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (memory-efficient SDPA kernel)")
@pytest.mark.parametrize("compiled,dtype", [(False, torch.float16), (True, torch.float16), (True, torch.bfloat16)])
def test_buckets_match_sdpa_on_gpu(tiny_model_dir, convs, compiled, dtype):
    """fp16 (the T4 path) on the GPU: buckets, eager or through the compiled layer's custom op, give dense
    SDPA's losses and gradients; two rows with different cu_seqlens lengths through one compiled graph."""
    from transformers import LlamaForCausalLM

    from sftbench.data.packing import batch_to_device

    out = {}
    for attention in ("sdpa", "buckets"):
        m = LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).cuda()
        prepare_fast_model(m, attention=attention, compile=compiled and attention == "buckets", checkpoint_layers=1)
        losses = []
        for budget in (160, 192):
            batch = batch_to_device(make_packed_batch(convs, budget, pad_id=2, max_seqlen=64), "cuda")
            with torch.autocast("cuda", dtype=dtype):
                s, _ = packed_loss_sum(m, batch)
            s.float().backward()
            losses.append(float(s))
        out[attention] = (losses, torch.cat([p.grad.flatten() for p in m.parameters()]))
    assert out["buckets"][0] == pytest.approx(out["sdpa"][0], rel=2e-2)
    g_ref, g = out["sdpa"][1], out["buckets"][1]
    assert torch.isfinite(g).all()
    assert float((g - g_ref).norm() / g_ref.norm()) < 3e-2
