"""Corpus replay spread over several vLLM engines (data parallel), merged exactly.

`EngineGroup` stands where `run_replay` expects one `vllm.LLM`: each engine call is split
into one contiguous shard per engine (balanced by tokens), the shards run at once, and every
worker RPC goes to every engine, the recorder's replies merged into what one engine that had
computed every token would have replied. So replay's batching, per-domain windows and INT-8
phases stay as they are, and the table it writes is the single-engine table:

- a site's max / min: the max / min over shards (exact);
- tokens, NaN and Inf counts, INT-8 error sums and counts, the calibration histogram: sums
  over shards (integers exact; the float64 error sums up to the order of one addition per
  engine);
- per-channel maxima: elementwise max (exact).

Shards are merged per (pipeline stage, tensor-parallel rank), before replay merges ranks and
stages as usual (by max for replicas, with the sharded gate's sums), so engines may themselves
be tensor or pipeline parallel. The INT-8 check's thresholds come from the merged calibration
(max and histogram) and go to every engine, so each shard is evaluated against the corpus-wide
thresholds.

Engines are `vllm.LLM` objects of this process, one engine core and its workers each; the
replay drives them from one thread per engine (vLLM releases the GIL while its engine core
computes). `vllm-maxact replay --data-parallel N` builds N of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from vllm_maxact.stats import merge_shard_hists, merge_shard_payloads

#: Worker methods whose replies are statistics of the engine's tokens: merged over shards.
#: Every other method's replies are listed engine after engine.
MERGES: dict[str, Callable[[Sequence[Sequence[Any]]], list]] = {
    "maxact_collect": merge_shard_payloads,
    "maxact_int8_hist": merge_shard_hists,
}


def shard(lengths: Sequence[int], n: int) -> list[range]:
    """``n`` contiguous index ranges with about equal token sums (no empty one unless there are
    fewer items than engines)."""
    total = sum(lengths)
    bounds, acc, k = [0], 0, 1
    for i, length in enumerate(lengths):
        acc += length
        while k < n and acc >= total * k / n and len(lengths) - (i + 1) >= n - k:
            bounds.append(i + 1)
            k += 1
    while len(bounds) < n:
        bounds.append(len(lengths))
    bounds.append(len(lengths))
    return [range(bounds[j], bounds[j + 1]) for j in range(n)]


class EngineGroup:
    """Several `vllm.LLM` engines of one model that `run_replay` drives as one."""

    def __init__(self, engines: Sequence[Any]) -> None:
        if not engines:
            raise ValueError("an engine group needs at least one engine")
        self.engines = list(engines)
        self.llm_engine = self.engines[0].llm_engine  # configuration (prefix caching, limits)
        self._pool = ThreadPoolExecutor(len(self.engines), thread_name_prefix="vllm-maxact-dp")

    def get_tokenizer(self):
        return self.engines[0].get_tokenizer()

    def generate(self, prompts: Sequence[Any], params=None, use_tqdm: Any = False) -> list:
        """``use_tqdm`` (replay's per-request progress hook) goes to every engine: each engine's
        finished requests are credited as they finish, the total is the call's."""
        lengths = [len(p.get("prompt_token_ids", ())) if isinstance(p, dict) else len(str(p)) for p in prompts]
        parts = shard(lengths, len(self.engines))
        futures = [self._pool.submit(e.generate, [prompts[i] for i in part], params, use_tqdm=use_tqdm)
                   for e, part in zip(self.engines, parts, strict=True) if len(part)]
        return [o for f in futures for o in f.result()]

    def collective_rpc(self, method: str, timeout: float | None = None, args: tuple = (),
                       kwargs: dict[str, Any] | None = None) -> list:
        futures = [self._pool.submit(e.collective_rpc, method, timeout=timeout, args=args, kwargs=kwargs)
                   for e in self.engines]
        replies = [f.result() for f in futures]
        merge = MERGES.get(method)
        return merge(replies) if merge else [r for rs in replies for r in rs]

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class VllmDataParallel:
    """vLLM's own data parallel (``AsyncLLM`` with ``data_parallel_size=N``: one front end, N
    engine cores that vLLM load-balances requests over) behind the interface `run_replay`
    expects. Worker RPCs go to every engine through the engine client's
    ``call_utility_all_async`` (its ``collective_rpc`` returns the first engine's replies only)
    and are merged like `EngineGroup`'s. The asyncio engine runs on a loop thread of its own."""

    def __init__(self, model: str, data_parallel_size: int, **engine_kwargs: Any) -> None:
        import asyncio
        import threading
        from types import SimpleNamespace

        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-maxact-dp-loop", daemon=True)
        self._thread.start()
        args = AsyncEngineArgs(model, data_parallel_size=data_parallel_size, **engine_kwargs)

        async def make():
            return AsyncLLM.from_engine_args(args)

        self.engine = self._run(make())
        self.llm_engine = SimpleNamespace(vllm_config=self.engine.vllm_config)
        self._calls = 0

    def _run(self, coro):
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def get_tokenizer(self):
        return self.engine.get_tokenizer()

    def generate(self, prompts: Sequence[Any], params=None, use_tqdm: Any = False) -> list:
        import asyncio

        self._calls += 1
        tag = f"maxact-replay-{os.getpid()}-{self._calls}"
        bar = use_tqdm(total=len(prompts)) if callable(use_tqdm) else None

        async def one(i: int, prompt: Any):
            final = None
            async for out in self.engine.generate(prompt, params, request_id=f"{tag}-{i}"):
                final = out
            if bar is not None:
                bar.update(1)
            return final

        async def every():
            return await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))

        return list(self._run(every()))

    def collective_rpc(self, method: str, timeout: float | None = None, args: tuple = (),
                       kwargs: dict[str, Any] | None = None) -> list:
        replies = self._run(self.engine.engine_core.call_utility_all_async("collective_rpc", method, timeout,
                                                                           args, kwargs))
        merge = MERGES.get(method)
        return merge(replies) if merge else [r for rs in replies for r in rs]

    def close(self) -> None:
        """Shut the engines down now, while the interpreter can (vLLM's own ``__del__`` at exit
        finds its module globals gone and prints a TypeError)."""
        import gc

        engine = self.__dict__.pop("engine", None)
        if engine is None:
            return
        try:
            engine.shutdown()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            del engine
            gc.collect()
