#!/usr/bin/env bash
# Recipe search in one command: train every configuration of a grid, sweep every checkpoint (the start
# included), rank them with exact McNemar tests against the start, Holm-corrected (sftbench/search.py).
#   bash scripts/search.sh GRID.json OUT [--data_path chat.jsonl] [other trainer flags for every configuration]
#   bash scripts/search.sh default runs/search --data_path chat.jsonl     # the shipped grid, sftbench/grids/default.json
# Rerun the same command to resume; OUT/ranking.md is the result.  The same: `sftbench search ...`.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
exec "$PYTHON" -m sftbench search "$@"
