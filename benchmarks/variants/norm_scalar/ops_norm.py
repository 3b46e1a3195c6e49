"""VARIANT (benchmarks/variants/norm_scalar): the tree's vllm_maxact/ops_norm.py with kernels
that keep a plain kernel's register budget (the tree's: 181 registers per thread for the norm,
255 plus spills for the final norm, 117 for SiLU-and-mul on sm_90, so one program per SM):
  - the norm in two passes over 1,024-column blocks per row, as Inductor's looped norm kernel
    (the first stores the sum and accumulates the sum of squares, the second re-reads the
    L2-hot inputs and stores the output); the statistics in [1,024] accumulators across the
    program's rows, reduced once per launch: 62 registers (76 for the final norm), four
    programs per SM;
  - up to 64 programs per SM (one row per program at decode sizes, as Inductor's) instead of 4;
  - SiLU-and-mul: 1-D column blocks of 2,048 with 8 warps, one 3-operand reduction per row into
    running scalars: 75 registers.
Register counts: Triton 3.9 compiled for sm_90 on a CPU machine (cuobjdump -res-usage).
Checked by the interpreter tests (tests/triton_interp_checks.py -k in_kernel, with a copy of the
package made by `bash benchmarks/variants/apply.sh <copy>/vllm_maxact norm_scalar` first on
PYTHONPATH) and a 2,500-column case (three blocks, masked tail): outputs and statistics exact.
Not yet run on a GPU: `python3 benchmarks/gpu_norm_micro.py` times it (columns `scalar`).

GPU hot path, fused form: record sites inside the kernels that already read them.

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
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from vllm_maxact.ops_triton import _rows, fold_atomic

#: programs per SM for the row-looping kernels: up to one row per program (as Inductor's norm
#: kernel) for decode and small prefill steps; at most 8,448 programs on an H200, so a 16k-token
#: step's per-program atomics (a few per program) stay cheap
PROGRAMS_PER_SM = 64
ACT_BLOCK_C = 2048  # columns per SiLU-and-mul program
NORM_BLOCK = 1024  # columns per step of each pass (62 registers at 8 warps on sm_90: four programs per SM)
NORM_WARPS = 8


@functools.cache
def _programs(device_index: int) -> int:
    if torch.cuda.is_available() and device_index >= 0:
        return PROGRAMS_PER_SM * torch.cuda.get_device_properties(device_index).multi_processor_count
    return 8  # Triton's interpreter (CPU tensors, tests)


def _max_programs(x: torch.Tensor) -> int:
    return _programs(x.device.index if x.device.type == "cuda" and x.device.index is not None
                     else (torch.cuda.current_device() if x.device.type == "cuda" else -1))


@triton.jit
def _cast(v, dtype: tl.constexpr, RTNE: tl.constexpr):
    """``v.to(dtype)``; with ``RTNE``, round to nearest even into bfloat16 by hand first (Triton's
    interpreter truncates float32 -> bfloat16, GPUs round; only the CPU tests set it)."""
    if RTNE:
        b = v.to(tl.int32, bitcast=True)
        b = (b + 0x7FFF + ((b >> 16) & 1)) & -65536
        v = b.to(tl.float32, bitcast=True)
    return v.to(dtype)


@triton.jit
def _parts(v, m):
    """Per element of ``v`` (float32) where ``m``: the candidates for the max and the min of the
    finite values, and a packed non-finite count (NaN in the low 16 bits, Inf in the high 16)."""
    is_nan = v != v
    is_inf = tl.abs(v) == float("inf")
    fin = m & ~is_nan & ~is_inf
    bad = (m & is_nan).to(tl.int32) + ((m & is_inf).to(tl.int32) << 16)
    return tl.where(fin, v, float("-inf")), tl.where(fin, v, float("inf")), bad


@triton.jit
def _comb3(a0, a1, a2, b0, b1, b2):
    return tl.maximum(a0, b0), tl.minimum(a1, b1), a2 + b2


@triton.jit
def _norm_kernel(x_ptr, r_ptr, w_ptr, out_ptr, rout_ptr, T, H, sx, sr, so, sro, eps, nv_ptr,
                 ea_ptr, ca_ptr, pos_x, pos_s, eb_ptr, cb_ptr, pos_o,
                 HAS_RES: tl.constexpr, HAS_W: tl.constexpr, REC_X: tl.constexpr, REC_S: tl.constexpr,
                 REC_O: tl.constexpr, RB: tl.constexpr, RTNE: tl.constexpr):
    """Rows ``pid, pid + P, ...``, each in two passes over column blocks of ``RB`` (as Inductor's
    looped norm kernel): the first reads x and the residual, stores the sum and accumulates the
    sum of squares; the second re-reads them (L2-hot) and stores the normalised output. The
    statistics accumulate in [RB] vectors across all of the program's rows and are reduced once,
    in one multi-operand reduction, before the atomics."""
    pid = tl.program_id(0)
    step = tl.num_programs(0)
    n = tl.minimum(tl.load(nv_ptr).to(tl.int32), T)
    offs = tl.arange(0, RB)
    hx = tl.full([RB], float("-inf"), tl.float32)
    lx = tl.full([RB], float("inf"), tl.float32)
    bx = tl.zeros([RB], tl.int32)
    hs = tl.full([RB], float("-inf"), tl.float32)
    ls = tl.full([RB], float("inf"), tl.float32)
    bs = tl.zeros([RB], tl.int32)
    ho = tl.full([RB], float("-inf"), tl.float32)
    lo = tl.full([RB], float("inf"), tl.float32)
    bo = tl.zeros([RB], tl.int32)
    for row in range(pid, T, step):
        valid = row < n
        row64 = tl.cast(row, tl.int64)
        ssv = tl.zeros([RB], tl.float32)
        for c0 in range(0, H, RB):
            cols = c0 + offs
            cm = cols < H
            rm = cm & valid
            x = tl.load(x_ptr + row64 * sx + cols, mask=cm, other=0.0).to(tl.float32)
            if REC_X:
                a1, a2, a3 = _parts(x, rm)
                hx, lx, bx = tl.maximum(hx, a1), tl.minimum(lx, a2), bx + a3
            if HAS_RES:
                sm = x + tl.load(r_ptr + row64 * sr + cols, mask=cm, other=0.0).to(tl.float32)
                s_out = _cast(sm, rout_ptr.dtype.element_ty, RTNE)
                tl.store(rout_ptr + row64 * sro + cols, s_out, mask=cm)
                if REC_S:
                    a4, a5, a6 = _parts(s_out.to(tl.float32), rm)
                    hs, ls, bs = tl.maximum(hs, a4), tl.minimum(ls, a5), bs + a6
            else:
                sm = x
            ssv += sm * sm
        rstd = tl.rsqrt(tl.sum(ssv, axis=0) / H + eps)
        for c0 in range(0, H, RB):
            cols = c0 + offs
            cm = cols < H
            sm = tl.load(x_ptr + row64 * sx + cols, mask=cm, other=0.0).to(tl.float32)
            if HAS_RES:
                sm += tl.load(r_ptr + row64 * sr + cols, mask=cm, other=0.0).to(tl.float32)
            y = sm * rstd
            if HAS_W:
                # vLLM's native order: round to the weight's dtype, then scale
                w = tl.load(w_ptr + cols, mask=cm, other=0.0)
                y = _cast(y, w_ptr.dtype.element_ty, RTNE and w_ptr.dtype.element_ty == tl.bfloat16).to(tl.float32) \
                    * w.to(tl.float32)
            y_out = _cast(y, out_ptr.dtype.element_ty, RTNE)
            tl.store(out_ptr + row64 * so + cols, y_out, mask=cm)
            if REC_O:
                a7, a8, a9 = _parts(y_out.to(tl.float32), cm & valid)
                ho, lo, bo = tl.maximum(ho, a7), tl.minimum(lo, a8), bo + a9
    if REC_X:
        h, lw, b = tl.reduce((hx, lx, bx), 0, _comb3)
        fold_atomic(ea_ptr, ca_ptr, pos_x, h, lw, b & 0xFFFF, b >> 16)
    if REC_S:
        h, lw, b = tl.reduce((hs, ls, bs), 0, _comb3)
        fold_atomic(ea_ptr, ca_ptr, pos_s, h, lw, b & 0xFFFF, b >> 16)
    if REC_O:
        h, lw, b = tl.reduce((ho, lo, bo), 0, _comb3)
        fold_atomic(eb_ptr, cb_ptr, pos_o, h, lw, b & 0xFFFF, b >> 16)


@triton.jit
def _silu_mul_kernel(x_ptr, out_ptr, T, D, sx, so, nv_ptr, e_ptr, c_ptr, pos,
                     REC: tl.constexpr, BC: tl.constexpr, RTNE: tl.constexpr):
    """Program (c, r): column block c of rows ``r, r + R, ...``; per row one reduction of the
    gate block's statistics into running scalars."""
    pid_c = tl.program_id(0)
    pid_r = tl.program_id(1)
    step = tl.num_programs(1)
    n = tl.minimum(tl.load(nv_ptr).to(tl.int32), T)
    cols = pid_c * BC + tl.arange(0, BC)
    cm = cols < D
    hi = tl.full([], float("-inf"), tl.float32)
    lo = tl.full([], float("inf"), tl.float32)
    cn = tl.full([], 0, tl.int32)
    ci = tl.full([], 0, tl.int32)
    for row in range(pid_r, T, step):
        row64 = tl.cast(row, tl.int64)
        g = tl.load(x_ptr + row64 * sx + cols, mask=cm, other=0.0).to(tl.float32)
        u = tl.load(x_ptr + row64 * sx + D + cols, mask=cm, other=0.0).to(tl.float32)
        if REC:
            a1, a2, a3 = _parts(g, cm & (row < n))
            b1, b2, b3 = tl.reduce((a1, a2, a3), 0, _comb3)
            hi, lo, cn, ci = tl.maximum(hi, b1), tl.minimum(lo, b2), cn + (b3 & 0xFFFF), ci + (b3 >> 16)
        # vLLM's native F.silu(gate) * up, the SiLU rounded to the activation dtype first
        a = _cast(g * tl.sigmoid(g), out_ptr.dtype.element_ty, RTNE).to(tl.float32)
        tl.store(out_ptr + row64 * so + cols, _cast(a * u, out_ptr.dtype.element_ty, RTNE), mask=cm)
    if REC:
        fold_atomic(e_ptr, c_ptr, pos, hi, lo, cn, ci)


