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
from vllm_maxact.export.arrow import SCHEMA, rows_from_stats, write_table
from vllm_maxact.int8 import headroom
from vllm_maxact.stats import concat_stages, group_stages, merge_rank_arrays, merge_ranks, split_stages, union

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
    from vllm_maxact.api import collect

    ids, truncated = _prepare(llm, samples, targets=targets, token_ids=token_ids, int8_check=int8_check,
                              budget_s=budget_s)
    if min_batch_tokens is None:
        steps = llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
        min_batch_tokens = MIN_BATCH_STEPS * steps
    phases = _phases(len(samples), int8_check, calib_samples, eval_samples)
    if on_start:
        on_start([len(t) for t in ids])
    collect(llm, reset=True)  # also checks that the plugin is recording
    calls = _Calls(llm, samples, ids, batch_samples=batch_samples, batch_seconds=batch_seconds,
                   min_batch_tokens=min_batch_tokens, first_call_tokens=first_call_tokens, budget_s=budget_s,
                   on_sample=on_sample, on_progress=on_progress)
    int8 = _Int8Check(llm) if int8_check else None
    for phase, idx in enumerate(phases):
        if int8:
            int8.enter(phase)
        calls.run(idx)
    int8_result = int8.finish() if int8 else None
    # The last call's read holds the whole lifetime already (nothing ran since), unless the
    # INT-8 check switched modes after it.
    payloads = calls.last if calls.last is not None and not int8_check else collect(llm)
    has_domains = any(s.domain for s in samples)
    table = _table(payloads, calls.per_domain if has_domains else {}, int8_result)
    meta_int8 = {b"vllm_maxact.int8_calib_samples": str(len(phases[0])).encode(),
                 b"vllm_maxact.int8_eval_samples": str(len(phases[1])).encode()} if int8_check else {}
    replayed = sum(c.samples for c in calls.calls)
    table = table.replace_schema_metadata(
        {**SCHEMA.metadata, b"vllm_maxact.samples": str(replayed).encode(),
         b"vllm_maxact.samples_planned": str(len(samples)).encode(),
         b"vllm_maxact.truncated": str(truncated).encode(), b"vllm_maxact.tokens": str(calls.tokens).encode(),
         **meta_int8}
    )
    result = ReplayResult(table, model, replayed, calls.tokens, truncated, calls.seconds, out, calls.domain_counts,
                          planned=len(samples), calls=calls.calls, lengths=calls.lengths)
    if out is not None:
        write_table(table, out)
    return result


def _prepare(llm: Any, samples: Sequence[Sample], *, targets, token_ids, int8_check: bool,
             budget_s: float | None) -> tuple[list[list[int]], int]:
    """Check the engine and the request, tokenize; returns (token ids after truncation, how many
    samples were longer than the engine's context)."""
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
    return truncate(token_ids, limit=limit, targets=targets)


def _phases(n: int, int8_check: bool, calib_samples: int, eval_samples: int) -> list[range]:
    """With the INT-8 check the corpus runs in three phases (the study's split): calibrate on the
    first N samples, evaluate on the next M, then the rest. Without it: one phase."""
    if not int8_check:
        return [range(0, n)]
    n_cal = min(calib_samples, n)
    n_eval = min(eval_samples, n - n_cal)
    if n_cal == 0 or n_eval == 0:
        raise ReplayError(f"--int8-check needs calibration and evaluation samples; the corpus has {n}")
    return [range(0, n_cal), range(n_cal, n_cal + n_eval), range(n_cal + n_eval, n)]


