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

    from vllm_maxact import ops_norm

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


@pytest.mark.parametrize("form", [
    {},
    {"REC_O": True},
    {"HAS_RES": False, "REC_S": False},
])
def test_chunked_norm_kernel_compiles_for_sm90_without_spills(sm90, form):
    """The large-step norm read in column chunks (`ops_norm.NORM_CHUNK_FROM`), at the module's
    chunk width and warps: its point is few registers, so many programs per SM."""
    regs_mod, ops_norm, target = sm90
    const = {"HAS_RES": True, "HAS_W": True, "REC_X": True, "REC_S": True, "REC_O": False, "RTNE": False,
             "SKIP": False, "BC": ops_norm.NORM_CHUNK_C, **form}
    regs, stack = _usage(regs_mod.usage(ops_norm._norm_chunk_kernel, regs_mod.NORM_SIG, const,
                                        ops_norm.NORM_CHUNK_WARPS, target))
    assert stack == 0 and regs <= 64, (form, regs, stack)


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
    from vllm_maxact import ops_norm

    monkeypatch.setattr(ops_norm, "NORM_CHUNK_FROM", None)
    monkeypatch.setattr(ops_norm, "ACT_FLAT_FROM", None)
    monkeypatch.setattr(ops_norm, "NORM_CHUNK_C", 1024)
    ops_norm._tuning_from_env(" NORM_CHUNK_FROM=1, ACT_FLAT_FROM=2048,NORM_CHUNK_C=512 ")
    assert (ops_norm.NORM_CHUNK_FROM, ops_norm.ACT_FLAT_FROM, ops_norm.NORM_CHUNK_C) == (1, 2048, 512)
    ops_norm._tuning_from_env("NORM_CHUNK_FROM=None")
    assert ops_norm.NORM_CHUNK_FROM is None
    for bad in ("NORM_CHUNK_FROM", "NOT_A_CONSTANT=1", "_sms=1", "triton=1", "NORM_CHUNK_C=x"):
        with pytest.raises(ValueError, match="VLLM_MAXACT_OPS_NORM"):
            ops_norm._tuning_from_env(bad)
    assert ops_norm.NORM_CHUNK_C == 512  # a bad item changes nothing after it
