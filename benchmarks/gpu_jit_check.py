"""Do the recording kernels compile during serving? (GPU; torch and Triton only, no vLLM.)

vLLM warms a model up with its largest step (the profile run), then at its CUDA-graph capture
sizes, and then serves steps of any size. A Triton kernel compiles one binary per
specialization of its integer arguments and per set of compile-time constants, so a step whose
kind warm-up did not cover compiles a new binary on the clock: vLLM's JIT monitor logs "Triton
kernel JIT compilation during inference", and the step stalls for as long as the compile takes.

This runs the three recording ops (fused add + RMSNorm, SiLU-and-mul, the per-layer record)
at Llama-3-8B widths through that warm-up (a 16,384-token step, then the capture sizes from
largest to smallest: vLLM's default 1-512, or 1-32 as with ``max_num_seqs=16``), then at 19
serving sizes warm-up did not include, and counts the compiles Triton reports after warm-up
(`triton.knobs.runtime.jit_post_compile_hook`, the hook vLLM's monitor uses) and the stalled
steps' times. Three forms, each with freshly jitted kernels and its own Triton cache:
``shipped`` (token counts not specialized on alignment, launch classes compiled ahead:
`ops_triton.jit_token_count`, `ops_triton.warm_ahead`), ``no_ahead`` (the first without
the second) and ``default`` (Triton's default specialization, nothing ahead: the kernels before
2026-12-05).

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
#: vLLM's default capture sizes, and those of max_num_seqs=16 (up to twice the sequences)
CAPTURE = {"default": [1, 2, 4] + list(range(8, 257, 8)) + list(range(272, 513, 16)),
           "small": [1, 2, 4, 8, 16, 24, 32]}
WARM_MAX = 16384
#: serving step sizes warm-up does not include (partly filled prefill steps, odd decode batches)
SERVE = [3, 5, 37, 63, 65, 71, 130, 511, 513, 777, 2047, 4097, 8191, 8447, 8449, 9001, 12345, 12346, 16383]
KERNELS = (("ops_norm", "_norm_kernel"), ("ops_norm", "_silu_mul_kernel"), ("ops_triton", "_layer_kernel"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    import torch
    import triton

    if not torch.cuda.is_available():
        sys.exit("gpu_jit_check.py: needs a CUDA GPU")
    from vllm_maxact import ops_norm, ops_triton

    mods = {"ops_norm": ops_norm, "ops_triton": ops_triton}
    shipped = {name: getattr(mods[m], name).fn for m, name in KERNELS}
    warm_ahead = ops_triton.warm_ahead
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

    def use(form: str) -> None:
        """Fresh kernel objects (no binary in memory), a fresh Triton cache, the form's settings."""
        os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix=f"maxact-jit-{form}-")
        jit = triton.jit if form == "default" else ops_triton.jit_token_count("T")
        for m, name in KERNELS:
            setattr(mods[m], name, jit(shipped[name]))
        ahead = warm_ahead if form == "shipped" else (lambda *a, **k: None)
        ops_triton.warm_ahead = ops_norm.warm_ahead = ahead
        ops_triton._warm_upto.clear()

    def run(form: str, capture: str) -> dict:
        use(form)
        events.clear()
        t0 = time.perf_counter()
        for t in [WARM_MAX, *sorted(CAPTURE[capture], reverse=True)]:
            step(t)
        torch.cuda.synchronize()
        warm = {"compiles": len(events), "kernels": sorted(set(events)), "seconds": round(time.perf_counter() - t0, 2)}
        events.clear()
        serve = []
        for t in SERVE:
            n = len(events)
            torch.cuda.synchronize()
            t1 = time.perf_counter()
            step(t)
            torch.cuda.synchronize()
            serve.append({"tokens": t, "compiled": events[n:], "ms": round((time.perf_counter() - t1) * 1e3, 2)})
        stalls = [s for s in serve if s["compiled"]]
        others = sorted(s["ms"] for s in serve if not s["compiled"])
        print(f"{form:8s} capture {capture:7s}: warm-up {warm['compiles']} compiles ({warm['seconds']} s); "
              f"serving: {len(events)} compiles in {len(stalls)} of {len(SERVE)} steps"
              + "".join(f"; {s['tokens']} tok {s['ms']:.0f} ms {s['compiled']}" for s in stalls)
              + (f" (steps without a compile: {others[0]:.1f}-{others[-1]:.1f} ms)" if others else ""), flush=True)
        return {"warm_up": warm, "compiles_while_serving": len(events), "stalled_steps": stalls, "steps": serve}

    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "argv": sys.argv}
    for form in ("shipped", "no_ahead", "default"):
        for capture in CAPTURE:
            result[f"{form}/{capture}"] = run(form, capture)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