class _Calls:
    """The engine calls of a replay: which samples go into each (domains in turn, calls sized by
    the rules of `run_replay`), the calls themselves, and what each adds up (per-domain windows,
    tokens, seconds, the running global max)."""

    def __init__(self, llm: Any, samples: Sequence[Sample], ids: list[list[int]], *, batch_samples: int,
                 batch_seconds: float | None, min_batch_tokens: int, first_call_tokens: int | None,
                 budget_s: float | None, on_sample, on_progress) -> None:
        from vllm import SamplingParams

        self.llm, self.samples, self.ids = llm, samples, ids
        self.batch_samples, self.batch_seconds = batch_samples, batch_seconds
        self.min_batch_tokens, self.first_call_tokens, self.budget_s = min_batch_tokens, first_call_tokens, budget_s
        self.on_sample, self.on_progress = on_sample, on_progress
        # One output token, never detokenized: only the prompt's forward is of interest.
        self.params = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False)
        self.per_domain: dict[str, dict[str, Any]] = {}  # one window over every stage's sites
        self.domain_counts: dict[str, int] = {}
        self.calls: list[Call] = []
        self.calls_of: dict[str | None, int] = {}  # calls so far per domain
        self.lengths: list[int] = []
        self.tokens = 0
        self.seconds = 0.0
        self.gmax: float | None = None
        self.batch: list[int] = []
        self.batch_tokens = 0
        self.rate: float | None = None  # tokens per call, once a throughput has been measured
        self.last: list[dict[str, Any]] | None = None  # the latest call's payloads
        self.stopped = False

    def run(self, idx: Sequence[int]) -> None:
        """One phase: its samples grouped by domain (in name order, corpus order inside), one
        call per domain and round until every queue is empty or the time budget is spent."""
        queues: dict[str | None, deque[int]] = {}
        left: dict[str | None, int] = {}  # tokens of each domain not yet in a call (this phase)
        for i in sorted(idx, key=lambda i: (self.samples[i].domain or "", i)):
            queues.setdefault(self.samples[i].domain, deque()).append(i)
            left[self.samples[i].domain] = left.get(self.samples[i].domain, 0) + len(self.ids[i])
        while queues and not self.stopped:
            for domain in list(queues):
                if self.budget_s is not None and self.seconds >= self.budget_s and domain in self.calls_of:
                    self.stopped = True  # (every domain's first call runs: each domain has rows)
                    break
                queue = queues[domain]
                while queue and not (self.batch and self._full(left[domain])):
                    i = queue.popleft()
                    self.batch.append(i)
                    self.batch_tokens += len(self.ids[i])
                    left[domain] -= len(self.ids[i])
                self._call()
                if not queue:
                    del queues[domain]

    def _full(self, rest: int) -> bool:
        """Whether the call is complete, ``rest`` tokens of its domain (this phase) being left."""
        if self.batch_seconds is not None and self.first_call_tokens:
            ramp = self.first_call_tokens << min(self.calls_of.get(self.samples[self.batch[0]].domain, 0), 40)
            if self.batch_tokens >= ramp:
                return True
        if len(self.batch) < self.batch_samples:
            return False
        if self.batch_seconds is None:
            return True
        target = max(self.min_batch_tokens, self.rate or 0)
        return self.batch_tokens >= target and rest >= target / 2

    def _call(self) -> None:
        """Run the batch as one engine call, read the window, add it to the call's domain."""
        from vllm_maxact.api import collect

        batch, ids = self.batch, self.ids
        if not batch:
            return
        domain = self.samples[batch[0]].domain
        hook = _finished_requests_hook([len(ids[i]) for i in batch], self.on_sample) if self.on_sample else False
        t0 = time.perf_counter()
        self.llm.generate([{"prompt_token_ids": ids[i]} for i in batch], self.params, use_tqdm=hook)
        payloads = self.last = collect(self.llm)
        dt = time.perf_counter() - t0
        self.seconds += dt
        _, win = concat_stages(payloads, "window")
        key = domain or ""
        self.per_domain[key] = union(self.per_domain[key], win) if key in self.per_domain else win
        n_tok = sum(len(ids[i]) for i in batch)
        self.tokens += n_tok
        self.calls.append(Call(domain, len(batch), n_tok, dt))
        self.calls_of[domain] = self.calls_of.get(domain, 0) + 1
        self.lengths.extend(len(ids[i]) for i in batch)
        self.domain_counts[key] = self.domain_counts.get(key, 0) + len(batch)
        vals = [abs(v) for v in win["max"] + win["min"] if v is not None]
        if vals:
            self.gmax = max(self.gmax or 0.0, max(vals))
        if self.on_progress:
            self.on_progress(len(batch), n_tok, self.gmax)
        if self.batch_seconds is not None and self.seconds > 0:
            self.rate = self.tokens / self.seconds * self.batch_seconds
        batch.clear()
        self.batch_tokens = 0


