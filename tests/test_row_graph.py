"""CUDA graphs of the fast engine (sftbench/engine/row_graph.py): slot sizes and padded boundaries on the CPU;
on a GPU (opt-in, -m gpu), graphed windows give the eager engine's losses and gradients."""

from __future__ import annotations

import random

import pytest
import torch

from sftbench.engine.row_graph import padded_cu_seqlens, segment_slots

IGN = -100


def test_segment_slots_are_powers_of_two_from_64():
    assert [segment_slots(n) for n in (1, 63, 64, 65, 128, 129, 1000)] == [64, 64, 64, 128, 128, 256, 1024]


def test_padded_cu_seqlens_appends_zero_length_segments():
    cu = torch.tensor([0, 3, 5, 8], dtype=torch.int32)
    assert padded_cu_seqlens(cu, 3).tolist() == [0, 3, 5, 8]
    out = padded_cu_seqlens(cu, 6)
    assert out.tolist() == [0, 3, 5, 8, 8, 8, 8] and out.dtype == torch.int32
    with pytest.raises(ValueError, match="4 segments do not fit 3 slots"):
        padded_cu_seqlens(torch.tensor([0, 1, 2, 3, 4]), 3)


def test_fast_engine_on_cpu_has_no_graphs(tiny_model_dir):
    from transformers import LlamaForCausalLM

    from sftbench.core.device import Precision
    from sftbench.train.dist import Dist
    from sftbench.train.engines import FastEngine
    from sftbench.engine.fast_model import prepare_fast_model

    m = prepare_fast_model(LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), attention="sdpa")
    prec = Precision(torch.device("cpu"), None, False, "test")
    e = FastEngine(m, torch.device("cpu"), Dist(), prec, torch.amp.GradScaler("cpu", enabled=False),
                   token_budget=256, pad_id=2, cuda_graphs=True)
    assert e.graphs is None


def _tiny(n: int) -> list[dict]:
    return [{"input_ids": [5 + i % 50, 7], "labels": [IGN, 7]} for i in range(n)]


def _examples(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(8, 60)
        ids = [rng.randint(3, 120) for _ in range(k)]
        p = rng.randint(0, k - 2)
        out.append({"input_ids": ids, "labels": [IGN] * p + ids[p:]})
    return out


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphed_windows_match_eager_on_gpu(tiny_model_dir):
    """Five windows (the first row runs eagerly and is captured, the rest replay; one row needs more segment slots) through the graphed
    and the eager engine from the same weights: same CE sums and gradients (bf16; flash attention's backward
    sums in a nondeterministic order, hence the tolerance), and the graphs were replayed."""
    from transformers import LlamaForCausalLM

    from sftbench.core.device import Precision
    from sftbench.train.dist import Dist
    from sftbench.train.engines import FastEngine
    from sftbench.engine.fast_model import prepare_fast_model, varlen_supported

    if varlen_supported("cuda"):
        pytest.skip(varlen_supported("cuda"))
    dev = torch.device("cuda", 0)
    # the third window packs 90 two-token conversations into one row: more segments than the graph's 64 slots,
    # so it is released and captured again with 128
    windows = [_examples(12, seed=0), _examples(12, seed=1), _tiny(90), _examples(12, seed=3), _examples(12, seed=4)]
    out = {}
    for graphs in (False, True):
        torch.manual_seed(0)
        m = LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).to(dev)
        prepare_fast_model(m, attention="varlen", compile=True, max_seqlen=64, checkpoint_layers=1)
        prec = Precision(dev, torch.bfloat16, False, "test")
        e = FastEngine(m, dev, Dist(), prec, torch.amp.GradScaler("cuda", enabled=False), token_budget=256, pad_id=2,
                       cuda_graphs=graphs)
        sums, grads = [], []
        for i, w in enumerate(windows):
            n = sum(sum(1 for t in ex["labels"][1:] if t != IGN) for ex in w)
            s, _ = e.window([w], n, seed=i)
            sums.append(float(s))
            grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]).clone())
            m.zero_grad(set_to_none=True)  # what the trainer does after each step
        out[graphs] = (sums, grads, e)
    assert out[True][2].graphs is not None and out[True][2].graphs.disabled is None
    rg = out[True][2].graphs
    assert rg.captures == 2 and rg.slots == 128 and rg.replays > 0
    assert out[True][0] == pytest.approx(out[False][0], rel=1e-3)
    for g, g_ref in zip(out[True][1], out[False][1]):
        assert torch.isfinite(g).all()
        assert float((g - g_ref).norm() / g_ref.norm()) < 1e-2
