"""Offline corpus replay on `vllm.LLM`: the measurement run before deployment.

Every sample is run prompt-only (one forward over its tokens, no decoding) with prefix caching
off, so every token of the corpus is computed and observed exactly once. An engine call never
mixes domains; the recorder's window is read after each call, which yields per-domain maxima (a
union over calls) next to the whole-corpus lifetime. Calls take the domains in turn (one call of
each, then the next round): a replay stopped by its time budget has seen every domain, and the
throughput measured early is that of the corpus's mix.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from vllm_maxact.auth import caller_token
from vllm_maxact.corpus import Sample
from vllm_maxact.export.arrow import SCHEMA, merge_ranks, rows_from_stats, write_table
from vllm_maxact.int8 import headroom
from vllm_maxact.sites import Kind, Site

#: With ``batch_seconds`` set, a replay batch holds at least this many full scheduler steps of
#: tokens (``max_num_batched_tokens`` each), so the fixed cost of its end stays small.
MIN_BATCH_STEPS = 16


class ReplayError(RuntimeError):
    pass


@dataclass
class Call:
    """One engine call of a replay: its domain, samples, prompt tokens and seconds (the
    ``generate`` call and the window read after it)."""

    domain: str | None
    samples: int
    tokens: int
    seconds: float


@dataclass
class ReplayResult:
    table: pa.Table
    model: str
    samples: int  # replayed (fewer than ``planned`` when the time budget stopped the replay)
    tokens: int
    truncated: int
    seconds: float  # forward time only (engine start-up excluded)
    out: Path | None = None
    domains: dict[str, int] = field(default_factory=dict)
    planned: int = 0  # samples given
    calls: list[Call] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)  # prompt tokens of each replayed sample

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")

    @property
    def complete(self) -> bool:
        return self.samples == self.planned


def check_writable(path: Path) -> None:
    """Fail before a long run, not after it, if the output cannot be written."""
    parent = path.resolve().parent
    if not parent.exists():
        raise ReplayError(f"output directory {parent} does not exist; create it or choose another --out")
    if not os.access(parent, os.W_OK):
        raise ReplayError(f"output directory {parent} is not writable; choose another --out")
    if path.exists() and path.is_dir():
        raise ReplayError(f"--out {path} is a directory; give a file name like {path / 'maxact.arrow'}")


def truncate(
    token_ids: Sequence[Sequence[int]], *, limit: int, targets: Sequence[int] | None = None
) -> tuple[list[list[int]], int]:
    """Each sample's ids cut to ``limit`` (and to its length-bucket target); returns (ids, the
    number of samples longer than ``limit``)."""
    ids: list[list[int]] = []
    truncated = 0
    for i, t in enumerate(token_ids):
        cap = limit if targets is None else min(limit, targets[i])
        if len(t) > limit:
            truncated += 1
        # The caller's list as it is where nothing is cut (never modified here): copying every
        # sample is a measurable share of a short-prompt corpus's replay time on a fast GPU.
        ids.append(t if len(t) <= cap and type(t) is list else list(t[:cap]))
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
    batch_seconds: float | None = 10.0,
    min_batch_tokens: int | None = None,
    first_call_tokens: int | None = None,
    budget_s: float | None = None,
    token_ids: Sequence[Sequence[int]] | None = None,
    out: Path | None = None,
    on_start: Callable[[list[int]], None] | None = None,
    on_sample: Callable[[int], None] | None = None,
    on_progress: Callable[[int, int, float | None], None] | None = None,
    int8_check: bool = False,
    calib_samples: int = 128,
    eval_samples: int = 256,
) -> ReplayResult:
    """Replay ``samples`` through an already built ``llm`` (plugin active, prefix caching off).

    Engine calls (one ``generate`` each) never mix domains and take the domains in turn. Every
    call ends with the engine drained and the window read, a fixed cost (a part-filled last
    step, the ramp-up of the next call, one RPC) that a fast GPU would otherwise pay every few
    hundred milliseconds; so, with ``batch_seconds`` set, a call holds at least ``batch_samples``
    samples and at least ``min_batch_tokens`` tokens (default: 16 full scheduler steps,
    ``max_num_batched_tokens`` each), later calls are sized to take about ``batch_seconds`` at
    the throughput measured so far, and a domain's remainder shorter than half a call joins the
    call before it rather than making a short one of its own. ``batch_seconds=None`` keeps every
    call at ``batch_samples`` samples. ``token_ids`` (one list per sample) skips tokenization,
    e.g. for pre-tokenized corpora or engines built with ``skip_tokenizer_init``.

    ``first_call_tokens`` (with ``batch_seconds``): a domain's first call closes once it holds
    this many tokens and its k-th once it holds ``2**k`` times as many, whatever the rules above
    ask, so the first results come seconds after the engine is ready, the first round sees every
    domain soon, and the rules take over after a few calls. ``budget_s``: once the calls so far
    took this long, no call starts but a domain's first, so every domain has rows; the result
    covers the samples replayed (``result.samples`` < ``result.planned``).

    Callbacks: ``on_start(lengths)`` once, with every sample's token count after truncation;
    ``on_sample(tokens)`` as each sample's forward finishes, during a call (vLLM's per-request
    progress hook; samples are credited in the order they were queued, which is the order a
    prompt-only call finishes them in, so the token count is exact at each call's end);
    ``on_progress(samples, tokens, gmax)`` after each call, with the running global max."""
    from vllm import SamplingParams

    from vllm_maxact.api import collect

    if not samples:
        raise ReplayError("the corpus is empty: nothing to replay")
    if llm.llm_engine.vllm_config.cache_config.enable_prefix_caching:
        raise ReplayError("prefix caching is on: cached tokens are never computed, so they would not be observed")
    if int8_check and budget_s is not None:
        raise ReplayError("the INT-8 check needs its whole calibration and evaluation split: no time budget with it")
    limit = llm.llm_engine.vllm_config.model_config.max_model_len - 1
    if token_ids is not None and len(token_ids) != len(samples):
        raise ReplayError(f"{len(token_ids)} token-id lists for {len(samples)} samples")
    if token_ids is None:  # the model's own special-token convention (BOS where it wants one)
        tokenizer = llm.get_tokenizer()
        token_ids = [tokenizer(s.text).input_ids for s in samples]
    ids, truncated = truncate(token_ids, limit=limit, targets=targets)
    if min_batch_tokens is None:
        steps = llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
        min_batch_tokens = MIN_BATCH_STEPS * steps
    if on_start:
        on_start([len(t) for t in ids])
    collect(llm, reset=True)  # also checks that the plugin is recording
    # One output token, never detokenized: only the prompt's forward is of interest.
    params = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False)

    # With the INT-8 check the corpus runs in three phases (the study's split): calibrate on the
    # first N samples, evaluate on the next M, then the rest; each phase is grouped by domain.
    n_cal = min(calib_samples, len(samples)) if int8_check else 0
    n_eval = min(eval_samples, len(samples) - n_cal) if int8_check else 0
    if int8_check and (n_cal == 0 or n_eval == 0):
        raise ReplayError(f"--int8-check needs calibration and evaluation samples; the corpus has {len(samples)}")
    phases = [range(0, n_cal), range(n_cal, n_cal + n_eval), range(n_cal + n_eval, len(samples))]
    int8_result: dict[str, Any] | None = None
    per_domain: dict[str, dict[str, Any]] = {}
    domain_counts: dict[str, int] = {}
    calls: list[Call] = []
    calls_of: dict[str | None, int] = {}  # calls so far per domain
    lengths: list[int] = []
    tokens = 0
    seconds = 0.0
    gmax: float | None = None
    batch: list[int] = []
    batch_tokens = 0
    budget: float | None = None  # tokens per call, once a throughput has been measured
    last: list[dict[str, Any]] | None = None  # the latest call's payloads

    def flush() -> None:
        nonlocal tokens, seconds, gmax, batch_tokens, budget, last
        if not batch:
            return
        domain = samples[batch[0]].domain
        hook = _finished_requests_hook([len(ids[i]) for i in batch], on_sample) if on_sample else False
        t0 = time.perf_counter()
        llm.generate([{"prompt_token_ids": ids[i]} for i in batch], params, use_tqdm=hook)
        payloads = last = collect(llm)
        dt = time.perf_counter() - t0
        seconds += dt
        stages = _stage_windows(payloads)
        for win in stages:
            key = domain or ""
            per_domain[key] = _union(per_domain[key], win) if key in per_domain else win
        n_tok = sum(len(ids[i]) for i in batch)
        tokens += n_tok
        calls.append(Call(domain, len(batch), n_tok, dt))
        calls_of[domain] = calls_of.get(domain, 0) + 1
        lengths.extend(len(ids[i]) for i in batch)
        domain_counts[domain or ""] = domain_counts.get(domain or "", 0) + len(batch)
        for win in stages:
            vals = [abs(v) for v in win["max"] + win["min"] if v is not None]
            if vals:
                gmax = max(gmax or 0.0, max(vals))
        if on_progress:
            on_progress(len(batch), n_tok, gmax)
        if batch_seconds is not None and seconds > 0:
            budget = tokens / seconds * batch_seconds
        batch.clear()
        batch_tokens = 0

    def full(rest: int) -> bool:
        """Whether the call is complete, ``rest`` tokens of its domain (this phase) being left."""
        if batch_seconds is not None and first_call_tokens:
            ramp = first_call_tokens << min(calls_of.get(samples[batch[0]].domain, 0), 40)
            if batch_tokens >= ramp:
                return True
        if len(batch) < batch_samples:
            return False
        if batch_seconds is None:
            return True
        target = max(min_batch_tokens, budget or 0)
        return batch_tokens >= target and rest >= target / 2

    stopped = False
    for phase, idx in enumerate(phases):
        if int8_check and phase == 0:
            _rpc_ok(llm.collective_rpc("maxact_int8", kwargs={"token": caller_token(), "mode": 1, "clear_hist": True}))
        if int8_check and phase == 1:
            thresholds = _thresholds(collect(llm), llm.collective_rpc("maxact_int8_hist"))
            _rpc_ok(llm.collective_rpc("maxact_int8", kwargs={"token": caller_token(), "mode": 2, "thresholds": thresholds}))
        if int8_check and phase == 2:
            _rpc_ok(llm.collective_rpc("maxact_int8", kwargs={"token": caller_token(), "mode": 0}))
            int8_result = _int8_lifetime(collect(llm), thresholds)
        queues: dict[str | None, deque[int]] = {}  # per domain (in name order), corpus order inside
        left: dict[str | None, int] = {}  # tokens of each domain not yet in a call (this phase)
        for i in sorted(idx, key=lambda i: (samples[i].domain or "", i)):
            queues.setdefault(samples[i].domain, deque()).append(i)
            left[samples[i].domain] = left.get(samples[i].domain, 0) + len(ids[i])
        while queues and not stopped:
            for domain in list(queues):  # one call per domain and round
                if budget_s is not None and seconds >= budget_s and domain in calls_of:
                    stopped = True  # (every domain's first call runs: each domain has rows)
                    break
                queue = queues[domain]
                while queue and not (batch and full(left[domain])):
                    i = queue.popleft()
                    batch.append(i)
                    batch_tokens += len(ids[i])
                    left[domain] -= len(ids[i])
                flush()
                if not queue:
                    del queues[domain]
    if int8_check and int8_result is None:
        _rpc_ok(llm.collective_rpc("maxact_int8", kwargs={"token": caller_token(), "mode": 0}))
        int8_result = _int8_lifetime(collect(llm), thresholds)

    # The last call's read holds the whole lifetime already (nothing ran since), unless the
    # INT-8 check switched modes after it.
    payloads = last if last is not None and not int8_check else collect(llm)
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
    for r in rows:
        r.update(headroom(r["absmax"]))
    if int8_result is not None:
        for r in rows:
            if r["domain"] is None:
                r.update(int8_result.get(r["site"], {}))
    table = pa.Table.from_pylist(rows, schema=replay_schema(int8_result is not None))
    meta_int8 = {b"vllm_maxact.int8_calib_samples": str(n_cal).encode(),
                 b"vllm_maxact.int8_eval_samples": str(n_eval).encode()} if int8_check else {}
    replayed = sum(c.samples for c in calls)
    table = table.replace_schema_metadata(
        {**SCHEMA.metadata, b"vllm_maxact.samples": str(replayed).encode(),
         b"vllm_maxact.samples_planned": str(len(samples)).encode(),
         b"vllm_maxact.truncated": str(truncated).encode(), b"vllm_maxact.tokens": str(tokens).encode(),
         **meta_int8}
    )
    result = ReplayResult(table, model, replayed, tokens, truncated, seconds, out, domain_counts,
                          planned=len(samples), calls=calls, lengths=lengths)
    if out is not None:
        write_table(table, out)
    return result


def computed_tokens() -> int | None:
    """Prompt tokens the engine built in this process has computed since ``run_replay`` started,
    as its workers last published them (their recorders' lifetime count, at most one engine
    step behind), or None before they publish: progress within a call, even within one long
    sample, at each step."""
    from vllm_maxact.export.runtime import instance_dir, read_payloads

    counts = [p["lifetime"]["tokens"] for p in read_payloads(instance_dir()) if p.get("lifetime")]
    return max(counts) if counts else None


def _finished_requests_hook(lengths: Sequence[int], on_sample: Callable[[int], None]) -> Callable[..., Any]:
    """vLLM's ``use_tqdm`` argument (a progress-bar factory) turned into one ``on_sample(tokens)``
    per finished request, ``lengths`` being the call's prompt lengths in queue order.

    vLLM makes one bar per call (``total=`` the request count) and ``update()``s it per finished
    request; it may also wrap an iterable (rendering prompts), which passes through untouched.
    Anything else vLLM calls on its bar is accepted and ignored."""
    queued = iter(lengths)

    class _Bar:
        def __init__(self, **kwargs: Any) -> None:
            self.n = 0
            self.total = kwargs.get("total")
            self.postfix = None
            self._t0 = time.perf_counter()

        @property
        def format_dict(self) -> dict[str, Any]:
            return {"elapsed": max(time.perf_counter() - self._t0, 1e-9), "n": self.n, "total": self.total}

        def update(self, n: int = 1) -> None:
            self.n += n
            for _ in range(n):
                on_sample(next(queued, 0))

        def __getattr__(self, name: str) -> Any:  # refresh, close, set_postfix, ...
            return lambda *a, **k: None

    def factory(*args: Any, **kwargs: Any) -> Any:
        iterable = args[0] if args else kwargs.get("iterable")
        return iterable if iterable is not None else _Bar(**kwargs)

    return factory


INT8_FIGURES = ("mae", "rmse", "rel_mae", "rel_rmse", "sqnr_db", "clip_rate")


def replay_schema(with_int8: bool) -> pa.Schema:
    """The snapshot schema plus format headroom and, with the INT-8 check, its figures.

    ``int8_*`` columns use the calibration max |x| as threshold, ``int8_p999_*`` the calibration
    99.9th percentile of |x|; ``int8_threshold`` / ``int8_p999_threshold`` are the thresholds
    (scale = threshold / 127)."""
    fields = list(SCHEMA) + [pa.field(n, pa.float64()) for n in ("headroom_fp16", "headroom_bf16", "headroom_fp8")]
    if with_int8:
        for prefix in ("int8_", "int8_p999_"):
            fields += [pa.field(prefix + "threshold", pa.float64())]
            fields += [pa.field(prefix + f, pa.float64()) for f in INT8_FIGURES]
    return pa.schema(fields, metadata=SCHEMA.metadata)


def _rpc_ok(results: list) -> None:
    if not all(results):
        raise ReplayError("the INT-8 check is not traced in this engine (start it with VLLM_MAXACT_INT8_CHECK=1)")


def _merge_rank_arrays(per_rank: list[tuple[list[str], np.ndarray]]) -> dict[str, np.ndarray]:
    """Sum over TP ranks for the sharded gate, rank 0's copy for replicated sites; stages concat."""
    out: dict[str, np.ndarray] = {}
    for sites, arr in per_rank:
        for i, name in enumerate(sites):
            if name not in out:
                out[name] = arr[i].copy()
            elif Site.parse(name).kind == Kind.GATE:
                out[name] = out[name] + arr[i]
    return out


