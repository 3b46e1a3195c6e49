"""Kernel-level timing of the in-kernel recording ops (vllm_maxact/ops_norm.py) against the
kernels the plain model runs (vLLM's native fused add + RMSNorm and SiLU-and-mul, compiled by
Inductor), at Llama-3-8B widths, as CUDA-graph replays of 32 calls (one per decoder layer).
Also the same kernels at other launch settings (`KERNELS`), and the unfused path's per-layer
kernel.
Needs only torch and triton (no vLLM): python3 benchmarks/gpu_norm_micro.py [--out FILE]"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the ops import vllm_maxact.ops_triton's shared fold
H, INTER, EPS = 4096, 14336, 1e-5
LAYERS = 32


def native_add_rms_norm(x, r, w):
    # vLLM's native fused_add_rms_norm (vllm/ir/ops/layernorm.py)
    s = x.float() + r.float()
    res = s.to(x.dtype)
    y = s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + EPS)
    return (y.to(w.dtype) * w).to(x.dtype), res


def native_silu_and_mul(x):
    d = x.shape[-1] // 2
    return F.silu(x[..., :d]) * x[..., d:]


#: kernel sets timed: tag -> (source file, memory order of its atomics, module constants set);
#: a variant's copy of ops_norm.py (benchmarks/variants/*/ops_norm.py) can be added here
KERNELS = {
    "tree": ("vllm_maxact/ops_norm.py", "relaxed", {}),
    # every program sends its atomics (as before the rows' bounds were read first)
    "noskip": ("vllm_maxact/ops_norm.py", "relaxed", {"SKIP_SEEN": 0}),
    "skip": ("vllm_maxact/ops_norm.py", "relaxed", {"SKIP_SEEN": 1 << 30}),
    "p16": ("vllm_maxact/ops_norm.py", "relaxed", {"PROGRAMS_PER_SM": 16}),
    "p32": ("vllm_maxact/ops_norm.py", "relaxed", {"PROGRAMS_PER_SM": 32}),
    # the norm's next row in flight while it reduces the current one: Triton's pipelining (2 / 3
    # stages, from 8 rows per program) or loads into registers (from 1 / 8 rows per program)
    "nst0": ("vllm_maxact/ops_norm.py", "relaxed", {"NORM_STAGES": None}),  # before 2026-12-03 (fifth run)
    "nst2": ("vllm_maxact/ops_norm.py", "relaxed", {"NORM_STAGES": 2}),
    "nst3": ("vllm_maxact/ops_norm.py", "relaxed", {"NORM_STAGES": 3}),
    "pf": ("vllm_maxact/ops_norm.py", "relaxed", {"NORM_PREFETCH_FROM": 1}),
    "pf8": ("vllm_maxact/ops_norm.py", "relaxed", {"NORM_PREFETCH_FROM": 8}),
    # fewer SiLU-and-mul programs per row block, so fewer atomics on the same two addresses
    "p2": ("vllm_maxact/ops_norm.py", "relaxed", {"PROGRAMS_PER_SM": 2}),
    "c512t4": ("vllm_maxact/ops_norm.py", "relaxed", {"ACT_BLOCK_C": 512, "ACT_BLOCK_T": 4}),
    "c256t8": ("vllm_maxact/ops_norm.py", "relaxed", {"ACT_BLOCK_C": 256, "ACT_BLOCK_T": 8}),
    # SiLU-and-mul at 16k tokens (368 us against Inductor's 322): more / fewer stages in flight,
    # wider column blocks (fewer programs per row block, more bytes per load)
    "ast2": ("vllm_maxact/ops_norm.py", "relaxed", {"ACT_STAGES": 2}),
    "ast4": ("vllm_maxact/ops_norm.py", "relaxed", {"ACT_STAGES": 4}),
    "c2048": ("vllm_maxact/ops_norm.py", "relaxed", {"ACT_BLOCK_C": 2048}),
    # (the norm in column chunks, `ch*`, and SiLU-and-mul one tile per program, `flat*`, were
    # timed here on 2026-12-05 and removed with their kernels: RESULTS.md, seventh run)
    # more SiLU-and-mul programs only (p16 also changes the norm's)
    "ap16": ("vllm_maxact/ops_norm.py", "relaxed", {"ACT_PROGRAMS_PER_SM": 16}),
    "ap32": ("vllm_maxact/ops_norm.py", "relaxed", {"ACT_PROGRAMS_PER_SM": 32}),
}


def load_ops(tag: str) -> types.ModuleType:
    """An ops_norm.py (`KERNELS`), with its atomics' memory order, under the op namespace maxact_<tag>."""
    file, sem, consts = KERNELS[tag]
    src = (ROOT / file).read_text()
    src = src.replace('sem="relaxed"', f'sem="{sem}"').replace("vllm_maxact::", f"maxact_{tag}::")
    path = Path(f"/tmp/ops_norm_{tag}.py")
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"ops_norm_{tag}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    for k, v in consts.items():
        setattr(mod, k, v)
    return mod


def load_record_triton():
    """vllm_maxact/ops_triton.py's op (the unfused triton hot path), from the tree."""
    from vllm_maxact import ops_triton

    return ops_triton.record_triton


def graph_us(fn, reps: int = 20) -> float:
    """µs per call: LAYERS calls captured in one CUDA graph, replayed ``reps`` times (median of 5)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(LAYERS):
            fn()
    times = []
    for _ in range(5):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        g.replay()
        a.record()
        for _ in range(reps):
            g.replay()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) * 1000 / reps / LAYERS)
    return sorted(times)[2]


def armed(dev) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh extrema [4, 2] (max -inf, min +inf) and counts [4, 2] buffers, as the recorder arms them."""
    ext = torch.full((4, 2), float("inf"), device=dev)
    ext[:, 0] = float("-inf")
    return ext, torch.zeros(4, 2, dtype=torch.int64, device=dev)


