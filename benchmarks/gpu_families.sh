#!/usr/bin/env bash
# Family coverage on the lent GPU machine (issue 8): serves the families the CPU build cannot
# (their vLLM model modules import torchvision) with tiny random-weight models and compares every
# text-backbone site with the transformers-hooks reference:
#   qwen2_5_vl      Qwen2_5_VLForConditionalGeneration (adapter qwen2_vl), text-only
#   gemma3_mm       Gemma3ForConditionalGeneration (adapter gemma3_mm), text-only
#   qwen3_5_mm      Qwen3_5ForConditionalGeneration (adapter qwen3_5_mm), text-only
#   qwen3_5_moe_mm  Qwen3_5MoeForConditionalGeneration (adapter qwen3_5_mm), text-only
#   qwen3_5, qwen3_5_moe  Qwen3_5ForCausalLM / Qwen3_5MoeForCausalLM (adapter qwen3_next): these
#                   SKIP on vLLM 0.26, which does not register the text-only Qwen3.5 classes
# (tests/test_engine_families_more.py::test_family_sites_match_transformers; torch.compile and
# CUDA graphs on, i.e. the compiled path; multimodal models with language_model_only=True).
#
# Runs ON the GPU machine, from the repository root, after the bring-up of
# ../shared/gpu/README.md ($HOME/site holds vLLM 0.26.0 and this project). Needs two ignored
# folders carried with the call (about 15 MiB together), made here by the project's CPU machine:
#   .gpu/tok     SmolLM2's tokenizer files (tokenizer.json, tokenizer_config.json,
#                chat_template.jinja): the tiny models' tokenizer (MAXACT_TEST_TOKENIZER_DIR);
#                the bundled SmolLM2 model is not there and cannot be downloaded.
#   .gpu/pytest  pure-python pytest 9 with _pytest, pluggy, iniconfig, packaging, pygments,
#                pytest_timeout: put on the path only if `import pytest` fails there.
# Device call, e.g. (x2 machine, another benchmark on GPU 0):
#   run(kind="nvidia-h200-x2", carry=[".gpu/tok"] (+ ".gpu/pytest" where pytest is absent), timeout_s=420,
#       command="GPU=1 bash benchmarks/gpu_families.sh")
# Environment: GPU (CUDA device index, default 1; 0 if the machine has one GPU), OUT (results,
# default /tmp/maxact_families), LIMIT (seconds for pytest, default 330), MEM (vLLM
# gpu_memory_utilization per engine, default 0.15), DTYPE (the engines' dtype, default bfloat16;
# float32 tells a recording error from bf16 drift where a bf16 case fails on tolerance), REINSTALL (1: reinstall this project into
# $HOME/site from the working tree first, so the tested code is the tree's; default 1 when
# $HOME/site holds the project), K (pytest -k expression, default all cases above), STOP (set: -x,
# stop at the first failure; default: run every case, so one call reports them all).
# Results: $OUT/families.log (pytest output), $OUT/families.xml (JUnit XML with each case's
# max_rel_dev / engine_s properties), $OUT/env.txt.
set -uo pipefail
REPO=$(pwd)
OUT=${OUT:-/tmp/maxact_families}
LIMIT=${LIMIT:-330}
MEM=${MEM:-0.15}
DTYPE=${DTYPE:-bfloat16}
K=${K:-qwen2_5_vl or gemma3_mm or qwen3_5}
mkdir -p "$OUT"
[ -f tests/test_engine_families_more.py ] || { echo "run me from the repository root" >&2; exit 2; }

# Python path: the installed project and vLLM ($HOME/site), then the carried pytest if needed.
PY_PATH=$HOME/site
[ -n "${PYTHONPATH:-}" ] && PY_PATH=$PY_PATH:$PYTHONPATH
export PYTHONPATH=$PY_PATH
if ! python3 -c 'import pytest' 2>/dev/null; then
  if [ -d .gpu/pytest ]; then
    export PYTHONPATH=$PYTHONPATH:$REPO/.gpu/pytest
    echo "pytest: the carried copy in .gpu/pytest"
  else
    echo "no pytest here and no .gpu/pytest carried" >&2; exit 2
  fi
fi

if [ "${REINSTALL:-auto}" = 1 ] || { [ "${REINSTALL:-auto}" = auto ] && [ -d "$HOME/site/vllm_maxact" ]; }; then
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --upgrade --target "$HOME/site" . \
    > "$OUT/reinstall.log" 2>&1 || echo "WARNING: reinstalling the project failed (see reinstall.log); testing the installed copy"
fi

# Tokenizer for the tiny models: the carried folder, else (CPU machines) the bundled SmolLM2.
if [ -z "${MAXACT_TEST_TOKENIZER_DIR:-}" ] && [ -f .gpu/tok/tokenizer.json ]; then
  export MAXACT_TEST_TOKENIZER_DIR=$REPO/.gpu/tok
fi

