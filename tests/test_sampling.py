"""sftbench.engine.sampling (the one sampling function) and the fast generator's sampling path, on CPU.

Exact where exactness is the contract (temperature 0 = argmax; the nucleus of a hand-made distribution; the same
seed = the same tokens whatever the batch), statistical where it is a distribution (chi-square with fixed seeds,
so the test is deterministic: it cannot flake, and a biased sampler fails it).
"""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from sftbench.engine.sampling import SampleLogitsProcessor, row_seed, sample_tokens, top_p_keep, uniform_noise

from test_fast_generate import LENGTHS, hf_greedy, lively_model, make_prompts


def _draws(logits_row, n, temperature=1.0, top_p=1.0, top_k=0):
    L = logits_row.repeat(n, 1)
    seeds = torch.tensor([row_seed(7, 0, k) for k in range(n)])
    return sample_tokens(L, torch.full((n,), temperature), torch.full((n,), top_p), seeds,
                         torch.zeros(n, dtype=torch.long), use_top_p=top_p < 1, top_k=top_k)


def test_temperature_zero_is_argmax_exactly():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 1000, generator=g)
    logits[3, 10] = logits[3, 11] = logits[3].max() + 1  # a tie: argmax's own first index
    want = torch.argmax(logits, dim=-1)
    got = sample_tokens(logits, torch.zeros(64), torch.full((64,), 0.5), torch.arange(64), torch.arange(64))
    assert torch.equal(got, want)
    # mixed rows: the greedy ones stay argmax, bf16 logits too
    temp = torch.tensor([0.0, 1.0] * 32)
    got = sample_tokens(logits.bfloat16(), temp, torch.ones(64), torch.arange(64), torch.zeros(64, dtype=torch.long))
    assert torch.equal(got[::2], torch.argmax(logits.bfloat16().float(), dim=-1)[::2])


def test_fixed_seed_is_reproducible_and_seeds_differ():
    logits = torch.randn(8, 500, generator=torch.Generator().manual_seed(1))
    args = (torch.full((8,), 1.0), torch.full((8,), 0.9), torch.arange(8) * 1000 + 5, torch.full((8,), 3))
    a, b = sample_tokens(logits, *args), sample_tokens(logits, *args)
    assert torch.equal(a, b)
    noise = uniform_noise(torch.tensor([1, 1, 2]), torch.tensor([0, 1, 0]), 4096)
    assert not torch.equal(noise[0], noise[1]) and not torch.equal(noise[0], noise[2])
    assert float(noise.min()) > 0 and float(noise.max()) < 1
    assert row_seed(0, 3, 1) == row_seed(0, 3, 1) != row_seed(0, 3, 2) != row_seed(1, 3, 2)
    assert 0 <= row_seed(5, "key", 0) < 2**32


def test_a_row_does_not_depend_on_its_batch():
    logits = torch.randn(6, 300, generator=torch.Generator().manual_seed(2))
    temp, top_p = torch.full((6,), 0.8), torch.full((6,), 0.95)
    seeds, step = torch.tensor([11, 12, 13, 14, 15, 16]), torch.tensor([0, 5, 9, 2, 2, 7])
    full = sample_tokens(logits, temp, top_p, seeds, step)
    perm = torch.tensor([4, 0, 5, 2])
    part = sample_tokens(logits[perm], temp[perm], top_p[perm], seeds[perm], step[perm])
    assert torch.equal(part, full[perm])


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_frequencies_match_the_softmax(temperature):
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, 1.5, -0.3, 0.9])
    n = 20000
    counts = torch.bincount(_draws(logits, n, temperature), minlength=8).double()
    expected = torch.softmax(logits.double() / temperature, 0) * n
    assert chisquare(counts.numpy(), expected.numpy()).pvalue > 0.001
    # and a sampler that ignores the temperature would fail the same bound
    wrong = torch.softmax(logits.double() / (temperature * 1.3), 0) * n
    assert chisquare(counts.numpy(), wrong.numpy()).pvalue < 0.001


