"""The only code that runs inside every forward pass.

`record` is traced by Dynamo into vLLM's compiled graph. It is written as plain tensor ops, so
it is safe under CUDA-graph capture and replay: no host synchronisation, no allocation visible
to Python, no data-dependent control flow.

Its cost is kernel launches and passes over activations, not arithmetic (benchmarks/RESULTS.md),
so it is shaped for Inductor's fusion, in two stages:

1. `row_stats`: per-row reductions over the last axis. They have the iteration space
   (tokens x hidden) of the RMSNorm or SiLU-and-mul kernel that already reads ``x``, so Inductor
   can compute them inside that kernel: no extra pass over the activation. (A whole-tensor
   ``amax()`` is a split reduction of another shape: kernels and a pass of its own.)
2. `fold`: one small reduction folds the rows of one or more sites into full ``[S, 2]``
   results (zero contribution outside the sites' slots; the slot masks are compile-time
   constants), and the running buffers are updated as WHOLE tensors (``extrema.copy_``,
   ``counts.add_``), a pointwise epilogue of that reduction: one kernel. The max/min and the
   NaN/Inf counts read the same packed rows, so Inductor computes both reductions in that one
   kernel. Writing single elements (``extrema[slot, 0] = ...``) instead is functionalized into
   a chain of scatters that Inductor materialises as a fresh copy of the buffer per write.

Buffers (owned by `recorder.Recorder`):
  extrema  float32 [S, 2]   running (max, min) of finite values per site
  counts   int64   [S, 2]   running (nan, inf) counts per site
  n_valid  int64   [1]      number of real tokens in the current forward; the rest of the
                            token axis is padding or a dummy/profile/capture run (0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

_NEG_INF = float("-inf")
_POS_INF = float("inf")
#: rows of `row_stats`: max, -min, nan count, inf count (per token row)
STATS = 4


def row_stats(x: torch.Tensor) -> torch.Tensor:
    """float64 [4, T]: per token row the max and -min of the finite values, and the NaN and
    Inf counts. NaN/Inf are counted, never folded into a max. Max and min are exact in the
    input dtype, so no float32 copy of ``x`` is made (eager) or needed (compiled); float64
    keeps the counts exact when `fold` sums them."""
    x2 = x.reshape(-1, x.shape[-1])
    finite = torch.isfinite(x2)
    return torch.stack(
        (
            torch.where(finite, x2, _NEG_INF).amax(dim=-1).double(),
            -torch.where(finite, x2, _POS_INF).amin(dim=-1).double(),
            torch.isnan(x2).sum(dim=-1).double(),
            torch.isinf(x2).sum(dim=-1).double(),
        )
    )


def fold(
    extrema: torch.Tensor,
    counts: torch.Tensor,
    n_valid: torch.Tensor,
    slots: Sequence[int],
    stats: Sequence[torch.Tensor],
) -> None:
    """Fold `row_stats` of the sites at ``slots`` into the running buffers, in one reduction.

    Rows at or past ``n_valid`` (padding, and every row of a dummy run where it is 0) never
    count. The min column is kept negated through the max so that one reduction serves both.
    """
    packed = stats[0] if len(stats) == 1 else torch.cat(tuple(stats))  # [4K, T]
    dev = packed.device
    # Which packed row feeds which (site, column): index arithmetic on constants, computed
    # inside the reduction kernel (no mask tensors in memory). Row r = 4k + j is statistic j
    # of site slots[k]; column c takes j == c (max, -min) or j == c + 2 (nan, inf).
    r = torch.arange(packed.shape[0], device=dev)
    j = r % STATS
    slot_of_r = torch.zeros_like(r)
    for k, slot in enumerate(slots):
        slot_of_r = torch.where(r // STATS == k, slot, slot_of_r)
    site = torch.arange(extrema.shape[0], device=dev)[:, None, None] == slot_of_r  # [S, 1, 4K]
    col = torch.arange(2, device=dev)[None, :, None]  # [1, 2, 1]
    valid = torch.arange(packed.shape[1], device=dev) < n_valid  # [T]
    ext_sel = (site & (j == col))[..., None] & valid  # [S, 2, 4K, T]
    cnt_sel = (site & (j == col + 2))[..., None] & valid
    ext = torch.where(ext_sel, packed, _NEG_INF).amax(dim=(-2, -1))  # [S, 2]
    cnt = torch.where(cnt_sel, packed, 0.0).sum(dim=(-2, -1))  # [S, 2]
    sign = torch.tensor([1.0, -1.0], dtype=extrema.dtype, device=dev)  # (max, -min) <-> (max, min)
    extrema.copy_(torch.maximum(extrema * sign, ext.to(extrema.dtype)) * sign)
    counts.add_(cnt.to(counts.dtype))


def record(
    extrema: torch.Tensor, counts: torch.Tensor, n_valid: torch.Tensor, slot: int, x: torch.Tensor
) -> None:
    """Fold one site's activation ``x`` (any shape, last axis = features) into its slot."""
    fold(extrema, counts, n_valid, (slot,), (row_stats(x),))