class _Int8Check:
    """The INT-8 check's phases on the workers: calibrate (histograms), evaluate against the
    calibration's thresholds, then record only."""

    def __init__(self, llm: Any) -> None:
        self.llm = llm
        self.thresholds: dict[str, list[float]] | None = None
        self.result: dict[str, Any] | None = None

    def _mode(self, mode: int, **kwargs: Any) -> None:
        _rpc_ok(self.llm.collective_rpc("maxact_int8", kwargs={"token": caller_token(), "mode": mode, **kwargs}))

    def enter(self, phase: int) -> None:
        from vllm_maxact.api import collect

        if phase == 0:
            self._mode(1, clear_hist=True)
        elif phase == 1:
            self.thresholds = _thresholds(collect(self.llm), self.llm.collective_rpc("maxact_int8_hist"))
            self._mode(2, thresholds=self.thresholds)
        elif phase == 2:
            self._end()

    def _end(self) -> None:
        from vllm_maxact.api import collect

        self._mode(0)
        self.result = _int8_lifetime(collect(self.llm), self.thresholds)

    def finish(self) -> dict[str, Any]:
        if self.result is None:
            self._end()
        return self.result


def _table(payloads: list[dict[str, Any]], per_domain: dict[str, dict[str, Any]],
           int8_result: dict[str, Any] | None) -> pa.Table:
    """The replay's rows: the whole corpus (the workers' lifetime, merged over ranks, per stage)
    and each domain (its union of call windows), with format headroom and the INT-8 figures."""
    rows: list[dict[str, Any]] = []
    meta = dict(payloads[0])
    meta["time"] = time.time()
    stages = group_stages(payloads)
    stage_sites = [st[0]["sites"] for st in stages]
    for stage, sites in zip(stages, stage_sites, strict=True):
        merged = merge_ranks([p["lifetime"] for p in stage], sites)
        rows += rows_from_stats(meta, sites, merged, window="replay", rank=None)
    for domain, win in sorted(per_domain.items()):
        if not domain:
            continue
        for sites, part in zip(stage_sites, split_stages(stage_sites, win), strict=True):
            rows += rows_from_stats(meta, sites, part, window="replay", rank=None, domain=domain)
    for r in rows:
        r.update(headroom(r["absmax"]))
    if int8_result is not None:
        for r in rows:
            if r["domain"] is None:
                r.update(int8_result.get(r["site"], {}))
    return pa.Table.from_pylist(rows, schema=replay_schema(int8_result is not None))


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


def _thresholds(payloads: list[dict[str, Any]], hists: list[dict[str, Any] | None]) -> dict[str, list[float]]:
    """Per site: (calibration max |x|, calibration p99.9 of |x|), merged over ranks."""
    from vllm_maxact.int8 import percentile_from_hist

    merged_hist = merge_rank_arrays([(h["sites"], np.asarray(h["hist"])) for h in hists if h])
    absmax: dict[str, float] = {}
    for p in payloads:
        for i, name in enumerate(p["sites"]):
            mx, mn = p["lifetime"]["max"][i], p["lifetime"]["min"][i]
            if mx is not None and mn is not None:
                absmax[name] = max(absmax.get(name, 0.0), abs(mx), abs(mn))
    return {n: [absmax.get(n, 0.0), percentile_from_hist(h, 99.9) or 0.0] for n, h in merged_hist.items()}


def _int8_lifetime(payloads: list[dict[str, Any]], thresholds) -> dict[str, dict[str, float | None]]:
    from vllm_maxact.int8 import figures

    acc = merge_rank_arrays([(p["sites"], np.asarray(p["int8"]["lifetime"]["acc"])) for p in payloads])
    cnt = merge_rank_arrays([(p["sites"], np.asarray(p["int8"]["lifetime"]["cnt"])) for p in payloads])
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
