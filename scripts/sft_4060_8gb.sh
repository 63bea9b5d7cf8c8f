#!/usr/bin/env bash
# Strategy A for an 8 GB laptop GPU (RTX 4060): effective batch 64 (micro-batch 1 x accumulation 64),
# lr 4e-5, 5 epochs, warmup 0.2, length 1024, gradient checkpointing, mixed precision, max_rounds 6,
# a checkpoint every 20 optimizer steps, a log row every step.
#   bash scripts/sft_4060_8gb.sh [MODEL [DATA [OUT]]] [--flag value ...]     (or MODEL=... DATA=... OUT=... env vars;
#   unset MODEL / DATA: TrainConfig's defaults; NPROC=N: N GPUs through accelerate, same effective batch)
# Engine: auto = the fast engine on a CUDA GPU (packed 16384-token micro-batches, layers checkpointed to stay
# under --vram_target_gib 6), the reference engine on CPU.
# Measured on one H100 capped to 8 GiB (set_per_process_memory_fraction), real SmolLM2-135M-Instruct, 450
# real chat conversations (capybara + kto), effective batch 64, 2026-11-24:
#   --engine reference: 1.2k-2.0k real tokens/s, peak torch 2.90 GiB allocated, NVML 5.20 GiB.
#   --engine fast, 25 of 30 layers checkpointed (8 GiB plan): ~124k real tokens/s (97k-170k over steps 2-6),
#     peak torch 5.20 GiB, NVML 6.61 GiB; first-step losses equal the reference's to 1e-3.
#   default (6 GiB plan = all 30 layers checkpointed, varlen attention, fused projections), freshly started
#     machine (cold compile cache), random-init SmolLM2-135M shape, same data: first step 20.4 s (compiling),
#     then 130k real tokens/s over steps 3-8, peak torch 3.95 GiB, NVML 5.57 GiB (session 2, .gpu-min runs).
#     With FlexAttention (--attention flex) the cold first step took 247 s; see docs/gpu_results.md.
# The flags: sftbench/presets.py (PRESETS["4060_8gb"], shared with `sftbench train --preset 4060_8gb`); everything
# else is TrainConfig's default (python train_hw_parallel.py --help).
PRESET=4060_8gb
. "$(dirname "$0")/_preset.sh"
