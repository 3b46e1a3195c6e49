#!/usr/bin/env bash
# Runs ON the lent GPU machine from the project's root, after the bring-up of
# ../shared/gpu/README.md ($HOME/site holds vLLM 0.26.0). Installs this tree, runs one phase of
# benchmarks/gpu_invisible.py with its raw files kept on the machine ($HOME/gi), and copies the
# summaries (small) to $OUT/<phase>/.
#
#   bash benchmarks/gpu_invisible_run.sh bitwise --configs llama-v2,llama-v1,moe,llama-v2-eager --parallel 4
#   bash benchmarks/gpu_invisible_run.sh timing --compile-first --rounds 1
set -uo pipefail
phase=$1; shift
export PYTHONPATH=$HOME/site PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --upgrade --target $HOME/site . >/dev/null 2>&1
tag=${TAG:-$phase}
mkdir -p "$OUT/$tag" "$HOME/gi"
python3 benchmarks/gpu_invisible.py "$phase" --out "$HOME/gi/$tag" "$@" 2>&1 | tee "$OUT/$tag/summary.md"
cp "$HOME/gi/$tag"/bitwise.json "$HOME/gi/$tag"/timing-*.json "$OUT/$tag/" 2>/dev/null || true
find "$OUT/$tag" -name '*.json' -size +8M -delete  # raw served outputs stay on the machine
for f in "$HOME/gi/$tag"/*.log; do echo "== $f"; grep -E "Error|error|Traceback|vllm-maxact|JIT compilation" "$f" | tail -8; tail -3 "$f"; done > "$OUT/$tag/logs.txt" 2>&1
