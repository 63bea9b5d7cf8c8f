#!/usr/bin/env bash
# IFEval every checkpoint of a training run, in one process, resumably; then write the report with
#   bash scripts/report.sh RESULTS_DIR
#
# usage: bash scripts/sweep.sh RUN_DIR RESULTS_DIR [--include_base [PATH]] [--watch [--poll_s S] [--watch_timeout S]]
#                              [--force] [--dry_run] [--benchmarks ifeval,ifbench]
#                              [any ifeval/run.sh option, e.g. --limit 10 --max_new_tokens 64]
# examples:
#   bash scripts/sweep.sh ckpt/run1 results/run1 --include_base                  # + the starting model as step 0
#   bash scripts/sweep.sh ckpt/run1 results/run1 --watch --poll_s 60             # while training runs
#   bash scripts/sweep.sh ckpt/run1 results/smoke --limit 10 --max_new_tokens 64 --device cpu
#   bash scripts/sweep.sh ckpt/run1 results/run1 --benchmarks ifeval,ifbench     # IFBench in results/run1/ifbench/
# `bash scripts/sweep.sh --help` lists every option.  Paths are relative to where you run it.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
exec "$PYTHON" -m sftbench.eval.sweep "$@"
