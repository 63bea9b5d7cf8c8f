#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the test suite on CPU.  Extra arguments go to pytest.
# Linux, macOS, Windows under Git Bash; PowerShell without bash: see README "Windows".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. scripts/_env.sh
# the venv setup.sh just made, whatever else is active (what `. .venv/bin/activate` does, Scripts/ on Windows)
PATH="$(dirname "$(venv_python "$PWD/.venv")"):$PATH"  # absolute (POSIX form, also under Git Bash): tests start subprocesses elsewhere
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# quiet once (pyproject addopts), so the closing "N passed, M skipped" line shows
python -m pytest -p no:cacheprovider "$@"