def _thresholds(payloads: list[dict[str, Any]], hists: list[dict[str, Any] | None]) -> dict[str, list[float]]:
    """Per site: (calibration max |x|, calibration p99.9 of |x|), merged over ranks."""
    from vllm_maxact.int8 import percentile_from_hist

    merged_hist = _merge_rank_arrays([(h["sites"], np.asarray(h["hist"])) for h in hists if h])
    absmax: dict[str, float] = {}
    for p in payloads:
        for i, name in enumerate(p["sites"]):
            mx, mn = p["lifetime"]["max"][i], p["lifetime"]["min"][i]
            if mx is not None and mn is not None:
                absmax[name] = max(absmax.get(name, 0.0), abs(mx), abs(mn))
    return {n: [absmax.get(n, 0.0), percentile_from_hist(h, 99.9) or 0.0] for n, h in merged_hist.items()}


def _int8_lifetime(payloads: list[dict[str, Any]], thresholds) -> dict[str, dict[str, float | None]]:
    from vllm_maxact.int8 import figures

    acc = _merge_rank_arrays([(p["sites"], np.asarray(p["int8"]["lifetime"]["acc"])) for p in payloads])
    cnt = _merge_rank_arrays([(p["sites"], np.asarray(p["int8"]["lifetime"]["cnt"])) for p in payloads])
    thr = thresholds
    out: dict[str, dict[str, float | None]] = {}
    for name in acc:
        f = figures(acc[name], cnt[name])  # arrays over the two thresholds
        row: dict[str, float | None] = {}
        for t, prefix in enumerate(("int8_", "int8_p999_")):
            row[prefix + "threshold"] = float(thr[name][t]) if thr[name][t] else None
            for k in INT8_FIGURES:
                v = float(f[k][t])
                row[prefix + k] = v if np.isfinite(v) else None
        out[name] = row
    return out


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