# One GPU of the machine (another benchmark may use the other), a modest memory share.
if command -v nvidia-smi >/dev/null 2>&1; then
  n=$(nvidia-smi -L | grep -c '^GPU')
  GPU=${GPU-1}
  if [ -n "$GPU" ] && [ "$GPU" -ge "$n" ]; then echo "GPU $GPU absent ($n GPUs): using GPU 0"; GPU=0; fi
  export CUDA_VISIBLE_DEVICES=$GPU
  # Gated DeltaNet prefill (Qwen3.5) on the Triton/FLA kernels: vLLM 0.26 picks FlashInfer's on
  # Hopper, whose SM90 kernel the GPU image lacks ("SM90 GDN prefill DSL kernel is unavailable");
  # models without GDN layers ignore the key.
  export MAXACT_TEST_ENGINE_ARGS="{\"gpu_memory_utilization\": $MEM, \"max_num_seqs\": 16, \"dtype\": \"$DTYPE\", \"additional_config\": {\"gdn_prefill_backend\": \"triton\"}}"
  nvidia-smi --query-gpu=index,name,memory.used,memory.total --format=csv,noheader
fi
export PYTHONUNBUFFERED=1 VLLM_CACHE_ROOT=${VLLM_CACHE_ROOT:-$HOME/vcache_families}
# The V1 model runner, as the project's other GPU scripts use: on vLLM 0.26's default V2 runner
# the Qwen2.5-VL engine had not finished start-up after 6 minutes (2026-11-30; Gemma 3 multimodal
# passed on it in 78 s); RUNNER=v2 keeps vLLM's choice.
if [ "${RUNNER:-v1}" = v1 ]; then export VLLM_USE_V2_MODEL_RUNNER=0; fi
export VLLM_MAXACT_PUBLISH_INTERVAL_S=0.5
# Nothing outside the GPU machine can be reached: never wait on the Hugging Face hub, and no usage
# statistics (vLLM posts them from a thread, with no time-out, during engine start-up).
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
# Engine processes spawned, not forked from pytest (as the GPU benchmarks run them): a lock held
# by another thread at fork time is one candidate for the Qwen2.5-VL start-up that never ends.
export VLLM_WORKER_MULTIPROC_METHOD=${VLLM_WORKER_MULTIPROC_METHOD:-spawn}

# -P: do not put the working directory on sys.path, so `vllm_maxact` is the installed package
# (with vllm_maxact.plugins; the repository's folder has no plugins/ inside it); conftest.py
# puts tests/ on the path itself. `-o addopts=`: no --durations table; the timeout option of
# the project's pytest config needs pytest-timeout, which may be absent (a warning only);
# xunit1: record_property (max_rel_dev, engine_s) reaches the JUnit XML.
{
  echo "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-} MAXACT_TEST_ENGINE_ARGS=${MAXACT_TEST_ENGINE_ARGS:-}"
  echo "MAXACT_TEST_TOKENIZER_DIR=${MAXACT_TEST_TOKENIZER_DIR:-} PYTHONPATH=$PYTHONPATH"
  python3 -P - <<'EOF'
import importlib, sys
print("python", sys.version.split()[0])
for name in ("torch", "transformers", "vllm", "pytest", "torchvision", "vllm_maxact"):
    try:
        m = importlib.import_module(name)
        print(name, getattr(m, "__version__", ""), getattr(m, "__file__", ""))
    except Exception as e:  # noqa: BLE001
        print(name, "NOT importable:", type(e).__name__, e)
try:
    import vllm_maxact.plugins.qwen2_5_vl  # noqa: F401
    from vllm_maxact.reference import _auto_class  # noqa: F401
    print("vllm_maxact: plugins and reference._auto_class importable")
except Exception as e:  # noqa: BLE001
    print("vllm_maxact: STALE or broken install:", type(e).__name__, e)
EOF
} 2>&1 | tee "$OUT/env.txt"

# A start-up that never ends (Qwen2.5-VL, twice, after "Using FlashInfer for top-p & top-k
# sampling"): 30 s before the limit, SIGABRT to the engine process, whose Python then prints
# every thread's stack (PYTHONFAULTHANDLER) into families.log.
export PYTHONFAULTHANDLER=1
# Its output goes to a file, not this script's stdout: a pipe reader of the script (`| tail`)
# would otherwise wait for the sleep to end, i.e. LIMIT seconds even when pytest ends early.
( sleep $((LIMIT > 60 ? LIMIT - 30 : LIMIT / 2)); pkill -ABRT -f EngineCore && echo "watchdog: SIGABRT to EngineCore" ) \
  > "$OUT/watchdog.log" 2>&1 < /dev/null &
WATCHDOG=$!
# -s: vLLM's own log reaches families.log as it runs (a start-up that never ends shows where).
timeout -k 15 "$LIMIT" python3 -P -m pytest -p no:cacheprovider -o addopts= -o junit_family=xunit1 ${STOP:+-x} -q -rs -s \
  tests/test_engine_families_more.py -k "test_family_sites_match_transformers and ($K)" \
  --junitxml="$OUT/families.xml" 2>&1 | tee "$OUT/families.log" | grep -v "^(EngineCore\|^(Worker\|^INFO\|^WARNING\|^DEBUG" | tail -40
rc=${PIPESTATUS[0]}
pkill -P "$WATCHDOG" 2>/dev/null; kill "$WATCHDOG" 2>/dev/null
cat "$OUT/watchdog.log" 2>/dev/null
echo "pytest exit: $rc"
python3 -P - "$OUT/families.xml" <<'EOF' || true
import sys, xml.etree.ElementTree as ET
for case in ET.parse(sys.argv[1]).getroot().iter("testcase"):
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    status = "FAIL" if case.find("failure") is not None or case.find("error") is not None else \
        "SKIP" if case.find("skipped") is not None else "pass"
    print(f"{case.get('name')}: {status} {case.get('time')}s {props}")
EOF
exit "$rc"
