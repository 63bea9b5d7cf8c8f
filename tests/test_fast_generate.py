"""The fast generation backend: same greedy tokens as HF generate(), memory-budget sizing, Triton kernels.

CPU, fp32, the tiny 2-layer Llama.  Its default init (std 0.02) makes every continuation one repeated
token, which would hide indexing bugs, so `lively_model` re-draws its matrices with std 0.15: then
continuations vary and ordinary tokens can serve as stop tokens that really occur mid-sequence.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sftbench.engine.fast_generate import FastGenerator, plan_batch, kv_bytes_per_token
from sftbench.engine.fast_llama import LlamaShape
from sftbench.core.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 384
SMOLLM2 = LlamaShape(num_layers=30, hidden_size=576, intermediate_size=1536, num_heads=9, num_kv_heads=3,
                     head_dim=64, vocab_size=49152, rms_norm_eps=1e-5, tie_word_embeddings=True)
GIB = 1024**3


def lively_model(seed: int = 0, std: float = 0.15):
    from sftbench.model.tiny import build_tiny_model

    model = build_tiny_model(VOCAB, seed=seed).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, std, generator=g)
    return model


def make_prompts(lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in lengths]


def hf_greedy(model, prompts, max_new_tokens, stop_ids):
    """generate() one prompt at a time (no padding): the reference, stop token included as HF reports it."""
    out = []
    for p in prompts:
        ids = torch.tensor([p])
        gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=stop_ids if stop_ids else None, pad_token_id=2)
        toks = gen[0, len(p):].tolist()
        if stop_ids:  # generate() pads finished rows only in batches; be safe anyway
            for k, t in enumerate(toks):
                if t in stop_ids:
                    toks = toks[: k + 1]
                    break
        out.append(toks)
    return out


@pytest.fixture(scope="module")
def model():
    m = lively_model(0)
    m.generation_config.eos_token_id = None  # stop tokens come only from the test's eos_token_id
    return m


LENGTHS = [5, 17, 1, 40, 9, 23, 3, 31, 12, 2, 26]


def pick_stop_ids(model, prompts, max_new):
    """Two ordinary tokens that occur inside some continuations (so some rows stop early, others not)."""
    free = hf_greedy(model, prompts, max_new, [])
    first_seen = collections.Counter()
    for toks in free:
        for t in set(toks[2: max_new - 4]):
            first_seen[t] += 1
    stops = [t for t, c in first_seen.most_common() if c < len(prompts)][:2]
    assert len(stops) == 2
    return stops


# ------------------------------------------------------------------------------------------------ sizing

def test_kv_bytes_per_token_smollm2():
    assert kv_bytes_per_token(SMOLLM2, 2) == 23040  # 22.5 KiB, as shared/NOTES.md
    assert kv_bytes_per_token(SMOLLM2, 4) == 46080


def test_plan_batch_smollm2_under_8gib():
    budget = int(6.8 * GIB)
    plan = plan_batch(SMOLLM2, budget_bytes=budget, dtype_bytes=2, max_prompt_len=386, max_new_tokens=1280,
                      num_prompts=541, prefill_tokens=8192)
    assert plan.slot_len == 1666
    assert plan.weight_bytes == 134_515_008 * 2  # SmolLM2-135M's parameter count (tied head)
    assert plan.kv_cache_bytes == plan.slots * 1666 * 23040
    # Everything planned fits; one more slot (before rounding to 8) would not.
    fixed = plan.weight_bytes + plan.stage_bytes + plan.reserve_bytes
    assert fixed + plan.slots * plan.per_slot_bytes <= budget
    raw = (budget - fixed) // plan.per_slot_bytes
    assert plan.slots == raw - raw % 8 and plan.slots % 8 == 0
    assert plan.limited_by == "memory"
    assert 128 <= plan.slots <= 176  # NOTES: batch 128 x (prompt + 1280) fits in 8 GB


def test_plan_batch_limits():
    kw = dict(dtype_bytes=2, max_prompt_len=100, max_new_tokens=1280, prefill_tokens=4096)
    big = plan_batch(SMOLLM2, budget_bytes=40 * GIB, num_prompts=541, max_batch=100, **kw)
    assert (big.slots, big.limited_by) == (96, "max_batch")  # rounded down to a multiple of 8
    few = plan_batch(SMOLLM2, budget_bytes=40 * GIB, num_prompts=13, **kw)
    assert (few.slots, few.limited_by) == (13, "prompts")  # never more slots than prompts, not rounded
    with pytest.raises(UserError, match="cannot hold even one sequence"):
        plan_batch(SMOLLM2, budget_bytes=int(0.5 * GIB), num_prompts=541, **kw)
    # A longer cap costs proportionally more cache per slot.
    a = plan_batch(SMOLLM2, budget_bytes=6 * GIB, num_prompts=541, **kw)
    b = plan_batch(SMOLLM2, budget_bytes=6 * GIB, num_prompts=541, **{**kw, "max_new_tokens": 256})
    assert b.slots > 3 * a.slots


def test_plan_batch_from_generator_budget(model):
    gen = FastGenerator(model, None, max_new_tokens=20, stop_token_ids=[], device="cpu", dtype=torch.float32,
                        memory_budget_gib=0.3, prefill_tokens=64)
    gen.generate(make_prompts([4, 9]), progress=False)
    assert gen.plan.budget_bytes == int(0.3 * GIB)
    assert gen.plan.slots == 2 and gen.plan.slot_len == 9 + 20


# ------------------------------------------------------------------------------------------------ same answers

def test_matches_hf_generate_with_refill_and_stop_tokens(model):
    prompts = make_prompts(LENGTHS)
    max_new = 32
    stops = pick_stop_ids(model, prompts, max_new)
    ref = hf_greedy(model, prompts, max_new, stops)
    assert any(len(r) < max_new for r in ref) and any(len(r) == max_new for r in ref)  # both kinds occur
    # 3 slots for 11 prompts (refills), several prefill groups, 4 steps between host checks.
    gen = FastGenerator(model, None, max_new_tokens=max_new, stop_token_ids=stops, device="cpu",
                        dtype=torch.float32, max_batch=3, prefill_tokens=45, sync_every=4)
    res = gen.generate(prompts, progress=False)
    assert [r["token_ids"] for r in res] == ref
    for r, toks in zip(res, ref):
        assert r["generated_tokens"] == len(toks)
        assert r["hit_cap"] == (len(toks) == max_new and toks[-1] not in stops)
        assert all(t not in stops for t in toks[:-1])  # nothing after a stop token
    st = gen.last_stats
    assert st["slots"] == 3 and st["prefill_groups"] >= 3
    assert st["generated_tokens"] == sum(len(t) for t in ref)


def test_matches_hf_without_stop_tokens_and_single_token_cap(model):
    prompts = make_prompts([7, 1, 19, 4], seed=3)
    ref = hf_greedy(model, prompts, 25, [])
    gen = FastGenerator(model, None, max_new_tokens=25, stop_token_ids=[], device="cpu", dtype=torch.float32,
                        max_batch=2, sync_every=3)
    res = gen.generate(prompts, progress=False)
    assert [r["token_ids"] for r in res] == ref
    assert all(r["hit_cap"] and r["generated_tokens"] == 25 for r in res)
    one = FastGenerator(model, None, max_new_tokens=1, stop_token_ids=[], device="cpu", dtype=torch.float32)
    assert [r["token_ids"] for r in one.generate(prompts, progress=False)] == [t[:1] for t in ref]


def test_stop_token_as_first_token(model):
    prompts = make_prompts([6, 11, 3], seed=5)
    free = hf_greedy(model, prompts, 10, [])
    stop = free[1][0]  # prompt 1 stops at once; others may stop later or not at all
    ref = hf_greedy(model, prompts, 10, [stop])
    gen = FastGenerator(model, None, max_new_tokens=10, stop_token_ids=[stop], device="cpu", dtype=torch.float32,
                        max_batch=2)
    res = gen.generate(prompts, progress=False)
    assert res[1] == {"token_ids": [stop], "hit_cap": False, "generated_tokens": 1}
    assert [r["token_ids"] for r in res] == ref


def test_load_weights_reuses_buffers_and_follows_new_checkpoint(model):
    prompts = make_prompts([8, 3, 15, 21, 5], seed=7)
    gen = FastGenerator(model, None, max_new_tokens=20, stop_token_ids=[], device="cpu", dtype=torch.float32,
                        max_batch=2)
    first = gen.generate(prompts, progress=False)
    cache_ptr, plan = gen.k_cache.data_ptr(), gen.plan
    other = lively_model(seed=11)
    other.generation_config.eos_token_id = None
    gen.load_weights(other)
    second = gen.generate(prompts, progress=False)
    assert gen.k_cache.data_ptr() == cache_ptr and gen.plan is plan  # nothing re-planned or re-allocated
    assert gen.last_stats["setup_s"] == 0.0
    assert [r["token_ids"] for r in second] == hf_greedy(other, prompts, 20, [])
    assert [r["token_ids"] for r in second] != [r["token_ids"] for r in first]
    gen.load_weights(model)  # and back: same answers as the first time (no state leaks between calls)
    assert gen.generate(prompts, progress=False) == first


def test_load_weights_rejects_other_architecture(model):
    from sftbench.model.tiny import build_tiny_model

    gen = FastGenerator(model, None, max_new_tokens=4, stop_token_ids=[], device="cpu", dtype=torch.float32)
    with pytest.raises(ValueError, match="architecture differs"):
        gen.load_weights(build_tiny_model(VOCAB, num_layers=3))


def test_input_checks(model):
    gen = FastGenerator(model, None, max_new_tokens=4, stop_token_ids=[2], device="cpu", dtype=torch.float32)
    assert gen.generate([], progress=False) == []
    with pytest.raises(ValueError, match="prompt 1 has no tokens"):
        gen.generate([[5], []], progress=False)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        gen.generate([[5, VOCAB]], progress=False)
    with pytest.raises(ValueError, match="max_new_tokens"):
        FastGenerator(model, None, max_new_tokens=0, stop_token_ids=[], device="cpu")


def test_chat_prompts_from_tiny_tokenizer(tiny_model_dir, tiny_tokenizer):
    """End to end with a saved checkpoint and real chat-formatted prompts (stop at <|im_end|>/<|endoftext|>)."""
    from transformers import LlamaForCausalLM

    m = LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    texts = ["Write a short poem about the sea.", "List three fruits.", "What is the capital of France?"]
    prompts = [tiny_tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                                  tokenize=True, return_dict=False) for t in texts]
    ref = hf_greedy(m, prompts, 12, [2, 0])
    gen = FastGenerator(m, tiny_tokenizer, max_new_tokens=12, stop_token_ids=[2, 0], device="cpu",
                        dtype=torch.float32, max_batch=2)
    assert [r["token_ids"] for r in gen.generate(prompts, progress=False)] == ref


# ------------------------------------------------------------------------------------------------ Triton path

_INTERP_PATCH = """
import triton.runtime.interpreter as _I
_orig = _I._patch_lang_tensor
def _patched(tensor, scope):  # numpy >= 2 refuses int() of the interpreter's 1-element scalars
    _orig(tensor, scope)
    scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))
