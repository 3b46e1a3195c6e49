"""CPU hot path: one opaque op per decoder layer (`CpuOp`).

On CPU vLLM compiles the whole model as one graph (no per-layer pieces to reuse), so every
traced op would cost compile time in proportion to the model's depth, and anything Inductor
can see may be fused into the model's own kernels and change their arithmetic. So the
recorder calls one custom op per decoder layer: opaque to Inductor (one extern call in the
graph that reads tensors the model already holds), reading ``n_valid`` on the host for free,
and taking one pass per activation (`torch.aminmax`) unless it holds NaN or Inf.

The ops are registered with a CPU kernel only, as vLLM registers its own ops
(`vllm.utils.torch_utils.direct_register_custom_op`): `torch.library.custom_op` adds
Python-level autograd and in-place wrappers to every call, which on a 2-core CPU cost more
than the op (about 70 of 110 us per decoder layer at decode sizes). vLLM's helper itself is
not called: importing it imports vLLM (about 2.7 s), and `vllm-maxact scales` imports this
module (through ops_int8) without ever starting an engine.
"""

from __future__ import annotations

import math

import torch

_NEG_INF = float("-inf")
_POS_INF = float("inf")

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


def _rows(xs: list[torch.Tensor], i: int, n: int, width: int) -> torch.Tensor:
    x = xs[i]
    x2 = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
    return x2[:n] if width < 0 else x2[:n, :width]


def site_rows(xs: list[torch.Tensor], xi: int, yi: int, width: int, n: int, mode: int = 0,
              chain: torch.Tensor | None = None) -> torch.Tensor:
    """The first ``n`` rows of a site packed by `vllm_maxact.hotpath.pack`: ``xs[xi]`` (its first
    ``width`` columns when ``width >= 0``), plus ``xs[yi]`` when ``yi >= 0``, the sum rounded to
    the operand's dtype as the model rounds it (elementwise in float32). ``mode`` 1 / 2: the
    float32 residual ``chain`` is set to / incremented by the operand and addend (in that order),
    and the site's value is the chain."""
    x2 = _rows(xs, xi, n, width)
    if mode == 0:
        return x2 if yi < 0 else x2 + _rows(xs, yi, n, width)
    c = chain[:n, : x2.shape[1]]
    if mode == 1:
        c.copy_(x2)
    else:
        c.add_(x2)
    if yi >= 0:
        c.add_(_rows(xs, yi, n, width))
    return c


@register_cpu_op("record_cpu", mutates_args=("extrema", "counts", "chain"))
def record_cpu(extrema: torch.Tensor, counts: torch.Tensor, chain: torch.Tensor, n_valid: torch.Tensor,
               spec: list[int], xs: list[torch.Tensor]) -> None:
    """Fold the sites ``spec`` describes (position, operand, addend, width, chain mode per site)
    into ``extrema`` [S, 2] (max, min of finite values) and ``counts`` [S, 2] (nan, inf); a site
    at position -1 only updates the chain. The buffers are read and written through NumPy views:
    a Python float against one element, not a tensor op."""
    n = int(n_valid[0])
    if n <= 0:
        return
    ext, cnt = extrema.numpy(), counts.numpy()
    for i in range(0, len(spec), 5):
        pos, xi, yi, width, mode = spec[i:i + 5]
        x2 = site_rows(xs, xi, yi, width, min(n, chain.shape[0]) if mode else n, mode, chain)
        if pos < 0 or x2.numel() == 0:
            continue
        lo, hi = torch.aminmax(x2)
        hi_f, lo_f = float(hi), float(lo)
        if not (math.isfinite(hi_f) and math.isfinite(lo_f)):
            finite = torch.isfinite(x2)
            nan = int(torch.isnan(x2).sum())
            cnt[pos, 0] += nan
            cnt[pos, 1] += int(x2.numel() - int(finite.sum())) - nan
            if not bool(finite.any()):
                continue
            hi_f = float(torch.where(finite, x2, _NEG_INF).amax())
            lo_f = float(torch.where(finite, x2, _POS_INF).amin())
        if hi_f > ext[pos, 0]:
            ext[pos, 0] = hi_f
        if lo_f < ext[pos, 1]:
            ext[pos, 1] = lo_f


def channel_absmax(x: torch.Tensor, n_valid: torch.Tensor) -> torch.Tensor:
    """float32 [H]: max |x| per channel over the valid rows; NaN/Inf are left out (counted with
    the site's extrema), so they never reach a smoothing factor."""
    x2 = x.reshape(-1, x.shape[-1])
    keep = (torch.arange(x2.shape[0], device=x2.device) < n_valid)[:, None] & torch.isfinite(x2)
    return torch.where(keep, x2.abs(), 0).amax(dim=0).float()


@register_cpu_op("record_channels_cpu", mutates_args=("chan",))
def record_channels_cpu(chan: torch.Tensor, n_valid: torch.Tensor, row: int, x: torch.Tensor) -> None:
    """Fold ``x``'s per-channel max |x| over the valid rows into row ``row`` of ``chan`` [C, W]
    (its first H columns: one buffer width serves a layer's narrower and wider sites)."""
    n = int(n_valid[0])
    if n <= 0:
        return
    x2 = x.reshape(-1, x.shape[-1])[:n]
    if x2.numel():
        dst = chan[row, : x2.shape[-1]]
        torch.maximum(dst, channel_absmax(x2, n_valid).to(chan.dtype), out=dst)
