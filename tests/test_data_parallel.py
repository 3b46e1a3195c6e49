"""Replay over several engines (`vllm_maxact.data_parallel`): shards merge into exactly what one
engine that computed every token records, and a two-engine replay writes the single-engine
replay's table (maxima, minima, token counts, per-domain rows, INT-8 sums)."""

from __future__ import annotations

import math
import os

import pytest

from vllm_maxact.data_parallel import EngineGroup, VllmDataParallel, shard
from vllm_maxact.stats import ShardMismatch
from vllm_maxact.stats import merge_shard_hists as merge_hists
from vllm_maxact.stats import merge_shard_payloads as merge_payloads


def _payload(tp=0, pp=0, mx=(1.0, None), mn=(-2.0, None), tokens=5, nan=(0, 1), acc=0.5, chan=None):
    stats = {"max": list(mx), "min": list(mn), "nan": list(nan), "inf": [0, 0], "tokens": tokens,
             "start": 10.0 + tokens, "end": 20.0 + tokens}
    if chan is not None:
        stats["channels"] = {"0": chan}
    int8 = {"thresholds": [[4.0, 3.0], [0.0, 0.0]],
            "lifetime": {"acc": [[[acc, acc]], [[0.0, 0.0]]], "cnt": [[[tokens, 1]], [[0, 0]]]}}
    return {"model": "m", "pid": 1, "tp_rank": tp, "pp_rank": pp, "sites": ["layers.0.residual", "layers.0.attn_out"],
            "lifetime": stats, "window": dict(stats), "int8": int8}


def test_shards_merge_by_max_min_and_sums():
    a = _payload(mx=(1.0, None), mn=(-2.0, None), tokens=5, nan=(0, 1), acc=0.5, chan=[1.0, 7.0])
    b = _payload(mx=(3.0, 2.0), mn=(-1.0, -4.0), tokens=7, nan=(2, 0), acc=0.25, chan=[2.0, 3.0])
    (m,) = merge_payloads([[a], [b]])
    for window in ("lifetime", "window"):
        s = m[window]
        assert s["max"] == [3.0, 2.0] and s["min"] == [-2.0, -4.0]  # a site one shard never saw: the other's
        assert s["tokens"] == 12 and s["nan"] == [2, 1] and s["inf"] == [0, 0]
        assert (s["start"], s["end"]) == (15.0, 27.0)
    assert m["lifetime"]["channels"] == {"0": [2.0, 7.0]}
    assert m["int8"]["lifetime"]["acc"][0][0] == [0.75, 0.75] and m["int8"]["lifetime"]["cnt"][0][0] == [12, 2]
    assert m["int8"]["thresholds"] == a["int8"]["thresholds"] and m["engines"] == 2


def test_shards_merge_per_stage_and_rank():
    per_engine = [[_payload(tp=t, pp=p, tokens=3) for t in (0, 1) for p in (0, 1)] for _ in range(3)]
    merged = merge_payloads(per_engine)
    assert [(p["pp_rank"], p["tp_rank"]) for p in merged] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(p["lifetime"]["tokens"] == 9 for p in merged)
    hists = merge_hists([[{"sites": ["a"], "hist": [[1, 2]], "tp_rank": 0, "pp_rank": 0}]] * 2)
    assert hists[0]["hist"] == [[2, 4]]


def test_shards_that_cannot_merge_are_refused():
    other = _payload()
    other["sites"] = ["layers.0.residual", "layers.1.residual"]
    with pytest.raises(ShardMismatch, match="different sites"):
        merge_payloads([[_payload()], [other]])
    with pytest.raises(ShardMismatch, match="1 of 2 engines"):
        merge_payloads([[_payload(tp=0), _payload(tp=1)], [_payload(tp=0)]])


@pytest.mark.parametrize("lengths, n", [([5] * 10, 2), ([100, 1, 1, 1, 1], 2), ([3, 3], 4), ([7, 1, 8, 2, 9], 3)])
def test_shards_are_contiguous_and_cover_everything(lengths, n):
    parts = shard(lengths, n)
    assert len(parts) == n
    assert [i for p in parts for i in p] == list(range(len(lengths)))
    if len(lengths) >= n:
        assert all(len(p) for p in parts)
    if lengths == [5] * 10:
        assert [len(p) for p in parts] == [5, 5]


