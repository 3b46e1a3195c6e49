"""GPU hot path, fused form: record sites inside the kernels that already read them.

In vLLM's Llama layout every default site is an input or output of a kernel the model runs
anyway: the attention output and the MLP output are the ``x`` of the next fused add + RMSNorm,
the residual stream is that kernel's sum, the embedding is the first norm's input, the final
norm's output is its own, and the gate is the first half of SiLU-and-mul's input. These two
Triton kernels do the model's work (same arithmetic as vLLM's native implementations, fresh
outputs) and fold the max, min and NaN / Inf counts of those tensors into the recorder's
buffers on the way: no extra launch and no extra read per site.

Both are opaque `torch.library` ops (Inductor keeps them as one call each), read ``n_valid``
on the device (rows at or past it, CUDA-graph padding, are computed but never counted) and use
launch grids that depend only on shapes, so CUDA graphs capture and replay them.

What keeps them near the plain kernels' speed (benchmarks/RESULTS.md): a norm row's statistics
ride in the norm's own sum-of-squares reduction (one multi-operand reduction, no extra barrier)
into scalars; SiLU-and-mul keeps two elementwise accumulators, reduced once per program, and
pipelines its row loop where programs loop over many rows; the atomics are relaxed and, at
decode sizes, sent only where they change the row's held extrema. NaN / Inf are not counted
on that path: they map to infinities, and a program whose max or min comes out infinite
re-reads its rows and folds the exact finite extrema and counts. Registers on sm_90 with the
launcher's 16-byte alignment specialization (benchmarks/triton_regs.py, Triton 3.6 and 3.9):
norm 111 at 8 warps, 104 with its pipelined row loop (two programs resident per SM), final
norm 106-115, SiLU-and-mul 51 (53 pipelined); tests/test_kernels_sm90.py compiles every form
and holds them to no spills.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from vllm_maxact.hotpath.triton import _rows, _site, cast, fold_atomic, jit_token_count, seen, warm_ahead

#: programs per SM for the row-looping norm kernel (one row per program at decode sizes)
PROGRAMS_PER_SM = 8
ACT_BLOCK_C = 1024  # columns per SiLU-and-mul program
#: SiLU-and-mul's programs per SM (None: PROGRAMS_PER_SM)
ACT_PROGRAMS_PER_SM: int | None = None
ACT_BLOCK_T = 1  # rows per SiLU-and-mul step (2: 86 registers instead of 51 on sm_90)
ACT_BLOCK_T_INTERPRET = 8  # the same under Triton's interpreter, where each step costs Python time
#: software-pipelining stages of SiLU-and-mul's row loop where each program loops over at least
#: ACT_STAGES_FROM rows (H200, 2,048 tokens: 45.3 instead of 51.5 us; at 256 tokens, 3 to 4 rows
#: per program, 6.7 instead of 6.2: Triton's default there)
ACT_STAGES = 3
ACT_STAGES_FROM = 8
#: one multi-operand reduction per row (True: the GPU form) or one builtin reduction per
#: statistic (Triton's interpreter runs a multi-operand reduction element by element in Python);
#: None: by TRITON_INTERPRET. The interpreter checks run both.
MULTI_REDUCE = None
#: up to this many tokens, read each recorded row's current extrema at a program's start and send
#: only the atomics that change them (`triton.seen`). H200: at 1 and 64 tokens 0.05-0.17 us
#: faster per call; from 256 the loads cost more than the atomics they spare (0.4-0.5 us slower)
SKIP_SEEN = 64
#: Keeping the next row's loads in flight while a row reduces (the norm waits on its loads before
#: a reduction with six barriers):
#: - NORM_STAGES: Triton's software pipelining of the row loop (asynchronous copies into shared
#:   memory) where each program loops over at least NORM_STAGES_FROM rows; 3 stages were the
#:   fastest measured on an H200 at 16k tokens, below NORM_STAGES_FROM rows it is not used;
#: - NORM_PREFETCH_FROM: from this many rows per program, load the next row's x and residual into
#:   registers before this row's barriers and stores (0: never; measured behind NORM_STAGES).
NORM_STAGES: int | None = 3
NORM_STAGES_FROM = 8
NORM_PREFETCH_FROM = 0
#: warps of the norm kernel (None: by width); a module constant so benchmarks can sweep it
#: (16 warps: 70 registers, one program per SM, measured slower than 8 on an H200 at every size)
NORM_WARPS = None


def _tuning_from_env(spec: str | None) -> None:
    """VLLM_MAXACT_OPS_NORM="NAME=VALUE,..." sets this module's launch constants above (integers
    or None) in every process that imports it, vLLM's workers included: how the GPU benchmarks
    time a setting inside a served model without a rebuilt package."""
    for item in filter(None, (spec or "").replace(" ", "").split(",")):
        name, sep, value = item.partition("=")
        if not sep or not name.isupper() or not isinstance(globals().get(name, ""), (int, type(None))):
            raise ValueError(f"VLLM_MAXACT_OPS_NORM: {item!r} is not NAME=VALUE for one of the norm kernels' "
                             "integer launch constants (e.g. NORM_STAGES=None,ACT_STAGES=2)")
        try:
            globals()[name] = None if value == "None" else int(value)
        except ValueError:
            raise ValueError(f"VLLM_MAXACT_OPS_NORM: {item!r}: the value must be an integer or None") from None


_tuning_from_env(os.environ.get("VLLM_MAXACT_OPS_NORM"))


@functools.cache
def _sms(device_index: int) -> int:
    if torch.cuda.is_available() and device_index >= 0:
        return torch.cuda.get_device_properties(device_index).multi_processor_count
    return 1  # Triton's interpreter (CPU tensors, tests)


def _max_programs(x: torch.Tensor, per_sm: int | None = None) -> int:
    """Programs of a row-looping kernel on ``x``'s device: ``per_sm`` (default PROGRAMS_PER_SM)
    per SM."""
    return (per_sm or PROGRAMS_PER_SM) * _sms(x.device.index if x.device.type == "cuda" and x.device.index is not None
                                              else (torch.cuda.current_device() if x.device.type == "cuda" else -1))


_cast = cast


@triton.jit
def _hi(v, m):
    """Candidates for a max where ``m``: a NaN counts as +inf, so any non-finite value makes the
    max or the min infinite and sends the program to the exact path (`_finish`)."""
    return tl.where(m, tl.where(v != v, float("inf"), v), float("-inf"))


@triton.jit
def _lo(v, m):
    return tl.where(m, tl.where(v != v, float("-inf"), v), float("inf"))


@triton.jit
def _c3(s0, h0, l0, s1, h1, l1):
    return s0 + s1, tl.maximum(h0, h1), tl.minimum(l0, l1)


@triton.jit
def _c5(s0, a0, b0, c0, d0, s1, a1, b1, c1, d1):
    return s0 + s1, tl.maximum(a0, a1), tl.minimum(b0, b1), tl.maximum(c0, c1), tl.minimum(d0, d1)


@triton.jit
def _c2(h0, l0, h1, l1):
    return tl.maximum(h0, h1), tl.minimum(l0, l1)


@triton.jit
def _seen(e_ptr, pos, SKIP: tl.constexpr):
    if SKIP:
        sh, sl = seen(e_ptr, pos)
    else:
        sh, sl = float("-inf"), float("inf")
    return sh, sl


@triton.jit
def _finish(v_ptr, stride, H, n, pid, step, h, lw, sh, sl, e_ptr, c_ptr, pos, BH: tl.constexpr):
    """Fold a program's max ``h`` / min ``lw`` (non-finite values mapped to infinities) at ``pos``.
    Finite (the normal case): at most two atomics, none where ``h`` / ``lw`` do not pass what
    the row held at the program's start (``sh`` / ``sl``). Otherwise re-read the program's
    valid rows of the tensor (as stored) and fold the exact finite max, min and NaN / Inf
    counts (the unfused path's per-site reduction, one whole row per step)."""
    if (h < float("inf")) & (lw > float("-inf")):
        fold_atomic(e_ptr, c_ptr, pos, h, lw, 0, 0, sh, sl)
    else:
        tl.debug_barrier()  # the program's own stores of this tensor, visible to all its threads
        _site(v_ptr, H, stride, v_ptr, stride, n, e_ptr, c_ptr, pos, pid, 0, step, e_ptr, 0, 1, BH, 0, 0, False)


@jit_token_count("T")
def _norm_kernel(x_ptr, r_ptr, w_ptr, out_ptr, rout_ptr, T, H, sx, sr, so, sro, eps, nv_ptr,
                 ea_ptr, ca_ptr, pos_x, pos_s, eb_ptr, cb_ptr, pos_o,
                 HAS_RES: tl.constexpr, HAS_W: tl.constexpr, REC_X: tl.constexpr, REC_S: tl.constexpr,
                 REC_O: tl.constexpr, BH: tl.constexpr, RTNE: tl.constexpr, MULTI: tl.constexpr,
                 SKIP: tl.constexpr, PREFETCH: tl.constexpr, STAGES: tl.constexpr):
    """Rows ``pid, pid + P, ...``, each whole in registers (as Inductor's persistent norm). The
    statistics of a row ride in the norm's own sum-of-squares reduction (one multi-operand
    reduction: no extra barrier) and fold into scalars; the output's, where recorded, in one
    more. One fold per recorded tensor per program."""
    pid = tl.program_id(0)
    step = tl.num_programs(0)
    n = tl.minimum(tl.load(nv_ptr).to(tl.int32), T)
    if REC_X:
        sxh, sxl = _seen(ea_ptr, pos_x, SKIP)
    if REC_S:
        ssh, ssl = _seen(ea_ptr, pos_s, SKIP)
    if REC_O:
        soh, sol = _seen(eb_ptr, pos_o, SKIP)
    cols = tl.arange(0, BH)
    cm = cols < H
    if HAS_W:
        w = tl.load(w_ptr + cols, mask=cm, other=0.0)
    hx = tl.full([], float("-inf"), tl.float32)
    lx = tl.full([], float("inf"), tl.float32)
    hs = tl.full([], float("-inf"), tl.float32)
    ls = tl.full([], float("inf"), tl.float32)
    ho = tl.full([], float("-inf"), tl.float32)
    lo = tl.full([], float("inf"), tl.float32)
    if PREFETCH:  # the first row's inputs (outputs are fresh tensors: no row reads another's)
        xn = tl.load(x_ptr + tl.cast(pid, tl.int64) * sx + cols, mask=cm, other=0.0)
        if HAS_RES:
            rn = tl.load(r_ptr + tl.cast(pid, tl.int64) * sr + cols, mask=cm, other=0.0)
    for row in tl.range(pid, T, step, num_stages=STAGES):
        vm = cm & (row < n)
        row64 = tl.cast(row, tl.int64)
        if PREFETCH:  # this row's inputs were loaded last iteration; issue the next row's now
            xr = xn
            nxt = row + step
            nm = cols < tl.where(nxt < T, H, 0)  # nothing past the last row
            xn = tl.load(x_ptr + tl.cast(nxt, tl.int64) * sx + cols, mask=nm, other=0.0)
            if HAS_RES:
                rr = rn
                rn = tl.load(r_ptr + tl.cast(nxt, tl.int64) * sr + cols, mask=nm, other=0.0)
        else:
            xr = tl.load(x_ptr + row64 * sx + cols, mask=cm, other=0.0)
            if HAS_RES:
                rr = tl.load(r_ptr + row64 * sr + cols, mask=cm, other=0.0)
        x = xr.to(tl.float32)
        if HAS_RES:
            s = x + rr.to(tl.float32)
            s_out = _cast(s, rout_ptr.dtype.element_ty, RTNE)
            tl.store(rout_ptr + row64 * sro + cols, s_out, mask=cm)
            sf = s_out.to(tl.float32)
        else:
            s = x
            sf = x
        if REC_X and REC_S and MULTI:
            ss, a, b, c, d = tl.reduce((s * s, _hi(x, vm), _lo(x, vm), _hi(sf, vm), _lo(sf, vm)), 0, _c5)
            hx, lx, hs, ls = tl.maximum(hx, a), tl.minimum(lx, b), tl.maximum(hs, c), tl.minimum(ls, d)
        elif REC_X and MULTI:
            ss, a, b = tl.reduce((s * s, _hi(x, vm), _lo(x, vm)), 0, _c3)
            hx, lx = tl.maximum(hx, a), tl.minimum(lx, b)
        elif REC_S and MULTI:
            ss, c, d = tl.reduce((s * s, _hi(sf, vm), _lo(sf, vm)), 0, _c3)
            hs, ls = tl.maximum(hs, c), tl.minimum(ls, d)
        else:  # separate reductions (Triton's interpreter runs a multi-operand one element by element)
            ss = tl.sum(s * s, axis=0)
            if REC_X:
                hx, lx = tl.maximum(hx, tl.max(_hi(x, vm), axis=0)), tl.minimum(lx, tl.min(_lo(x, vm), axis=0))
            if REC_S:
                hs, ls = tl.maximum(hs, tl.max(_hi(sf, vm), axis=0)), tl.minimum(ls, tl.min(_lo(sf, vm), axis=0))
        y = s * tl.rsqrt(ss / H + eps)
        if HAS_W:
            # vLLM's native order: round to the weight's dtype, then scale
            y = _cast(y, w_ptr.dtype.element_ty, RTNE and w_ptr.dtype.element_ty == tl.bfloat16).to(tl.float32) \
                * w.to(tl.float32)
        y_out = _cast(y, out_ptr.dtype.element_ty, RTNE)
        tl.store(out_ptr + row64 * so + cols, y_out, mask=cm)
        if REC_O:
            yf = y_out.to(tl.float32)
            if MULTI:
                e, f = tl.reduce((_hi(yf, vm), _lo(yf, vm)), 0, _c2)
            else:
                e, f = tl.max(_hi(yf, vm), axis=0), tl.min(_lo(yf, vm), axis=0)
            ho, lo = tl.maximum(ho, e), tl.minimum(lo, f)
    if REC_X:
        _finish(x_ptr, sx, H, n, pid, step, hx, lx, sxh, sxl, ea_ptr, ca_ptr, pos_x, BH)
    if REC_S:
        _finish(rout_ptr, sro, H, n, pid, step, hs, ls, ssh, ssl, ea_ptr, ca_ptr, pos_s, BH)
    if REC_O:
        _finish(out_ptr, so, H, n, pid, step, ho, lo, soh, sol, eb_ptr, cb_ptr, pos_o, BH)


@jit_token_count("T")
def _silu_mul_kernel(x_ptr, out_ptr, T, D, sx, so, nv_ptr, e_ptr, c_ptr, pos,
                     REC: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, RTNE: tl.constexpr,
                     MULTI: tl.constexpr, SKIP: tl.constexpr, STAGES: tl.constexpr):
    """Program (c, r): column block c of row tiles ``r, r + R, ...``. The gate's running max / min
    stay elementwise ([BT, BC], non-finite values mapped to infinities) and are reduced once."""
    pid_c = tl.program_id(0)
    pid_r = tl.program_id(1)
    step = tl.num_programs(1) * BT
    n = tl.minimum(tl.load(nv_ptr).to(tl.int32), T)
    if REC:
        sh, sl = _seen(e_ptr, pos, SKIP)
    cols = pid_c * BC + tl.arange(0, BC)
    cm = cols < D
    hi = tl.full([BT, BC], float("-inf"), tl.float32)
    lo = tl.full([BT, BC], float("inf"), tl.float32)
    for r0 in tl.range(pid_r * BT, T, step, num_stages=STAGES):
        rows = r0 + tl.arange(0, BT)
        m = (rows < T)[:, None] & cm[None, :]
        base = rows[:, None].to(tl.int64) * sx + cols[None, :]
        g = tl.load(x_ptr + base, mask=m, other=0.0).to(tl.float32)
        u = tl.load(x_ptr + base + D, mask=m, other=0.0).to(tl.float32)
        if REC:
            vm = m & (rows < n)[:, None]
            hi = tl.maximum(hi, _hi(g, vm))
            lo = tl.minimum(lo, _lo(g, vm))
        # vLLM's native F.silu(gate) * up, the SiLU rounded to the activation dtype first
        a = _cast(g * tl.sigmoid(g), out_ptr.dtype.element_ty, RTNE).to(tl.float32)
        tl.store(out_ptr + rows[:, None].to(tl.int64) * so + cols[None, :],
                 _cast(a * u, out_ptr.dtype.element_ty, RTNE), mask=m)
    if REC:
        if MULTI:
            h, lw = tl.reduce((tl.reshape(hi, [BT * BC]), tl.reshape(lo, [BT * BC])), 0, _c2)
        else:
            h, lw = tl.max(tl.max(hi, axis=1), axis=0), tl.min(tl.min(lo, axis=1), axis=0)
        if (h < float("inf")) & (lw > float("-inf")):
            fold_atomic(e_ptr, c_ptr, pos, h, lw, 0, 0, sh, sl)
        else:  # re-read the program's gate tiles and fold the exact statistics
            # (inline rather than triton._site, whose separate NaN and Inf counters take the
            # kernel from 62 registers to 66 on sm_90, compiled without alignment hints)
            hx = tl.full([BT, BC], float("-inf"), tl.float32)
            lx = tl.full([BT, BC], float("inf"), tl.float32)
            bx = tl.zeros([BT, BC], tl.int32)
            for r0 in range(pid_r * BT, T, step):
                rows = r0 + tl.arange(0, BT)
                vm = (rows < n)[:, None] & cm[None, :]
                v = tl.load(x_ptr + rows[:, None].to(tl.int64) * sx + cols[None, :], mask=vm, other=0.0)
                v = v.to(tl.float32)
                is_nan = v != v
                is_inf = tl.abs(v) == float("inf")
                fin = vm & ~is_nan & ~is_inf
                hx = tl.maximum(hx, tl.where(fin, v, float("-inf")))
                lx = tl.minimum(lx, tl.where(fin, v, float("inf")))
                bx += (vm & is_nan).to(tl.int32) + ((vm & is_inf).to(tl.int32) << 16)
            bx = tl.sum(bx, axis=0)
            fold_atomic(e_ptr, c_ptr, pos, tl.max(tl.max(hx, axis=0), axis=0), tl.min(tl.min(lx, axis=0), axis=0),
                        tl.sum(bx & 0xFFFF, axis=0), tl.sum(bx >> 16, axis=0), sh, sl)


def _multi() -> bool:
    return MULTI_REDUCE if MULTI_REDUCE is not None else os.environ.get("TRITON_INTERPRET") != "1"


def _rtne(x: torch.Tensor) -> bool:
    return x.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1"


def _norm_warps(block: int) -> int:
    # 8 at 4,096 columns: 111 registers on sm_90, faster on an H200 at every size than 16 warps
    return 16 if block >= 8192 else 8 if block >= 2048 else 4


def _norm_sized(t: int, programs: int) -> tuple[int, dict]:
    """The norm's grid and the compile-time constants it derives from the token count ``t``."""
    grid = min(t, programs)
    return grid, {"SKIP": t <= SKIP_SEEN, "PREFETCH": 0 < NORM_PREFETCH_FROM * grid <= t,
                  "STAGES": NORM_STAGES if NORM_STAGES and t >= NORM_STAGES_FROM * grid else None}


def _norm_tuning() -> tuple:
    return SKIP_SEEN, NORM_PREFETCH_FROM, NORM_STAGES, NORM_STAGES_FROM


def _act_sized(t: int, bt: int, programs: int) -> tuple[int, dict]:
    """SiLU-and-mul's row programs and the compile-time constants it derives from ``t``."""
    rows = min(triton.cdiv(t, bt), programs)
    return rows, {"SKIP": t <= SKIP_SEEN, "STAGES": ACT_STAGES if t >= ACT_STAGES_FROM * rows * bt else None}


def _act_tuning() -> tuple:
    return SKIP_SEEN, ACT_STAGES, ACT_STAGES_FROM


@torch.library.custom_op("vllm_maxact::rms_norm_rec", mutates_args=("ext_a", "cnt_a", "ext_b", "cnt_b"))
def rms_norm_rec(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor | None, eps: float,
    n_valid: torch.Tensor, ext_a: torch.Tensor | None, cnt_a: torch.Tensor | None, pos_x: int, pos_s: int,
    ext_b: torch.Tensor | None, cnt_b: torch.Tensor | None, pos_o: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """vLLM's (fused add +) RMSNorm, recording on the way: ``x`` at ``pos_x`` and the sum
    ``x + residual`` at ``pos_s`` of group A (``ext_a`` / ``cnt_a``), the output at ``pos_o`` of
    group B; a position of -1 records nothing. Returns (output, new residual); without a
    residual the second is an empty tensor."""
    x2 = _rows(x)
    T, H = x2.shape
    out = torch.empty((T, H), dtype=x.dtype, device=x.device)
    has_res = residual is not None
    r2 = _rows(residual) if has_res else x2
    rout = torch.empty((T, H), dtype=x.dtype, device=x.device) if has_res else out
    rec_x, rec_s, rec_o = pos_x >= 0, has_res and pos_s >= 0, pos_o >= 0
    if (rec_x or rec_s) and ext_a is None or rec_o and ext_b is None:
        raise ValueError("rms_norm_rec: a recorded position needs its group's buffers")
    dummy = n_valid
    args = (x2, r2, weight if weight is not None else x2, out, rout, T, H, x2.stride(0), r2.stride(0), H, H, eps,
            n_valid, ext_a if ext_a is not None else dummy, cnt_a if cnt_a is not None else dummy,
            max(pos_x, 0), max(pos_s, 0),
            ext_b if ext_b is not None else dummy, cnt_b if cnt_b is not None else dummy, max(pos_o, 0))
    if T:
        block = triton.next_power_of_2(H)
        flags = dict(HAS_RES=has_res, HAS_W=weight is not None, REC_X=rec_x, REC_S=rec_s, REC_O=rec_o,
                     RTNE=_rtne(x), BH=block, MULTI=_multi(), num_warps=NORM_WARPS or _norm_warps(block))
        programs = _max_programs(x)
        grid, consts = _norm_sized(T, programs)
        _norm_kernel[(grid,)](*args, **flags, **consts)
        warm_ahead(("norm", x.dtype, H, x2.stride(0), r2.stride(0), pos_x, pos_s, pos_o, has_res, weight is None), T,
                   _norm_sized, (programs,), _norm_tuning(),
                   lambda t, g, c: _norm_kernel.warmup(*args[:5], t, *args[6:], grid=(g,), **flags, **c))
    shape = x.shape
    if not has_res:
        return out.view(shape), x.new_empty(0)
    return out.view(shape), rout.view(shape)


@rms_norm_rec.register_fake
def _(x, residual, weight, eps, n_valid, ext_a, cnt_a, pos_x, pos_s, ext_b, cnt_b, pos_o):
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if residual is None:
        return out, x.new_empty(0)
    return out, torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.custom_op("vllm_maxact::silu_and_mul_rec", mutates_args=("ext", "cnt"))
def silu_and_mul_rec(x: torch.Tensor, n_valid: torch.Tensor, ext: torch.Tensor, cnt: torch.Tensor,
                     pos: int) -> torch.Tensor:
    """vLLM's SiLU-and-mul (``silu(x[..., :d]) * x[..., d:]``), recording the gate half at
    ``pos`` of a group's buffers (-1: nothing)."""
    x2 = _rows(x)
    T, D2 = x2.shape
    D = D2 // 2
    out = torch.empty((T, D), dtype=x.dtype, device=x.device)
    if T:
        cb = triton.cdiv(D, ACT_BLOCK_C)
        bt = ACT_BLOCK_T_INTERPRET if os.environ.get("TRITON_INTERPRET") == "1" else ACT_BLOCK_T
        params = (bt, max(1, _max_programs(x, ACT_PROGRAMS_PER_SM) // cb))
        rows, consts = _act_sized(T, *params)
        args = (x2, out, T, D, x2.stride(0), D, n_valid, ext, cnt, max(pos, 0))
        flags = dict(REC=pos >= 0, BT=bt, BC=ACT_BLOCK_C, RTNE=_rtne(x), MULTI=_multi(), num_warps=4)
        _silu_mul_kernel[(cb, rows)](*args, **flags, **consts)
        warm_ahead(("act", x.dtype, D, x2.stride(0), pos), T, _act_sized, params, _act_tuning(),
                   lambda t, r, c: _silu_mul_kernel.warmup(*args[:2], t, *args[3:], grid=(cb, r), **flags, **c))
    return out.view(*x.shape[:-1], D)


@silu_and_mul_rec.register_fake
def _(x, n_valid, ext, cnt, pos):
    return torch.empty((*x.shape[:-1], x.shape[-1] // 2), dtype=x.dtype, device=x.device)