def measure(T, ops, cnorm, csilu, dev, record_triton=None, rounds: int = 3) -> dict:
    x = torch.randn(T, H, device=dev, dtype=torch.bfloat16)
    r = torch.randn(T, H, device=dev, dtype=torch.bfloat16) * 30
    w = torch.randn(H, device=dev, dtype=torch.bfloat16)
    gu = torch.randn(T, 2 * INTER, device=dev, dtype=torch.bfloat16)
    nv = torch.tensor([T], device=dev)
    ext, cnt = armed(dev)
    ext2, cnt2 = armed(dev)
    fns = {"norm_inductor_us": lambda: cnorm(x, r, w), "silu_inductor_us": lambda: csilu(gu)}
    for sem in ops:  # the kernel set's tag
        op = getattr(torch.ops, f"maxact_{sem}")
        fns[f"norm_rec_{sem}_us"] = lambda op=op: op.rms_norm_rec(x, r, w, EPS, nv, ext, cnt, 0, 1, None, None, -1)
        fns[f"norm_rec3_{sem}_us"] = lambda op=op: op.rms_norm_rec(x, r, w, EPS, nv, ext, cnt, 0, 1, ext2, cnt2, 0)
        fns[f"silu_rec_{sem}_us"] = lambda op=op: op.silu_and_mul_rec(gu, nv, ext, cnt, 2)
    if record_triton is not None:  # the unfused path: one extra kernel per layer reading 4 sites
        sites = [x, r, x, gu[:, :INTER]]
        fns["record_triton_4sites_us"] = lambda: record_triton(ext2, cnt2, nv, [0, 1, 2, 3], sites)
    # Rounds over every kernel in turn, the median per kernel: timing each kernel set once, in
    # sequence, once put 12 % between two sets that compile to the same code.
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            times[k].append(graph_us(fn))
    row = {"tokens": T, **{k: statistics.median(v) for k, v in times.items()},
           "rounds": times}
    # what each kernel set computes equals the native ops, and what it records equals the truth
    o0, r0 = native_add_rms_norm(x, r, w)
    s0 = native_silu_and_mul(gu).float()
    for sem in ops:
        op = getattr(torch.ops, f"maxact_{sem}")
        ea, ca = armed(dev)
        eb, cb = armed(dev)
        o1, r1 = op.rms_norm_rec(x, r, w, EPS, nv, ea, ca, 0, 1, eb, cb, 0)
        y1 = op.silu_and_mul_rec(gu, nv, ea, ca, 2).float()
        row[f"check_{sem}"] = {
            "norm_max_rel_dev": float(((o1.float() - o0.float()).abs() / o0.float().abs().clamp_min(1e-2)).max()),
            "sum_equal": bool(torch.equal(r1, r0)),
            "silu_max_rel_dev": float(((y1 - s0).abs() / s0.abs().clamp_min(1e-2)).max()),
            "recorded_exact": [float(ea[0, 0]), float(ea[0, 1]), float(ea[1, 0]), float(ea[1, 1]),
                               float(ea[2, 0]), float(ea[2, 1]), float(eb[0, 0]), float(eb[0, 1])]
                              == [float(x.float().max()), float(x.float().min()), float(r0.float().max()),
                                  float(r0.float().min()), float(gu[:, :INTER].float().max()),
                                  float(gu[:, :INTER].float().min()), float(o1.float().max()), float(o1.float().min())]
                              and int(ca.sum()) == 0 and int(cb.sum()) == 0,
        }
        # a NaN and an Inf: counted, and the extrema stay those of the finite values
        xb, gb = x.clone(), gu.clone()
        xb[T // 2, 5], xb[T - 1, 7], gb[T // 2, 3] = float("nan"), float("-inf"), float("nan")
        ea, ca = armed(dev)
        op.rms_norm_rec(xb, r, w, EPS, nv, ea, ca, 0, -1, None, None, -1)
        op.silu_and_mul_rec(gb, nv, ea, ca, 2)
        fx, fg = xb.float(), gb[:, :INTER].float()
        fx, fg = fx[torch.isfinite(fx)], fg[torch.isfinite(fg)]
        row[f"check_{sem}"]["non_finite_exact"] = (
            [float(ea[0, 0]), float(ea[0, 1]), int(ca[0, 0]), int(ca[0, 1]), float(ea[2, 0]), float(ea[2, 1]),
             int(ca[2, 0]), int(ca[2, 1])]
            == [float(fx.max()), float(fx.min()), 1, 1, float(fg.max()), float(fg.min()), 1, 0])
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--tokens", default="1,64,256,2048,16384")
    ap.add_argument("--kernels", default=",".join(KERNELS), help="comma-separated kernel sets (`KERNELS`)")
    ap.add_argument("--rounds", type=int, default=3, help="alternated timings of every kernel (median)")
    args = ap.parse_args()
    dev = torch.device("cuda")
    ops = {tag: load_ops(tag) for tag in args.kernels.split(",")}
    cnorm = torch.compile(native_add_rms_norm, dynamic=False)
    csilu = torch.compile(native_silu_and_mul, dynamic=False)
    rt = load_record_triton()
    rows = []
    for T in (int(t) for t in args.tokens.split(",")):
        rows.append(measure(T, ops, cnorm, csilu, dev, rt, args.rounds))
        print(json.dumps(rows[-1]), flush=True)
    out = {"argv": sys.argv, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "triton": __import__("triton").__version__, "layers_per_graph": LAYERS, "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
