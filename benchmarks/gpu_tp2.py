#!/usr/bin/env python3
"""vllm-maxact on vLLM's default (V2) model runner, and tensor parallelism 2, on real GPUs.

One process, engines one after another (never two with the plugin on at once):

1. TP=1, the runner vLLM picks by default (``VLLM_USE_V2_MODEL_RUNNER`` left unset; vLLM 0.26
   picks the V2 runner for dense models), default compilation and CUDA graphs. Every weight is
   overwritten with the same deterministic values (`set_weights`), then two phases run, each
   after `reset_stats`:
   - ``padding``: a 40-token prompt puts the hot token (embedding x5000) at input rows 13-15,
     then, after a reset, 13 one-token prompts run as one step padded to the captured size 16;
     the embedding site must equal the exact max of the 13 real tokens' embedding rows.
   - ``mixed``: 24 prompts of 17..900 tokens, 8 output tokens each (prefill + decode).
   Checks: rows, tokens against the computed-token count, NaN/Inf counts, embedding exact.
2. TP=2 on both GPUs (built after the TP=1 engine is shut down): the same weights and phases;
   per-site comparison with TP=1; per-rank rows (gate sharded, the rest replicated); the same
   values through the Python API, an Arrow snapshot and the Prometheus exporter.
3. If the time budget allows: TP=2 throughput, plain (plugin off) vs instrumented.

The weights are the same for TP=1 and TP=2: each full (unsharded) checkpoint tensor is drawn
from a generator seeded by its name and handed to the model's own ``load_weights``, which
shards it exactly as a real checkpoint would be sharded.

GPU: see benchmarks/gpu_tp2_run.sh. CPU dry run (tiny):
    VLLM_CPU_KVCACHE_SPACE=1 python benchmarks/gpu_tp2.py --model benchmarks/configs/llama-tiny \
        --layers 2 --quick --out /tmp/tp2
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import math
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import time
import traceback
import urllib.request
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 1234
WEIGHT_STD = 0.02
# (layer, residual channel, down_proj row scale): massive residual channels (4-layer version of
# maxact_bench_worker.MASSIVE, which puts them in layers 1, 2 and 9).
MASSIVE = ((1, 1234, 60.0), (2, 77, 120.0))
HOT_TOKEN = 500
HOT_SCALE = 5000.0
TOKEN_LOW = 1000

# ------------------------------------------------------------------ worker side
# Called through `LLM.collective_rpc` (first argument: the vLLM worker). They live in this module,
# imported by name in the workers (this folder is on the spawned processes' sys.path), so they are
# pickled by reference.


def runner_info(worker) -> dict:
    r = getattr(worker, "model_runner", None)
    info = {"pid": os.getpid(), "runner": f"{type(r).__module__}.{type(r).__qualname__}"}
    info["maxact_recorder"] = getattr(r, "_maxact_recorder", None) is not None
    try:
        from vllm.distributed import parallel_state as ps

        info["tp_rank"] = ps.get_tensor_model_parallel_rank()
        info["tp_size"] = ps.get_tensor_model_parallel_world_size()
    except Exception as e:  # noqa: BLE001
        info["tp_error"] = repr(e)
    info["device"] = str(getattr(r, "device", None))
    info["use_v2_model_runner"] = getattr(worker, "use_v2_model_runner", None)
    return info


def _seed(name: str) -> int:
    return (SEED * 1_000_003 + zlib.crc32(name.encode())) % (2**62)


def full_weights(cfg, n_layers: int, device, dtype, zero_lm_head: bool):
    """(checkpoint name, full tensor) pairs, deterministic per name: the same for any TP size."""
    import torch

    h, inter, vocab = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or h // nh
    shapes = [("model.embed_tokens.weight", (vocab, h))]
    for i in range(n_layers):
        p = f"model.layers.{i}."
        shapes += [
            (p + "self_attn.q_proj.weight", (nh * hd, h)),
            (p + "self_attn.k_proj.weight", (nkv * hd, h)),
            (p + "self_attn.v_proj.weight", (nkv * hd, h)),
            (p + "self_attn.o_proj.weight", (h, nh * hd)),
            (p + "mlp.gate_proj.weight", (inter, h)),
            (p + "mlp.up_proj.weight", (inter, h)),
            (p + "mlp.down_proj.weight", (h, inter)),
            (p + "input_layernorm.weight", (h,)),
            (p + "post_attention_layernorm.weight", (h,)),
        ]
    shapes += [("model.norm.weight", (h,))]
    if not getattr(cfg, "tie_word_embeddings", False):
        shapes += [("lm_head.weight", (vocab, h))]
    massive = {f"model.layers.{li}.mlp.down_proj.weight": (ch % h, s) for li, ch, s in MASSIVE if li < n_layers}
    for name, shape in shapes:
        if len(shape) == 1:
            t = torch.ones(shape, dtype=dtype, device=device)
        elif name == "lm_head.weight" and zero_lm_head:
            t = torch.zeros(shape, dtype=dtype, device=device)
        else:
            g = torch.Generator(device=device)
            g.manual_seed(_seed(name))
            t = torch.empty(shape, dtype=dtype, device=device).normal_(0.0, WEIGHT_STD, generator=g)
            if name == "model.embed_tokens.weight" and HOT_TOKEN < shape[0]:
                t[HOT_TOKEN] *= HOT_SCALE
            if name in massive:
                ch, s = massive[name]
                t[ch, :] *= s
        yield name, t


def set_weights(worker, zero_lm_head: bool = True) -> dict:
    """Load the deterministic full tensors through the model's own (sharding) weight loader."""
    import torch

    model = worker.get_model()
    p0 = next(model.parameters())
    cfg = model.config
    n_layers = len(model.model.layers)
    sums: dict[str, float] = {}

    # The CPU backend repacks linear weights into its own GEMM format after loading (the
    # parameters lose their loaders): a CPU dry run sets only embeddings, norms and lm_head.
    skip_linear = p0.device.type == "cpu"

    def gen():
        for name, t in full_weights(cfg, n_layers, p0.device, p0.dtype, zero_lm_head):
            if skip_linear and name.endswith("_proj.weight"):
                continue
            if name in ("model.embed_tokens.weight", "model.layers.1.mlp.down_proj.weight",
                        "model.layers.0.self_attn.k_proj.weight"):
                sums[name] = float(t.double().sum().item())  # same full tensor on every rank / TP size
            yield name, t

    t0 = time.perf_counter()
    with torch.no_grad():
        loaded = model.load_weights(gen())
    if p0.device.type == "cuda":
        torch.cuda.synchronize()
    return {
        "loaded": len(loaded) if loaded is not None else None,
        "layers": n_layers,
        "linear_weights_skipped_cpu": skip_linear,
        "seconds": time.perf_counter() - t0,
        "full_tensor_sums": sums,
    }


