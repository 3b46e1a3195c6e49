#!/usr/bin/env python3
"""Prompt tokens/s by prompt length on the CPU build: what `vllm_maxact.progress.LONG_CONTEXT_TOKENS`
(the ETA's and the full-corpus estimate's cost per token by length) is fitted to.

One engine as `vllm-maxact replay` builds it on a CPU (the bundled SmolLM2-135M, prefix caching
off, 1,024 tokens a step, the worker on every CPU), the plugin recording; for each length L,
16,384 tokens of built-in samples cut to L (the longest samples), prompt-only, one engine call,
then the longest sample alone (cut to the model's limit). Prints tok/s per length and the fitted
length at which the cost per token doubles (rate(512) / rate(L) = (1 + L/K) / (1 + 512/K)).

    python benchmarks/cpu_prompt_length.py --dtype float32
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--step-tokens", type=int, default=1024)
    ap.add_argument("--lengths", default="512,1024,2048,4096")
    args = ap.parse_args()
    from vllm_maxact.cli import _cpu_defaults

    _cpu_defaults()
    from vllm import LLM, SamplingParams

    from vllm_maxact.api import collect
    from vllm_maxact.corpus import load_corpus
    from vllm_maxact.models import resolve_model

    llm = LLM(resolve_model("smollm2-135m"), dtype=args.dtype, enable_prefix_caching=False,
              max_num_batched_tokens=args.step_tokens)
    tok = llm.get_tokenizer()
    ids = sorted((tok(s.text).input_ids for s in load_corpus("builtin")), key=len, reverse=True)
    limit = llm.llm_engine.vllm_config.model_config.max_model_len - 1
    params = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False)
    rates = {}
    runs = [(L, [t[:L] for t in ids[: max(1, 16384 // L)]]) for L in map(int, args.lengths.split(","))]
    runs.append((min(len(ids[0]), limit), [ids[0][:limit]]))
    for L, batch in runs:
        collect(llm, reset=True)
        t0 = time.perf_counter()
        llm.generate([{"prompt_token_ids": b} for b in batch], params, use_tqdm=False)
        dt = time.perf_counter() - t0
        rates[L] = sum(map(len, batch)) / dt
        print(f"L={L:5d}  {len(batch):3d} prompts  {rates[L]:7.0f} tok/s  (load {os.getloadavg()[0]:.2f})", flush=True)
    base = min(rates)
    for L, r in rates.items():
        ratio = rates[base] / r
        if L != base and ratio > 1:
            print(f"L={L}: cost per token doubles at K = {(L - ratio * base) / (ratio - 1):.0f} tokens")


if __name__ == "__main__":
    main()
