"""Variant v2 of `vllm_maxact.ops` (a proposal, measured in benchmarks/RESULTS.md): needs the
companion `recorder.py` of this folder, whose buffers keep one running value per token ROW.

Per site, only per-row reductions over the last axis (the same iteration space as the RMSNorm
or SiLU-and-mul kernel that already reads ``x``, so Inductor can fuse them there), and their
results are folded into the row buffers with a pointwise update of ``T`` elements, which fuses
as the epilogue of that same kernel. No whole-tensor reduction runs in the forward at all: the
fold over rows happens when the host reads the buffers (`Recorder.collect`).

Buffers (owned by the companion `recorder.Recorder`):
  extrema  float32 [S, 2, R]  running (max, min) of finite values per site and token row
  counts   int64   [S, 2, R]  running (nan, inf) counts per site and token row
  n_valid  int64   [1]        real tokens in this forward (rows past it are padding/dummy)
"""

from __future__ import annotations

import torch

_NEG_INF = float("-inf")
_POS_INF = float("inf")


def record(extrema: torch.Tensor, counts: torch.Tensor, n_valid: torch.Tensor, slot: int, x: torch.Tensor) -> None:
    x2 = x.reshape(-1, x.shape[-1])
    t = x2.shape[0]
    finite = torch.isfinite(x2)
    valid = torch.arange(t, device=x2.device) < n_valid
    row_hi = torch.where(valid, torch.where(finite, x2, _NEG_INF).amax(dim=-1).float(), _NEG_INF)
    row_lo = torch.where(valid, torch.where(finite, x2, _POS_INF).amin(dim=-1).float(), _POS_INF)
    row_nan = torch.where(valid, torch.isnan(x2).sum(dim=-1), 0)
    row_inf = torch.where(valid, torch.isinf(x2).sum(dim=-1), 0)
    hi = extrema[slot, 0, :t]
    lo = extrema[slot, 1, :t]
    hi.copy_(torch.maximum(hi, row_hi))
    lo.copy_(torch.minimum(lo, row_lo))
    nan = counts[slot, 0, :t]
    inf = counts[slot, 1, :t]
    nan.add_(row_nan)
    inf.add_(row_inf)
