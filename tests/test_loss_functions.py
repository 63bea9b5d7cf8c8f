"""loss_functions: masked CE equals torch's, chunked CE equals full CE (value and gradients), all-masked gives
0, and micro-batch 8 x accumulation 1 == micro-batch 1 x accumulation 8 on the tiny Llama."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from loss_functions import chunked_ce_sum, count_targets, masked_ce_sum, normalized_loss


def _labels(B, T, V, seed=0, p_mask=0.4):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[torch.rand(B, T, generator=g) < p_mask] = -100
    return labels


def test_masked_ce_matches_torch_cross_entropy():
    torch.manual_seed(0)
    B, T, V = 3, 11, 37
    logits = torch.randn(B, T, V, dtype=torch.float64).float()
    labels = _labels(B, T, V)
    s, n = masked_ce_sum(logits, labels)
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)  # mean
    assert n == int((labels[:, 1:] != -100).sum()) == count_targets(labels)
    assert s.dtype == torch.float32
    torch.testing.assert_close(s / n, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(normalized_loss(s, n), ref, rtol=1e-6, atol=1e-6)


def test_masked_ce_shift_uses_next_token():
    # One target at position 2: only logits[:, 1] may matter.
    V = 5
    logits = torch.zeros(1, 4, V)
    logits[0, 1, 3] = 10.0  # confident in token 3 at position 1 -> predicts labels[:, 2]
    labels = torch.tensor([[-100, -100, 3, -100]])
    s, n = masked_ce_sum(logits, labels)
    assert n == 1
    expected = -torch.log_softmax(logits[0, 1], -1)[3]
    torch.testing.assert_close(s, expected)
    # The first label is never a target (nothing predicts it).
    assert count_targets(torch.tensor([[7, -100, -100]])) == 0


def test_masked_ce_bf16_logits_computed_in_fp32():
    torch.manual_seed(1)
    logits = torch.randn(2, 9, 50).bfloat16()
    labels = _labels(2, 9, 50, seed=1, p_mask=0.2)
    s, n = masked_ce_sum(logits, labels)
    ref = F.cross_entropy(logits.float()[:, :-1].reshape(-1, 50), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum")
    assert s.dtype == torch.float32
    torch.testing.assert_close(s, ref)


def test_all_masked_gives_zero_not_nan_and_backprops():
    logits = torch.randn(2, 6, 10, requires_grad=True)
    labels = torch.full((2, 6), -100)
    s, n = masked_ce_sum(logits, labels)
    loss = normalized_loss(s, n)
    assert n == 0 and loss.item() == 0.0 and not torch.isnan(loss)
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))

    hidden = torch.randn(2, 6, 4, requires_grad=True)
    weight = torch.randn(10, 4, requires_grad=True)
    s, n = chunked_ce_sum(hidden, weight, labels, chunk_size=3)
    loss = normalized_loss(s, n)
    assert n == 0 and loss.item() == 0.0
    loss.backward()
    assert torch.equal(hidden.grad, torch.zeros_like(hidden))
    assert torch.equal(weight.grad, torch.zeros_like(weight))


@pytest.mark.parametrize("chunk_size", [1, 7, 1024])
@pytest.mark.parametrize("with_bias", [False, True])
def test_chunked_equals_full_value_and_gradients(chunk_size, with_bias):
    torch.manual_seed(2)
    B, T, H, V = 3, 13, 8, 41
    hidden = torch.randn(B, T, H, dtype=torch.float64)
    weight = torch.randn(V, H, dtype=torch.float64) * 0.5
    bias = torch.randn(V, dtype=torch.float64) if with_bias else None
    labels = _labels(B, T, V, seed=3)

    def grads(fn):
        h = hidden.clone().requires_grad_(True)
        w = weight.clone().requires_grad_(True)
        b = bias.clone().requires_grad_(True) if bias is not None else None
        s, n = fn(h, w, b)
        normalized_loss(s, n).backward()
        return s.detach(), n, h.grad, w.grad, (b.grad if b is not None else None)

    full = grads(lambda h, w, b: masked_ce_sum(h @ w.T + (b if b is not None else 0), labels))
    chunk = grads(lambda h, w, b: chunked_ce_sum(h, w, labels, chunk_size=chunk_size, bias=b))
    assert full[1] == chunk[1] == count_targets(labels)
    torch.testing.assert_close(chunk[0], full[0].float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(chunk[2], full[2], rtol=1e-10, atol=1e-12)  # hidden grads (fp64 inputs; CE in fp32)
    torch.testing.assert_close(chunk[3], full[3], rtol=1e-10, atol=1e-12)  # weight grads
    if with_bias:
        torch.testing.assert_close(chunk[4], full[4], rtol=1e-10, atol=1e-12)


def test_chunked_fp32_close_to_full():
    torch.manual_seed(4)
    hidden = torch.randn(2, 30, 16, requires_grad=True)
    weight = torch.randn(97, 16, requires_grad=True)
    labels = _labels(2, 30, 97, seed=5)
    s1, n1 = masked_ce_sum(hidden @ weight.T, labels)
    g1 = torch.autograd.grad(s1, (hidden, weight))
    s2, n2 = chunked_ce_sum(hidden, weight, labels, chunk_size=8)
    g2 = torch.autograd.grad(s2, (hidden, weight))
    assert n1 == n2
    torch.testing.assert_close(s2, s1, rtol=1e-5, atol=1e-5)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_chunked_under_no_grad():
    hidden = torch.randn(1, 5, 4)
    weight = torch.randn(9, 4)
    labels = torch.tensor([[1, 2, -100, 4, 5]])
    with torch.no_grad():
        s, n = chunked_ce_sum(hidden, weight, labels, chunk_size=2)
    ref, _ = masked_ce_sum(hidden @ weight.T, labels)
    assert n == 3
    torch.testing.assert_close(s, ref)


def _grads(model):
    return {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}


def test_grad_accumulation_equivalence_tiny_llama(tiny_tokenizer):
    """Micro-batch 8 x accumulation 1 == micro-batch 1 x accumulation 8, with variable lengths (so the padded
    batch has padding that the unpadded micro-batches do not), when each micro-batch's CE sum is divided by the
    window's total target count.  Also checks the chunked loss through the real model gives the same gradients."""
    from conversation_func import collate
    from sftbench.model.tiny import build_tiny_model

    model = build_tiny_model(len(tiny_tokenizer), seed=0)
    model.eval()  # no dropout (there is none, but be explicit)
    g = torch.Generator().manual_seed(0)
    examples = []
    for i in range(8):
        T = 5 + 3 * i  # 5..26 tokens
        ids = torch.randint(3, len(tiny_tokenizer), (T,), generator=g).tolist()
        labels = list(ids)
        cut = 1 + i % 4
        labels[:cut] = [-100] * cut  # a "prompt" of varying length
        examples.append({"input_ids": ids, "labels": labels})
    pad_id = 2

    # Reference: one batch of 8 (padded).
    model.zero_grad(set_to_none=True)
    batch = collate(examples, pad_id)
    n_window = count_targets(batch["labels"])
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    s, n = masked_ce_sum(out.logits, batch["labels"])
    assert n == n_window
    loss_big = normalized_loss(s, n_window)
    loss_big.backward()
    g_big = _grads(model)

    # Eight micro-batches of 1, each divided by the window's total.
    model.zero_grad(set_to_none=True)
    n_window_small = sum(count_targets(collate([e], pad_id)["labels"]) for e in examples)
    assert n_window_small == n_window
    total = 0.0
    for e in examples:
        mb = collate([e], pad_id)
        out = model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"])
        s, _ = masked_ce_sum(out.logits, mb["labels"])
        loss = normalized_loss(s, n_window)
        loss.backward()
        total += loss.item()
    g_small = _grads(model)
    assert abs(total - loss_big.item()) < 1e-5
    assert g_big.keys() == g_small.keys()
    for k in g_big:
        torch.testing.assert_close(g_small[k], g_big[k], rtol=1e-4, atol=1e-6, msg=f"grad mismatch in {k}")

    # The wrong normalisation (mean per micro-batch, then mean over steps) must NOT match: the test can fail.
    model.zero_grad(set_to_none=True)
    wrong = 0.0
    for e in examples:
        mb = collate([e], pad_id)
        out = model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"])
        s, n = masked_ce_sum(out.logits, mb["labels"])
        wrong += (normalized_loss(s, n) / len(examples)).item()
    assert abs(wrong - loss_big.item()) > 1e-4

    # Chunked CE on the model's hidden states and tied lm_head: same loss and gradients as the full logits.
    model.zero_grad(set_to_none=True)
    hidden = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    s, n = chunked_ce_sum(hidden, model.lm_head.weight, batch["labels"], chunk_size=16)
    loss_chunked = normalized_loss(s, n)
    loss_chunked.backward()
    g_chunk = _grads(model)
    assert abs(loss_chunked.item() - loss_big.item()) < 1e-5
    for k in g_big:
        torch.testing.assert_close(g_chunk[k], g_big[k], rtol=1e-4, atol=1e-6, msg=f"chunked grad mismatch in {k}")