def test_top_p_truncation_is_exact():
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])  # ranked: 1 (0.5), 3 (0.3), 2 (0.15), 0 (0.05)
    logits = probs.log()[None]
    keep = lambda p: top_p_keep(logits, torch.tensor([p]))[0].tolist()  # noqa: E731
    assert keep(0.4) == [False, True, False, False]  # the top token alone reaches 0.4
    assert keep(0.7) == [False, True, False, True]  # 0.5 < 0.7: the second is needed; 0.8 >= 0.7 stops there
    assert keep(0.9) == [False, True, True, True]
    assert keep(1.0) == [True, True, True, True]
    assert keep(1e-6) == [False, True, False, False]  # the most likely token is always kept
    n = 20000
    counts = torch.bincount(_draws(logits[0], n, 1.0, top_p=0.7), minlength=4).double()
    assert counts[0] == counts[2] == 0
    expected = torch.tensor([0.5, 0.3]) / 0.8 * n
    assert chisquare(counts[[1, 3]].numpy(), expected.numpy()).pvalue > 0.001


# ------------------------------------------------------------------------------------------ top-k


def _top_k_then_top_p_reference(logits, temperature, top_p, seeds, step, top_k):
    """The slow way: full-vocabulary logits masked to -inf outside the top k, then outside the nucleus of the k
    renormalised, then the full path with top_p 1."""
    hot = temperature > 0
    scaled = logits.float() / torch.where(hot, temperature, torch.ones_like(temperature))[:, None]
    kth = torch.topk(scaled, top_k, dim=-1).values[:, -1:]
    masked = scaled.masked_fill(scaled < kth, float("-inf"))
    masked = masked.masked_fill(~top_p_keep(masked, top_p), float("-inf"))
    # already divided by the temperature: sample at temperature 1 (0 for the greedy rows, on the raw logits)
    drawn = sample_tokens(masked, torch.ones_like(temperature), torch.ones_like(top_p), seeds, step, use_top_p=False)
    return torch.where(hot, drawn, torch.argmax(logits.float(), dim=-1))


@pytest.mark.parametrize("top_k,top_p", [(1, 1.0), (5, 1.0), (50, 1.0), (50, 0.9), (20, 0.5), (999, 0.95),
                                         (300, 0.3), (3, 1e-6)])
def test_top_k_equals_the_masked_full_vocabulary_reference(top_k, top_p):
    g = torch.Generator().manual_seed(top_k)
    B, V = 8, 1000
    logits = torch.randn(B, V, generator=g) * 2
    temp = torch.tensor([1.0, 0.7, 1.3, 0.0, 1.0, 0.5, 2.0, 1.0])
    top_p_t = torch.full((B,), top_p)
    seeds = torch.tensor([row_seed(3, i, 0) for i in range(B)])
    for step_no in range(5):
        step = torch.full((B,), step_no)
        got = sample_tokens(logits, temp, top_p_t, seeds, step, use_top_p=top_p < 1, top_k=top_k)
        want = _top_k_then_top_p_reference(logits, temp, top_p_t, seeds, step, top_k)
        assert torch.equal(got, want), (step_no, got, want)
        if top_k == 1:  # the most likely token, whatever the noise
            assert torch.equal(got, torch.argmax(logits, dim=-1))


def test_uniform_noise_of_chosen_columns_equals_the_full_rows():
    seeds, step = torch.tensor([1, 2, 2**32 - 1]), torch.tensor([0, 7, 123456])
    full = uniform_noise(seeds, step, 2000)
    cols = torch.randint(0, 2000, (3, 17), generator=torch.Generator().manual_seed(0))
    assert torch.equal(uniform_noise(seeds, step, cols), full.gather(1, cols))
    shared = torch.tensor([5, 1999, 0])
    assert torch.equal(uniform_noise(seeds, step, shared), full[:, shared])


