#!/usr/bin/env python3
"""Cold start of a vLLM engine on the CPU build: plain vs each recording hot path.

Each configuration builds `vllm.LLM(model)` in a fresh process with empty vLLM and Inductor
caches (so torch.compile runs from scratch, as on a fresh machine or after an upgrade), then
prefills two prompts. Reported: engine build time (s) and the warm-up/compile span from vLLM's
log. Configurations run one after another, never concurrently.

    python benchmarks/cpu_cold_start.py --out benchmarks/results/cpu_cold_start.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {
    "plain": {"VLLM_MAXACT_ENABLE": "0"},
    "cpu_op": {"VLLM_MAXACT_ENABLE": "1", "VLLM_MAXACT_HOT_PATH": "cpu_op"},
}

CHILD = """
import sys, time
from vllm import LLM, SamplingParams
from vllm_maxact.models import resolve_model

def main():
    path = resolve_model(sys.argv[1], progress=False)
    t0 = time.monotonic()
    llm = LLM(path, enable_prefix_caching=False, max_model_len=1024, dtype="bfloat16")
    t1 = time.monotonic()
    llm.generate([{"prompt_token_ids": [5] * 50}, {"prompt_token_ids": [7] * 300}],
                 SamplingParams(max_tokens=1), use_tqdm=False)
    print(f"RESULT build_s={t1 - t0:.1f}", flush=True)
    llm.llm_engine.engine_core.shutdown()

if __name__ == "__main__":
    main()
"""


def stamp(line: str) -> float | None:
    m = re.search(r"(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)", line)
    return None if m is None else int(m[3]) * 3600 + int(m[4]) * 60 + int(m[5])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "cpu_cold_start.json")
    args = ap.parse_args()
    import torch
    import vllm

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "child.py"
        script.write_text(CHILD)
        for name in args.configs.split(","):
            cache = Path(tmp) / name
            env = {**os.environ, **CONFIGS[name], "VLLM_CACHE_ROOT": str(cache / "vllm"),
                   "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
                   "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
            t0 = time.monotonic()
            out = subprocess.run([sys.executable, str(script), args.model], env=env, capture_output=True,
                                 text=True, timeout=1800)
            log = out.stdout + out.stderr
            m = re.search(r"RESULT build_s=([\d.]+)", log)
            if out.returncode != 0 or m is None:
                raise SystemExit(f"{name} failed:\n{log[-3000:]}")
            start = next((stamp(x) for x in log.splitlines() if "Warming up model for the compilation" in x), None)
            done = next((stamp(x) for x in log.splitlines() if "Warming up done" in x), None)
            results[name] = {"build_s": float(m[1]), "process_s": round(time.monotonic() - t0, 1),
                             "compile_warmup_s": None if start is None or done is None else done - start}
            print(name, results[name], flush=True)
    doc = {
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "vllm": vllm.__version__, "torch": torch.__version__, "model": args.model,
        "results": results,
        "ratios_to_plain": {k: round(v["build_s"] / results["plain"]["build_s"], 3)
                            for k, v in results.items() if "plain" in results},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    print(json.dumps(doc["ratios_to_plain"]))


if __name__ == "__main__":
    main()
