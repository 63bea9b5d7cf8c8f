#!/usr/bin/env bash
# End-to-end check on a CUDA machine, under an 8 GiB cap: train with the 8 GB preset, then IFEval over all 541
# prompts for every checkpoint (sweep, fast backend), then the report.  Used to fill the README's GPU table.
#   DATA=chat.jsonl IFEVAL=input_data.jsonl OUT=runs/gpu RESULTS=results/gpu STEPS=35 SAVE=5 bash scripts/gpu_e2e.sh
# MODEL defaults to the offline SmolLM2-135M-Instruct (SFTBENCH_GGUF may point at the .gguf file).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_env.sh
PY=$PYTHON
MODEL=${MODEL:-smollm2-135m-instruct-offline}
DATA=${DATA:?chat data (.jsonl) to train on}
IFEVAL=${IFEVAL:-}
OUT=${OUT:-runs/gpu-e2e}
RESULTS=${RESULTS:-results/gpu-e2e}
STEPS=${STEPS:-35}
SAVE=${SAVE:-5}
CAP=${CAP:-8}
ENGINE=${ENGINE:-reference}
EXTRA_TRAIN=${EXTRA_TRAIN:-}
"$PY" - <<'PY'
import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PY
MODEL_DIR=$("$PY" -c "from sftbench.model.offline import resolve_model_path as r; print(r('$MODEL'))")
t0=$(date +%s)
bash scripts/sft_4060_8gb.sh "$MODEL_DIR" "$DATA" "$OUT" --memory_cap_gib "$CAP" --max_steps "$STEPS" --save_steps "$SAVE" \
  --progress False --engine "$ENGINE" $EXTRA_TRAIN
t1=$(date +%s)
echo "train wall: $((t1 - t0)) s"
ifeval_args=(--memory_cap_gib "$CAP")
[ -n "$IFEVAL" ] && ifeval_args+=(--data "$IFEVAL")
"$PY" -m sftbench.eval.sweep "$OUT" "$RESULTS" --include_base "$MODEL_DIR" "${ifeval_args[@]}" ${EXTRA_EVAL:-}
t2=$(date +%s)
echo "sweep wall: $((t2 - t1)) s"
"$PY" -m sftbench.analysis.report "$RESULTS" || true