def test_top_k_frequencies_match_the_softmax_over_the_top_k():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, 1.5, -0.3, 0.9])  # top 3: 0, 5, 1
    n = 20000
    counts = torch.bincount(_draws(logits, n, 1.0, top_k=3), minlength=8).double()
    top = torch.tensor([0, 5, 1])
    rest = torch.ones(8, dtype=torch.bool)
    rest[top] = False
    assert counts[rest].sum() == 0
    expected = torch.softmax(logits[top].double(), 0) * n
    assert chisquare(counts[top].numpy(), expected.numpy()).pvalue > 0.001
    # and a sampler that sharpened or flattened the k would fail the same bound
    wrong = torch.softmax(logits[top].double() / 1.3, 0) * n
    assert chisquare(counts[top].numpy(), wrong.numpy()).pvalue < 0.001
    # top_k then top_p: top 3 renormalised are ~(0.48, 0.29, 0.18); top_p 0.6 keeps the first two
    counts = torch.bincount(_draws(logits, n, 1.0, top_p=0.6, top_k=3), minlength=8).double()
    assert counts.sum() == counts[[0, 5]].sum()
    expected = torch.softmax(logits[[0, 5]].double(), 0) * n
    assert chisquare(counts[[0, 5]].numpy(), expected.numpy()).pvalue > 0.001


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_top_k_zero_or_the_whole_vocabulary_is_the_old_path(top_p):
    logits = torch.randn(16, 700, generator=torch.Generator().manual_seed(4))
    temp = torch.tensor([1.0, 0.0, 0.8, 1.2] * 4)
    args = (temp, torch.full((16,), top_p), torch.arange(16) * 77 + 3, torch.arange(16))
    old = sample_tokens(logits, *args, use_top_p=top_p < 1)
    assert torch.equal(sample_tokens(logits, *args, use_top_p=top_p < 1, top_k=0), old)
    assert torch.equal(sample_tokens(logits, *args, use_top_p=top_p < 1, top_k=700), old)
    assert torch.equal(sample_tokens(logits, *args, use_top_p=top_p < 1, top_k=5000), old)


def test_hf_logits_processor_with_top_k_matches_sample_tokens():
    B, V, width = 6, 400, 5
    logits = torch.randn(B, V, generator=torch.Generator().manual_seed(5))
    seeds = [row_seed(2, "k", i) for i in range(B)]
    for top_k, top_p in ((10, 1.0), (10, 0.8), (0, 0.8), (V, 1.0)):
        proc = SampleLogitsProcessor(seeds, 0.9, top_p, width, top_k=top_k)
        input_ids = torch.zeros(B, width + 3, dtype=torch.long)
        out = proc(input_ids, logits)
        want = sample_tokens(logits, torch.full((B,), 0.9), torch.full((B,), top_p), torch.tensor(seeds),
                             torch.full((B,), 3), top_k=top_k)
        assert torch.equal(out.argmax(-1), want)
        assert bool((out.isinf().sum(-1) == V - 1).all())
    with pytest.raises(ValueError):
        SampleLogitsProcessor(seeds, 0.9, 1.0, width, top_k=-1)


def test_keyed_samplers_compile_apart():
    """The fast generator compiles one sampler per (use_top_p, top_k): each its own code object (torch.compile's
    cache and recompile limit are per code object), shared by generators, equal to sample_tokens."""
    from sftbench.engine.fast_generate import keyed_sampler

    assert keyed_sampler(True, 5) is keyed_sampler(True, 5)
    codes = {keyed_sampler(u, k).__code__ for u in (True, False) for k in (0, 5, 50)}
    assert len(codes) == 6
    logits = torch.randn(4, 300, generator=torch.Generator().manual_seed(6))
    args = (torch.full((4,), 0.9), torch.full((4,), 0.8), torch.arange(4) + 9, torch.full((4,), 2))
    for u, k in ((True, 0), (False, 0), (True, 5), (False, 50)):
        f = torch.compile(keyed_sampler(u, k), dynamic=False, fullgraph=True, backend="eager")
        assert torch.equal(f(logits, *args), sample_tokens(logits, *args, use_top_p=u, top_k=k))


# ------------------------------------------------------------------------------------------ the fast generator


@pytest.fixture(scope="module")
def model():
    m = lively_model(0, std=0.08)  # a flatter next-token distribution than the greedy tests' model: samples vary
    m.generation_config.eos_token_id = None
    return m


def _fast(model, max_new, stops=(), **kw):
    from sftbench.engine.fast_generate import FastGenerator

    return FastGenerator(model, None, max_new_tokens=max_new, stop_token_ids=list(stops), device="cpu",
                         dtype=torch.float32, **kw)


