"""The Triton hot path's kernel against a float64 recomputation. Run by tests/test_ops_triton.py
in a process with TRITON_INTERPRET=1 (Triton's interpreter runs the kernel on CPU tensors)."""

import os

import pytest
import torch

assert os.environ.get("TRITON_INTERPRET") == "1", "run through tests/test_ops_triton.py"

from vllm_maxact.hotpath import Operand, pack  # noqa: E402
from vllm_maxact.hotpath import triton as ops_triton  # noqa: E402


@pytest.fixture(params=["gpu_form", "interpreter_form"])
def form(request, monkeypatch):
    """The in-kernel ops in both forms: the GPU's (one multi-operand reduction per norm row,
    SiLU-and-mul one row per step) and the one the interpreter runs by default (builtin
    reductions, 8-row steps)."""
    from vllm_maxact.hotpath import norm_kernels as ops_norm

    gpu = request.param != "interpreter_form"
    monkeypatch.setattr(ops_norm, "MULTI_REDUCE", gpu)
    monkeypatch.setattr(ops_norm, "ACT_BLOCK_T_INTERPRET", ops_norm.ACT_BLOCK_T if gpu else 8)
    return request.param


@pytest.fixture(params=["gpu_form", "interpreter_form", "prefetch_form"])
def norm_form(request, monkeypatch):
    """`form`, plus the GPU form with the norm loading each program's next row ahead
    (`ops_norm.NORM_PREFETCH_FROM`, and the loop's pipelining stages, which the interpreter
    accepts and ignores), for every row count, one row per program included."""
    from vllm_maxact.hotpath import norm_kernels as ops_norm

    gpu = request.param != "interpreter_form"
    monkeypatch.setattr(ops_norm, "MULTI_REDUCE", gpu)
    monkeypatch.setattr(ops_norm, "ACT_BLOCK_T_INTERPRET", ops_norm.ACT_BLOCK_T if gpu else 8)
    if request.param == "prefetch_form":
        monkeypatch.setattr(ops_norm, "NORM_PREFETCH_FROM", 1)
        monkeypatch.setattr(ops_norm, "NORM_STAGES", 2)
        monkeypatch.setattr(ops_norm, "NORM_STAGES_FROM", 1)
    return request.param


def _truth(x: torch.Tensor, n: int) -> tuple[float, float, int, int]:
    x2 = x.reshape(-1, x.shape[-1])[:n].double()
    fin = torch.isfinite(x2)
    hi = float(torch.where(fin, x2, float("-inf")).max()) if fin.any() else float("-inf")
    lo = float(torch.where(fin, x2, float("inf")).min()) if fin.any() else float("inf")
    return hi, lo, int(torch.isnan(x2).sum()), int(torch.isinf(x2).sum())


@pytest.mark.parametrize("tokens,valid", [(1, 1), (5, 3), (37, 37), (40, 0), (150, 149)])
def test_one_launch_equals_float64_per_site(tokens, valid):
    """Several sites of different widths, dtypes and strides (the gate half of a merged
    projection is a strided view) in one launch; NaN/Inf counted, never folded; rows at or past
    n_valid ignored (a huge value sits in the last row); untouched slots stay armed; more sites
    than one launch takes are split."""
    g = torch.Generator().manual_seed(tokens)
    merged = torch.randn(tokens, 2 * 1500, generator=g).to(torch.bfloat16)
    xs = [
        (torch.randn(tokens, 2048, generator=g) * 3).to(torch.bfloat16),
        merged[:, :1500],
        torch.randn(tokens, 1100, generator=g, dtype=torch.float32),
        torch.randn(tokens, 64, generator=g).half(),
    ] + [torch.randn(tokens, 96, generator=g) * (k + 1) for k in range(ops_triton.MAX_SITES)]
    xs[0][min(2, tokens - 1), 7] = float("nan")
    xs[0][0, 9] = float("inf")
    xs[2][tokens - 1, 3] = -float("inf")
    xs[1][tokens - 1, 5] = 1e4  # a padding row whenever valid < tokens
    slots = [1, 3, 4, 6] + list(range(7, 7 + ops_triton.MAX_SITES))
    ext = torch.empty(7 + ops_triton.MAX_SITES, 2)
    ext[:, 0], ext[:, 1] = float("-inf"), float("inf")
    cnt = torch.zeros(7 + ops_triton.MAX_SITES, 2, dtype=torch.int64)
    ops = [Operand(x) for x in xs]
    ops[1] = Operand(merged, width=1500)  # read in place, as the gate half of a merged projection
    # A residual stream passed as the pair a decoder layer returns: summed and rounded to bf16.
    pair = (xs[0], (torch.randn(tokens, 2048, generator=g) * 0.3).to(torch.bfloat16))
    ops.append(Operand(*pair))
    slots = slots + [0]
    xs = xs + [(pair[0].float() + pair[1].float()).to(torch.bfloat16)]
    ops_triton.launch(ext, cnt, torch.tensor([valid]), *pack(slots, ops))
    for slot, x in zip(slots, xs, strict=True):
        got = (float(ext[slot, 0]), float(ext[slot, 1]), int(cnt[slot, 0]), int(cnt[slot, 1]))
        assert got == _truth(x, valid), slot
    for slot in (2, 5):
        assert float(ext[slot, 0]) == float("-inf") and int(cnt[slot].sum()) == 0


