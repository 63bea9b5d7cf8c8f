"""CUDA graphs for the fast engine: one packed row's forward and backward replayed as one graph.

Why: a packed row is a few thousand small kernels; on a fast GPU the host takes longer to launch them (the
compiled layers' wrappers, autograd, the varlen attention op, cuBLAS calls) than the GPU takes to run them, so
the GPU idles (the profile and figures: docs/bench_train.md).  A graph replay costs the host microseconds, so
the row runs at the GPU's pace.

How: the first row runs eagerly (that compiles the layers), then the same computation is captured over static
input buffers; later rows copy their tensors into the buffers (pinned host memory, asynchronous) and replay.
Nothing numerical changes:
- the gradients accumulate in place into fp32 `.grad` buffers that this object owns and re-attaches at the
  start of every window (AccumulateGrad adds in place into an existing `.grad`, eagerly and when captured),
  so the trainer's `zero_grad(set_to_none=True)` is harmless;
- the loss is divided by the window's target count held in a device scalar (the same fp32 division as the
  eager `s / n_window`);
- `cu_seqlens` is padded to S + 1 boundaries with zero-length segments at the end, which flash attention
  skips, so S (the graph's segment slots) stays fixed while rows hold different numbers of conversations.
Only the varlen attention path is captured: `buckets` builds its plan on the host from cu_seqlens (a device
sync), FlexAttention builds a block mask per row.  Any failure to capture falls back to eager rows, logged once.
"""

from __future__ import annotations

import torch

_MIN_SLOTS = 64
_INPUTS = ("input_ids", "position_ids", "shift_labels")


def segment_slots(n_segments: int) -> int:
    """Segment slots S for a row of n segments: the next power of two >= n (at least 64), so a run re-captures
    its graph a few times at most, not once per row."""
    s = _MIN_SLOTS
    while s < n_segments:
        s *= 2
    return s


def padded_cu_seqlens(cu: torch.Tensor, slots: int) -> torch.Tensor:
    """cu_seqlens [k+1] -> [slots+1]: the last boundary repeated (zero-length segments at the end)."""
    k = cu.numel() - 1
    if k > slots:
        raise ValueError(f"{k} segments do not fit {slots} slots")
    return torch.cat([cu, cu[-1:].expand(slots - k)]) if slots > k else cu


class RowGraphs:
    """Runs packed rows (make_packed_batch dicts on the CPU) forward and backward; `run` returns the row's CE sum
    (0-dim fp32 on the device, detached).  `step_fn(batch)` is the eager computation: fm.packed_loss_sum under
    the engine's autocast, `scaler.scale(s.float() / batch["_n_window"]).backward()`.

    One graph at a time: rows have the token budget's length, and a row with more segments than the graph has
    slots releases it (memory first) and is captured again with twice the slots, so the device never holds an
    eager row's activations beside a graph's pool (a run re-captures a few times at most)."""

    def __init__(self, model, device, step_fn, log=print):
        self.device, self.step_fn, self.log = device, step_fn, log
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.grads: list[torch.Tensor] | None = None
        self.tokens, self.slots = 0, 0
        self.static: dict | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.loss: torch.Tensor | None = None
        self.disabled: str | None = None
        self.captures = 0
        self.replays = 0

    # ---- the window's gradient buffers
    def begin_window(self) -> None:
        """Zeroed fp32 gradient buffers attached as every parameter's .grad (allocated once)."""
        if self.grads is None:
            self.grads = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        else:
            torch._foreach_zero_(self.grads)
        for p, g in zip(self.params, self.grads):
            p.grad = g

    # ---- one row
    def run(self, cpu: dict, n_window: int) -> torch.Tensor:
        t, n = cpu["input_ids"].shape[1], cpu["cu_seqlens"].numel() - 1
        if self.graph is not None and (t != self.tokens or n > self.slots):
            self._release()
        if self.graph is not None:
            self._fill(cpu, n_window)
            self.graph.replay()
            self.replays += 1
            return self.loss
        self.tokens, self.slots = t, max(segment_slots(n), 2 * self.slots)
        self.static = {k: torch.empty_like(cpu[k], device=self.device) for k in _INPUTS}
        self.static["cu_seqlens"] = torch.empty(self.slots + 1, dtype=cpu["cu_seqlens"].dtype, device=self.device)
        self.static["_n_window"] = torch.empty((), dtype=torch.float32, device=self.device)
        self.static["max_seqlen"] = cpu["max_seqlen"]
        self._fill(cpu, n_window)
        loss = self.step_fn(self._batch(cpu))  # eager (compiles the first time), accumulates into .grad
        self._capture(cpu)
        return loss

    def _batch(self, cpu: dict) -> dict:
        b = dict(self.static)
        for k in ("num_targets", "num_real_tokens", "num_examples"):
            b[k] = cpu[k]
        return b

    def _fill(self, cpu: dict, n_window: int) -> None:
        for k in _INPUTS:
            self.static[k].copy_(cpu[k].pin_memory(), non_blocking=True)
        self.static["cu_seqlens"].copy_(padded_cu_seqlens(cpu["cu_seqlens"], self.slots).pin_memory(), non_blocking=True)
        self.static["_n_window"].fill_(float(max(n_window, 1)))

    def _release(self) -> None:
        self.graph.reset()
        self.graph = self.loss = None
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()

    def _capture(self, cpu: dict) -> None:
        # Capture records and does not run: the buffers and .grad are untouched until the first replay.  The
        # eager row's freed blocks go back to the device first, so the graph's private pool does not stack on
        # top of them (the NVML peak stays the eager row's).
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        g = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(g):
                loss = self.step_fn(self._batch(cpu))
        except Exception as e:  # noqa: BLE001 - any capture failure: keep training eagerly
            self.disabled = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}" if str(e) else type(e).__name__
            self.graph = self.loss = None
            torch.cuda.synchronize(self.device)
            self.log(f"fast engine: CUDA graphs off ({self.disabled}); rows run eagerly")
            return
        self.graph, self.loss = g, loss
        self.captures += 1
        torch.cuda.synchronize(self.device)