def _rtne(x: torch.Tensor) -> bool:
    return x.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1"


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
    if T:
        block = triton.next_power_of_2(H)
        _norm_kernel[(min(T, _max_programs(x)),)](
            x2, r2, weight if weight is not None else x2, out, rout, T, H, x2.stride(0), r2.stride(0), H, H, eps,
            n_valid, ext_a if ext_a is not None else dummy, cnt_a if cnt_a is not None else dummy,
            max(pos_x, 0), max(pos_s, 0),
            ext_b if ext_b is not None else dummy, cnt_b if cnt_b is not None else dummy, max(pos_o, 0),
            HAS_RES=has_res, HAS_W=weight is not None, REC_X=rec_x, REC_S=rec_s, REC_O=rec_o,
            RB=min(block, NORM_BLOCK), RTNE=_rtne(x), num_warps=NORM_WARPS,
        )
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
        rows = min(T, max(1, _max_programs(x) // cb))
        _silu_mul_kernel[(cb, rows)](
            x2, out, T, D, x2.stride(0), D, n_valid, ext, cnt, max(pos, 0),
            REC=pos >= 0, BC=ACT_BLOCK_C, RTNE=_rtne(x), num_warps=8,
        )
    return out.view(*x.shape[:-1], D)


@silu_and_mul_rec.register_fake
def _(x, n_valid, ext, cnt, pos):
    return torch.empty((*x.shape[:-1], x.shape[-1] // 2), dtype=x.dtype, device=x.device)
