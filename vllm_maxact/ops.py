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