def test_fast_temperature_zero_is_the_greedy_path(model):
    prompts = make_prompts(LENGTHS[:6])
    gen = _fast(model, 12)
    greedy = gen.generate(prompts, progress=False)
    assert [o["token_ids"] for o in greedy] == hf_greedy(model, prompts, 12, [])
    again = gen.generate(prompts, progress=False, n=2, temperature=0.0, top_p=0.5)
    assert [o["token_ids"] for o in again] == [o["token_ids"] for o in greedy for _ in range(2)]
    assert gen.last_stats["mode"] == "greedy"


def test_fast_sampling_is_reproducible_whatever_the_batch(model):
    prompts = make_prompts(LENGTHS[:7])
    kw = dict(progress=False, n=3, temperature=1.0, top_p=0.9, seed=5)
    a = _fast(model, 8, max_batch=32).generate(prompts, **kw)
    b = _fast(model, 8, max_batch=5, prefill_tokens=40).generate(prompts, **kw)  # other slots, other groups
    assert len(a) == 3 * len(prompts) and [o["token_ids"] for o in a] == [o["token_ids"] for o in b]
    # a prompt alone, under its own key, draws what it drew among the others
    c = _fast(model, 8).generate([prompts[4]], keys=[4], **kw)
    assert [o["token_ids"] for o in c] == [o["token_ids"] for o in a[12:15]]
    toks = [tuple(o["token_ids"]) for o in a]
    assert len(set(toks)) > len(prompts)  # samples of one prompt differ
    assert _fast(model, 8).generate(prompts, **{**kw, "seed": 6}) != a


def test_fast_sampling_equals_hf_generate_with_the_same_sampler(model):
    """HF generate() (greedy over SampleLogitsProcessor's one-hot scores) and the fast engine draw the same tokens."""
    from transformers import LogitsProcessorList

    prompts, n, max_new, stops = make_prompts(LENGTHS[:5], seed=3), 2, 9, [17]
    fast = _fast(model, max_new, stops).generate(prompts, progress=False, n=n, temperature=0.9, seed=1)
    for i, p in enumerate(prompts):
        ids = torch.tensor([p] * n)
        proc = SampleLogitsProcessor([row_seed(1, i, k) for k in range(n)], 0.9, 1.0, len(p))
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False,
                             logits_processor=LogitsProcessorList([proc]), eos_token_id=stops, pad_token_id=2)
        for k in range(n):
            toks = out[k, len(p):].tolist()
            toks = toks[: toks.index(17) + 1] if 17 in toks else toks
            assert fast[i * n + k]["token_ids"] == toks, (i, k)


def test_fast_first_token_frequencies_match_the_model(model):
    """One prompt, 3000 samples of one token: the counts follow the model's own softmax (chi-square)."""
    p = make_prompts([7], seed=9)[0]
    out = _fast(model, 1).generate([p], progress=False, n=3000, temperature=1.0, seed=0)
    toks = torch.tensor([o["token_ids"][0] for o in out])
    with torch.no_grad():
        probs = torch.softmax(model(torch.tensor([p])).logits[0, -1].double(), 0)
    big = probs * 3000 >= 5
    counts = torch.bincount(toks, minlength=probs.numel()).double()
    obs = torch.cat([counts[big], counts[~big].sum()[None]])
    exp = torch.cat([probs[big], probs[~big].sum()[None]]) * 3000
    assert int(big.sum()) >= 5
    assert chisquare(obs.numpy(), exp.numpy()).pvalue > 0.001


class _Tok:
    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def test_both_backends_sample_the_same_answers(model):
    """Generator.sample: HFGenerator (generate() + the sampler, left-padded batch) == FastBackend; temperature 0
    repeats the greedy answer."""
    from sftbench.engine.generate import FastBackend, GenSpec, HFGenerator

    prompts, spec = make_prompts([4, 11, 7], seed=4), GenSpec(max_new_tokens=8, stop_ids=[17], pad_id=2)
    hf = HFGenerator(model, _Tok(), spec)
    fast = FastBackend(_fast(model, 8, [17]), _Tok(), spec)
    a = hf.sample(prompts, 2, 0.9, top_p=0.95, seed=3, keys=["x", "y", "z"])
    b = fast.sample(prompts, 2, 0.9, top_p=0.95, seed=3, keys=["x", "y", "z"])
    assert len(a) == 6 and a == b
    greedy = fast.generate(prompts)
    assert fast.sample(prompts, 2, 0.0) == [c for c in greedy for _ in range(2)]
    assert hf.sample(prompts, 2, 0.0) == [c for c in greedy for _ in range(2)]


