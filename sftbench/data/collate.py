"""Padding collation for the reference engine (the fast engine packs instead: sftbench/data/packing.py)."""

from __future__ import annotations

import torch

from sftbench.data.masking import IGNORE_INDEX


def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of examples: input_ids [B,T] long (pad_id), labels [B,T] long (-100 on pad),
    attention_mask [B,T] long (1 real, 0 pad), T = the longest example."""
    if not examples:
        raise ValueError("collate() got an empty batch")
    if pad_id is None:
        raise ValueError("collate() needs a pad id (set tokenizer.pad_token, e.g. to <|im_end|>)")
    T = max(len(e["input_ids"]) for e in examples)
    B = len(examples)
    input_ids = torch.full((B, T), int(pad_id), dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        input_ids[i, :n] = torch.as_tensor(e["input_ids"], dtype=torch.long)
        labels[i, :n] = torch.as_tensor(e["labels"], dtype=torch.long)
        attention_mask[i, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
