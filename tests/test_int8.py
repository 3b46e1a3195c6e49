"""The INT-8 reconstruction check against a float64 NumPy computation (fast, no engine)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vllm_maxact import ops_int8 as ops
from vllm_maxact.int8 import figures, percentile_from_hist
from vllm_maxact.recorder import Recorder
from vllm_maxact.sites import Kind, Site

SITES = [Site(Kind.RESIDUAL, 0), Site(Kind.MLP_OUT, 0)]


def numpy_figures(x: np.ndarray, thr: float) -> dict[str, float]:
    x = x.astype(np.float64).ravel()
    scale = thr / 127.0
    deq = np.clip(np.round(x / scale), -127, 127) * scale
    err = x - deq
    return {
        "mae": np.abs(err).mean(), "rmse": np.sqrt((err**2).mean()),
        "rel_mae": np.abs(err).sum() / np.abs(x).sum(), "rel_rmse": np.sqrt((err**2).sum() / (x**2).sum()),
        "sqnr_db": 10 * np.log10((x**2).sum() / (err**2).sum()), "clip_rate": (np.abs(x) > thr).mean(),
    }


def batches(seed: int) -> list[tuple[torch.Tensor, int]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in (9, 33, 17):
        x = torch.randn(n, 64, generator=g) * 3
        x[:, 5] *= 40  # an outlier channel, as in real residual streams
        out.append((x.to(torch.bfloat16), n - 2))  # the last two rows are padding
    return out


def _strategy(name: str):
    """``cpu_op``: the CPU op; ``traced``: the plain tensor ops the GPU strategies trace into the
    compiled graph for the opt-in INT-8 check (run here on CPU tensors)."""
    from vllm_maxact.hotpath import CpuOp, HotPath

    if name == "cpu_op":
        return CpuOp()
    return type("Traced", (CpuOp,), {"record_int8": HotPath.record_int8})()


@pytest.mark.parametrize("hot_path", ["traced", "cpu_op"])
@pytest.mark.parametrize("compiled", [False, True])
def test_device_figures_equal_float64_numpy(compiled, hot_path):
    rec = Recorder(SITES, device=torch.device("cpu"), int8=True, hot_path=_strategy(hot_path))

    def fwd(x):
        rec.record(0, x)
        rec.record(1, x * 0.5)

    f = torch.compile(fwd, backend="inductor", dynamic=True) if compiled else fwd
    calib, evals = batches(0), batches(1)
    rec.set_int8(1, clear_hist=True)
    for x, n in calib:
        rec.begin_step(n)
        f(x)
        rec.end_step()
    cal = np.concatenate([x[:n].double().numpy() for x, n in calib])
    hist = rec.qhist.numpy()
    assert hist[0].sum() == cal.size  # every valid element, padding excluded
    p999 = percentile_from_hist(hist[0], 99.9)
    # The estimate lies in the histogram bin (2**(1/32) wide) of the order statistics that
    # NumPy's percentile interpolates between.
    srt = np.sort(np.abs(cal).ravel())
    r = 0.999 * (srt.size - 1)
    lo_v, hi_v = srt[int(np.floor(r))], srt[int(np.ceil(r))]
    assert lo_v / 2 ** (1 / 32) <= p999 <= hi_v * 2 ** (1 / 32), (p999, lo_v, hi_v)
    thr = np.array([[np.abs(cal).max(), p999], [np.abs(cal).max() * 0.5, percentile_from_hist(hist[1], 99.9)]])
    rec.set_int8(2, thr)
    for x, n in evals:
        rec.begin_step(n)
        f(x)
        rec.end_step()
    rec.collect()
    acc, cnt = rec.int8_lifetime
    ev = np.concatenate([x[:n].double().numpy() for x, n in evals])
    for slot, mult in ((0, 1.0), (1, 0.5)):
        got = figures(acc[slot], cnt[slot])
        for t in range(2):
            want = numpy_figures(ev * mult, float(rec.qthr[slot, t]))
            for k, v in want.items():
                assert got[k][t] == pytest.approx(v, rel=1e-4, abs=1e-9), (slot, t, k)
    assert cnt[0, 0, 1] == ev.size


def test_percentile_of_empty_and_zero_histograms():
    h = np.zeros(ops.HIST_BINS, np.int64)
    assert percentile_from_hist(h) is None
    h[0] = 10
    assert percentile_from_hist(h) == 0.0
