#!/usr/bin/env python3
"""Replay throughput on the CPU: vllm-maxact replay vs plain vLLM prefill vs the study's method.

Same model (bundled SmolLM2-135M; bf16, or float32 where `vllm-maxact replay` picks it), same tokens (the built-in corpus: the first N samples,
or with --seed the replay CLI's subsample over every domain; tokenized once with the model's
tokenizer, truncated to --max-tokens), same machine, one run:

  hf_hooks   transformers forward with max-recording forward hooks at every site, one sample
             at a time (the study's method, reduced to what it needs: max/min per site)
  plain      vLLM prompt-only prefill with the plugin installed but switched off
  maxact     vLLM prompt-only prefill with the plugin recording every default site, through
             `vllm_maxact.replay.run_replay` (what `vllm-maxact replay` does), CPU hot path

vLLM's worker gets every CPU (VLLM_CPU_OMP_THREADS_BIND = the affinity list), as
`vllm-maxact replay` sets it; vLLM's own default binds one CPU per core and keeps one back.

Prompt tokens/s exclude start-up (engine build, compilation, model load). The two vLLM
engines live side by side (each has its own worker process; the switch is read when a worker
starts) and are timed alternately, `--reps` times each; medians are reported.

    python benchmarks/cpu_replay.py --samples 40 --reps 3 --out benchmarks/results/cpu_replay.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the transformers-hooks reference


def hf_hooks_tokens_per_s(model_dir: str, toks: list[list[int]], dtype: str) -> float:
    import torch
    from reference import load_model, reference_stats_for_model

    torch.set_num_threads(os.cpu_count() or 1)
    model = load_model(model_dir, dtype=getattr(torch, dtype))
    reference_stats_for_model(model, toks[:2])  # warm-up
    t0 = time.perf_counter()
    reference_stats_for_model(model, toks)
    return sum(map(len, toks)) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--seed", type=int, default=None,
                    help="take the replay CLI's subsample (`--samples N --seed S`, every domain) instead of the first N")
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dtype", default=None,
                    help="every path's dtype (default: what `vllm-maxact replay` picks: float32 on x86 CPUs "
                    "without bf16 matrix units, else bfloat16)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu_replay.json"))
    args = ap.parse_args()
    from vllm_maxact.cli import _cpu_defaults, _cpu_dtype

    args.dtype = _cpu_dtype(args.dtype) or "bfloat16"
    _cpu_defaults()  # what `vllm-maxact replay` sets: KV-cache size, worker bound to every CPU

    import torch
    import vllm
    from vllm import LLM, SamplingParams

    from vllm_maxact.corpus import load_corpus
    from vllm_maxact.models import resolve_model
    from vllm_maxact.replay import run_replay

    model = resolve_model("smollm2-135m")
    startup: dict[str, float] = {}
    samples = (load_corpus("builtin")[: args.samples] if args.seed is None
               else load_corpus("builtin", samples=args.samples, seed=args.seed))
    engines = {}
    # maxact: the default hot path on CPU (one opaque op per layer)
    setups = [("plain", "0", "auto"), ("maxact", "1", "auto")]
    for name, enable, hot in setups:
        os.environ["VLLM_MAXACT_ENABLE"] = enable
        os.environ["VLLM_MAXACT_HOT_PATH"] = hot
        t0 = time.perf_counter()
        engines[name] = LLM(model, enable_prefix_caching=False, max_model_len=args.max_tokens + 1,
                            dtype=args.dtype)
        startup[name] = time.perf_counter() - t0
    tok = engines["plain"].get_tokenizer()
    toks = [tok(s.text).input_ids[: args.max_tokens] for s in samples]
    n_tokens = sum(map(len, toks))
    params = SamplingParams(max_tokens=1)

    def plain() -> float:
        t0 = time.perf_counter()
        engines["plain"].generate([{"prompt_token_ids": t} for t in toks], params, use_tqdm=False)
        return n_tokens / (time.perf_counter() - t0)

    def replay(name: str) -> float:
        t0 = time.perf_counter()
        res = run_replay(engines[name], samples, model="smollm2-135m", targets=[args.max_tokens] * len(toks))
        dt = time.perf_counter() - t0
        assert res.tokens == n_tokens, (res.tokens, n_tokens)
        return n_tokens / dt  # includes tokenization and per-batch reads: the whole replay

    timers = {name: (plain if name == "plain" else (lambda n=name: replay(n))) for name in engines}
    for f in timers.values():  # warm-up
        f()
    runs: dict[str, list[float]] = {k: [] for k in timers}
    for _ in range(args.reps):  # alternated
        for k, f in timers.items():
            runs[k].append(f())
    for e in engines.values():
        e.llm_engine.engine_core.shutdown()
    engines.clear()
    hf = [hf_hooks_tokens_per_s(model, toks, args.dtype) for _ in range(max(1, args.reps // 2))]
    med = {k: statistics.median(v) for k, v in runs.items()}
    med["hf_hooks"] = statistics.median(hf)
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND"),
        "vllm": vllm.__version__, "torch": torch.__version__, "dtype": args.dtype,
        "samples": len(toks), "seed": args.seed, "max_tokens": args.max_tokens, "prompt_tokens": n_tokens, "runs": runs, "hf_hooks_runs": hf,
        "median_tok_per_s": med,
        "startup_s": startup,
        "maxact_vs_plain": med["maxact"] / med["plain"],
        "maxact_vs_hf_hooks": med["maxact"] / med["hf_hooks"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("median_tok_per_s", "startup_s", "maxact_vs_plain",
                                             "maxact_vs_hf_hooks")}, indent=1))


if __name__ == "__main__":
    main()
