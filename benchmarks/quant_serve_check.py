"""Does vLLM serve `vllm-maxact quantize` checkpoints with their static scales, on this machine?

A small random Llama (head dim 64, so every attention backend and the int8 GEMM kernels take
it) with outlier channels, calibrated by a real replay in vLLM (plugin on, every linear input
and the KV cache recorded), quantized three ways, then served by vLLM next to the unquantized
model with the same prompts (prompt logprobs and greedy continuations):

- ``w8a8-zp``: static per-tensor activation scales written asymmetric with zero point 0
  (`--input-zero-point`: what AMX CPUs need), FP8 KV cache with our scales;
- ``w8a8-sym-keep-down``: the same scales written symmetric, every ``down_proj`` left
  unquantized (`--keep-sites 'layers.*.down_in'`: the config's ``ignore`` list);
- ``w8a8-dynamic``: per-token activation scales (vLLM's own), the contrast.

``build`` (here, on the CPU build) writes the model, the calibration and the checkpoints into
a folder; ``serve`` runs them in vLLM on whatever this machine is and writes the logprobs;
``compare`` reads two ``serve`` outputs (e.g. CPU and GPU) and says whether each machine applied
the static scales: a kernel that ignores them serves the static checkpoint like the dynamic one.

    python benchmarks/quant_serve_check.py build --dir .gq
    python benchmarks/quant_serve_check.py serve --dir .gq --out cpu.json
    python benchmarks/quant_serve_check.py serve --dir .gq --out gpu.json      # on the GPU machine
    python benchmarks/quant_serve_check.py compare cpu.json gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

CKPTS = {
    "w8a8-zp": ["--threshold", "max", "--input-zero-point"],
    "w8a8-sym-keep-down": ["--threshold", "max", "--keep-sites", "layers.*.down_in"],
    "w8a8-dynamic": ["--dynamic"],
}
KINDS = "residual,attn_in,o_in,mlp_in,down_in,k,v"


def prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(length)] for _ in range(n)]


def build(d: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    src = d / "src"
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # outlier channels, as real residual streams have
        for layer in model.model.layers:
            layer.input_layernorm.weight[[3, 17]] = 20.0
            layer.post_attention_layernorm.weight[[5]] = 12.0
    model.to(torch.bfloat16).save_pretrained(src, safe_serialization=True)

    # calibration: a real replay in vLLM (CPU build here), every linear input and the KV cache
    import pyarrow.feather as feather
    from vllm import LLM, SamplingParams

    import vllm_maxact
    from vllm_maxact.api import collect
    from vllm_maxact.export.arrow import table_from_payloads

    os.environ["VLLM_MAXACT_KINDS"] = KINDS
    llm = LLM(str(src), skip_tokenizer_init=True, max_model_len=1024, dtype="bfloat16", enforce_eager=True,
              enable_prefix_caching=False)
    vllm_maxact.reset_stats(llm)
    llm.generate([{"prompt_token_ids": t} for t in prompts(16, 256, 1024, seed=1)], SamplingParams(max_tokens=1),
                 use_tqdm=False)
    feather.write_feather(table_from_payloads(collect(llm)), d / "calib.arrow")
    del llm
    for name, extra in CKPTS.items():
        r = subprocess.run([sys.executable, "-m", "vllm_maxact.cli", "quantize", str(src), str(d / "calib.arrow"),
                            "--out", str(d / name), *extra], capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"quantize {name}: {r.stdout}{r.stderr}")
        print(r.stdout.strip())


def serve(d: Path, out: Path) -> None:
    import torch
    from vllm import LLM, SamplingParams

    toks = prompts(8, 192, 1024, seed=2)
    res = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "runs": {}}
    for name in ("src", *CKPTS):
        t0 = time.time()
        kw = dict(skip_tokenizer_init=True, max_model_len=512, dtype="bfloat16", enforce_eager=True,
                  enable_prefix_caching=False)
        if torch.cuda.is_available():
            kw["gpu_memory_utilization"] = 0.25
        llm = LLM(str(d / name), **kw)
        cfg = llm.llm_engine.vllm_config
        outs = llm.generate([{"prompt_token_ids": t} for t in toks],
                            SamplingParams(max_tokens=16, temperature=0.0, prompt_logprobs=0, logprobs=0),
                            use_tqdm=False)
        res["runs"][name] = {
            "quantization": cfg.model_config.quantization, "kv_cache_dtype": cfg.cache_config.cache_dtype,
            "prompt_logprobs": [[o.prompt_logprobs[i][t[i]].logprob for i in range(1, len(t))]
                                for t, o in zip(toks, outs, strict=True)],
            "tokens": [list(o.outputs[0].token_ids) for o in outs], "s": round(time.time() - t0, 1)}
        print(name, res["runs"][name]["quantization"], res["runs"][name]["kv_cache_dtype"], res["runs"][name]["s"],
              flush=True)
        out.write_text(json.dumps(res))  # after every engine: a run cut short keeps what it measured
        del llm
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _diff(a: list[list[float]], b: list[list[float]]) -> float:
    """Mean |difference| of two runs' prompt logprobs (nats)."""
    d = [abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True)]
    return sum(d) / len(d)


def compare(paths: list[Path]) -> None:
    runs = {p: json.loads(p.read_text()) for p in paths}
    for p, r in runs.items():
        lp = {k: v["prompt_logprobs"] for k, v in r["runs"].items()}
        print(f"{r['device']} ({p}):")
        for name, v in r["runs"].items():
            print(f"  {name}: quantization {v['quantization']}, KV cache {v['kv_cache_dtype']}, "
                  f"vs unquantized {_diff(lp[name], lp['src']):.4f} nats, vs dynamic {_diff(lp[name], lp['w8a8-dynamic']):.4f}")
    if len(runs) == 2:
        (pa, a), (pb, b) = runs.items()
        print(f"{a['device']} vs {b['device']}, same checkpoint (mean |d logprob|, nats):")
        for name in a["runs"]:
            print(f"  {name}: {_diff(a['runs'][name]['prompt_logprobs'], b['runs'][name]['prompt_logprobs']):.4f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("step", choices=["build", "serve", "compare"])
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--dir", type=Path, default=Path(".gq"))
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    if a.step == "build":
        build(a.dir)
    elif a.step == "serve":
        serve(a.dir, a.out)
    else:
        compare(a.files)


if __name__ == "__main__":
    main()
