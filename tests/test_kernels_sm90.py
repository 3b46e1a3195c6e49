"""The GPU kernels of the in-kernel path, compiled for an H100 / H200 (sm_90) on this CPU machine.

Triton's interpreter (tests/test_ops_triton.py) checks what the kernels compute, not whether
they compile for a GPU: multi-operand reductions, pipelined loops and register pressure only
exist in the real compiler. Triton compiles for a target without a GPU present, with the
alignment hints its launcher gives these arguments at Llama-3-8B widths
(benchmarks/triton_regs.py), and ships the tools that read the cubin. Every form the serving
path can launch must compile without spilling registers to the stack.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _regs_module():
    spec = importlib.util.spec_from_file_location("maxact_triton_regs", ROOT / "benchmarks" / "triton_regs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def sm90():
    pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget

    from vllm_maxact.hotpath import norm_kernels as ops_norm

    return _regs_module(), ops_norm, GPUTarget("cuda", 90, 32)


def _usage(text: str) -> tuple[int, int]:
    m = re.search(r"REG:(\d+) STACK:(\d+)", text)
    assert m, text
    return int(m.group(1)), int(m.group(2))


NORM = {"HAS_RES": True, "HAS_W": True, "REC_X": True, "REC_S": True, "REC_O": False, "RTNE": False,
        "MULTI": True, "SKIP": False, "PREFETCH": False, "STAGES": None, "BH": 4096}


@pytest.mark.parametrize("form", [
    {},  # every decoder layer's fused add + norm (x and the sum recorded)
    {"REC_O": True},  # the final norm (its output too)
    {"HAS_RES": False, "REC_S": False},  # the first layer's input norm (the embedding)
    {"SKIP": True},  # decode sizes: the rows' bounds read first
    {"PREFETCH": True},  # the next row loaded ahead
    {"STAGES": 2},
    {"STAGES": 3},
])
def test_norm_kernel_compiles_for_sm90_without_spills(sm90, form):
    regs_mod, ops_norm, target = sm90
    const = {**NORM, **form}
    regs, stack = _usage(regs_mod.usage(ops_norm._norm_kernel, regs_mod.NORM_SIG, const,
                                        ops_norm._norm_warps(4096), target))
    assert stack == 0, (form, regs, stack)
    # two 8-warp programs per SM (65,536 registers) is what the measured speed rests on
    assert regs <= 128, (form, regs)


@pytest.mark.parametrize("form", [{"SKIP": True, "STAGES": None}, {"SKIP": False, "STAGES": 3}])
def test_silu_and_mul_kernel_compiles_for_sm90_without_spills(sm90, form):
    regs_mod, ops_norm, target = sm90
    const = {"REC": True, "RTNE": False, "BC": ops_norm.ACT_BLOCK_C, "BT": ops_norm.ACT_BLOCK_T, "MULTI": True, **form}
    regs, stack = _usage(regs_mod.usage(ops_norm._silu_mul_kernel, regs_mod.ACT_SIG, const, 4, target))
    assert stack == 0 and regs <= 64, (form, regs, stack)


def test_pipelined_loops_compile_to_asynchronous_copies(sm90):
    """The large-step forms really pipeline (Triton drops ``num_stages`` silently where it cannot):
    asynchronous copies into shared memory with stages, none without."""
    regs_mod, ops_norm, target = sm90
    act = {"REC": True, "RTNE": False, "BC": ops_norm.ACT_BLOCK_C, "BT": ops_norm.ACT_BLOCK_T, "MULTI": True,
           "SKIP": False}
    for kernel, sig, const, warps in (
        (ops_norm._silu_mul_kernel, regs_mod.ACT_SIG, act, 4),
        (ops_norm._norm_kernel, regs_mod.NORM_SIG, NORM, 8),
    ):
        plain = regs_mod.compile_kernel(kernel, sig, {**const, "STAGES": None}, warps, target)
        piped = regs_mod.compile_kernel(kernel, sig, {**const, "STAGES": 3}, warps, target)
        assert "cp.async" not in plain.asm["ptx"] and "cp.async" in piped.asm["ptx"], kernel


def test_launch_constants_from_the_environment(monkeypatch):
    pytest.importorskip("triton")
    from vllm_maxact.hotpath import norm_kernels as ops_norm

    monkeypatch.setattr(ops_norm, "NORM_STAGES", 3)
    monkeypatch.setattr(ops_norm, "ACT_PROGRAMS_PER_SM", None)
    monkeypatch.setattr(ops_norm, "ACT_BLOCK_C", 1024)
    ops_norm._tuning_from_env(" NORM_STAGES=2, ACT_PROGRAMS_PER_SM=32,ACT_BLOCK_C=512 ")
    assert (ops_norm.NORM_STAGES, ops_norm.ACT_PROGRAMS_PER_SM, ops_norm.ACT_BLOCK_C) == (2, 32, 512)
    ops_norm._tuning_from_env("NORM_STAGES=None")
    assert ops_norm.NORM_STAGES is None
    for bad in ("NORM_STAGES", "NOT_A_CONSTANT=1", "_sms=1", "triton=1", "ACT_BLOCK_C=x"):
        with pytest.raises(ValueError, match="VLLM_MAXACT_OPS_NORM"):
            ops_norm._tuning_from_env(bad)
    assert ops_norm.ACT_BLOCK_C == 512  # a bad item changes nothing after it


class _Launches:
    """Launches of ``kernel`` (and compiles ahead through its ``warmup``) captured instead of run,
    each as the key under which Triton caches its binary: the specialization Triton's own
    binder computes for sm_90 from the arguments our launcher passes, plus the options."""

    def __init__(self, monkeypatch, kernel, target):
        from triton.compiler import make_backend
        from triton.runtime.jit import create_function_from_signature

        self.binder = create_function_from_signature(kernel.signature, kernel.params, make_backend(target))
        self.runs, self.ahead = [], []
        monkeypatch.setattr(kernel, "run", self._run)

    def _run(self, *args, grid, warmup, **kw):
        _, spec, options = self.binder(*args, **kw)
        (self.ahead if warmup else self.runs).append(f"{spec} {sorted(options.items())}")


def _launchers(ops_norm, ops_triton, H=256):
    """(kernel, launch(T)) for the three recording kernels, through the real ops on CPU tensors."""
    import torch

    def ext(n):
        return torch.zeros(n, 2), torch.zeros(n, 2, dtype=torch.int64)

    def norm(t):
        x, r = torch.ones(t, H, dtype=torch.bfloat16), torch.ones(t, H, dtype=torch.bfloat16)
        torch.ops.vllm_maxact.rms_norm_rec(x, r, torch.ones(H, dtype=torch.bfloat16), 1e-5, torch.tensor([t]),
                                           *ext(4), 1, 3, *ext(2), 0)

    def act(t):
        torch.ops.vllm_maxact.silu_and_mul_rec(torch.ones(t, 2 * H, dtype=torch.bfloat16), torch.tensor([t]),
                                               *ext(4), 2)

    def record(t):
        from vllm_maxact.hotpath import Operand, pack

        x, y = torch.ones(t, H, dtype=torch.bfloat16), torch.ones(t, 2 * H, dtype=torch.bfloat16)
        ops_triton.launch(*ext(4), torch.tensor([t]), *pack([1, 3], [Operand(x, x), Operand(y, width=H)]))

    return ((ops_norm._norm_kernel, norm), (ops_norm._silu_mul_kernel, act), (ops_triton._layer_kernel, record))


@pytest.mark.parametrize("sizes", [(2, 3, 16, 48), (100, 101, 112, 1000)], ids=["decode", "prefill"])
def test_token_counts_do_not_select_a_new_binary(sm90, monkeypatch, sizes):
    """A step's token count reaches every kernel as an argument; were it specialized on its
    divisibility by 16, the first step of a new kind (a partly filled prefill after a warm-up of
    16,384 tokens) would compile during serving, a 1-2 s stall. Within one class of launch
    settings (the launcher's size-dependent constants: rows read first at decode sizes, the
    pipelined loop for large steps), every count must map to one binary."""
    from vllm_maxact.hotpath import triton as ops_triton

    _, ops_norm, target = sm90
    monkeypatch.setattr(ops_triton, "_warm_upto", {})
    for kernel, launch in _launchers(ops_norm, ops_triton):
        seen = _Launches(monkeypatch, kernel, target)
        for t in sizes:
            launch(t)
        assert len(seen.runs) == len(sizes) and len(set(seen.runs)) == 1, (kernel, seen.runs)


def test_the_largest_step_compiles_every_smaller_steps_binary(sm90, monkeypatch):
    """vLLM warms up with its largest step, then its CUDA-graph capture sizes; a count between
    them (every count, with ``enforce_eager``) must not be the first to need a binary. The first
    launch at a new largest count compiles one count of each launch class ahead
    (`ops_triton.warm_ahead`): after it, every smaller count's launch is one already compiled,
    and a second launch at the largest count compiles nothing more."""
    from vllm_maxact.hotpath import triton as ops_triton

    _, ops_norm, target = sm90
    monkeypatch.setattr(ops_triton, "_warm_upto", {})
    top = 1000
    for kernel, launch in _launchers(ops_norm, ops_triton):
        seen = _Launches(monkeypatch, kernel, target)
        launch(top)
        built = set(seen.runs) | set(seen.ahead)
        assert len(set(seen.ahead)) >= 2, (kernel, seen.ahead)  # a count of 1, and more
        n_ahead = len(seen.ahead)
        for t in [*range(1, 150), 499, top]:
            launch(t)
            assert seen.runs[-1] in built, (kernel, t)
        assert len(seen.ahead) == n_ahead, kernel


def test_a_token_counts_divisibility_changes_no_instruction(sm90):
    """Why not specializing the count costs nothing: the large-step forms compile to the same
    sm_90 machine code whether or not Triton is told the count is divisible by 16 (it bounds
    the row loop and masks rows; nothing is vectorized along it)."""
    regs_mod, ops_norm, target = sm90
    act = {"REC": True, "RTNE": False, "BC": ops_norm.ACT_BLOCK_C, "BT": ops_norm.ACT_BLOCK_T, "MULTI": True,
           "SKIP": False, "STAGES": 3}
    for kernel, sig, const, warps in ((ops_norm._norm_kernel, regs_mod.NORM_SIG, {**NORM, "STAGES": 3}, 8),
                                      (ops_norm._silu_mul_kernel, regs_mod.ACT_SIG, act, 4)):
        plain = regs_mod.sass(kernel, sig, const, warps, target)
        aligned = regs_mod.sass(kernel, sig, const, warps, target, also_aligned=("T",))
        assert len(plain) > 500 and plain == aligned, kernel
