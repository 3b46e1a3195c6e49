"""The only code that runs inside every forward pass.

`record` is traced by Dynamo into vLLM's compiled graph. It is written as plain tensor ops, so
it is safe under CUDA-graph capture and replay: no host synchronisation, no allocation visible
to Python, no data-dependent control flow.

Its cost is kernel launches, not bytes (see benchmarks/RESULTS.md), so it is shaped for
Inductor's fusion:

1. Per-row reductions over the last axis (``amax(dim=-1)`` ...). They have the same iteration
   space (tokens x hidden) as the RMSNorm or SiLU-and-mul kernel that already reads ``x``, so
   Inductor can compute them inside that kernel: no extra pass over the activation, no extra
   launch. A whole-tensor ``amax()`` is a split reduction of a different shape that never
   fuses and costs two or three launches per site.
2. One tiny reduction over the per-row results (tokens long), with the padding mask applied
   there, and the buffer updates written as scalar element stores so that they fuse into that
   same kernel (a ``torch.stack`` of the two results would be a third, two-element kernel).

Buffers (owned by `recorder.Recorder`):
  extrema  float32 [S, 2]   running (max, min) of finite values per site
  counts   int64   [S, 2]   running (nan, inf) counts per site
  n_valid  int64   [1]      number of real tokens in the current forward; the rest of the
                            token axis is padding or a dummy/profile/capture run (0)
"""

from __future__ import annotations

import torch

_NEG_INF = float("-inf")
_POS_INF = float("inf")


def record(extrema: torch.Tensor, counts: torch.Tensor, n_valid: torch.Tensor, slot: int, x: torch.Tensor) -> None:
    x2 = x.reshape(-1, x.shape[-1])
    # Stage 1, per token row. NaN/Inf are counted, never folded into a max. Max and min are
    # exact in bf16, so no float32 copy of x is made (eager) or needed (compiled).
    finite = torch.isfinite(x2)
    row_hi = torch.where(finite, x2, _NEG_INF).amax(dim=-1)
    row_lo = torch.where(finite, x2, _POS_INF).amin(dim=-1)
    row_nan = torch.isnan(x2).sum(dim=-1)
    row_inf = torch.isinf(x2).sum(dim=-1)
    # Stage 2, over rows: padding rows (and every row of a dummy run, n_valid == 0) never count.
    valid = torch.arange(x2.shape[0], device=x2.device) < n_valid
    hi = torch.where(valid, row_hi, _NEG_INF).amax().float()
    lo = torch.where(valid, row_lo, _POS_INF).amin().float()
    n_nan = torch.where(valid, row_nan, 0).sum()
    n_inf = torch.where(valid, row_inf, 0).sum()
    extrema[slot, 0] = torch.maximum(extrema[slot, 0], hi)
    extrema[slot, 1] = torch.minimum(extrema[slot, 1], lo)
    counts[slot, 0] += n_nan
    counts[slot, 1] += n_inf


# -- INT-8 reconstruction check (only traced when enabled: replay --int8-check, or a
#    calibration file in serving) ------------------------------------------------------------

#: log2 histogram of |x| for percentile calibration: bin 0 holds zeros, then BINS_PER_OCTAVE bins
#: per octave from 2**HIST_MIN_EXP to 2**(HIST_MIN_EXP + HIST_OCTAVES); the ends saturate.
BINS_PER_OCTAVE = 32
HIST_MIN_EXP = -32
HIST_OCTAVES = 72
HIST_BINS = 1 + BINS_PER_OCTAVE * HIST_OCTAVES
QMAX = 127.0


def record_int8(
    qthr: torch.Tensor, qacc: torch.Tensor, qcnt: torch.Tensor, qhist: torch.Tensor, qmode: torch.Tensor,
    n_valid: torch.Tensor, slot: int, x: torch.Tensor,
) -> None:
    """Per-tensor symmetric INT-8 round trip of ``x`` at thresholds ``qthr[slot]`` (one per
    column), accumulated on the device: no activation leaves it.

    qmode 1 (calibrate): add |x| to the log2 histogram ``qhist[slot]``.
    qmode 2 (evaluate):  qacc[slot, t] += (sum x^2, sum |x|, sum err^2, sum |err|),
                         qcnt[slot, t] += (clipped, elements), where err = x - dequant(quant(x)).
    """
    x2 = x.reshape(-1, x.shape[-1]).float()
    rows = torch.arange(x2.shape[0], device=x2.device)
    keep = (rows < n_valid).unsqueeze(1) & torch.isfinite(x2)
    xs = torch.where(keep, x2, 0.0)
    a = xs.abs()
    # Calibration histogram.
    b = torch.floor((torch.log2(a) - HIST_MIN_EXP) * BINS_PER_OCTAVE).clamp(0, HIST_BINS - 2) + 1
    b = torch.where(a > 0, b, 0.0).long()
    w = (keep & (qmode == 1)).long()
    qhist[slot].index_add_(0, b.flatten(), w.flatten())
    # Reconstruction error at each threshold.
    thr = qthr[slot]  # [T]
    scale = torch.where(thr > 0, thr / QMAX, 1.0)
    xq = xs.unsqueeze(-1)  # [N, H, 1]
    deq = torch.clamp(torch.round(xq / scale), -QMAX, QMAX) * scale
    err = xq - deq
    on = ((qmode == 2) & (thr > 0)).unsqueeze(-1)  # [T, 1]
    sums = torch.stack(
        (
            (xs * xs).sum().expand(thr.shape[0]),
            a.sum().expand(thr.shape[0]),
            (err * err).sum((0, 1)),
            err.abs().sum((0, 1)),
        ),
        dim=-1,
    )  # [T, 4]
    counts = torch.stack(
        ((a.unsqueeze(-1) > thr).sum((0, 1)), keep.sum().expand(thr.shape[0])), dim=-1
    )  # [T, 2]
    qacc[slot].add_(torch.where(on, sums.double(), 0.0))
    qcnt[slot].add_(torch.where(on, counts, 0))
