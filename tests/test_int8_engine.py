"""INT-8 check inside compiled vLLM on the real SmolLM2-135M: per-layer residual SQNR (both
thresholds) within 1 dB of a float64 NumPy reference over transformers-captured activations,
on the same calibration/evaluation split."""

from __future__ import annotations

import pytest
import torch
from conftest import build_llm, close_llm
from reference import int8_reference

from vllm_maxact.corpus import Sample, load_corpus
from vllm_maxact.replay import run_replay

pytestmark = pytest.mark.slow
N_CAL, N_EVAL, LEN = 12, 24, 256


def test_residual_sqnr_matches_float64_reference(smollm2_dir, monkeypatch):
    samples = [Sample(s.id, s.text, s.domain) for s in load_corpus("builtin", samples=N_CAL + N_EVAL, seed=3)]
    monkeypatch.setenv("VLLM_MAXACT_INT8_CHECK", "1")  # traced into the graph when the worker starts
    monkeypatch.setenv("VLLM_MAXACT_KINDS", "residual,embedding,final_norm")
    # float32: bf16 GEMMs run ~10x slower on CPUs without bf16 matrix instructions (CI's).
    llm = build_llm(smollm2_dir, dtype="float32")
    try:
        tok = llm.get_tokenizer()
        res = run_replay(llm, samples, model="smollm2", targets=[LEN] * len(samples), int8_check=True,
                         calib_samples=N_CAL, eval_samples=N_EVAL)
    finally:
        close_llm(llm)
    ids = [tok(s.text).input_ids[:LEN] for s in samples]
    ref = int8_reference(smollm2_dir, ids[:N_CAL], ids[N_CAL:], dtype=torch.float32)
    rows = {r["site"]: r for r in res.table.to_pylist() if r["domain"] is None and r["kind"] == "residual"}
    assert len(rows) == 30 and set(rows) == set(ref)
    bad = []
    for name, r in ref.items():
        got = rows[name]
        for ours, theirs in (("int8_sqnr_db", "sqnr_db"), ("int8_p999_sqnr_db", "p999_sqnr_db")):
            if abs(got[ours] - r[theirs]) > 1.0:
                bad.append(f"{name} {ours}: {got[ours]:.2f} dB vs reference {r[theirs]:.2f} dB")
    assert not bad, "\n".join(bad)
    # Massive activations: the p99.9 threshold sits far below the max and clips some values; the
    # clipped outliers carry so much energy that clipping costs more SQNR than it saves.
    assert all(rows[n]["int8_p999_threshold"] < rows[n]["int8_threshold"] for n in rows)
    assert all(rows[n]["int8_p999_clip_rate"] > 0 for n in rows)
    assert all(rows[n]["int8_p999_sqnr_db"] < rows[n]["int8_sqnr_db"] for n in rows)
