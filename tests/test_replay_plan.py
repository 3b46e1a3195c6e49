"""How `run_replay` plans its engine calls, without an engine: domains in turn, small first calls
per domain growing geometrically, the time budget, per-sample progress during a call, and the
per-domain rows; and the default sample of `vllm-maxact replay` (every domain, deterministic),
the progress bar's ETA and the full-corpus estimate.

The fake engine records, at every site, the largest token id of the prompts it ran since the
last read, the way the plugin's window does; token ids encode the sample's domain, so a row
credited to the wrong domain or a lost call shows in the maxima."""

from __future__ import annotations

import io
import time
from types import SimpleNamespace

import pytest

from vllm_maxact import corpus as C
from vllm_maxact.corpus import Sample
from vllm_maxact.progress import ReplayProgress, estimate_seconds, sample_work
from vllm_maxact.replay import run_replay

SITES = ["embedding", "layers.0.residual", "final_norm"]
DOMAINS = ["code", "math", "web"]


class FakeLLM:
    """Just enough of `vllm.LLM` for `run_replay`: config, generate (with vLLM's per-request
    progress hook: a bar made with ``total=`` and updated once per finished request), and the
    plugin's collect RPC (lifetime and the window since the last read)."""

    def __init__(self, step_tokens: int = 64, seconds_per_token: float = 0.0):
        cfg = SimpleNamespace(cache_config=SimpleNamespace(enable_prefix_caching=False),
                              model_config=SimpleNamespace(max_model_len=10_000),
                              scheduler_config=SimpleNamespace(max_num_batched_tokens=step_tokens))
        self.llm_engine = SimpleNamespace(vllm_config=cfg)
        self.seconds_per_token = seconds_per_token
        self.generated: list[list[int]] = []  # prompt lengths per call
        self.lifetime: float | None = None
        self.window: float | None = None
        self.tokens = self.window_tokens = 0

    def generate(self, prompts, params, use_tqdm=False):
        ids = [p["prompt_token_ids"] for p in prompts]
        self.generated.append([len(t) for t in ids])
        bar = use_tqdm(total=len(ids), desc="Processed prompts") if callable(use_tqdm) else None
        for t in ids:
            time.sleep(self.seconds_per_token * len(t))
            top = float(max(t))
            self.lifetime = max(self.lifetime or top, top)
            self.window = max(self.window or top, top)
            self.tokens += len(t)
            self.window_tokens += len(t)
            if bar is not None:
                bar.postfix = f"{len(t) / bar.format_dict['elapsed']:.1f}"  # what vLLM does with it
                bar.update(1)
        if bar is not None:
            bar.close()

    def collective_rpc(self, method, kwargs=None):
        assert method == "maxact_collect"

        def stats(v, tokens):
            return {"max": [v] * len(SITES), "min": [None if v is None else -1.0] * len(SITES),
                    "nan": [0] * len(SITES), "inf": [0] * len(SITES), "tokens": tokens, "start": 0.0, "end": 1.0}

        if kwargs.get("reset"):
            self.lifetime, self.tokens = None, 0
        payload = {"sites": SITES, "model": "fake", "lifetime": stats(self.lifetime, self.tokens),
                   "window": stats(self.window, self.window_tokens)}
        self.window, self.window_tokens = None, 0
        return [payload]


def corpus(per_domain: int = 5, length: int = 20) -> tuple[list[Sample], list[list[int]]]:
    """Samples of three domains, interleaved in corpus order; a sample's token ids hold its
    domain's base (1000, 2000, 3000) plus its own index, so the domain's maximum is known."""
    samples, ids = [], []
    for j in range(per_domain):
        for d, name in enumerate(DOMAINS):
            samples.append(Sample(id=f"{name}-{j}", text="x", domain=name))
            ids.append([1000 * (d + 1) + j] + [1] * (length - 1))
    return samples, ids


def test_domains_take_turns_and_first_calls_grow_geometrically():
    samples, ids = corpus(per_domain=7, length=20)
    llm = FakeLLM()
    res = run_replay(llm, samples, model="fake", token_ids=ids, batch_samples=1, batch_seconds=1e9,
                     min_batch_tokens=0, first_call_tokens=20)
    # Each domain: 1 sample (20 tokens), then at most 2, 4, ... : 1, 2, 4 of its 7.
    assert [(c.domain, c.samples) for c in res.calls] == [
        (d, n) for n in (1, 2, 4) for d in DOMAINS]
    assert res.complete and res.samples == res.planned == 21 and res.tokens == 21 * 20
    assert llm.generated == [[20] * c.samples for c in res.calls]


def test_without_a_ramp_a_domain_goes_in_one_call_as_before():
    samples, ids = corpus(per_domain=7, length=20)
    res = run_replay(FakeLLM(), samples, model="fake", token_ids=ids, batch_samples=1, batch_seconds=1e9,
                     min_batch_tokens=0)
    # The first call is sized before any throughput is known (one sample), then the rest.
    assert [(c.domain, c.samples) for c in res.calls] == [("code", 1), ("math", 7), ("web", 7), ("code", 6)]