# -- CPU: one opaque op per call -------------------------------------------------------------
# On CPU vLLM compiles the whole model as one graph (no per-layer pieces to reuse), so every
# traced op costs compile time in proportion to the model's depth, and Inductor's fusion buys
# little on a CPU. There the recorder calls one custom op per decoder layer instead: opaque to
# Inductor (one extern call in the graph), reading ``n_valid`` on the host for free, and
# taking one pass per activation (`torch.aminmax`) unless it holds NaN or Inf.


#: The CPU ops are registered with a CPU kernel only, as vLLM registers its own ops
#: (`vllm.utils.torch_utils.direct_register_custom_op`): `torch.library.custom_op` adds
#: Python-level autograd and in-place wrappers to every call, which on a 2-core CPU cost more
#: than the op (about 70 of 110 us per decoder layer at decode sizes). vLLM's helper itself is
#: not called: importing it imports vLLM (about 2.7 s), and `vllm-maxact scales` imports this
#: module (through ops_int8) without ever starting an engine.
_LIB = torch.library.Library("vllm_maxact", "FRAGMENT")


def register_cpu_op(name: str, mutates_args: tuple[str, ...]):
    """Decorator: register ``fn`` as ``torch.ops.vllm_maxact.<name>`` (CPU kernel, a fake kernel
    for tracing that returns nothing) and return that op."""

    def register(fn):
        _LIB.define(name + torch.library.infer_schema(fn, mutates_args=mutates_args))
        _LIB.impl(name, fn, "CPU")
        torch.library.register_fake(f"vllm_maxact::{name}", lambda *args, **kwargs: None, lib=_LIB)
        return getattr(torch.ops.vllm_maxact, name).default

    return register


@register_cpu_op("record_cpu", mutates_args=("extrema", "counts"))
def record_cpu(extrema: torch.Tensor, counts: torch.Tensor, n_valid: torch.Tensor, slots: list[int],
               xs: list[torch.Tensor]) -> None:
    """`record` for CPU tensors, for several sites of one buffer at once. The buffers are read
    and written through NumPy views: a Python float against one element, not a tensor op."""
    n = int(n_valid[0])
    if n <= 0:
        return
    ext, cnt = extrema.numpy(), counts.numpy()
    for slot, x in zip(slots, xs, strict=True):
        x2 = x if x.dim() == 2 and x.shape[0] == n else x.reshape(-1, x.shape[-1])[:n]
        if x2.numel() == 0:
            continue
        lo, hi = torch.aminmax(x2)
        hi_f, lo_f = float(hi), float(lo)
        if not (math.isfinite(hi_f) and math.isfinite(lo_f)):
            finite = torch.isfinite(x2)
            nan = int(torch.isnan(x2).sum())
            cnt[slot, 0] += nan
            cnt[slot, 1] += int(x2.numel() - int(finite.sum())) - nan
            if not bool(finite.any()):
                continue
            hi_f = float(torch.where(finite, x2, _NEG_INF).amax())
            lo_f = float(torch.where(finite, x2, _POS_INF).amin())
        if hi_f > ext[slot, 0]:
            ext[slot, 0] = hi_f
        if lo_f < ext[slot, 1]:
            ext[slot, 1] = lo_f


# -- per-channel max |x| (the opt-in attn_in / mlp_in sites) -----------------------------------


def channel_absmax(x: torch.Tensor, n_valid: torch.Tensor) -> torch.Tensor:
    """float32 [H]: max |x| per channel over the valid rows; NaN/Inf are left out (counted by
    `record`), so they never reach a smoothing factor."""
    x2 = x.reshape(-1, x.shape[-1])
    keep = (torch.arange(x2.shape[0], device=x2.device) < n_valid)[:, None] & torch.isfinite(x2)
    return torch.where(keep, x2.abs(), 0).amax(dim=0).float()


def record_channels(chan: torch.Tensor, n_valid: torch.Tensor, row: int, x: torch.Tensor) -> None:
    """Fold ``x``'s per-channel max |x| into row ``row`` of ``chan`` [C, H] (whole-buffer update,
    as in `fold`)."""
    m = channel_absmax(x, n_valid)
    sel = (torch.arange(chan.shape[0], device=chan.device) == row)[:, None]
    chan.copy_(torch.where(sel, torch.maximum(chan, m[None, :]), chan))


@register_cpu_op("record_channels_cpu", mutates_args=("chan",))
def record_channels_cpu(chan: torch.Tensor, n_valid: torch.Tensor, row: int, x: torch.Tensor) -> None:
    """`record_channels` for CPU tensors (see `record_cpu`)."""
    n = int(n_valid[0])
    if n <= 0:
        return
    x2 = x.reshape(-1, x.shape[-1])[:n]
    if x2.numel():
        torch.maximum(chan[row], channel_absmax(x2, n_valid).to(chan.dtype), out=chan[row])