@pytest.mark.slow
def test_two_engines_replay_what_one_engine_replays(tiny_factory, monkeypatch):
    from conftest import build_llm, close_llm

    from vllm_maxact.corpus import load_corpus
    from vllm_maxact.replay import run_replay

    monkeypatch.setenv("VLLM_MAXACT_INT8_CHECK", "1")
    model = tiny_factory("llama")
    samples = load_corpus("builtin", samples=18, seed=3)
    assert len({s.domain for s in samples}) >= 4
    kw = dict(model="tiny", batch_samples=4, batch_seconds=None, int8_check=True, calib_samples=6, eval_samples=6)
    engine_kw = dict(enforce_eager=True, dtype="float32")

    one = build_llm(model, **engine_kw)
    try:
        ids = [one.get_tokenizer()(s.text).input_ids[:160] for s in samples]
        single = run_replay(one, samples, token_ids=ids, **kw)
    finally:
        close_llm(one)

    cpus = sorted(os.sched_getaffinity(0))
    engines = []
    try:
        for j in range(2):  # each engine's worker on a CPU of its own
            monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", str(cpus[j % len(cpus)]))
            engines.append(build_llm(model, **engine_kw))
        group = EngineGroup(engines)
        spread = run_replay(group, samples, token_ids=ids, **kw)
        group.close()
    finally:
        for e in engines:
            close_llm(e)
    _assert_same_table(single, spread)

    # vLLM's own data parallel: one front end, two engine cores, vLLM balancing the requests.
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "|".join(str(c) for c in cpus[:2]))
    dp = VllmDataParallel(model, 2, max_model_len=1024, max_num_batched_tokens=512, max_num_seqs=64,
                          enable_prefix_caching=False, **engine_kw)
    try:
        balanced = run_replay(dp, samples, token_ids=ids, **kw)
        replies = dp.engine.engine_core  # both engines computed a share (vLLM balanced the calls)
        shares = dp._run(replies.call_utility_all_async("collective_rpc", "maxact_collect", None, (), None))
        assert [len(r) for r in shares] == [1, 1]
        assert all(r[0]["lifetime"]["tokens"] > 0 for r in shares), [r[0]["lifetime"]["tokens"] for r in shares]
    finally:
        dp.close()
    _assert_same_table(single, balanced)


def _assert_same_table(single, spread) -> None:
    assert spread.tokens == single.tokens and spread.samples == single.samples
    a = {(r["domain"], r["site"]): r for r in single.table.to_pylist()}
    b = {(r["domain"], r["site"]): r for r in spread.table.to_pylist()}
    assert set(a) == set(b)
    assert len({d for d, _ in a}) >= 5  # whole-corpus rows and per-domain rows
    # Exact: extrema, counts, the thresholds (merged calibration maxima and histograms) and the
    # clip rates (integer counts).
    exact = ("max", "min", "absmax", "tokens", "nan_count", "inf_count", "int8_threshold", "int8_p999_threshold",
             "int8_clip_rate", "int8_p999_clip_rate")
    bad = [f"{k} {c}: one engine {a[k][c]!r}, two {b[k][c]!r}" for k in a for c in exact if a[k][c] != b[k][c]]
    assert not bad, "\n".join(bad[:20])
    # The INT-8 error sums: each step's sum is taken in the activations' dtype on the device, then
    # added to a float64 accumulator, so they depend on which tokens share a step, as in any other
    # batching of one engine (seen: 2.6e-8 relative); the merge itself adds the shards' sums.
    int8 = [c for c in single.table.column_names if c.startswith("int8_") and c not in exact]
    assert int8
    off = [f"{k} {c}: {a[k][c]!r} vs {b[k][c]!r}" for k in a for c in int8
           if not (a[k][c] is None and b[k][c] is None)
           and not (a[k][c] is not None and b[k][c] is not None and math.isclose(a[k][c], b[k][c], rel_tol=1e-6, abs_tol=1e-9))]
    assert not off, "\n".join(off[:20])
    assert sum(r["int8_sqnr_db"] is not None for r in single.table.to_pylist()) > 0
