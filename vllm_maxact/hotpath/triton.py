"""GPU hot path: one Triton kernel per decoder layer for all of that layer's sites.

The Inductor-visible form (`ops.record` / `ops.fold`) costs several kernels per layer: its
per-row reductions do not fuse into the kernels that already read the activations
(benchmarks/RESULTS.md). Under CUDA graphs that cost is launches, not bytes, so here each
layer's sites are read by ONE launch: program axis 1 picks the site, axis 0 tiles (rows x
columns) of that site's activation; each program reduces its tiles to a max, a min and the
NaN / Inf counts of the valid rows, then folds them into the layer's buffers with atomics.

Capture-safe: ``n_valid`` is read by the kernel (no host synchronisation), the launch grid
depends only on shapes, and the op is opaque to Inductor (`torch.library.custom_op`), so the
compiled graph holds one call per layer and CUDA graphs replay it.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os

import torch
import triton
import triton.language as tl

logger = logging.getLogger("vllm_maxact")

#: sites one launch covers; a group with more is split into several launches
MAX_SITES = 6
BLOCK_T = 4  # rows per tile
BLOCK_C = 1024  # columns per tile (one program covers one column block of its rows)
MAX_ROW_PROGRAMS = 32  # row programs per column block; larger inputs loop

#: Triton compiles one binary per specialization of a kernel's integer arguments, and by
#: default an integer's specialization includes whether it is divisible by 16. A token count
#: that changes with every step must not take part: otherwise the first step whose count has
#: the other divisibility (a partly filled prefill step, say, once warm-up saw only 16,384)
#: compiles during serving, a 1-2 s stall that vLLM's JIT monitor reports (H200,
#: 2026-12-05: one replay run in seven, benchmarks/RESULTS.md). Counts of 1 stay specialized:
#: decode at batch 1 is always captured in warm-up.
_ALIGN_KW = next((k for k in ("do_not_specialize_on_alignment", "do_not_specialize")
                  if k in inspect.signature(triton.jit).parameters), None)


def jit_token_count(*names: str):
    """``triton.jit``, the integer arguments ``names`` (token counts) not specialized on their
    divisibility by 16."""
    return triton.jit(**{_ALIGN_KW: list(names)}) if _ALIGN_KW else triton.jit


#: launch key -> the largest token count whose launch settings are compiled (`warm_ahead`)
_warm_upto: dict[tuple, int] = {}


@functools.lru_cache(maxsize=64)
def _size_classes(settings, params: tuple, t_max: int, tuning: tuple) -> tuple[int, ...]:
    """The smallest token count of each distinct launch class up to ``t_max``: the constants
    ``settings(t, *params)`` derives from the count, and whether it is 1 (the one value Triton
    still specializes). ``tuning``: the module constants ``settings`` reads, so a change
    re-derives."""
    first: dict = {}
    for t in range(1, t_max + 1):
        first.setdefault((t == 1, tuple(sorted(settings(t, *params)[1].items()))), t)
    return tuple(first.values())


def warm_ahead(key: tuple, T: int, settings, params: tuple, tuning: tuple, compile_at) -> None:
    """Compile now, not while serving, the binaries a kernel needs for launches like this one at
    every token count up to ``T`` (``key``: what selects the launch's binary besides the count).

    A launcher derives some compile-time constants from the count (``settings(t, *params)`` ->
    (grid, constants): the pipelined loop for large steps, the rows' bounds read first at
    decode sizes). vLLM's warm-up runs its largest step first, then its CUDA-graph capture
    sizes; with few capture sizes (a small ``max_num_seqs``) or none (``enforce_eager``), a
    class between them would first compile on a served step, a stall of a second or more. So
    the first launch at a new largest count compiles one count of each class (``compile_at(t,
    grid, constants)``: the kernel's ``warmup``, no launch). Skipped under Triton's interpreter
    (nothing to compile) and during CUDA-graph capture (the largest step came before it)."""
    done = _warm_upto.get(key, 0)
    if T <= done or os.environ.get("TRITON_INTERPRET") == "1":
        return
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return
    _warm_upto[key] = T
    try:
        for t in _size_classes(settings, params, T, tuning):
            if t > done:
                compile_at(t, *settings(t, *params))
    except Exception as e:  # a failed compile here only postpones it to the launch that needs it
        logger.warning("vllm-maxact: could not compile %s ahead for token counts up to %d (%s: %s); a step "
                       "of a new size may compile it while serving", key[0], T, type(e).__name__, e)


@triton.jit
def seen(ext_ptr, pos):
    """The max and min already folded into row ``pos`` of extrema [k, 2], read at a program's
    start from L2 (the coherence point). Between the host's re-arms (`Recorder.collect`, stream
    ordered) a row only grows, so these are bounds: a program whose own extremes do not pass
    them has nothing to send, which in steady serving is nearly every program. Whether the
    loads pay for the atomics they spare depends on the kernel (H200, benchmarks/RESULTS.md):
    the per-layer kernel here reads them always (4 sites: 2.03 to 744 us from 1 to 16k tokens,
    against 2.12 to 791 us without, measured in an earlier run); the in-kernel ops only at
    decode sizes (`norm_kernels.SKIP_SEEN`)."""
    return (tl.load(ext_ptr + 2 * pos, cache_modifier=".cg"),
            tl.load(ext_ptr + 2 * pos + 1, cache_modifier=".cg"))


@triton.jit
def fold_atomic(ext_ptr, cnt_ptr, pos, h, lw, cn, ci, sh, sl):
    """One program's max ``h``, min ``lw``, NaN and Inf counts into row ``pos`` of extrema [k, 2]
    / counts [k, 2]; the max only if above ``sh``, the min only if below ``sl`` (`seen`, or
    -inf / inf). Relaxed atomics: the host reads after the stream has finished, so nothing
    needs ordering, and Triton's default (acquire-release) fences cost about 1.3 us per launch
    on an H200."""
    if h > sh:
        tl.atomic_max(ext_ptr + 2 * pos, h, sem="relaxed")
    if lw < sl:
        tl.atomic_min(ext_ptr + 2 * pos + 1, lw, sem="relaxed")
    if cn > 0:
        tl.atomic_add(cnt_ptr + 2 * pos, cn.to(tl.int64), sem="relaxed")
    if ci > 0:
        tl.atomic_add(cnt_ptr + 2 * pos + 1, ci.to(tl.int64), sem="relaxed")


@triton.jit
def cast(v, dtype: tl.constexpr, RTNE: tl.constexpr):
    """``v.to(dtype)``; with ``RTNE``, round to nearest even into bfloat16 by hand first (Triton's
    interpreter truncates float32 -> bfloat16, GPUs round; only the CPU tests set it)."""
    if RTNE:
        b = v.to(tl.int32, bitcast=True)
        b = (b + 0x7FFF + ((b >> 16) & 1)) & -65536
        v = b.to(tl.float32, bitcast=True)
    return v.to(dtype)


@triton.jit
def _site(x_ptr, width, stride, y_ptr, ystride, n, ext_ptr, cnt_ptr, pos, pid_r, pid_c, row_programs,
          c_ptr, cstride, BT: tl.constexpr, BC: tl.constexpr, HAS_Y: tl.constexpr, CHAIN: tl.constexpr,
          RTNE: tl.constexpr):
    """One site's tiles: ``x[:, :width]``; with ``HAS_Y`` the sum ``x + y`` rounded to x's dtype
    exactly as the model rounds it (eager: the residual stream as the pair a decoder layer
    returns). ``CHAIN`` (the residual stream of a compiled model, see `vllm_maxact.hotpath`):
    1 sets the float32 chain ``c`` to ``x`` (plus ``y`` with ``HAS_Y``), 2 adds ``x`` and then
    ``y`` to it; the site's value is the chain. A site at ``pos`` < 0 only updates the chain."""
    if pid_c * BC < width:
        rec = pos >= 0
        sh, sl = seen(ext_ptr, tl.maximum(pos, 0))
        cols = pid_c * BC + tl.arange(0, BC)
        cmask = cols < width
        hi = tl.full([BT, BC], float("-inf"), tl.float32)
        lo = tl.full([BT, BC], float("inf"), tl.float32)
        nan = tl.zeros([BT, BC], tl.int32)
        inf = tl.zeros([BT, BC], tl.int32)
        for r0 in range(pid_r * BT, n, row_programs * BT):
            rows = r0 + tl.arange(0, BT)
            m = (rows < n)[:, None] & cmask[None, :]
            x = tl.load(x_ptr + rows[:, None].to(tl.int64) * stride + cols[None, :], mask=m, other=0.0)
            if CHAIN == 0:
                if HAS_Y:
                    y = tl.load(y_ptr + rows[:, None].to(tl.int64) * ystride + cols[None, :], mask=m, other=0.0)
                    x = cast(x.to(tl.float32) + y.to(tl.float32), x_ptr.dtype.element_ty, RTNE)
                x = x.to(tl.float32)
            else:
                cp = c_ptr + rows[:, None].to(tl.int64) * cstride + cols[None, :]
                if CHAIN == 1:
                    x = x.to(tl.float32)
                else:
                    x = tl.load(cp, mask=m, other=0.0) + x.to(tl.float32)
                if HAS_Y:
                    x = x + tl.load(y_ptr + rows[:, None].to(tl.int64) * ystride + cols[None, :], mask=m,
                                    other=0.0).to(tl.float32)
                tl.store(cp, x, mask=m)
            is_nan = x != x
            is_inf = tl.abs(x) == float("inf")
            fin = m & ~is_nan & ~is_inf
            hi = tl.maximum(hi, tl.where(fin, x, float("-inf")))
            lo = tl.minimum(lo, tl.where(fin, x, float("inf")))
            nan += (m & is_nan).to(tl.int32)
            inf += (m & is_inf).to(tl.int32)
        if rec:
            h = tl.max(tl.max(hi, axis=1), axis=0)
            lw = tl.min(tl.min(lo, axis=1), axis=0)
            cn = tl.sum(tl.sum(nan, axis=1), axis=0)
            ci = tl.sum(tl.sum(inf, axis=1), axis=0)
            fold_atomic(ext_ptr, cnt_ptr, pos, h, lw, cn, ci, sh, sl)


@jit_token_count("T")
def _layer_kernel(ext_ptr, cnt_ptr, nv_ptr, T, c_ptr, cstride, crows,
                  x0, w0, s0, y0, t0, p0, x1, w1, s1, y1, t1, p1, x2, w2, s2, y2, t2, p2,
                  x3, w3, s3, y3, t3, p3, x4, w4, s4, y4, t4, p4, x5, w5, s5, y5, t5, p5,
                  NS: tl.constexpr, CC: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
                  ADD: tl.constexpr, CH: tl.constexpr, RTNE: tl.constexpr):
    """Program axis 1 picks the site (``NS`` of them); axis 0 tiles it. Bit k of ``ADD``: site k
    has an addend; bits 2k, 2k + 1 of ``CH``: its chain mode (`_site`)."""
    pid = tl.program_id(0)
    sid = tl.program_id(1)
    row_programs = tl.num_programs(0) // CC
    pid_r = pid // CC
    pid_c = pid % CC
    n = tl.minimum(tl.load(nv_ptr).to(tl.int32), T)
    if CH != 0:
        n = tl.minimum(n, crows)
    if sid == 0:
        _site(x0, w0, s0, y0, t0, n, ext_ptr, cnt_ptr, p0, pid_r, pid_c, row_programs, c_ptr, cstride, BT, BC,
              ADD & 1, CH & 3, RTNE)
    if NS > 1:
        if sid == 1:
            _site(x1, w1, s1, y1, t1, n, ext_ptr, cnt_ptr, p1, pid_r, pid_c, row_programs, c_ptr, cstride, BT, BC,
                  (ADD >> 1) & 1, (CH >> 2) & 3, RTNE)
    if NS > 2:
        if sid == 2:
            _site(x2, w2, s2, y2, t2, n, ext_ptr, cnt_ptr, p2, pid_r, pid_c, row_programs, c_ptr, cstride, BT, BC,
                  (ADD >> 2) & 1, (CH >> 4) & 3, RTNE)
    if NS > 3:
        if sid == 3:
            _site(x3, w3, s3, y3, t3, n, ext_ptr, cnt_ptr, p3, pid_r, pid_c, row_programs, c_ptr, cstride, BT, BC,
                  (ADD >> 3) & 1, (CH >> 6) & 3, RTNE)
    if NS > 4:
        if sid == 4:
            _site(x4, w4, s4, y4, t4, n, ext_ptr, cnt_ptr, p4, pid_r, pid_c, row_programs, c_ptr, cstride, BT, BC,
                  (ADD >> 4) & 1, (CH >> 8) & 3, RTNE)
    if NS > 5:
        if sid == 5:
            _site(x5, w5, s5, y5, t5, n, ext_ptr, cnt_ptr, p5, pid_r, pid_c, row_programs, c_ptr, cstride, BT, BC,
                  (ADD >> 5) & 1, (CH >> 10) & 3, RTNE)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """2-D view [tokens, features] with unit stride along features (a copy only if needed)."""
    x2 = x.reshape(-1, x.shape[-1]) if x.dim() != 2 else x
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def launch(extrema: torch.Tensor, counts: torch.Tensor, n_valid: torch.Tensor, spec: list[int],
           xs: list[torch.Tensor], chain: torch.Tensor | None = None) -> None:
    """Fold the sites ``spec`` describes (`vllm_maxact.hotpath.pack`: position, operand, addend,
    width, chain mode per site) into rows of ``extrema`` [S, 2] (max, min) and ``counts`` [S, 2]
    (nan, inf): rows at or past ``n_valid[0]`` never count. All operands share the token axis
    (one decoder layer's sites). ``chain``: the recorder's float32 residual chain [rows, H].
    Sites that touch the chain are launched after the others, in order (a chain update reads
    what the previous one wrote)."""
    views = [_rows(x) for x in xs]
    sites = [spec[i:i + 5] for i in range(0, len(spec), 5)]
    plain = [st for st in sites if st[4] == 0]
    chained = [st for st in sites if st[4] != 0]
    parts = [plain[i:i + MAX_SITES] for i in range(0, len(plain), MAX_SITES)] + [[st] for st in chained]
    c = chain if chain is not None and chain.numel() else extrema
    for part in parts:
        tokens = views[part[0][1]].shape[0]
        if tokens == 0:
            continue
        widths = [views[xi].shape[1] if w < 0 else w for _, xi, _, w, _ in part]
        cc = triton.cdiv(max(widths), BLOCK_C)
        args, add, ch = [], 0, 0
        for k in range(MAX_SITES):
            j = min(k, len(part) - 1)
            pos, xi, yi, _, mode = part[j]
            x = views[xi]
            y = views[yi] if yi >= 0 else x
            if k == j:
                add |= (yi >= 0) << k
                ch |= mode << (2 * k)
            args += [x, widths[j], x.stride(0), y, y.stride(0), pos]
        rtne = os.environ.get("TRITON_INTERPRET") == "1" and views[0].dtype == torch.bfloat16
        consts = dict(NS=len(part), CC=cc, BT=BLOCK_T, BC=BLOCK_C, ADD=add, CH=ch, RTNE=rtne, num_warps=4)
        head = (extrema, counts, n_valid, tokens, c, c.stride(0), c.shape[0])
        _layer_kernel[(_layer_rows(tokens)[0] * cc, len(part))](*head, *args, **consts)
        warm_ahead(("layer", *(a.dtype if torch.is_tensor(a) else a for a in args), cc, len(part), add, ch),
                   tokens, _layer_rows, (), (BLOCK_T, MAX_ROW_PROGRAMS),
                   lambda t, rp, _, args=args, consts=consts, head=head: _layer_kernel.warmup(
                       *head[:3], t, *head[4:], *args, grid=(rp * consts["CC"], consts["NS"]), **consts))


def _layer_rows(t: int) -> tuple[int, dict]:
    """`_layer_kernel`'s row programs for ``t`` tokens; no constant depends on the count."""
    return min(triton.cdiv(t, BLOCK_T), MAX_ROW_PROGRAMS), {}


# -- where the kernel runs ------------------------------------------------------------------
#: one side stream per CUDA device (`record_triton` with ``side``)
_SIDE: dict[int, torch.cuda.Stream] = {}


def side_stream(device: torch.device) -> torch.cuda.Stream:
    """This process's side stream on ``device``, made on first use (`TritonSideStream` makes it
    when the recorder is built, never during a CUDA-graph capture)."""
    idx = device.index if device.index is not None else torch.cuda.current_device()
    stream = _SIDE.get(idx)
    if stream is None:
        stream = _SIDE[idx] = torch.cuda.Stream(device=idx)
    return stream


# Registered for every device: CUDA in service; CPU only runs it under TRITON_INTERPRET=1 (tests).
@torch.library.custom_op("vllm_maxact::record_triton", mutates_args=("extrema", "counts", "chain"))
def record_triton(extrema: torch.Tensor, counts: torch.Tensor, chain: torch.Tensor, n_valid: torch.Tensor,
                  spec: list[int], xs: list[torch.Tensor], side: bool) -> None:
    """One launch for several sites of one group. ``side``: on this device's side stream, after
    the work queued so far on the current stream and concurrently with what follows it; the
    caller must `join_triton` before ``xs`` may be freed or written (see `TritonSideStream`)."""
    if side and extrema.is_cuda:
        main = torch.cuda.current_stream(extrema.device)
        stream = side_stream(extrema.device)
        stream.wait_stream(main)
        with torch.cuda.stream(stream):
            launch(extrema, counts, n_valid, spec, xs, chain)
    else:
        launch(extrema, counts, n_valid, spec, xs, chain)


@record_triton.register_fake
def _(extrema, counts, chain, n_valid, spec, xs, side) -> None:
    return None


@torch.library.custom_op("vllm_maxact::join_triton", mutates_args=("extrema",))
def join_triton(extrema: torch.Tensor, xs: list[torch.Tensor]) -> None:
    """The current stream waits for the side stream. Declared to write ``extrema`` (it does not)
    so that it is ordered after the `record_triton` it joins and is never dropped; it takes
    ``xs`` so that the compiled graph keeps them, unwritten, until here."""
    if extrema.is_cuda:
        torch.cuda.current_stream(extrema.device).wait_stream(side_stream(extrema.device))


@join_triton.register_fake
def _(extrema, xs) -> None:
    return None
