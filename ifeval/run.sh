#!/usr/bin/env bash
# IFEval for one checkpoint.  Works from the repository root or from ifeval/ (paths resolve either way).
#   bash ifeval/run.sh ckpt/run1/checkpoint-100 results/run1/checkpoint-100 [--limit N] [--subset hw100] ...
#   bash ifeval/run.sh ckpt/run1/checkpoint-100 results/run1/ifbench-100 --benchmark ifbench   # IFBench instead
#   bash ifeval/run.sh results/run1/checkpoint-100 --score_only results/run1/checkpoint-100/responses.jsonl
# Prompts: --data, $SFTBENCH_IFEVAL_DATA, the hub, else the 541 shipped in sftbench/tasks/prompts/ (offline).
# All options: bash ifeval/run.sh --help
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/_env.sh"
exec "$PYTHON" -m sftbench.eval.run "$@"
