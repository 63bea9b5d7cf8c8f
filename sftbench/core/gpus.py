"""The GPUs the planner knows, their published throughput, and an editable price table.

Memory is what a CUDA process can see (NVML total, GiB), not the marketing "GB".  Throughput is the
published dense fp16/bf16 tensor-core peak (TFLOPS, fp32 accumulate where the vendor lists both); the
planner uses it, with the memory bandwidth (GB/s, the vendor's spec sheet), to scale a measured tokens/s
between GPUs.  `bf16` says whether the GPU has bf16
(T4 and P100 train with fp16 autocast + a gradient scaler instead: same memory, see sftbench/core/device.py).

PRICES: USD per GPU-hour, approximate public on-demand list prices on the date below, for planning only.
They drift; edit PRICES (or pass --price KEY=USD_PER_HOUR to `python -m sftbench.plan`) for your provider.
Free tiers (Colab T4, Kaggle T4/P100) and a laptop you own cost 0 (quota and electricity aside).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GPU:
    key: str           # what --gpu accepts
    name: str          # human name
    mem_gib: float     # memory a process can use, as NVML reports the total (GiB)
    tflops: float      # published dense fp16/bf16 tensor peak, TFLOPS
    bf16: bool         # native bf16 (else fp16 autocast + gradient scaler)
    where: str         # where users typically get one
    mem_bw_gbs: float  # published memory bandwidth, GB/s


GPUS: list[GPU] = [
    GPU("4060-8gb", "RTX 4060 Laptop 8 GB", 8.0, 45.0, True, "your laptop", 256.0),
    GPU("t4", "Tesla T4 16 GB", 15.0, 65.0, False, "Colab free tier, Kaggle (x2)", 320.0),
    GPU("p100", "Tesla P100 16 GB", 15.9, 18.7, False, "Kaggle", 732.0),
    GPU("l4", "L4 24 GB", 22.5, 121.0, True, "Colab Pro, GCP", 300.0),
    GPU("a10g", "A10G 24 GB", 22.5, 70.0, True, "AWS g5", 600.0),
    GPU("3090", "RTX 3090 24 GB", 24.0, 71.0, True, "community clouds", 936.0),
    GPU("4090", "RTX 4090 24 GB", 24.0, 165.0, True, "community clouds", 1008.0),
    GPU("a100-40gb", "A100 40 GB", 39.4, 312.0, True, "Colab Pro, clouds", 1555.0),
    GPU("a100-80gb", "A100 80 GB", 79.2, 312.0, True, "clouds", 2039.0),
    GPU("h100", "H100 80 GB", 79.2, 989.0, True, "clouds", 3350.0),
]

# Known to --gpu but left out of the default table (the measurements behind the fast engine's
# throughput were taken on an H200; sftbench/plan/throughput.py).
EXTRA_GPUS: list[GPU] = [
    GPU("h200", "H200 141 GB", 139.8, 989.0, True, "clouds", 4800.0),
]

# CUDA compute capability of each GPU above (NVIDIA's published table): what decides the training path
# (sftbench.core.capabilities: Triton needs sm70+, flash varlen and native bf16 sm80+).
COMPUTE_CAPABILITY: dict[str, tuple[int, int]] = {
    "4060-8gb": (8, 9), "t4": (7, 5), "p100": (6, 0), "l4": (8, 9), "a10g": (8, 6), "3090": (8, 6), "4090": (8, 9),
    "a100-40gb": (8, 0), "a100-80gb": (8, 0), "h100": (9, 0), "h200": (9, 0),
}

PRICES_AS_OF = "2025-06"
PRICES: dict[str, float] = {  # USD per GPU-hour (on-demand, approximate; edit me)
    "4060-8gb": 0.0,
    "t4": 0.0,        # Colab/Kaggle free tiers; ~0.35 on GCP
    "p100": 0.0,      # Kaggle free tier
    "l4": 0.80,
    "a10g": 1.01,
    "3090": 0.22,
    "4090": 0.40,
    "a100-40gb": 1.29,
    "a100-80gb": 1.79,
    "h100": 2.49,
}

ALIASES = {"4060": "4060-8gb", "rtx4060": "4060-8gb", "a100": "a100-40gb", "a100-40": "a100-40gb",
           "a100-80": "a100-80gb", "h100-80gb": "h100", "rtx3090": "3090", "rtx4090": "4090", "h200-141gb": "h200"}


def training_precision(has_bf16: bool) -> str:
    """The autocast dtype the presets train with: bf16 where the GPU has it, else fp16 (+ a gradient scaler)."""
    return "bf16" if has_bf16 else "fp16"


def get_gpu(key: str) -> GPU:
    """Look a GPU up by key or alias (case-insensitive); UserError listing the keys otherwise."""
    from sftbench.core.errors import UserError

    k = key.strip().lower()
    k = ALIASES.get(k, k)
    for g in GPUS + EXTRA_GPUS:
        if g.key == k:
            return g
    raise UserError(f"--gpu {key}: unknown GPU. Known: {', '.join(g.key for g in GPUS + EXTRA_GPUS)} "
                    f"(or give --gpu_mem_gib for another card).")
