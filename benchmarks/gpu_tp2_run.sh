#!/usr/bin/env bash
# Runs ON the lent 2-GPU machine, from the project's root, after the bring-up of
# ../shared/gpu/README.md ($HOME/site holds vLLM 0.26.0 and this project). vLLM picks its model
# runner itself (VLLM_USE_V2_MODEL_RUNNER unset). Results and the log go to $OUT.
# gpu_tp2.py disables vLLM's all-reduce + RMSNorm fusion by default (--allreduce-fusion): its
# auto-selected FlashInfer "mnnvl" backend needs NVLink multicast, which is off on these machines.
#   OUT=$OUT LIMIT=540 bash benchmarks/gpu_tp2_run.sh [extra gpu_tp2.py args]
set -uo pipefail
OUT=${OUT:-/tmp/maxact_tp2}
LIMIT=${LIMIT:-540}
mkdir -p "$OUT"
# RUNNER=v1 picks the V1 model runner (no V2 start-up warm-up: about 2 min less per cold engine).
if [ "${RUNNER:-}" = v1 ]; then export VLLM_USE_V2_MODEL_RUNNER=0; else unset VLLM_USE_V2_MODEL_RUNNER; fi
export PYTHONUNBUFFERED=1 PYTHONPATH=$HOME/site VLLM_CACHE_ROOT=$HOME/vcache_tp2
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export VLLM_MAXACT_PUBLISH_INTERVAL_S=0.5
nvidia-smi -L
# The script stops its own optional parts 25 s before LIMIT; timeout is the backstop.
timeout "$LIMIT" python3 benchmarks/gpu_tp2.py --out "$OUT" --budget $((LIMIT - 25)) "$@" > "$OUT/gpu_tp2.log" 2>&1
echo "exit: $?"
grep -h "gpu_tp2\|runner\|Runner\|ERROR\|Error" "$OUT/gpu_tp2.log" | grep -v "^\s*$" | tail -60
cat "$OUT/gpu_tp2.md" 2>/dev/null