# -- sites recorded inside the model's own kernels (vllm_maxact.hotpath.norm_kernels) ------------------------

def _armed(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    ext = torch.empty(n, 2)
    ext[:, 0], ext[:, 1] = float("-inf"), float("inf")
    return ext, torch.zeros(n, 2, dtype=torch.int64)


def _same_within_one_ulp(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal where finite, up to a float32 summation order that may move a rounding by one ulp."""
    g, w = got.double(), want.double()
    fin = torch.isfinite(w)
    assert torch.equal(torch.isnan(g), torch.isnan(w)) and torch.equal(g[torch.isinf(w)], w[torch.isinf(w)])
    ulp = w[fin].abs() * 2.0 ** -(7 if want.dtype == torch.bfloat16 else 10)
    assert bool(((g[fin] - w[fin]).abs() <= ulp + 1e-30).all())
    assert int((g[fin] != w[fin]).sum()) <= 0.01 * max(int(fin.sum()), 100)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tokens,valid", [(1, 1), (5, 3), (37, 37), (40, 0), (300, 299)])
def test_in_kernel_add_rms_norm_records_and_equals_vllm(tokens, valid, dtype, norm_form):
    """The fused add + RMSNorm with recording: outputs equal vLLM's native implementation; x,
    the sum (as stored) and the output are folded at their positions of two groups, NaN / Inf
    counted, padding rows (a huge value in the last one) ignored, other positions untouched.
    300 rows exceed the interpreter's 8 programs, so each program loops over rows."""
    from vllm.ir.ops.layernorm import fused_add_rms_norm

    from vllm_maxact.hotpath import norm_kernels as ops_norm  # noqa: F401

    g = torch.Generator().manual_seed(tokens)
    H = 96
    x = (torch.randn(tokens, H, generator=g) * 3).to(dtype)
    r = (torch.randn(tokens, H, generator=g) * 40).to(dtype)
    w = (torch.randn(H, generator=g)).to(dtype)
    x[min(2, tokens - 1), 7] = float("nan")
    r[0, 9] = float("inf")
    x[tokens - 1, 5] = 3e4  # a padding row whenever valid < tokens
    ea, ca = _armed(4)
    eb, cb = _armed(2)
    out, res = torch.ops.vllm_maxact.rms_norm_rec(x, r, w, 1e-5, torch.tensor([valid]), ea, ca, 1, 3, eb, cb, 0)
    want_out, want_res = fused_add_rms_norm.impls["native"].impl_fn(x, r, w, 1e-5)
    torch.testing.assert_close(res, want_res, rtol=0, atol=0, equal_nan=True)  # the sum: exact
    _same_within_one_ulp(out, want_out)
    for (e, c, pos), t in (((ea, ca, 1), x), ((ea, ca, 3), res), ((eb, cb, 0), out)):
        assert (float(e[pos, 0]), float(e[pos, 1]), int(c[pos, 0]), int(c[pos, 1])) == _truth(t, valid), pos
    for e, c, pos in ((ea, ca, 0), (ea, ca, 2), (eb, cb, 1)):
        assert float(e[pos, 0]) == float("-inf") and float(e[pos, 1]) == float("inf") and int(c[pos].sum()) == 0


def test_in_kernel_rms_norm_without_residual_or_weight(norm_form):
    """The first layer's input norm (no residual: records its input, the embedding) and a
    weightless norm; positions of -1 record nothing."""
    from vllm.ir.ops.layernorm import rms_norm

    from vllm_maxact.hotpath import norm_kernels as ops_norm  # noqa: F401

    g = torch.Generator().manual_seed(3)
    x = (torch.randn(23, 80, generator=g) * 5).to(torch.bfloat16)
    w = torch.randn(80, generator=g).to(torch.bfloat16)
    ea, ca = _armed(2)
    out, empty = torch.ops.vllm_maxact.rms_norm_rec(x, None, w, 1e-6, torch.tensor([20]), ea, ca, 1, -1, None, None,
                                                    -1)
    assert empty.numel() == 0
    _same_within_one_ulp(out, rms_norm.impls["native"].impl_fn(x, w, 1e-6))
    assert (float(ea[1, 0]), float(ea[1, 1]), int(ca[1, 0]), int(ca[1, 1])) == _truth(x, 20)
    assert float(ea[0, 0]) == float("-inf")
    out2, _ = torch.ops.vllm_maxact.rms_norm_rec(x, None, None, 1e-6, torch.tensor([20]), None, None, -1, -1, ea, ca,
                                                 0)
    _same_within_one_ulp(out2, rms_norm.impls["native"].impl_fn(x, None, 1e-6))
    assert (float(ea[0, 0]), float(ea[0, 1])) == _truth(out2, 20)[:2]


@pytest.mark.parametrize("tokens,valid", [(1, 1), (6, 4), (300, 300), (9, 0)])
def test_in_kernel_silu_and_mul_records_the_gate(tokens, valid, form):
    """SiLU-and-mul with recording equals vLLM's native ``silu(gate) * up`` and folds the gate
    half (not the up half, which holds the larger values here) over the valid rows; a width that
    is not a multiple of the column block."""
    from vllm.model_executor.layers.activation import SiluAndMul

    from vllm_maxact.hotpath import norm_kernels as ops_norm  # noqa: F401

    g = torch.Generator().manual_seed(tokens)
    D = 1500
    x = torch.randn(tokens, 2 * D, generator=g)
    x[:, D:] *= 50
    x = x.to(torch.bfloat16)
    x[0, 3] = float("nan")
    x[tokens - 1, 11] = -1e4  # a padding row whenever valid < tokens
    e, c = _armed(3)
    y = torch.ops.vllm_maxact.silu_and_mul_rec(x, torch.tensor([valid]), e, c, 2)
    _same_within_one_ulp(y, SiluAndMul.forward_native(x))
    assert (float(e[2, 0]), float(e[2, 1]), int(c[2, 0]), int(c[2, 1])) == _truth(x[:, :D], valid)
    assert float(e[0, 0]) == float("-inf") and int(c[:2].sum()) == 0


@pytest.mark.parametrize("tokens,valid", [(1, 1), (37, 30), (300, 255)])
def test_in_kernel_finite_inputs_fold_without_the_exact_pass(tokens, valid, form):
    """All values finite (the common case: the programs fold their max / min directly, no re-read):
    the recorded extrema are exactly those of the valid rows, counts stay 0, and a huge value in a
    padding row is ignored."""
    from vllm_maxact.hotpath import norm_kernels as ops_norm  # noqa: F401

    g = torch.Generator().manual_seed(tokens + 11)
    H, D = 200, 1500
    x = (torch.randn(tokens, H, generator=g) * 3).to(torch.bfloat16)
    r = (torch.randn(tokens, H, generator=g) * 40).to(torch.bfloat16)
    w = torch.randn(H, generator=g).to(torch.bfloat16)
    gu = torch.randn(tokens, 2 * D, generator=g).to(torch.bfloat16)
    if valid < tokens:
        x[tokens - 1, 3] = 5e3
        gu[tokens - 1, 1] = -1e4
    ea, ca = _armed(4)
    eb, cb = _armed(2)
    out, res = torch.ops.vllm_maxact.rms_norm_rec(x, r, w, 1e-5, torch.tensor([valid]), ea, ca, 1, 3, eb, cb, 0)
    torch.ops.vllm_maxact.silu_and_mul_rec(gu, torch.tensor([valid]), ea, ca, 2)
    for (e, pos), t in (((ea, 1), x), ((ea, 3), res), ((eb, 0), out), ((ea, 2), gu[:, :D])):
        assert (float(e[pos, 0]), float(e[pos, 1])) == _truth(t, valid)[:2], pos
    assert int(ca.sum()) == 0 and int(cb.sum()) == 0


@pytest.mark.parametrize("tokens", [1, 300])
def test_in_kernel_folds_into_what_the_rows_already_hold(tokens, form):
    """Rows already hold a window's extrema (steady serving: the host re-arms them only when it
    collects). A row seeded inside the batch's range ends at the batch's extrema (programs
    whose own extremes pass the seed fold them, the others send nothing); a row seeded outside
    keeps its seed; neighbouring rows hold huge values, so reading the wrong row's bounds would
    skip folds that are due."""
    from vllm_maxact.hotpath import norm_kernels as ops_norm  # noqa: F401

    g = torch.Generator().manual_seed(tokens + 5)
    H, D = 200, 1500
    x = (torch.randn(tokens, H, generator=g) * 3).to(torch.bfloat16)
    r = (torch.randn(tokens, H, generator=g) * 40).to(torch.bfloat16)
    gu = torch.randn(tokens, 2 * D, generator=g).to(torch.bfloat16)
    nv = torch.tensor([tokens])
    sites = {1: x.float(), 3: (x.float() + r.float()).to(torch.bfloat16).float(), 5: gu[:, :D].float()}

    def seeded(inside: bool) -> torch.Tensor:
        ext = torch.tensor([[1e30, -1e30]] * 7)
        for pos, t in sites.items():
            hi, lo = float(t.max()), float(t.min())
            ext[pos] = torch.tensor([hi - 0.25 * (hi - lo), lo + 0.25 * (hi - lo)] if inside else [hi + 1, lo - 1])
        return ext

    for inside in (True, False):
        ext, cnt = seeded(inside), torch.zeros(7, 2, dtype=torch.int64)
        want = ext.clone()
        torch.ops.vllm_maxact.rms_norm_rec(x, r, None, 1e-5, nv, ext, cnt, 1, 3, None, None, -1)
        torch.ops.vllm_maxact.silu_and_mul_rec(gu, nv, ext, cnt, 5)
        for pos, t in sites.items():
            if inside:
                want[pos] = torch.tensor([float(t.max()), float(t.min())])
        assert torch.equal(ext, want), (inside, ext, want)
        assert int(cnt.sum()) == 0


@pytest.mark.parametrize("tokens", [1, 150])
def test_one_launch_folds_into_what_the_rows_already_hold(tokens):
    """The unfused per-layer kernel: the same bounds, read per program (see above)."""
    g = torch.Generator().manual_seed(tokens)
    x = torch.randn(tokens, 1500, generator=g) * 7
    hi, lo = float(x.max()), float(x.min())
    ext = torch.tensor([[1e30, -1e30], [hi - 1, lo + 1], [1e30, -1e30], [hi + 1, lo - 1]])
    cnt = torch.zeros(4, 2, dtype=torch.int64)
    want = ext.clone()
    want[1] = torch.tensor([hi, lo])
    ops_triton.launch(ext, cnt, torch.tensor([tokens]), *pack([1, 3], [Operand(x), Operand(x)]))
    assert torch.equal(ext, want), (ext, want)