def test_rows_per_domain_and_whole_corpus():
    samples, ids = corpus(per_domain=4)
    res = run_replay(FakeLLM(), samples, model="fake", token_ids=ids, batch_samples=1, batch_seconds=1e9,
                     min_batch_tokens=0, first_call_tokens=20)
    rows = [r for r in res.table.to_pylist() if r["site"] == "layers.0.residual"]
    by_domain = {r["domain"]: r for r in rows}
    assert set(by_domain) == {None, *DOMAINS}
    assert by_domain[None]["absmax"] == 3003.0  # web's last sample
    for d, name in enumerate(DOMAINS):
        assert by_domain[name]["absmax"] == 1000 * (d + 1) + 3, name
        assert by_domain[name]["tokens"] == 4 * 20
    assert by_domain[None]["tokens"] == res.tokens == 12 * 20
    meta = res.table.schema.metadata
    assert meta[b"vllm_maxact.samples"] == meta[b"vllm_maxact.samples_planned"] == b"12"


def test_time_budget_stops_between_calls_after_every_domain_ran():
    """The budget is checked before each call; a domain's first call runs whatever it says."""
    samples, ids = corpus(per_domain=6, length=20)
    llm = FakeLLM(seconds_per_token=0.002)  # 40 ms a sample
    res = run_replay(llm, samples, model="fake", token_ids=ids, batch_samples=1, batch_seconds=1e9,
                     min_batch_tokens=0, first_call_tokens=20, budget_s=0.1)
    # The first round (one sample per domain, 120 ms) passes the budget: nothing more starts.
    assert [(c.domain, c.samples) for c in res.calls] == [(d, 1) for d in DOMAINS]
    assert not res.complete and res.samples == 3 and res.planned == 18
    assert {r["domain"] for r in res.table.to_pylist()} == {None, *DOMAINS}
    assert res.table.schema.metadata[b"vllm_maxact.samples"] == b"3"
    assert res.lengths == [20, 20, 20]
    # However short the budget, every domain's first call runs.
    res = run_replay(FakeLLM(seconds_per_token=0.002), samples, model="fake", token_ids=ids, batch_samples=1,
                     batch_seconds=1e9, min_batch_tokens=0, first_call_tokens=20, budget_s=1e-6)
    assert [(c.domain, c.samples) for c in res.calls] == [(d, 1) for d in DOMAINS]


def test_progress_moves_per_sample_within_a_call():
    samples, ids = corpus(per_domain=3, length=10)
    ids = [t + [1] * i for i, t in enumerate(ids)]  # every sample another length
    ticks: list[int] = []
    starts: list[list[int]] = []
    calls: list[tuple] = []
    res = run_replay(FakeLLM(), samples, model="fake", token_ids=ids, batch_samples=100, batch_seconds=None,
                     on_start=starts.append, on_sample=ticks.append, on_progress=lambda *a: calls.append(a))
    assert len(calls) == 3 and [c[0] for c in calls] == [3, 3, 3]  # one call per domain
    assert starts == [[len(t) for t in ids]]
    # One tick per sample, in the call's queue order, each with that sample's tokens.
    order = sorted(range(len(samples)), key=lambda i: (samples[i].domain, i))
    assert ticks == [len(ids[i]) for i in order]
    assert sum(ticks) == res.tokens and calls[-1][2] == 3002.0


def test_stratified_default_sample_covers_every_domain_deterministically():
    data = C.load_corpus("builtin")
    a = C.stratified(data, 4, seed=0)
    assert a == C.stratified(data, 4, seed=0) and a != C.stratified(data, 4, seed=1)
    counts = C.domain_counts(a)
    assert set(counts) == {s.domain for s in data} and set(counts.values()) == {4}
    pos = {s.id: i for i, s in enumerate(data)}
    assert [pos[s.id] for s in a] == sorted(pos[s.id] for s in a)  # corpus order
    small = [Sample("a", "x", "d1"), Sample("b", "y", "d2"), Sample("c", "z", "d2")]
    assert C.stratified(small, 5) == small
    with pytest.raises(C.CorpusError):
        C.stratified(small, 0)


def test_eta_counts_work_not_tokens(monkeypatch):
    """Long prompts cost more per token: after short samples, the ETA of the long rest is
    longer than tokens left / tokens per second."""
    now = [100.0]
    monkeypatch.setattr("vllm_maxact.progress.time.perf_counter", lambda: now[0])
    p = ReplayProgress(disable=True)
    lengths = [500] * 4 + [4000] * 2
    p.start(lengths)
    for n in lengths[:4]:
        now[0] += n * sample_work(n) / n / 1000  # 1000 work units a second
        p.sample(n)
    by_tokens = (sum(lengths) - p.tokens) / p.rate()
    assert p.eta() == pytest.approx(2 * sample_work(4000) / 1000)
    assert p.eta() > 1.5 * by_tokens
    assert estimate_seconds([4000] * 2, measured_lengths=[500] * 4, measured_seconds=now[0] - 100) == pytest.approx(
        p.eta())


def test_bar_moves_within_a_sample_from_the_engines_computed_tokens():
    """A long sample: no sample finishes for a while, but the engine's published token count
    moves the bar (and the ETA counts that work); a finished sample never moves it back."""
    published = [0]
    p = ReplayProgress(disable=False, file=io.StringIO(), computed=lambda: published[0], poll_s=0.01)
    p.start([1000, 3000])
    try:
        published[0] = 2000  # the first sample and a third of the second
        deadline = time.monotonic() + 5
        while p.computed < 2000 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert p.computed == 2000 and p.bar.n == 2000 and p.samples == 0
        assert p.work_done() == pytest.approx(2000 * (sample_work(1000) + sample_work(3000)) / 4000)
        p.sample(1000)
        assert p.computed == 2000 and p.samples == 1
        assert p.work_done() == pytest.approx(sample_work(1000) + 1000 * sample_work(3000) / 3000)
        published[0] = 10**6  # never beyond the total
        time.sleep(0.1)
        assert p.computed == 4000
    finally:
        p.close()
