#!/usr/bin/env bash
# Write RESULTS_DIR/report.md and report.html (plots embedded) for a sweep from scripts/sweep.sh.
#
# usage: bash scripts/report.sh RESULTS_DIR [RESULTS_DIR2 ...] [--out DIR]
#   one directory:  the curves, the table, the verdict (did training help?) and the pick (paired tests)
#   several:        overlaid curves and a ranking of the runs with their hyperparameters (default --out:
#                   their common parent's comparison/)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
export MPLBACKEND="${MPLBACKEND:-Agg}"
exec "$PYTHON" -m sftbench.analysis.report "$@"
