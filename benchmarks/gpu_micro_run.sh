#!/usr/bin/env bash
# Runs ON the lent GPU machine after the bring-up (see gpu_device_run.sh): the fusion
# micro-benchmark for several recording variants, one process per variant, variants on the
# same GPU one after another, GPUs in parallel. Results: $OUT/micro.jsonl, logs $OUT/micro_GPU.log
#   bash benchmarks/gpu_micro_run.sh LABEL:VARIANT:GPU ...
set -uo pipefail
OUT=${OUT:-/tmp/maxact_out}
LIMIT=${LIMIT:-150}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
declare -A queue
for spec in "$@"; do IFS=: read -r label variant gpu <<<"$spec"; queue[$gpu]+="$label:$variant "; done
pids=()
for gpu in "${!queue[@]}"; do
  (
    for item in ${queue[$gpu]}; do
      IFS=: read -r label variant <<<"$item"
      path=$HOME/site
      if [ "$variant" != tree ]; then
        rm -rf "$HOME/mvar_$label" && mkdir -p "$HOME/mvar_$label"
        cp -r "$HOME/site/vllm_maxact" "$HOME/mvar_$label/"
        cp benchmarks/variants/"$variant"/*.py "$HOME/mvar_$label/vllm_maxact/"
        path=$HOME/mvar_$label:$HOME/site
      fi
      echo "== $label ($variant) on GPU $gpu"
      CUDA_VISIBLE_DEVICES=$gpu PYTHONPATH=$path TORCHINDUCTOR_CACHE_DIR=$HOME/icache \
        timeout "$LIMIT" python3 benchmarks/gpu_fusion_micro.py --label "$label" --out "$OUT/micro.jsonl"
    done
  ) > "$OUT/micro_gpu$gpu.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
cat "$OUT/micro.jsonl"
