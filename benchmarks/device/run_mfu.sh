#!/usr/bin/env bash
# The 1B-proxy MFU benchmark on a lent GPU machine (no network, torch there, no megatron-core):
# installs the wheels carried in .whl/ (megatron-core, pydantic and its needs for Python 3.12),
# then runs benchmarks/pretrain_mfu.py once per name in MFU_RUNS (default: the first three):
#   sdpa-mb4          eager layers, SdpaAttention, micro-batch 4, 4 per step (best of 2026-11-26)
#   compile-mb4       the same with torch.compile'd transformer layers (pretrain.compile)
#   compile-mb2       compiled, micro-batch 2, 8 per step (the same tokens per step)
#   megatron-mb1      megatron's DotProductAttention (s x s matrices in memory: mb 1 to fit), 8 per step
#   sdpa-mb1          SdpaAttention on megatron-mb1's batches, for the like-for-like comparison
# Writes $OUT/mfu.jsonl (one JSON line per run that finished), $OUT/<run>.log and $OUT/env.txt;
# prints a table last. Compiled runs log dynamo's graph breaks and recompiles into their .log.
# MFU_NO_WHEELS=1 and MFU_EXTRA (flags appended to every run, e.g. --device cpu and a small
# shape) are for a dry run of this script where the packages are installed.
set -u
OUT=${OUT:-/tmp/mfu_out}
mkdir -p "$OUT"
if [ -z "${MFU_NO_WHEELS:-}" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    python3 -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
    python3 -W ignore -c "import megatron.core, pydantic, pretrain.model, pretrain.sdpa_attention; print('imports ok')"
} 2>&1 | tee "$OUT/env.txt"

bench() {  # name, time limit (s), benchmark flags...
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    # shellcheck disable=SC2086  # MFU_EXTRA is a list of flags
    timeout -k 10 "$limit" python3 benchmarks/pretrain_mfu.py "$@" ${MFU_EXTRA:-} >"$OUT/$name.log" 2>&1
    local rc=$?
    tail -1 "$OUT/$name.log" | grep '^{' >>"$OUT/mfu.jsonl" || { echo "$name failed (rc $rc):"; tail -5 "$OUT/$name.log"; }
}
for run in ${MFU_RUNS:-sdpa-mb4 compile-mb4 compile-mb2}; do
    case $run in
        sdpa-mb4) bench "$run" 180 --core-attention sdpa --micro-batch-size 4 --micro-batches 4 --warmup 3 --steps 8 ;;
        compile-mb4) TORCH_LOGS=graph_breaks,recompiles bench "$run" 300 --compile --core-attention sdpa \
            --micro-batch-size 4 --micro-batches 4 --warmup 3 --steps 8 ;;
        compile-mb2) TORCH_LOGS=graph_breaks,recompiles bench "$run" 240 --compile --core-attention sdpa \
            --micro-batch-size 2 --micro-batches 8 --warmup 3 --steps 8 ;;
        megatron-mb1) bench "$run" 120 --core-attention megatron --micro-batch-size 1 --micro-batches 8 --warmup 2 --steps 3 ;;
        sdpa-mb1) bench "$run" 120 --core-attention sdpa --micro-batch-size 1 --micro-batches 8 --warmup 2 --steps 3 ;;
        *) echo "unknown run $run" ;;
    esac
done

python3 - "$OUT/mfu.jsonl" <<'TABLE'
import json, os, sys
rows = [json.loads(line) for line in open(sys.argv[1])] if os.path.exists(sys.argv[1]) else []
cols = ["core_attention", "compile", "micro_batch_size", "micro_batches", "mfu", "mfu_causal", "tokens_per_s_per_gpu",
        "step_s_median", "max_memory_allocated_gib", "sdpa_flash_gqa", "device"]
print(" | ".join(cols))
for r in rows:
    print(" | ".join(str(r.get(c)) for c in cols))
TABLE
