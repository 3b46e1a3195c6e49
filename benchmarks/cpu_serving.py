#!/usr/bin/env python3
"""Serving overhead on the CPU: `vllm serve` SmolLM2-135M with the plugin recording vs switched
off, under concurrent HTTP load on loopback, same run, alternated.

Two servers are started side by side (VLLM_MAXACT_ENABLE=0 and =1); each round sends the same
bounded burst of completion requests (fixed prompts, fixed output length, ignore_eos) to one
server while the other idles, alternating A B A B ...; the figure is output tokens/s of the
burst (wall clock). Medians over `--rounds` bursts per server.

    python benchmarks/cpu_serving.py --rounds 5 --requests 32 --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from servers import VllmServer  # noqa: E402


async def burst(url: str, model: str, prompts: list[str], concurrency: int, max_tokens: int) -> float:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url + "/v1", api_key="unused", timeout=600)
    sem = asyncio.Semaphore(concurrency)

    async def one(p: str) -> int:
        async with sem:
            r = await client.completions.create(model=model, prompt=p, max_tokens=max_tokens,
                                                extra_body={"ignore_eos": True}, temperature=0)
            return r.usage.completion_tokens

    t0 = time.perf_counter()
    toks = await asyncio.gather(*(one(p) for p in prompts))
    secs = time.perf_counter() - t0
    await client.close()  # inside this event loop (closing it later logs "Event loop is closed")
    return sum(toks) / secs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--dtype", default="auto",
                    help="both servers' --dtype (auto: the checkpoint's bf16, as `vllm serve` runs it; float32 is the faster "
                    "choice on CPUs without bf16 matrix units)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "cpu_serving.json")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    import vllm

    from vllm_maxact.corpus import load_corpus
    from vllm_maxact.models import resolve_model

    model = resolve_model("smollm2-135m")
    # 250 characters: under 1,024 tokens for every script in the corpus (600 was not, for one sample)
    prompts = [s.text[:250] for s in load_corpus("builtin", samples=args.requests, seed=1)]
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"maxact-bench-{os.getpid()}"
    servers = {}
    for name, enable in (("plain", "0"), ("maxact", "1")):
        (work / name).mkdir(parents=True, exist_ok=True)
        servers[name] = VllmServer(model, work / name, name="smollm2", env={"VLLM_MAXACT_ENABLE": enable},
                                   extra_args=("--no-enable-prefix-caching", "--dtype", args.dtype))
    try:
        runs: dict[str, list[float]] = {"plain": [], "maxact": []}
        for srv in servers.values():  # warm-up
            asyncio.run(burst(srv.url, "smollm2", prompts[:8], args.concurrency, args.max_tokens))
        for _ in range(args.rounds):
            for name, srv in servers.items():
                runs[name].append(asyncio.run(burst(srv.url, "smollm2", prompts, args.concurrency,
                                                    args.max_tokens)))
        import requests

        metrics = requests.get(servers["maxact"].url + "/metrics", timeout=10).text
        assert "vllm_maxact_absmax{" in metrics, "the instrumented server exports no maxima"
        assert "vllm_maxact_absmax{" not in requests.get(servers["plain"].url + "/metrics", timeout=10).text
    finally:
        for srv in servers.values():
            srv.kill()
    med = {k: statistics.median(v) for k, v in runs.items()}
    result = {
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "vllm": vllm.__version__, "dtype": args.dtype,
        "requests_per_burst": args.requests, "concurrency": args.concurrency, "max_tokens": args.max_tokens,
        "runs_output_tok_per_s": runs, "median_output_tok_per_s": med,
        "ratio_maxact_vs_plain": med["maxact"] / med["plain"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({"median_output_tok_per_s": med, "ratio": result["ratio_maxact_vs_plain"]}, indent=1))


if __name__ == "__main__":
    main()
