"""Do the recording kernels compile during serving? (GPU; torch and Triton only, no vLLM.)

vLLM warms a model up at its CUDA-graph capture sizes and at its largest step, then serves
steps of any size. A Triton kernel compiles one binary per specialization of its integer
arguments, so a step size that warm-up did not cover in kind compiles a new binary on the
clock: vLLM's JIT monitor logs "Triton kernel JIT compilation during inference", and the step
stalls for as long as the compile takes.

This runs the three recording ops (fused add + RMSNorm, SiLU-and-mul, the per-layer record)
at Llama-3-8B widths through a warm-up like vLLM's (capture sizes 1-512 and a 16,384-token
step), then at serving sizes that warm-up did not see, and counts the compiles Triton reports
after warm-up (`triton.knobs.runtime.jit_post_compile_hook`, the hook vLLM's monitor uses) and
how long the calls that compiled took. Twice: with the kernels as shipped, and with the same
kernel functions re-jitted with Triton's default specialization (the form before
`ops_triton.jit_token_count`).

    PYTHONPATH=. python3 benchmarks/gpu_jit_check.py --out $OUT/jit_check.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

H, D = 4096, 14336  # Llama-3-8B hidden and intermediate widths
CAPTURE = [1, 2, 4] + list(range(8, 257, 8)) + list(range(272, 513, 16))  # vLLM's default sizes
WARM_MAX = 16384
#: serving step sizes warm-up does not include (partly filled prefill steps, odd decode batches)
SERVE = [3, 5, 37, 63, 65, 71, 130, 511, 513, 777, 2047, 4097, 8191, 8447, 8449, 9001, 12345, 12346, 16383]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    # a fresh cache: a compile is a compile, not a read of an earlier run's binary
    os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="maxact-jit-"))

    import torch
    import triton

    if not torch.cuda.is_available():
        sys.exit("gpu_jit_check.py: needs a CUDA GPU")
    from vllm_maxact import ops_norm, ops_triton

    events: list[str] = []

    def hook(*_a, **kw):
        fn = kw.get("fn")  # triton.runtime.jit.JitFunctionInfo
        events.append(str(getattr(fn, "name", None) or repr(fn)[:60]))

    triton.knobs.runtime.jit_post_compile_hook = hook
    dev = torch.device("cuda")
    w = torch.randn(H, device=dev, dtype=torch.bfloat16)

    def bufs():
        ext = torch.full((4, 2), float("inf"), device=dev)
        ext[:, 0] = float("-inf")
        return ext, torch.zeros(4, 2, dtype=torch.int64, device=dev)

    ea, ca = bufs()
    eb, cb = bufs()
    xs = torch.randn(WARM_MAX, H, device=dev, dtype=torch.bfloat16)
    rs = torch.randn(WARM_MAX, H, device=dev, dtype=torch.bfloat16)
    gu = torch.randn(WARM_MAX, 2 * D, device=dev, dtype=torch.bfloat16)

    def step(t: int) -> None:
        nv = torch.tensor([t], device=dev)
        x, r = xs[:t].clone(), rs[:t].clone()  # fresh tensors, as a step's activations are
        out, res = torch.ops.vllm_maxact.rms_norm_rec(x, r, w, 1e-5, nv, ea, ca, 1, 3, eb, cb, 0)
        torch.ops.vllm_maxact.silu_and_mul_rec(gu[:t].clone(), nv, ea, ca, 2)
        ops_triton.launch(ea, ca, nv, [0, 1], [out, res])

    def run(label: str) -> dict:
        events.clear()
        t0 = time.perf_counter()
        for t in CAPTURE + [WARM_MAX]:
            step(t)
        torch.cuda.synchronize()
        warm = {"compiles": len(events), "kernels": sorted(set(events)), "seconds": time.perf_counter() - t0}
        events.clear()
        serve = []
        for t in SERVE:
            n = len(events)
            torch.cuda.synchronize()
            t1 = time.perf_counter()
            step(t)
            torch.cuda.synchronize()
            ms = (time.perf_counter() - t1) * 1e3
            serve.append({"tokens": t, "compiled": events[n:], "ms": round(ms, 2)})
        stalls = [s for s in serve if s["compiled"]]
        res = {"warm_up": warm, "compiles_after_warm_up": len(events), "stalled_steps": stalls,
               "steps": serve}
        print(f"{label}: warm-up {warm['compiles']} compiles ({warm['seconds']:.1f} s); after warm-up "
              f"{len(events)} compiles in {len(stalls)} of {len(SERVE)} steps: "
              + ", ".join(f"{s['tokens']} tok {s['ms']:.0f} ms {s['compiled']}" for s in stalls), flush=True)
        return res

    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "shipped": run("shipped (token counts not specialized on alignment)")}
    # the same kernel functions with Triton's default specialization of every integer argument
    for mod, name in ((ops_norm, "_norm_kernel"), (ops_norm, "_silu_mul_kernel"), (ops_triton, "_layer_kernel")):
        setattr(mod, name, triton.jit(getattr(mod, name).fn))
    result["default_specialization"] = run("Triton's default specialization")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
