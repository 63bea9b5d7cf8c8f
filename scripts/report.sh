#!/usr/bin/env bash
# Write RESULTS_DIR/report.md and report.html (plots embedded) for a sweep from scripts/sweep.sh.
#
# usage: bash scripts/report.sh RESULTS_DIR [RESULTS_DIR2 ...] [--out DIR]
#   one directory:  the curves, the table, the best checkpoint and the defensible pick (paired tests)
#   several:        overlaid curves and a ranking of the runs with their hyperparameters (default --out:
#                   their common parent's comparison/)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export MPLBACKEND="${MPLBACKEND:-Agg}"
exec "$PY" -m analysis.report "$@"
