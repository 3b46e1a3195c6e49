#!/usr/bin/env python3
"""How many kernels and microseconds each recording variant adds to a Llama-3-8B-shaped layer.

A few decoder layers with vLLM's module layout and Llama-3-8B dimensions (hidden 4096, MLP
14336, fused qkv 6144; attention replaced by a matmul stand-in, which has no recording site
and only shifts the baseline), instrumented through the project's real adapter and `instrument`,
compiled with Inductor (dynamic token axis, as vLLM does) and replayed as a CUDA graph, as
vLLM's decode steps are. For each token count: the time of one forward without and with the
hooks, and the number of GPU kernels each launches (torch.profiler, outside the graph). The
variant is whatever `vllm_maxact` is first on the path, so run one process per variant:

    PYTHONPATH=variant_dir:... python benchmarks/gpu_fusion_micro.py --label v1c --out out.jsonl

Also checks the compiled recording against the eager one (same hooks, padding rows included).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

H, INTER, QKV, LAYERS = 4096, 14336, 6144, 4


class RMSNorm(nn.Module):
    """vLLM's native rms_norm / fused_add_rms_norm (what Inductor sees when compiling)."""

    def __init__(self, h: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(h))
        self.eps = eps

    def forward(self, x, residual=None):
        orig = x.dtype
        xf = x.float()
        if residual is not None:
            xf = xf + residual.float()
            residual = xf.to(orig)
        var = xf.pow(2).mean(-1, keepdim=True)
        out = (xf * torch.rsqrt(var + self.eps)).to(orig) * self.weight
        return out if residual is None else (out, residual)


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv_proj = nn.Linear(H, QKV, bias=False)
        self.o_proj = nn.Linear(H, H, bias=False)

    def forward(self, positions, hidden_states):
        q = self.qkv_proj(hidden_states)[..., :H]  # stand-in for attention: no recording site
        return self.o_proj(q)


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(H, 2 * INTER, bias=False)
        self.down_proj = nn.Linear(INTER, H, bias=False)

    def forward(self, x):
        gu = self.gate_up_proj(x)
        return self.down_proj(torch.nn.functional.silu(gu[..., :INTER]) * gu[..., INTER:])


class DecoderLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(H)
        self.self_attn = Attention()
        self.post_attention_layernorm = RMSNorm(H)
        self.mlp = MLP()

    def forward(self, positions, hidden_states, residual):
        if residual is None:
            residual = hidden_states
            hidden_states = self.input_layernorm(hidden_states)
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual)
        hidden_states = self.self_attn(positions=positions, hidden_states=hidden_states)
        hidden_states, residual = self.post_attention_layernorm(hidden_states, residual)
        return self.mlp(hidden_states), residual


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer() for _ in range(LAYERS))
        self.norm = RMSNorm(H)

    def forward(self, positions, hidden_states):
        residual = None
        for layer in self.layers:
            hidden_states, residual = layer(positions, hidden_states, residual)
        hidden_states, _ = self.norm(hidden_states, residual)
        return hidden_states


class LlamaForCausalLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = Model()

    def forward(self, positions, hidden_states):
        return self.model(positions, hidden_states)


def count_kernels(fn, *args) -> int:
    from torch.profiler import ProfilerActivity, profile

    if not torch.cuda.is_available():  # CPU dry run
        return 0
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn(*args)
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type.name == "CUDA")


def graph_time_us(fn, *args, replays: int = 50, rounds: int = 7) -> float:
    for _ in range(3):
        fn(*args)
    if not torch.cuda.is_available():  # CPU dry run: no graphs, wall clock
        t0 = time.perf_counter()
        fn(*args)
        return (time.perf_counter() - t0) * 1e6
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn(*args)
    for _ in range(5):
        g.replay()
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            g.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000 / replays)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--label", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokens", default="1,64,256,2048")
    args = ap.parse_args()

    from vllm_maxact.plugins.llama import LlamaAdapter

    import vllm_maxact.ops as ops_mod
    from vllm_maxact.config import load_config
    from vllm_maxact.instrument import instrument

    torch.manual_seed(0)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = LlamaForCausalLM().to(dev, torch.bfloat16).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0, 0.02)
        model.model.layers[1].mlp.down_proj.weight[77] *= 100  # a massive residual channel
    tokens = [int(t) for t in args.tokens.split(",")]
    inputs = {t: torch.randn(t, H, device=dev, dtype=torch.bfloat16) for t in tokens}
    pos = {t: torch.arange(t, device=dev) for t in tokens}
    rows = []

    @torch.no_grad()
    def fwd(p, x):
        return model(p, x)

    t0 = time.perf_counter()
    plain = torch.compile(fwd, dynamic=True, fullgraph=True)
    base = {
        t: (graph_time_us(plain, pos[t], inputs[t]), count_kernels(plain, pos[t], inputs[t])) for t in tokens
    }
    compile_plain = time.perf_counter() - t0

    rec = instrument(model, load_config(), dev, adapter=LlamaAdapter())
    torch._dynamo.reset()
    t0 = time.perf_counter()
    hooked = torch.compile(fwd, dynamic=True, fullgraph=True)
    for t in tokens:
        rec.n_valid.fill_(t)
        us = graph_time_us(hooked, pos[t], inputs[t])
        k = count_kernels(hooked, pos[t], inputs[t])
        rows.append(
            {
                "label": args.label,
                "ops": ops_mod.__file__,
                "tokens": t,
                "layers": LAYERS,
                "sites": len(rec.sites),
                "plain_us": base[t][0],
                "maxact_us": us,
                "extra_us": us - base[t][0],
                "extra_us_per_layer": (us - base[t][0]) / LAYERS,
                "plain_kernels": base[t][1],
                "maxact_kernels": k,
                "extra_kernels_per_layer": (k - base[t][1]) / LAYERS,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    compile_hooked = time.perf_counter() - t0

    # Compiled vs eager recording of the same forward, with two padding rows excluded.
    t = 64 if 64 in inputs else max(inputs)
    x = inputs[t] * 3
    out = {}
    for label, fn in (("compiled", hooked), ("eager", fwd)):
        rec.reset()
        rec.n_valid.fill_(t - 2)
        fn(pos[t], x)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        out[label] = rec.collect()
    a, b = out["compiled"], out["eager"]
    rel = max(float(abs(a.max[i] - b.max[i]) / max(abs(b.max[i]), 1e-30)) for i in range(len(a.max)))
    rel = max(
        rel, max(float(abs(a.min[i] - b.min[i]) / max(abs(b.min[i]), 1e-30)) for i in range(len(a.min)))
    )
    summary = {
        "label": args.label,
        "check_compiled_vs_eager_max_rel": rel,
        "absmax": float(max(b.absmax)),
        "compile_plain_s": compile_plain,
        "compile_hooked_s": compile_hooked,
    }
    print(json.dumps(summary), flush=True)
    with open(args.out, "a") as f:
        for r in rows + [summary]:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