_I._patch_lang_tensor = _patched
"""


def _run_interpreted(body: str) -> str:
    pytest.importorskip("triton")
    code = _INTERP_PATCH + textwrap.dedent(body)
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_triton_decode_kernel_matches_reference_interpreted():
    """The split-K kernel (run by Triton's CPU interpreter) against SDPA with a length mask, fresh random data."""
    out = _run_interpreted("""
        import torch
        from sftbench.engine.fast_attention import decode_attention_triton, decode_attention_torch
        torch.manual_seed(0)
        for (B, H, KVH, D, L, S) in [(5, 9, 3, 64, 300, 4), (3, 4, 2, 16, 70, 1), (4, 9, 3, 64, 130, 3)]:
            q = torch.randn(B, H, D); kn = torch.randn(B, KVH, D); vn = torch.randn(B, KVH, D)
            kc = torch.randn(B, L, KVH, D); vc = torch.randn(B, L, KVH, D)
            pos = torch.tensor([0, L - 1, 64, 65, 17][:B])
            kc2, vc2 = kc.clone(), vc.clone()
            ref = decode_attention_torch(q, kn, vn, kc2, vc2, pos)
            got = decode_attention_triton(q, kn, vn, kc, vc, pos, num_splits=S)
            err = ((got - ref).norm() / ref.norm()).item()
            assert err < 1e-5, (B, L, S, err)
            assert torch.equal(kc, kc2) and torch.equal(vc, vc2)  # the new token was written at pos
        print("ok")
    """)
    assert out.strip().endswith("ok")


def test_generator_with_triton_attention_matches_hf_interpreted():
    out = _run_interpreted("""
        import torch
        from tests.test_fast_generate import lively_model, make_prompts, hf_greedy
        from sftbench.engine.fast_generate import FastGenerator
        m = lively_model(0); m.generation_config.eos_token_id = None
        prompts = make_prompts([5, 17, 1])
        ref = hf_greedy(m, prompts, 6, [])
        gen = FastGenerator(m, None, max_new_tokens=6, stop_token_ids=[], device="cpu", dtype=torch.float32,
                            max_batch=2, attention="triton", sync_every=2)
        assert [r["token_ids"] for r in gen.generate(prompts, progress=False)] == ref
        print("ok")
    """)
    assert out.strip().endswith("ok")


# ------------------------------------------------------------------------------------------------ GPU (opt-in)

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_graph_paths_match_hf():
    """fp32 + torch attention + CUDA graph must equal HF exactly; bf16 + Triton + compile mostly."""
    dev = torch.device("cuda")
    m = lively_model(0).to(dev)
    m.generation_config.eos_token_id = None
    prompts = make_prompts(LENGTHS)
    ref = [t for t in hf_greedy(m, [p for p in prompts], 30, [])]
    gen = FastGenerator(m, None, max_new_tokens=30, stop_token_ids=[], device=dev, dtype=torch.float32,
                        max_batch=4, attention="torch", compile=False)
    assert [r["token_ids"] for r in gen.generate(prompts, progress=False)] == ref
    assert gen.last_stats["cuda_graph"]
    mb = lively_model(0).to(dev, torch.bfloat16)
    mb.generation_config.eos_token_id = None
    ref_b = hf_greedy(mb, prompts, 30, [])
    fast = FastGenerator(mb, None, max_new_tokens=30, stop_token_ids=[], device=dev, dtype=torch.bfloat16,
                         max_batch=4)
    got = [r["token_ids"] for r in fast.generate(prompts, progress=False)]
    same_first = sum(a[:5] == b[:5] for a, b in zip(got, ref_b))
    assert same_first >= len(prompts) - 2
