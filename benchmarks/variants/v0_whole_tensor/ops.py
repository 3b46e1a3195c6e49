"""The only code that runs inside every forward pass.

`record` is traced by Dynamo into vLLM's compiled graph. It is written as plain tensor ops
that Inductor fuses into one reduction over ``x`` plus a tiny in-place update of persistent
buffers, so it is safe under CUDA-graph capture and replay: no host synchronisation, no
allocation visible to Python, no data-dependent control flow.

Buffers (owned by `recorder.Recorder`):
  extrema  float32 [S, 2]   running (max, min) of finite values per site
  counts   int64   [S, 2]   running (nan, inf) counts per site
  n_valid  int64   [1]      number of real tokens in the current forward; the rest of the
                            token axis is padding or a dummy/profile/capture run (0)
"""

from __future__ import annotations

import torch


def record(extrema: torch.Tensor, counts: torch.Tensor, n_valid: torch.Tensor, slot: int, x: torch.Tensor) -> None:
    x2 = x.reshape(-1, x.shape[-1])
    rows = torch.arange(x2.shape[0], device=x2.device)
    valid = (rows < n_valid).unsqueeze(1)  # [T, 1]: padding rows never count
    xf = x2.float()
    finite = torch.isfinite(xf)
    keep = valid & finite  # NaN/Inf are counted, never folded into a max
    hi = torch.where(keep, xf, float("-inf")).amax()
    lo = torch.where(keep, xf, float("inf")).amin()
    n_nan = (valid & torch.isnan(xf)).sum()
    n_inf = (valid & torch.isinf(xf)).sum()
    ext = extrema[slot]
    ext.copy_(torch.stack((torch.maximum(ext[0], hi), torch.minimum(ext[1], lo))))
    cnt = counts[slot]
    cnt.add_(torch.stack((n_nan, n_inf)))
