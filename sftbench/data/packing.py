"""Packing conversations into fixed-size micro-batches for the fast training engine.

Why: padded micro-batches spend most of their compute on padding when chat lengths vary (median ~450,
max 1024), and every distinct shape costs a recompilation under torch.compile.  Packing puts several
conversations into one row of exactly `token_budget` tokens (the tail is padding), so the compiled
graphs see one static shape.  Attention stays inside each conversation (see sftbench/engine/fast_model.py),
positions restart at 0 per conversation, and no loss crosses a boundary: the first token of every
conversation is labelled -100, so after the causal shift the last token of conversation A never predicts
the first token of conversation B.

Conventions (shared with conversation_func.py and loss_functions.py): an example is
`{"input_ids": list[int], "labels": list[int]}` with -100 on untrained tokens, labels UNSHIFTED
(position t's label is the token at t; the loss compares the prediction made at t-1 with it).
"""

from __future__ import annotations

import random
from typing import Sequence

import torch

from sftbench.data.masking import IGNORE_INDEX
from sftbench.core.errors import UserError

PAD_PIECE = 128  # longest padding segment in cu_seqlens when a max_seqlen is given (varlen, buckets)


def _lengths(examples: Sequence[dict]) -> list[int]:
    out = []
    for i, ex in enumerate(examples):
        ids, labels = ex["input_ids"], ex["labels"]
        if len(ids) != len(labels):
            raise ValueError(f"example {i}: input_ids has {len(ids)} tokens but labels has {len(labels)}")
        if len(ids) == 0:
            raise ValueError(f"example {i}: empty input_ids")
        out.append(len(ids))
    return out


def pack_examples(examples: list[dict], token_budget: int, *, seed: int | None = None) -> list[list[int]]:
    """Group example indices into micro-batches of at most `token_budget` tokens each.

    First-fit decreasing (longest first; ties by index), so the result depends only on the lengths:
    deterministic, and within ~11/9 of the optimal number of bins.  Indices inside a bin are in
    ascending order.  Bins come out in FFD order (fullest first) unless `seed` is given, in which case
    the bin order is shuffled with that seed (so long conversations do not all come first).

    Raises UserError if an example is longer than the budget (choose token_budget >= max_length).
    """
    if token_budget <= 0:
        raise ValueError(f"token_budget must be positive, got {token_budget}")
    lengths = _lengths(examples)
    too_long = [(i, n) for i, n in enumerate(lengths) if n > token_budget]
    if too_long:
        i, n = too_long[0]
        raise UserError(
            f"packing: example {i} has {n} tokens, more than the micro-batch token budget {token_budget} "
            f"({len(too_long)} example(s) too long). Truncate examples to max_length <= token_budget, "
            f"or raise the token budget."
        )
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = lengths[i]
        for b in range(len(bins)):  # first fit; a few hundred bins at most per window
            if room[b] >= n:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(token_budget - n)
    bins = [sorted(b) for b in bins]
    if seed is not None:
        random.Random(seed).shuffle(bins)
    return bins


def make_packed_batch(examples: list[dict], token_budget: int, pad_id: int, max_seqlen: int | None = None) -> dict:
    """Concatenate `examples` into one row of exactly `token_budget` tokens (CPU tensors).

    `max_seqlen`: the longest segment the varlen (flash) attention kernel is launched for.  The padding is
    then cut into segments of at most min(max_seqlen, PAD_PIECE) tokens in `cu_seqlens` (it attends only within itself and
    carries no loss either way), and a longer conversation is an error.

    Returns a dict with
      input_ids     LongTensor [1, T]   tokens, then `pad_id` up to T
      labels        LongTensor [1, T]   unshifted labels; -100 on padding and on each conversation's first token
      shift_labels  LongTensor [1, T]   labels shifted left by one (the target of the prediction made at t);
                                        -100 at the last position.  The fast loss uses these directly.
      position_ids  LongTensor [1, T]   0, 1, ... restarting at 0 for every conversation (and for the padding)
      doc_ids       IntTensor  [1, T]   conversation index 0..k-1; padding is conversation k (it attends only
                                        to itself and carries no loss)
      cu_seqlens    IntTensor  [k+1+p]  cumulative boundaries (flash-attention varlen style); the padding is
                                        p >= 0 segments (one, or pieces of at most max_seqlen)
      max_seqlen    int                 the longest segment in cu_seqlens
      num_targets   int                 tokens that carry a loss (labels != -100 after the shift)
      num_real_tokens int               non-padding tokens (what throughput counts)
      num_examples  int
    """
    lengths = _lengths(examples)
    total = sum(lengths)
    if max_seqlen is not None and lengths and max(lengths) > max_seqlen:
        raise UserError(f"packing: a conversation of {max(lengths)} tokens is longer than max_seqlen {max_seqlen}.")
    if total > token_budget:
        raise UserError(
            f"packing: {len(examples)} examples hold {total} tokens, more than the token budget {token_budget}; "
            f"group them with pack_examples first."
        )
    ids: list[int] = []
    labels: list[int] = []
    pos: list[int] = []
    docs: list[int] = []
    for d, ex in enumerate(examples):
        n = len(ex["input_ids"])
        ids.extend(int(t) for t in ex["input_ids"])
        lab = [int(t) for t in ex["labels"]]
        lab[0] = IGNORE_INDEX  # nothing inside this conversation predicts its first token
        labels.extend(lab)
        pos.extend(range(n))
        docs.extend([d] * n)
    n_pad = token_budget - total
    ids.extend([pad_id] * n_pad)
    labels.extend([IGNORE_INDEX] * n_pad)
    pos.extend(range(n_pad))
    docs.extend([len(examples)] * n_pad)
    bounds = [0]
    for n in lengths:
        bounds.append(bounds[-1] + n)
    # Padding attends only to itself; in pieces of at most PAD_PIECE tokens its causal attention costs little
    # (one 1,024-token piece cost as much attention as three median conversations).
    piece = n_pad if max_seqlen is None else max(1, min(int(max_seqlen), PAD_PIECE))
    while bounds[-1] < token_budget:
        bounds.append(min(token_budget, bounds[-1] + piece))
    labels_t = torch.tensor(labels, dtype=torch.long).unsqueeze(0)
    shift = torch.full_like(labels_t, IGNORE_INDEX)
    shift[:, :-1] = labels_t[:, 1:]
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long).unsqueeze(0),
        "labels": labels_t,
        "shift_labels": shift,
        "position_ids": torch.tensor(pos, dtype=torch.long).unsqueeze(0),
        "doc_ids": torch.tensor(docs, dtype=torch.int32).unsqueeze(0),
        "cu_seqlens": torch.tensor(bounds, dtype=torch.int32),
        "max_seqlen": max(b - a for a, b in zip(bounds, bounds[1:])),
        "num_targets": int((shift != IGNORE_INDEX).sum()),
        "num_real_tokens": total,
        "num_examples": len(examples),
    }


def batch_to_device(batch: dict, device, non_blocking: bool = True) -> dict:
    """Move the tensors of a packed batch to `device`; plain ints stay as they are."""
    return {k: (v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v) for k, v in batch.items()}


def packing_efficiency(bins: list[list[int]], examples: list[dict], token_budget: int) -> float:
    """Real tokens / (bins x budget): the fraction of packed compute that is not padding."""
    if not bins:
        return 1.0
    real = sum(len(examples[i]["input_ids"]) for b in bins for i in b)
    return real / (len(bins) * token_budget)
