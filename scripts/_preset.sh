# Shared launcher logic for the sft_*.sh presets (sourced, not run).
# Positional arguments MODEL DATA OUT (or env vars of those names), then any flags for train_hw_parallel.py,
# which override the preset's.  NPROC=2 launches one process per GPU through accelerate, dividing the
# accumulation so the effective batch stays the same.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
pos=()
while [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; do pos+=("$1"); shift; done
MODEL=${pos[0]:-${MODEL:-HuggingFaceTB/SmolLM2-135M}}
DATA=${pos[1]:-${DATA:-PeterV09/smol-smoltalk-6k}}
OUT=${pos[2]:-${OUT:-runs/$(basename "$0" .sh)-$(date +%Y%m%d-%H%M%S)}}
NPROC=${NPROC:-1}
PY=$PYTHON
case "$NPROC" in ''|*[!0-9]*|0) echo "NPROC=$NPROC: give the number of GPUs, a positive integer" >&2; exit 2;; esac
if [ $((ACCUM % NPROC)) -ne 0 ]; then echo "NPROC=$NPROC does not divide the accumulation $ACCUM" >&2; exit 2; fi
ACCUM=$((ACCUM / NPROC))
if [ "$NPROC" -gt 1 ]; then LAUNCH=("$PY" -m accelerate.commands.launch --num_processes "$NPROC" "$ROOT/train_hw_parallel.py")
else LAUNCH=("$PY" "$ROOT/train_hw_parallel.py"); fi
if "$PY" -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else 1)" 2>/dev/null; then
  PRECISION=(--bf16 True)   # Ampere and newer (RTX 4060, A100, H100)
else
  PRECISION=(--fp16 True)   # T4 / P100: fp16 autocast + gradient scaler (on CPU the trainer runs fp32)
fi
set -x
exec "${LAUNCH[@]}" --model_name_or_path "$MODEL" --data_path "$DATA" --output_dir "$OUT" \
  "${PRESET[@]}" "${PRECISION[@]}" --per_device_train_batch_size 1 --gradient_accumulation_steps "$ACCUM" "$@"
