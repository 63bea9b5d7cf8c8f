"""Device-memory accounting: torch's own peak and NVML's view of the whole device.

NVML's "used" is ~1.2 GiB above torch's reserved memory (CUDA context, libraries), so an
"8 GB" claim is checked against NVML, not only `torch.cuda.max_memory_allocated()`.
`MemoryMonitor` samples NVML in a background thread; on a CPU-only machine it records nothing
and says so (fields are None).
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field

GIB = 1024**3


def _nvml_handle(device_index: int):
    try:
        import pynvml  # from nvidia-ml-py

        pynvml.nvmlInit()
        return pynvml, pynvml.nvmlDeviceGetHandleByIndex(device_index)
    except Exception:
        return None, None


@dataclass
class MemoryMonitor:
    """Background sampler of NVML device memory (bytes used on the whole device).

    Use as a context manager.  `samples` is a list of (seconds_since_start, used_bytes).
    """

    device_index: int = 0
    interval_s: float = 0.2
    samples: list = field(default_factory=list)
    gpu_name: str | None = None
    gpu_total_bytes: int | None = None

    def __post_init__(self):
        self._stop = threading.Event()
        self._thread = None
        self._t0 = time.time()
        self._nvml, self._handle = _nvml_handle(self.device_index)
        if self._handle is not None:
            name = self._nvml.nvmlDeviceGetName(self._handle)
            self.gpu_name = name.decode() if isinstance(name, bytes) else name
            self.gpu_total_bytes = int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).total)

    @property
    def available(self) -> bool:
        return self._handle is not None

    def sample(self) -> int | None:
        if self._handle is None:
            return None
        used = int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)
        self.samples.append((round(time.time() - self._t0, 3), used))
        return used

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def start(self) -> "MemoryMonitor":
        if self._handle is not None and self._thread is None:
            self._t0 = time.time()
            self._thread = threading.Thread(target=self._run, daemon=True, name="nvml-sampler")
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._thread = None
            self.sample()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def peak_bytes(self) -> int | None:
        return max((u for _, u in self.samples), default=None)

    def mean_bytes(self) -> float | None:
        return (sum(u for _, u in self.samples) / len(self.samples)) if self.samples else None

    def summary(self) -> dict:
        """JSON-ready dict; GiB values rounded to 3 decimals, None on CPU."""
        peak, mean = self.peak_bytes(), self.mean_bytes()
        return {
            "nvml_available": self.available,
            "gpu_name": self.gpu_name,
            "gpu_total_gib": None if self.gpu_total_bytes is None else round(self.gpu_total_bytes / GIB, 3),
            "nvml_peak_gib": None if peak is None else round(peak / GIB, 3),
            "nvml_mean_gib": None if mean is None else round(mean / GIB, 3),
            "nvml_num_samples": len(self.samples),
        }


def torch_peak_gib(device) -> dict:
    """torch's peak allocated / reserved on a CUDA device (None elsewhere)."""
    import torch

    dev = torch.device(device)
    if dev.type != "cuda":
        return {"torch_peak_allocated_gib": None, "torch_peak_reserved_gib": None}
    return {
        "torch_peak_allocated_gib": round(torch.cuda.max_memory_allocated(dev) / GIB, 3),
        "torch_peak_reserved_gib": round(torch.cuda.max_memory_reserved(dev) / GIB, 3),
    }


def apply_memory_cap(cap_gib: float | None, device) -> str | None:
    """Cap this process's torch allocations so the *device* (NVML) total stays under cap_gib.

    Subtracts an estimated CUDA-context overhead (device memory in use that is not this process's own torch
    reservation, at least 0.5 GiB) from the cap.  Called again in the same process (a sweep evaluates many
    checkpoints; a search trains and evaluates in one process), it gives the same budget: memory torch already
    holds is part of the budget, not context.  Returns a line for the log, or None when nothing was capped.
    """
    import torch

    dev = torch.device(device)
    if cap_gib is None or dev.type != "cuda":
        return None
    torch.cuda.init()
    total = torch.cuda.get_device_properties(dev).total_memory
    free, _ = torch.cuda.mem_get_info(dev)
    context = max(total - free - torch.cuda.memory_reserved(dev), int(0.5 * GIB))
    budget = cap_gib * GIB - context
    frac = max(0.01, min(1.0, budget / total))
    torch.cuda.set_per_process_memory_fraction(frac, dev)
    return (f"memory cap: {cap_gib:.2f} GiB device total -> torch may allocate {budget / GIB:.2f} GiB "
            f"(fraction {frac:.4f} of {total / GIB:.1f} GiB; {context / GIB:.2f} GiB already used by context)")


# ----------------------------------------------------------------------------- Windows (WDDM)

def _driver_model(device_index: int) -> str | None:
    """"WDDM", "TCC" or "MCDM" on Windows (NVML), None elsewhere or when NVML cannot tell."""
    if sys.platform != "win32":
        return None
    nvml, handle = _nvml_handle(device_index)
    if handle is None:
        return None
    try:
        current, _pending = nvml.nvmlDeviceGetDriverModel(handle)
    except Exception:
        return None
    return {0: "WDDM", 1: "TCC", 2: "MCDM"}.get(int(current))


WDDM_NOTE = ("Windows WDDM driver: NVML reports no per-process memory here (only the whole device's), and the driver's "
             "system-memory fallback lets a run that does not fit spill into system RAM and crawl instead of running "
             "out of memory: a falling tokens/s, not an error, is the sign. To get an out-of-memory error instead, set "
             "NVIDIA Control Panel > Manage 3D Settings > CUDA - Sysmem Fallback Policy to \"Prefer No Sysmem "
             "Fallback\".")


def wddm_note(device_index: int = 0) -> str | None:
    """The WDDM line to say once at start (None off Windows or under TCC/MCDM)."""
    return WDDM_NOTE if _driver_model(device_index) == "WDDM" else None
