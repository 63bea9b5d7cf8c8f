# Shared launcher for the sft_*.sh presets (sourced, not run): launching only, no settings arithmetic.
# PRESET names the preset; its flag list lives in sftbench/presets.py (the one home, shared with
# `sftbench train --preset NAME`), which also builds the trainer's argv from the arguments here:
# positional MODEL DATA OUT (or env vars of those names), then any flags for train_hw_parallel.py, which
# override the preset's.  MODEL / DATA unset: TrainConfig's defaults (python train_hw_parallel.py --help).
# OUT unset: runs/sft_<preset>-<time>.
# NPROC=N launches one process per GPU through accelerate; the trainer divides the preset's --effective_batch
# by N (and by the micro-batch) itself, and decides the precision (--precision auto: bf16, fp16 or fp32 on CPU).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
NPROC=${NPROC:-1}
case "$NPROC" in ''|*[!0-9]*|0) echo "NPROC=$NPROC: give the number of GPUs, a positive integer" >&2; exit 2;; esac
# One item a line, then END (so that a trailing empty argument survives the command substitution).
listing=$("$PYTHON" -m sftbench.presets argv "$PRESET" "$@" && echo END)
ARGS=()
while IFS= read -r a; do ARGS+=("${a%$'\r'}"); done <<< "$listing"
unset 'ARGS[${#ARGS[@]}-1]'
if [ "$NPROC" -gt 1 ]; then LAUNCH=("$PYTHON" -m accelerate.commands.launch --num_processes "$NPROC" "$ROOT/train_hw_parallel.py")
else LAUNCH=("$PYTHON" "$ROOT/train_hw_parallel.py"); fi
set -x
exec "${LAUNCH[@]}" "${ARGS[@]}"
