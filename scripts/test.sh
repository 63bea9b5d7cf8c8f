#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the test suite on CPU.  Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# quiet once (pyproject addopts), so the closing "N passed, M skipped" line shows
python -m pytest -p no:cacheprovider "$@"
