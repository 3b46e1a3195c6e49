"""Registers per thread of the in-kernel recording ops, compiled for a GPU on any machine.

Triton compiles for a target without a GPU present; `cuobjdump -res-usage` (shipped with
Triton's NVIDIA backend) reads the registers, stack (spills) and shared memory from the cubin.
Compares vllm_maxact/hotpath/norm_kernels.py with a variant's copy, at Llama-3-8B widths:

    python benchmarks/triton_regs.py [--variant PATH/TO/a_modified_norm_kernels.py] [--arch 90]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the ops import vllm_maxact.hotpath.triton's shared fold
NORM_SIG = {"x_ptr": "*bf16", "r_ptr": "*bf16", "w_ptr": "*bf16", "out_ptr": "*bf16", "rout_ptr": "*bf16", "T": "i32",
            "H": "i32", "sx": "i32", "sr": "i32", "so": "i32", "sro": "i32", "eps": "fp32", "nv_ptr": "*i64",
            "ea_ptr": "*fp32", "ca_ptr": "*i64", "pos_x": "i32", "pos_s": "i32", "eb_ptr": "*fp32", "cb_ptr": "*i64",
            "pos_o": "i32"}
ACT_SIG = {"x_ptr": "*bf16", "out_ptr": "*bf16", "T": "i32", "D": "i32", "sx": "i32", "so": "i32", "nv_ptr": "*i64",
           "e_ptr": "*fp32", "c_ptr": "*i64", "pos": "i32"}


def load(path: Path, name: str):
    src = path.read_text().replace("vllm_maxact::", f"{name}::")
    tmp = Path(tempfile.mkdtemp()) / f"{name}.py"
    tmp.write_text(src)
    spec = importlib.util.spec_from_file_location(name, tmp)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


#: arguments that Triton's launcher sees divisible by 16 at Llama-3-8B widths (it specializes on
#: that: 16-byte aligned pointers, widths and row strides of 4,096 / 14,336 / 28,672), so their
#: loads and stores compile vectorized as they do on the GPU
ALIGNED = {"x_ptr", "r_ptr", "w_ptr", "out_ptr", "rout_ptr", "H", "D", "sx", "sr", "so", "sro", "nv_ptr", "ea_ptr",
           "ca_ptr", "eb_ptr", "cb_ptr", "e_ptr", "c_ptr"}


def compile_kernel(kernel, sig: dict, const: dict, warps: int, target: GPUTarget, also_aligned: tuple = ()):
    aligned = ALIGNED.union(also_aligned)
    attrs = {(kernel.arg_names.index(a),): [["tt.divisibility", 16]] for a in sig if a in aligned}
    return triton.compile(ASTSource(fn=kernel, signature={**sig, **{c: "constexpr" for c in const}}, constexprs=const,
                                    attrs=attrs), target=target, options={"num_warps": warps})


def _cuobjdump(k, flag: str) -> str:
    cubin = Path(tempfile.mkdtemp()) / "k.cubin"
    cubin.write_bytes(k.asm["cubin"])
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return subprocess.run([str(tool), flag, str(cubin)], capture_output=True, text=True, check=True).stdout


def sass(kernel, sig: dict, const: dict, warps: int, target: GPUTarget, also_aligned: tuple = ()) -> list[str]:
    """The kernel's machine instructions, without their addresses."""
    out = _cuobjdump(compile_kernel(kernel, sig, const, warps, target, also_aligned), "-sass")
    return [re.sub(r"/\*[0-9a-f]+\*/", "", line).strip() for line in out.splitlines()
            if re.match(r"\s+/\*[0-9a-f]{4}\*/", line)]


def usage(kernel, sig: dict, const: dict, warps: int, target: GPUTarget) -> str:
    out = _cuobjdump(compile_kernel(kernel, sig, const, warps, target), "-res-usage")
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+)", out)
    return m.group(0) if m else out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", type=Path, default=None, help="a variant copy of norm_kernels.py to compare")
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--prefetch", action="store_true", help="the norm's form that loads its next row early")
    ap.add_argument("--norm-stages", type=int, default=None,
                    help="the norm's row loop pipelined (stages; 0: not; default: the module's NORM_STAGES)")
    ap.add_argument("--act-stages", type=int, default=None, help="SiLU-and-mul's stages (default: ACT_STAGES)")
    ap.add_argument("--act-block-c", type=int, default=None, help="SiLU-and-mul's columns per program (ACT_BLOCK_C)")
    args = ap.parse_args()
    target = GPUTarget("cuda", args.arch, 32)
    print(f"triton {triton.__version__}, sm_{args.arch}")
    files = [("tree", ROOT / "vllm_maxact/hotpath/norm_kernels.py")] + ([("variant", args.variant)] if args.variant else [])
    for tag, path in files:
        mod = load(path, f"regs_{tag}")
        src = path.read_text()
        for rec_o in (False, True):
            const = {"HAS_RES": True, "HAS_W": True, "REC_X": True, "REC_S": True, "REC_O": rec_o, "RTNE": False,
                     "MULTI": True}
            if "SKIP: tl.constexpr" in src:
                const["SKIP"] = False  # the large-step form (bounds read only up to SKIP_SEEN tokens)
            if "PREFETCH" in mod._norm_kernel.arg_names:
                stages = getattr(mod, "NORM_STAGES", None) if args.norm_stages is None else args.norm_stages
                const.update(PREFETCH=args.prefetch, STAGES=stages or None)
            if "RB: tl.constexpr" in src:
                const["RB"], warps = mod.NORM_BLOCK, mod.NORM_WARPS
            else:
                const["BH"], warps = 4096, mod._norm_warps(4096)
            name = "final norm (x, sum, output)" if rec_o else "norm (x, sum)"
            print(f"{tag:8s} {name:28s} {warps} warps  {usage(mod._norm_kernel, NORM_SIG, const, warps, target)}")
        const = {"REC": True, "RTNE": False, "BC": args.act_block_c or mod.ACT_BLOCK_C, "MULTI": True}
        if "SKIP: tl.constexpr" in src:
            const["SKIP"] = False
        if "STAGES" in mod._silu_mul_kernel.arg_names:
            const["STAGES"] = args.act_stages or mod.ACT_STAGES  # the large-step form
        warps = 4
        if "BT: tl.constexpr" in src:
            const["BT"] = mod.ACT_BLOCK_T
        else:
            warps = 8
        print(f"{tag:8s} {'SiLU-and-mul (gate)':28s} {warps} warps  {usage(mod._silu_mul_kernel, ACT_SIG, const, warps, target)}")


if __name__ == "__main__":
    main()