def test_fast_top_k(model):
    """top_k on the fast engine: 1 is greedy (temperature > 0), reproducible with a seed, 0 and >= vocabulary are
    the unlimited path, and HF generate with the same sampler draws the same tokens."""
    from sftbench.engine.generate import FastBackend, GenSpec, HFGenerator

    prompts = make_prompts(LENGTHS[:5], seed=2)
    gen = _fast(model, 8)
    greedy = [o["token_ids"] for o in gen.generate(prompts, progress=False)]
    one = gen.generate(prompts, progress=False, n=2, temperature=1.3, top_p=0.9, seed=1, top_k=1)
    assert [o["token_ids"] for o in one] == [t for t in greedy for _ in range(2)]
    assert (gen.last_stats["mode"], gen.last_stats["top_k"]) == ("sample_top_p", 1)
    kw = dict(progress=False, n=3, temperature=1.0, seed=4)
    a = gen.generate(prompts, top_k=5, **kw)
    assert a == gen.generate(prompts, top_k=5, **kw) == _fast(model, 8, max_batch=3).generate(prompts, top_k=5, **kw)
    assert a != gen.generate(prompts, top_k=5, **{**kw, "seed": 5})
    plain = gen.generate(prompts, **kw)
    assert gen.last_stats["mode"] == "sample"
    assert gen.generate(prompts, top_k=0, **kw) == plain
    assert gen.generate(prompts, top_k=model.config.vocab_size, **kw) == plain
    assert gen.last_stats["top_k"] == 0
    with pytest.raises(ValueError, match="top_k"):
        gen.generate(prompts, top_k=-1, **kw)
    spec = GenSpec(max_new_tokens=8, stop_ids=[17], pad_id=2)
    hf, fast = HFGenerator(model, _Tok(), spec), FastBackend(_fast(model, 8, [17]), _Tok(), spec)
    for top_k, top_p in ((5, 1.0), (20, 0.8)):
        x = hf.sample(prompts, 2, 0.9, top_p=top_p, seed=3, keys=list("abcde"), top_k=top_k)
        y = fast.sample(prompts, 2, 0.9, top_p=top_p, seed=3, keys=list("abcde"), top_k=top_k)
        assert len(x) == 10 and x == y


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_sampling_in_the_captured_graph_equals_eager(model):
    """The sampler inside the CUDA graph (with and without top-p and top-k; one graph per (mode, top_k), never
    replayed for another top_k) draws what the eager loop draws; greedy after sampling is still the greedy path."""
    from sftbench.engine.fast_generate import FastGenerator

    m = lively_model(0, std=0.08).to("cuda")
    m.generation_config.eos_token_id = None
    prompts = make_prompts(LENGTHS)
    mk = lambda graph: FastGenerator(m, None, max_new_tokens=24, stop_token_ids=[17], device="cuda",  # noqa: E731
                                     dtype=torch.float32, max_batch=4, compile=False, cuda_graph=graph)
    g, e = mk(True), mk(False)
    for top_p, top_k in ((1.0, 0), (0.9, 0), (1.0, 5), (0.9, 20), (1.0, 0), (0.9, 5), (0.9, 0)):
        kw = dict(progress=False, n=2, temperature=0.8, top_p=top_p, seed=3, top_k=top_k)
        a, b = g.generate(prompts, **kw), e.generate(prompts, **kw)
        assert g.last_stats["cuda_graph"] and [o["token_ids"] for o in a] == [o["token_ids"] for o in b], kw
    assert set(g._sample_graphs) == {("sample", 0), ("sample_top_p", 0), ("sample_top_p", 5), ("sample_top_p", 20)}
    assert [o["token_ids"] for o in g.generate(prompts, progress=False)] == hf_greedy(m, prompts, 24, [17])
