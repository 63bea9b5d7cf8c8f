# Shared launcher for the sft_*.sh presets (sourced, not run): launching only, no settings arithmetic.
# Positional arguments MODEL DATA OUT (or env vars of those names), then any flags for train_hw_parallel.py,
# which override the preset's (PRESET, a list of flag overrides of TrainConfig's defaults).
# MODEL / DATA unset: TrainConfig's defaults (python train_hw_parallel.py --help). OUT unset: runs/<preset>-<time>.
# NPROC=N launches one process per GPU through accelerate; the trainer divides the preset's --effective_batch
# by N (and by the micro-batch) itself, and decides the precision (--precision auto: bf16, fp16 or fp32 on CPU).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
pos=()
while [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; do pos+=("$1"); shift; done
MODEL=${pos[0]:-${MODEL:-}}
DATA=${pos[1]:-${DATA:-}}
OUT=${pos[2]:-${OUT:-runs/$(basename "$0" .sh)-$(date +%Y%m%d-%H%M%S)}}
NPROC=${NPROC:-1}
case "$NPROC" in ''|*[!0-9]*|0) echo "NPROC=$NPROC: give the number of GPUs, a positive integer" >&2; exit 2;; esac
ARGS=(--output_dir "$OUT")
if [ -n "$MODEL" ]; then ARGS+=(--model_name_or_path "$MODEL"); fi
if [ -n "$DATA" ]; then ARGS+=(--data_path "$DATA"); fi
if [ "$NPROC" -gt 1 ]; then LAUNCH=("$PYTHON" -m accelerate.commands.launch --num_processes "$NPROC" "$ROOT/train_hw_parallel.py")
else LAUNCH=("$PYTHON" "$ROOT/train_hw_parallel.py"); fi
set -x
exec "${LAUNCH[@]}" "${ARGS[@]}" --precision auto "${PRESET[@]}" "$@"
