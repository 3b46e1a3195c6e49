"""The per-forward op and the recorder's windows, eager and compiled (fast, no vLLM engine)."""

import math

import numpy as np
import pytest
import torch

from vllm_maxact import ops
from vllm_maxact.recorder import Recorder
from vllm_maxact.sites import Kind, Site

SITES = [Site(Kind.EMBEDDING), Site(Kind.RESIDUAL, 0), Site(Kind.FINAL_NORM)]


def make() -> Recorder:
    return Recorder(SITES, device=torch.device("cpu"))


def test_padding_rows_are_ignored():
    rec = make()
    x = torch.tensor([[1.0, -2.0], [3.0, 0.5], [1e6, -1e6]])  # last row is padding
    rec.begin_step(2)
    ops.record(rec.extrema, rec.counts, rec.n_valid, 1, x)
    rec.end_step()
    win = rec.collect()
    assert win.max[1] == 3.0 and win.min[1] == -2.0
    assert win.tokens == 2
    # Untouched sites stay empty, not zero: zero would be a valid maximum.
    assert win.max[0] == -math.inf and np.isnan(win.absmax[0])


def test_dummy_runs_record_nothing():
    rec = make()
    rec.begin_step(4)
    rec.end_step()  # a dummy/profile/capture forward runs with n_valid == 0
    ops.record(rec.extrema, rec.counts, rec.n_valid, 0, torch.full((8, 4), 7.0))
    assert rec.collect().max[0] == -math.inf


def test_nan_and_inf_are_counted_not_folded_into_extrema():
    rec = make()
    x = torch.tensor([[1.0, float("nan")], [float("inf"), -4.0], [float("-inf"), 2.0]], dtype=torch.bfloat16)
    rec.begin_step(3)
    ops.record(rec.extrema, rec.counts, rec.n_valid, 0, x)
    win = rec.collect()
    assert (win.max[0], win.min[0]) == (2.0, -4.0)
    assert (win.nan[0], win.inf[0]) == (1, 2)


def test_windows_and_lifetime():
    rec = make()
    for value, n in ((5.0, 3), (2.0, 4)):
        rec.begin_step(n)
        ops.record(rec.extrema, rec.counts, rec.n_valid, 1, torch.full((n, 2), value))
        rec.end_step()
        win = rec.collect()
        assert win.max[1] == value  # each window is only its own span
    assert rec.lifetime.max[1] == 5.0 and rec.lifetime.tokens == 7
    assert rec.recent().max[1] == 5.0
    rec.reset()
    assert rec.lifetime.tokens == 0 and rec.lifetime.max[1] == -math.inf


def test_compiled_matches_eager_and_numpy():
    """Inductor traces the op into a graph; its result must equal eager and a float64 truth."""
    torch.manual_seed(0)
    xs = [torch.randn(n, 64, dtype=torch.bfloat16) * s for n, s in ((5, 1.0), (17, 30.0), (9, 3.0))]
    valid = [5, 11, 9]

    def fwd(rec: Recorder, x: torch.Tensor) -> torch.Tensor:
        y = x * 2
        ops.record(rec.extrema, rec.counts, rec.n_valid, 0, y)
        ops.record(rec.extrema, rec.counts, rec.n_valid, 2, y + 1)
        return y

    eager, comp = make(), make()
    compiled = torch.compile(fwd, backend="inductor", fullgraph=True, dynamic=True)
    for x, n in zip(xs, valid, strict=True):
        for rec, f in ((eager, fwd), (comp, compiled)):
            rec.begin_step(n)
            f(rec, x)
            rec.end_step()
    a, b = eager.collect(), comp.collect()
    truth = np.concatenate([(x[:n].double() * 2).numpy() for x, n in zip(xs, valid, strict=True)])
    assert a.max[0] == pytest.approx(truth.max(), rel=1e-6)
    assert a.min[0] == pytest.approx(truth.min(), rel=1e-6)
    np.testing.assert_allclose(b.max, a.max, rtol=1e-6)
    np.testing.assert_allclose(b.min, a.min, rtol=1e-6)
    assert a.tokens == b.tokens == sum(valid)