def embed_range(worker, ids: list[int]) -> dict:
    """Exact max/min of this rank's embedding rows for ``ids`` (vocab-parallel shards)."""
    import torch

    emb = worker.get_model().model.embed_tokens
    w = emb.weight
    si = getattr(emb, "shard_indices", None)
    start = si.org_vocab_start_index if si is not None else 0
    end = si.org_vocab_end_index if si is not None else w.shape[0]
    t = torch.tensor(sorted(set(ids)), dtype=torch.long, device=w.device)
    t = t[(t >= start) & (t < end)] - start
    if t.numel() == 0:
        return {"max": None, "min": None, "n": 0, "start": start, "end": end}
    rows = w[t].double()
    return {"max": float(rows.max()), "min": float(rows.min()), "n": int(t.numel()), "start": start, "end": end}


# ------------------------------------------------------------------ driver side

T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[gpu_tp2 {time.strftime('%H:%M:%S')} +{time.monotonic() - T0:.0f}s] {msg}", flush=True)


def gpu_used_mib() -> list[float] | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20,
        ).stdout
        return [float(x) for x in out.split()]
    except Exception:  # noqa: BLE001  (CPU dry run)
        return None


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rel(a, b) -> float:
    if a is None or b is None:
        return 0.0 if a == b else math.inf
    if a == b:
        return 0.0
    return abs(a - b) / max(abs(b), 1e-30)


