"""Rank and world size from the launcher's environment (accelerate launch and torchrun both set them)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


class Dist:
    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def init(self, device_type: str) -> None:
        if self.enabled and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, x: float) -> float:
        if not self.enabled:
            return x
        t = torch.tensor([x], dtype=torch.float64, device="cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t)
        return float(t.item())

    def all_reduce_grads(self, model) -> None:
        """Sum the gradients over ranks in one flat all-reduce (missing grads count as zeros)."""
        if not self.enabled:
            return
        params = [p for p in model.parameters() if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch._utils._flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        for p, g in zip(params, torch._utils._unflatten_dense_tensors(flat, grads)):
            p.grad = g

    def close(self) -> None:
        if self.enabled:
            self.barrier()
            dist.destroy_process_group()


def log(d: Dist, msg: str) -> None:
    if d.main:
        print(f"[train] {msg}", flush=True)
