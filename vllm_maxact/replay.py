"""Offline corpus replay on `vllm.LLM`: the measurement run before deployment.

Every sample is run prompt-only (one forward over its tokens, no decoding) with prefix caching
off, so every token of the corpus is computed and observed exactly once. Samples are grouped by
domain; the recorder's window is read after each batch, which yields per-domain maxima (a
union over batches) next to the whole-corpus lifetime.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from vllm_maxact.corpus import Sample
from vllm_maxact.export.arrow import SCHEMA, merge_ranks, rows_from_stats, write_table

FP16_MAX = 65504.0


class ReplayError(RuntimeError):
    pass


@dataclass
class ReplayResult:
    table: pa.Table
    model: str
    samples: int
    tokens: int
    truncated: int
    seconds: float  # forward time only (engine start-up excluded)
    out: Path | None = None
    domains: dict[str, int] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")


def check_writable(path: Path) -> None:
    """Fail before a long run, not after it, if the output cannot be written."""
    parent = path.resolve().parent
    if not parent.exists():
        raise ReplayError(f"output directory {parent} does not exist; create it or choose another --out")
    if not os.access(parent, os.W_OK):
        raise ReplayError(f"output directory {parent} is not writable; choose another --out")
    if path.exists() and path.is_dir():
        raise ReplayError(f"--out {path} is a directory; give a file name like {path / 'maxact.arrow'}")


def tokenize(
    tokenizer: Any, samples: Sequence[Sample], *, limit: int, targets: Sequence[int] | None = None
) -> tuple[list[list[int]], int]:
    """Token ids with the model's own special-token convention (BOS where the model wants it),
    truncated to ``limit`` (and each sample's length-bucket target); returns (ids, truncated)."""
    ids: list[list[int]] = []
    truncated = 0
    for i, s in enumerate(samples):
        t = tokenizer(s.text).input_ids
        cap = limit if targets is None else min(limit, targets[i])
        if len(t) > limit:
            truncated += 1
        ids.append(list(t[:cap]))
    return ids, truncated


def _union(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two consecutive spans of the same sites (not replicas: counts and tokens add up)."""

    def pick(f, x, y):
        return y if x is None else x if y is None else f(x, y)

    return {
        "max": [pick(max, x, y) for x, y in zip(a["max"], b["max"], strict=True)],
        "min": [pick(min, x, y) for x, y in zip(a["min"], b["min"], strict=True)],
        "nan": [x + y for x, y in zip(a["nan"], b["nan"], strict=True)],
        "inf": [x + y for x, y in zip(a["inf"], b["inf"], strict=True)],
        "tokens": a["tokens"] + b["tokens"],
        "start": min(a["start"], b["start"]),
        "end": max(a["end"], b["end"]),
    }


def run_replay(
    llm: Any,
    samples: Sequence[Sample],
    *,
    model: str,
    targets: Sequence[int] | None = None,
    batch_samples: int = 32,
    out: Path | None = None,
    on_progress: Callable[[int, int, float | None], None] | None = None,
) -> ReplayResult:
    """Replay ``samples`` through an already built ``llm`` (plugin active, prefix caching off)."""
    from vllm import SamplingParams

    from vllm_maxact.api import collect

    if not samples:
        raise ReplayError("the corpus is empty: nothing to replay")
    if llm.llm_engine.vllm_config.cache_config.enable_prefix_caching:
        raise ReplayError("prefix caching is on: cached tokens are never computed, so they would not be observed")
    limit = llm.llm_engine.vllm_config.model_config.max_model_len - 1
    ids, truncated = tokenize(llm.get_tokenizer(), samples, limit=limit, targets=targets)
    collect(llm, reset=True)  # also checks that the plugin is recording
    params = SamplingParams(max_tokens=1, temperature=0.0)

    order = sorted(range(len(samples)), key=lambda i: (samples[i].domain or "", i))
    per_domain: dict[str, dict[str, Any]] = {}
    domain_counts: dict[str, int] = {}
    tokens = 0
    seconds = 0.0
    gmax: float | None = None
    batch: list[int] = []

    def flush() -> None:
        nonlocal tokens, seconds, gmax
        if not batch:
            return
        domain = samples[batch[0]].domain
        t0 = time.perf_counter()
        llm.generate([{"prompt_token_ids": ids[i]} for i in batch], params, use_tqdm=False)
        payloads = collect(llm)
        seconds += time.perf_counter() - t0
        stages = _stage_windows(payloads)
        for win in stages:
            key = domain or ""
            per_domain[key] = _union(per_domain[key], win) if key in per_domain else win
        n_tok = sum(len(ids[i]) for i in batch)
        tokens += n_tok
        domain_counts[domain or ""] = domain_counts.get(domain or "", 0) + len(batch)
        for win in stages:
            vals = [abs(v) for v in win["max"] + win["min"] if v is not None]
            if vals:
                gmax = max(gmax or 0.0, max(vals))
        if on_progress:
            on_progress(len(batch), n_tok, gmax)
        batch.clear()

    for i in order:
        if batch and (samples[i].domain != samples[batch[0]].domain or len(batch) >= batch_samples):
            flush()
        batch.append(i)
    flush()

    payloads = collect(llm)
    rows: list[dict[str, Any]] = []
    meta = dict(payloads[0])
    meta["time"] = time.time()
    for stage in _group_stages(payloads):
        sites = stage[0]["sites"]
        merged = merge_ranks([p["lifetime"] for p in stage], sites)
        rows += rows_from_stats(meta, sites, merged, window="replay", rank=None)
    if any(samples[i].domain for i in range(len(samples))):
        stage_sites = [st[0]["sites"] for st in _group_stages(payloads)]
        for domain, win in sorted(per_domain.items()):
            if not domain:
                continue
            # per_domain holds one merged window per stage; stages are concatenated in order.
            offset = 0
            for sites in stage_sites:
                part = {k: (v[offset : offset + len(sites)] if isinstance(v, list) else v) for k, v in win.items()}
                rows += rows_from_stats(meta, sites, part, window="replay", rank=None, domain=domain)
                offset += len(sites)
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    table = table.replace_schema_metadata(
        {**SCHEMA.metadata, b"vllm_maxact.samples": str(len(samples)).encode(),
         b"vllm_maxact.truncated": str(truncated).encode(), b"vllm_maxact.tokens": str(tokens).encode()}
    )
    result = ReplayResult(table, model, len(samples), tokens, truncated, seconds, out, domain_counts)
    if out is not None:
        write_table(table, out)
    return result


def _group_stages(payloads: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    stages: dict[int, list[dict[str, Any]]] = {}
    for p in payloads:
        stages.setdefault(p.get("pp_rank", 0), []).append(p)
    return [stages[k] for k in sorted(stages)]


def _stage_windows(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One window, merged over TP ranks, concatenated over pipeline stages."""
    merged_all: dict[str, Any] = {"max": [], "min": [], "nan": [], "inf": [], "tokens": 0}
    for stage in _group_stages(payloads):
        m = merge_ranks([p["window"] for p in stage], stage[0]["sites"])
        for k in ("max", "min", "nan", "inf"):
            merged_all[k] += m[k]
        merged_all["tokens"] = max(merged_all["tokens"], m["tokens"])
        merged_all["start"], merged_all["end"] = m["start"], m["end"]
    return [merged_all]