def ulps(a, b) -> float:
    """|a - b| in bf16 ulps of b (8 significant bits: ulp = 2**(floor(log2|b|) - 7))."""
    if a is None or b is None or a == b:
        return 0.0 if a == b else math.inf
    return abs(a - b) / 2.0 ** (math.floor(math.log2(max(abs(b), 1e-30))) - 7)


class Run:
    def __init__(self, args) -> None:
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.res: dict = {
            "started": dt.datetime.now(dt.timezone.utc).isoformat(),
            "argv": sys.argv,
            "model": str(args.model),
            "hf_overrides": {"num_hidden_layers": args.layers},
            "python": platform.python_version(),
            "engines": {},
            "tp1": {},
            "tp2": {},
            "compare": {},
            "timing": {},
            "errors": [],
        }
        self.phases = self.make_phases()

    def save(self) -> None:
        self.res["elapsed_s"] = time.monotonic() - T0
        p = self.out / "gpu_tp2.json"
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.res, indent=1, default=str))
        tmp.replace(p)
        (self.out / "gpu_tp2.md").write_text(markdown(self.res))

    def left(self) -> float:
        return self.args.budget - (time.monotonic() - T0)

    # -- prompts
    def make_phases(self) -> dict:
        import numpy as np

        rng = np.random.default_rng(7)
        hi = min(120000, self.args.vocab)
        if self.args.quick:
            lens, out_len = [17, 40, 64, 90, 120, 33], 4
        else:
            lens, out_len = [int(x) for x in np.linspace(17, 900, 24)], 8
            rng.shuffle(lens)
        hot = rng.integers(TOKEN_LOW, hi, size=40)
        hot[13:16] = HOT_TOKEN
        return {
            "padding": {
                "pre": [hot.tolist()],
                "prompts": [[int(rng.integers(TOKEN_LOW, hi))] for _ in range(13)],
                "max_tokens": 1,
            },
            "mixed": {
                "pre": [],
                "prompts": [rng.integers(TOKEN_LOW, hi, size=n).tolist() for n in lens],
                "max_tokens": out_len,
            },
        }

    # -- engines
    def build(self, name: str, *, tp: int, enable: bool = True):
        from vllm import LLM

        os.environ["VLLM_MAXACT_ENABLE"] = "1" if enable else "0"
        if self.args.cpu and tp > 1:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(str(i) for i in range(tp))
        elif self.args.cpu:
            os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)
        kw = dict(
            model=str(self.args.model),
            hf_overrides={"num_hidden_layers": self.args.layers},
            load_format="dummy",
            skip_tokenizer_init=True,
            seed=0,
            tensor_parallel_size=tp,
            gpu_memory_utilization=self.args.mem,
        )
        if self.args.max_model_len:
            kw["max_model_len"] = self.args.max_model_len
        if self.args.allreduce_fusion == "off":
            # The same compilation everywhere (TP=1 has no all-reduce, so nothing changes there).
            kw["compilation_config"] = {"pass_config": {"fuse_allreduce_rms": False}}
        elif self.args.allreduce_fusion == "trtllm":
            os.environ["VLLM_FLASHINFER_ALLREDUCE_BACKEND"] = "trtllm"
        log(f"building {name} (tp={tp}, plugin {'on' if enable else 'off'}); GPU MiB {gpu_used_mib()}")
        t0 = time.perf_counter()
        llm = LLM(**kw)
        secs = time.perf_counter() - t0
        info = llm.collective_rpc(runner_info)
        log(f"{name} ready in {secs:.1f} s; workers {info}")
        self.res["engines"][name] = {"tp": tp, "enable": enable, "startup_s": secs, "workers": info}
        self.save()
        return llm

    def shutdown(self, llm, name: str) -> None:
        import torch

        before = gpu_used_mib()
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception as e:  # noqa: BLE001
            log(f"shutdown {name}: {e!r}")
        del llm
        gc.collect()
        try:
            torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001
            pass
        for _ in range(40):
            now = gpu_used_mib()
            if before is None or now is None or sum(now) < sum(before) - 2 * 1024:
                break
            time.sleep(0.5)
        log(f"{name} shut down; GPU MiB {before} -> {gpu_used_mib()}")

    # -- phases
    def sampling(self, n: int):
        from vllm import SamplingParams

        return SamplingParams(max_tokens=n, min_tokens=n, ignore_eos=True, temperature=0.0, detokenize=False)

    def run_phases(self, llm, key: str) -> None:
        from vllm_maxact import read_stats, reset_stats

        w = llm.collective_rpc(set_weights)
        self.res[key]["set_weights"] = w
        log(f"{key}: weights set: {w}")
        for phase, spec in self.phases.items():
            if spec["pre"]:
                llm.generate([{"prompt_token_ids": p} for p in spec["pre"]], self.sampling(1), use_tqdm=False)
            reset_stats(llm)
            prompts = [{"prompt_token_ids": p} for p in spec["prompts"]]
            t0 = time.perf_counter()
            outs = llm.generate(prompts, self.sampling(spec["max_tokens"]), use_tqdm=False)
            secs = time.perf_counter() - t0
            gen = [list(o.outputs[0].token_ids) for o in outs]
            rows = read_stats(llm, per_rank=True).to_pylist()
            merged = [r for r in rows if r["rank"] is None]
            # Computed tokens: every prompt token once, then one forward per generated token but the
            # last (the last sampled token is never fed back).
            expected = sum(len(p) for p in spec["prompts"]) + sum(len(g) - 1 for g in gen)
            fed = [t for p in spec["prompts"] for t in p] + [t for g in gen for t in g[:-1]]
            parts = llm.collective_rpc(embed_range, args=(fed,))
            emx = [x["max"] for x in parts if x["max"] is not None]
            emn = [x["min"] for x in parts if x["min"] is not None]
            exact = {"max": max(emx), "min": min(emn)}
            emb = next((r for r in merged if r["site"] == "embedding"), None)
            tokens = sorted({r["tokens"] for r in merged})
            chk = {
                "seconds": secs,
                "prompts": len(prompts),
                "prompt_tokens": sum(len(p) for p in spec["prompts"]),
                "generated_tokens": sum(len(g) for g in gen),
                "generated_ids_sample": sorted({t for g in gen for t in g})[:8],
                "sites": len(merged),
                "rows_per_rank": {str(k): sum(1 for r in rows if r["rank"] == k) for k in sorted({r["rank"] for r in rows}, key=str)},
                "tokens_recorded": tokens,
                "tokens_expected": expected,
                "tokens_ok": tokens == [expected],
                "nan_total": sum(r["nan_count"] for r in rows),
                "inf_total": sum(r["inf_count"] for r in rows),
                "embedding_recorded": {"max": emb and emb["max"], "min": emb and emb["min"]},
                "embedding_exact": exact,
                "embedding_ok": emb is not None and emb["max"] == exact["max"] and emb["min"] == exact["min"],
                "global_absmax": max((r["absmax"] or 0) for r in merged) if merged else None,
            }
            self.res[key][phase] = {"check": chk, "rows": rows}
            log(f"{key} {phase}: " + json.dumps({k: v for k, v in chk.items() if k != "generated_ids_sample"}))
            self.save()

    # -- TP=2 export paths
    def export_paths(self, llm) -> None:
        import pyarrow.feather as feather

        import vllm_maxact

        res = self.res["tp2"]["export"] = {}
        api = vllm_maxact.read_stats(llm, per_rank=True).to_pylist()
        key = lambda r: (r["site"], r["rank"])  # noqa: E731
        api_d = {key(r): r for r in api}
        # Arrow snapshot
        snapdir = self.out / "snapshot"
        paths = vllm_maxact.snapshot(llm, str(snapdir))
        snap_rows = []
        for p in paths:
            snap_rows += [r for r in feather.read_table(p).to_pylist() if r["window"] == "lifetime"]
        fields = ("absmax", "max", "min", "tokens", "nan_count", "inf_count")
        mism = [
            (k, f) for k, r in ((key(r), r) for r in snap_rows) for f in fields
            if k not in api_d or api_d[k][f] != r[f]
        ]
        res["snapshot"] = {
            "files": [Path(p).name for p in paths],
            "rows_lifetime": len(snap_rows),
            "api_rows": len(api),
            "mismatches": mism[:20],
            "n_mismatches": len(mism),
            "ok": bool(snap_rows) and not mism and len(snap_rows) == len(api),
        }
        log(f"snapshot: {json.dumps({k: v for k, v in res['snapshot'].items() if k != 'mismatches'})}")
        # Prometheus (standalone exporter in this process; workers publish every 0.5 s)
        time.sleep(2.0)
        url = f"http://127.0.0.1:{self.args.port}/metrics"
        try:
            text = urllib.request.urlopen(url, timeout=10).read().decode()
        except Exception as e:  # noqa: BLE001
            res["prometheus"] = {"ok": False, "error": repr(e)}
            log(f"prometheus: {e!r}")
            self.save()
            return
        (self.out / "metrics_tp2.txt").write_text(text)
        pat = re.compile(r'^vllm_maxact_(absmax|max|min)\{([^}]*)\} (\S+)$')
        prom: dict = {}
        info = [ln for ln in text.splitlines() if ln.startswith("vllm_maxact_info{")]
        for ln in text.splitlines():
            m = pat.match(ln)
            if not m:
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            site = labels["kind"] if labels.get("layer", "") == "" else f"layers.{labels['layer']}.{labels['kind']}"
            prom.setdefault(site, {})[m.group(1)] = float(m.group(3))
        merged = {r["site"]: r for r in api if r["rank"] is None}
        pm = [(s, f, prom.get(s, {}).get(f), merged[s][f]) for s in merged for f in ("absmax", "max", "min")
              if prom.get(s, {}).get(f) != merged[s][f]]
        tok = re.search(r"^vllm_maxact_tokens_total\{[^}]*\} (\S+)$", text, re.M)
        res["prometheus"] = {
            "url": url,
            "sites": len(prom),
            "api_sites": len(merged),
            "mismatches": pm[:20],
            "n_mismatches": len(pm),
            "tokens_total": float(tok.group(1)) if tok else None,
            "info": info,
            "ok": len(prom) == len(merged) and not pm,
        }
        log(f"prometheus: {json.dumps({k: v for k, v in res['prometheus'].items() if k != 'mismatches'})}")
        self.save()

    def per_rank(self) -> None:
        rows = self.res["tp2"]["mixed"]["rows"]
        by = {}
        for r in rows:
            by.setdefault(r["site"], {})[r["rank"]] = r
        gate, repl = [], []
        for site, d in by.items():
            if 0 not in d or 1 not in d:
                continue
            a, b, m = d[0], d[1], d[None]
            entry = {
                "site": site,
                "rank0": (a["max"], a["min"]),
                "rank1": (b["max"], b["min"]),
                "merged": (m["max"], m["min"]),
                "merged_is_max_of_ranks": m["max"] == max(a["max"], b["max"]) and m["min"] == min(a["min"], b["min"]),
                "rank_rel": max(rel(a["max"], b["max"]), rel(a["min"], b["min"])),
            }
            (gate if a["kind"] == "gate" else repl).append(entry)
        self.res["compare"]["per_rank"] = {
            "ranks_present": sorted({str(r["rank"]) for r in rows}),
            "gate_sites": len(gate),
            "gate_ranks_differ": sum(1 for e in gate if e["rank_rel"] > 0),
            "gate": gate,
            "replicated_sites": len(repl),
            "replicated_equal": sum(1 for e in repl if e["rank_rel"] == 0),
            "replicated_max_rel": max((e["rank_rel"] for e in repl), default=None),
            "merged_is_max_of_ranks": all(e["merged_is_max_of_ranks"] for e in gate + repl),
        }
        log("per-rank: " + json.dumps({k: v for k, v in self.res["compare"]["per_rank"].items() if k != "gate"}))

    def compare_tp(self) -> None:
        for phase in self.phases:
            if phase not in self.res["tp1"] or phase not in self.res["tp2"]:
                continue
            a = {r["site"]: r for r in self.res["tp1"][phase]["rows"] if r["rank"] is None}
            b = {r["site"]: r for r in self.res["tp2"][phase]["rows"] if r["rank"] is None}
            sites = []
            for s in a:
                if s not in b:
                    sites.append({"site": s, "missing_in_tp2": True, "rel": math.inf, "ulps": math.inf})
                    continue
                r1, r2 = a[s], b[s]
                sites.append({
                    "site": s,
                    "kind": r1["kind"],
                    "tp1": (r1["max"], r1["min"], r1["absmax"]),
                    "tp2": (r2["max"], r2["min"], r2["absmax"]),
                    "rel": max(rel(r2[f], r1[f]) for f in ("max", "min", "absmax")),
                    "ulps": max(ulps(r2[f], r1[f]) for f in ("max", "min", "absmax")),
                })
            rels = [x["rel"] for x in sites]
            worst = sorted(sites, key=lambda x: -x["rel"])[:6]
            self.res["compare"][phase] = {
                "sites": len(sites),
                "max_rel": max(rels),
                "median_rel": statistics.median(rels),
                "exact_sites": sum(1 for x in rels if x == 0),
                "max_ulps": max(x["ulps"] for x in sites),
                "sites_over_4_ulps": sum(1 for x in sites if x["ulps"] > 4),
                "tokens_tp1_tp2": (self.res["tp1"][phase]["check"]["tokens_recorded"],
                                   self.res["tp2"][phase]["check"]["tokens_recorded"]),
                "worst": [(x["site"], x["rel"], x["ulps"], x.get("tp1"), x.get("tp2")) for x in worst],
                "sites_detail": sites,
            }
            log(f"TP2 vs TP1 {phase}: " + json.dumps(
                {k: v for k, v in self.res["compare"][phase].items() if k != "sites_detail"}))
        self.save()

    # -- timing
    def timing(self, engines: dict) -> None:
        import numpy as np

        batch, plen, olen = (8, 32, 16) if self.args.quick else (64, 256, 384)
        rng = np.random.default_rng(99)
        hi = min(120000, self.args.vocab)
        mk = lambda: [{"prompt_token_ids": rng.integers(TOKEN_LOW, hi, size=plen).tolist()} for _ in range(batch)]  # noqa: E731
        entry = {"batch": batch, "prompt_len": plen, "output_len": olen, "runs": {k: [] for k in engines}}
        self.res["timing"] = entry
        warm = mk()
        for label, llm in engines.items():
            t0 = time.perf_counter()
            llm.generate(warm, self.sampling(olen), use_tqdm=False)
            log(f"timing warm-up {label}: {time.perf_counter() - t0:.2f} s")
        for rep in range(self.args.reps):
            prompts = mk()
            for label, llm in engines.items():
                t0 = time.perf_counter()
                outs = llm.generate(prompts, self.sampling(olen), use_tqdm=False)
                secs = time.perf_counter() - t0
                n = sum(len(o.outputs[0].token_ids) for o in outs)
                entry["runs"][label].append({"rep": rep, "seconds": secs, "output_tokens": n, "tok_per_s": n / secs})
                log(f"timing rep {rep} {label}: {n / secs:.1f} output tok/s ({secs:.2f} s)")
        med = {k: statistics.median(x["tok_per_s"] for x in v) for k, v in entry["runs"].items()}
        entry["median_tok_per_s"] = med
        entry["ratio"] = med["maxact"] / med["plain"]
        entry["pair_ratios"] = [b["tok_per_s"] / a["tok_per_s"]
                                for a, b in zip(entry["runs"]["plain"], entry["runs"]["maxact"], strict=True)]
        log(f"timing: median {med}, ratio {entry['ratio']:.4f}, pairs {entry['pair_ratios']}")
        self.save()


