#!/usr/bin/env bash
# Runs ON the lent GPU machine, from the project's root, after the bring-up of
# ../shared/gpu/README.md ($HOME/site holds vLLM 0.26.0 and this project, installed from the
# working tree). Starts one benchmark process per spec, concurrently, each on its own GPU, with
# its own compile cache, and collects results and logs under $OUT.
#
#   bash benchmarks/gpu_device_run.sh LABEL:VARIANT:GPU[:HOT_PATH] [...] [-- extra args]
#
# HOT_PATH (optional) sets VLLM_MAXACT_HOT_PATH for that process (triton, in_kernel; default auto).
# VARIANT is `tree` (the package as installed from the working tree) or a folder under
# benchmarks/variants/ whose .py files replace the installed package's modules of the same
# names (an experiment: the package is copied to $HOME/var_LABEL and put first on PYTHONPATH;
# see benchmarks/variants/apply.sh); `a+b` applies folder a, then b.
set -uo pipefail
OUT=${OUT:-/tmp/maxact_out}
LIMIT=${LIMIT:-560}
mkdir -p "$OUT"
specs=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do specs+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
extra=("$@")
export PYTHONUNBUFFERED=1 VLLM_USE_V2_MODEL_RUNNER=0
pids=()
for spec in "${specs[@]}"; do
  IFS=: read -r label variant gpu hot <<<"$spec"
  path=$HOME/site
  if [ "$variant" != tree ]; then
    rm -rf "$HOME/var_$label" && mkdir -p "$HOME/var_$label"
    cp -r "$HOME/site/vllm_maxact" "$HOME/var_$label/"
    bash benchmarks/variants/apply.sh "$HOME/var_$label/vllm_maxact" "$variant"
    path=$HOME/var_$label:$HOME/site
  fi
  fb=()
  if [ "$variant" != tree ]; then fb=(--fallback-path "$HOME/site"); fi  # the tree's package
  echo "== $label: variant $variant on GPU $gpu, hot path ${hot:-auto}, PYTHONPATH=$path"
  VLLM_MAXACT_HOT_PATH=${hot:-auto} CUDA_VISIBLE_DEVICES=$gpu PYTHONPATH=$path VLLM_CACHE_ROOT=$HOME/vcache_$label \
    timeout "$LIMIT" python3 benchmarks/gpu_overhead.py --out "$OUT" --label "$label" "${fb[@]}" "${extra[@]}" \
    > "$OUT/$label.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; echo "exit $p: $?"; done
roots=()
for spec in "${specs[@]}"; do IFS=: read -r label _ _ <<<"$spec"; roots+=("$HOME/vcache_$label"); done
PYTHONPATH=$HOME/site python3 benchmarks/inductor_kernels.py "${roots[@]}" > "$OUT/kernels.json" 2>&1
rm -f "$OUT"/*.md "$OUT"/*.tmp
for spec in "${specs[@]}"; do
  IFS=: read -r label _ _ <<<"$spec"
  grep -h "gpu_overhead\|^|" "$OUT/$label.log" | tail -40
  # vLLM's JIT monitor: a kernel compiled after warm-up stalls the step that needed it (logged once per kernel)
  grep -h "JIT compilation during inference" "$OUT/$label.log" | sed 's/^/JIT after warm-up: /' || true
done