def markdown(res: dict) -> str:
    L = [f"# gpu_tp2 ({res.get('versions')}, {res['started']})", ""]
    L.append(f"Model {res['model']} with hf_overrides {res['hf_overrides']}; elapsed {res.get('elapsed_s', 0):.0f} s")
    for n, e in res["engines"].items():
        runners = sorted({w.get("runner") for w in e["workers"]})
        L.append(f"- engine `{n}`: tp={e['tp']}, plugin {'on' if e['enable'] else 'off'}, start-up "
                 f"{e['startup_s']:.0f} s, runner {runners}")
    for key in ("tp1", "tp2"):
        for phase in ("padding", "mixed"):
            c = res.get(key, {}).get(phase, {}).get("check")
            if c:
                L.append(f"- {key} {phase}: sites {c['sites']}, rows/rank {c['rows_per_rank']}, tokens "
                         f"{c['tokens_recorded']} (expected {c['tokens_expected']}), NaN {c['nan_total']}, "
                         f"Inf {c['inf_total']}, embedding {c['embedding_recorded']} vs exact "
                         f"{c['embedding_exact']} ok={c['embedding_ok']}, global absmax {c['global_absmax']}")
    for phase in ("padding", "mixed"):
        c = res["compare"].get(phase)
        if c:
            L.append(f"- TP2 vs TP1 {phase}: {c['sites']} sites, max rel {c['max_rel']:.3g}, median "
                     f"{c['median_rel']:.3g}, exact {c['exact_sites']}, max {c['max_ulps']:.1f} bf16 ulps, "
                     f"{c['sites_over_4_ulps']} sites > 4 ulps; worst {c['worst'][:3]}")
    pr = res["compare"].get("per_rank")
    if pr:
        L.append(f"- per rank: ranks {pr['ranks_present']}; gate sites {pr['gate_sites']}, ranks differ at "
                 f"{pr['gate_ranks_differ']}; replicated {pr['replicated_sites']}, equal at "
                 f"{pr['replicated_equal']} (max rel {pr['replicated_max_rel']}); merged = max/min of ranks: "
                 f"{pr['merged_is_max_of_ranks']}")
    ex = res.get("tp2", {}).get("export", {})
    for k in ("snapshot", "prometheus"):
        if k in ex:
            L.append(f"- {k}: " + json.dumps({a: b for a, b in ex[k].items() if a not in ('mismatches', 'info')}))
    t = res.get("timing")
    if t and "ratio" in t:
        L.append(f"- TP=2 timing batch {t['batch']} ({t['prompt_len']} -> {t['output_len']}): median output tok/s "
                 f"{t['median_tok_per_s']}, ratio {t['ratio']:.4f}, pairs {[round(x, 4) for x in t['pair_ratios']]}")
    elif t.get("skipped"):
        L.append(f"- TP=2 timing: not measured ({t['skipped']})")
    for e in res["errors"]:
        L.append(f"- ERROR: {e.strip().splitlines()[-1]}")
    return "\n".join(L) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=HERE / "configs" / "llama3-8b")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--mem", type=float, default=0.35)
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--budget", type=float, default=540, help="seconds for the whole run (timing is skipped to fit)")
    ap.add_argument("--timing-estimate", type=float, default=0,
                    help="seconds a plain TP=2 start + timing needs (default: from the TP=2 start-up)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="tiny prompts (CPU dry run)")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument(
        "--allreduce-fusion", choices=("off", "trtllm", "default"), default="off",
        help="vLLM 0.26's all-reduce + RMSNorm fusion (TP>1). 'default' lets vLLM pick FlashInfer's "
        "'mnnvl' backend, which needs NVLink multicast: with multicast off (as on the lent H200s) the "
        "first TP=2 forward hung ~56 s and died with an illegal memory access (2026-11-29). 'off' "
        "disables the fusion pass (vLLM's custom all-reduce is used); 'trtllm' keeps the fusion on "
        "FlashInfer's unicast backend (untested here)",
    )
    args = ap.parse_args()

    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
    os.environ.setdefault("VLLM_MAXACT_PUBLISH_INTERVAL_S", "0.5")
    for k, v in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"), ("NVSHMEM_DISABLE_NVLS", "1")):
        os.environ.setdefault(k, v)
    if "VLLM_USE_V2_MODEL_RUNNER" in os.environ:
        print("note: VLLM_USE_V2_MODEL_RUNNER is set; this run is meant for vLLM's default", flush=True)
    args.port = int(os.environ.setdefault("VLLM_MAXACT_EXPORTER_PORT", str(free_port())))
    cfg = json.loads((args.model / "config.json").read_text())
    args.vocab = cfg["vocab_size"]
    sys.path.insert(0, str(HERE))
    import gpu_tp2 as W  # the worker functions by reference (not __main__)

    globals().update(set_weights=W.set_weights, embed_range=W.embed_range, runner_info=W.runner_info)

    import torch
    import vllm
    from vllm.platforms import current_platform

    args.cpu = current_platform.device_type == "cpu"
    run = Run(args)
    run.res["allreduce_fusion"] = args.allreduce_fusion
    run.res["versions"] = {"vllm": vllm.__version__, "torch": torch.__version__,
                           "vllm_maxact": __import__("vllm_maxact").__version__}
    run.res["env"] = {k: v for k, v in os.environ.items()
                      if k.startswith(("VLLM_", "NCCL_", "TORCH_SYMM", "NVSHMEM", "CUDA_VISIBLE"))}
    try:
        run.res["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                         "--format=csv,noheader"], capture_output=True, text=True).stdout
    except Exception as e:  # noqa: BLE001
        run.res["gpu"] = repr(e)
    run.save()
    llm = plain = None
    try:
        # 1. TP=1, default runner
        llm = run.build("tp1", tp=1)
        try:
            run.run_phases(llm, "tp1")
        finally:
            run.shutdown(llm, "tp1")
            llm = None
        # 2. TP=2
        llm = run.build("tp2", tp=2)
        run.run_phases(llm, "tp2")
        run.compare_tp()
        run.per_rank()
        run.save()
        run.export_paths(llm)
        # 3. TP=2 overhead, if it fits
        need = args.timing_estimate or (run.res["engines"]["tp2"]["startup_s"] * 0.8 + 45)
        if args.skip_timing:
            run.res["timing"] = {"skipped": "--skip-timing"}
        elif run.left() < need:
            run.res["timing"] = {"skipped": f"{run.left():.0f} s left, about {need:.0f} s needed"}
            log(f"timing skipped: {run.res['timing']['skipped']}")
        else:
            log(f"timing: {run.left():.0f} s left, about {need:.0f} s needed")
            plain = run.build("tp2_plain", tp=2, enable=False)
            for e in (plain,):
                e.collective_rpc(set_weights)
            run.timing({"plain": plain, "maxact": llm})
    except Exception:
        run.res["errors"].append(traceback.format_exc())
        log(traceback.format_exc())
    run.res["finished"] = dt.datetime.now(dt.timezone.utc).isoformat()
    run.save()
    print(markdown(run.res), flush=True)
    for e, n in ((plain, "tp2_plain"), (llm, "tp2")):
        if e is not None:
            run.shutdown(e, n)


if __name__ == "__main__":
    main()
