#!/usr/bin/env python3
"""Cost and correctness of vllm-maxact inside vLLM's compiled, CUDA-graphed forward.

One process builds two engines that stay alive side by side on one GPU: a plain one (the
plugin installed but switched off, ``VLLM_MAXACT_ENABLE=0``) and an instrumented one
(``VLLM_MAXACT_ENABLE=1``). Each runs in its own engine-core process (vLLM's multiprocessing
stays on; workers are spawned, so each reads the switch afresh). Both use vLLM's default
compilation and CUDA graphs. Workloads alternate plain / instrumented, the order reversed every
other repetition (A B B A ...), after one untimed warm-up of each engine on each workload;
medians and the ratio instrumented / plain are reported.

Correctness (run first, so that a time limit cannot cut it): the weights are overwritten with
realistic random values (the same seed in every engine) with a few massive residual channels,
and the same prompts run through the instrumented graphs-on engine and a third engine with
``enforce_eager=True`` and the plugin on, which also carries an independent float64 "truth"
recorder (plain forward hooks). Every site's max / min / absmax is compared, and token counts.
At most two engines are alive at once: instrumented + eager, then instrumented + plain.

GPU (see benchmarks/RESULTS.md for the exact command used):
    python benchmarks/gpu_overhead.py --out results/
CPU dry run of the whole flow (tiny model, minutes):
    python benchmarks/gpu_overhead.py --model benchmarks/configs/llama-tiny --quick --out /tmp/o
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import hashlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from unittest import mock

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = HERE / "configs" / "llama3-8b"

# name, batch, prompt tokens, output tokens, which tokens/s is the figure
WORKLOADS = [
    ("decode_b1", 1, 128, 256, "output"),
    ("decode_b64", 64, 256, 256, "output"),
    ("decode_b256", 256, 512, 128, "output"),
    ("prefill_b64x2048", 64, 2048, 1, "prompt"),
]
QUICK_WORKLOADS = [
    ("decode_b1", 1, 16, 16, "output"),
    ("decode_b8", 8, 32, 16, "output"),
    ("prefill_b4x256", 4, 256, 1, "prompt"),
]

from maxact_bench_worker import (  # noqa: E402  (pickled by reference, see that module)
    HOT_TOKEN,
    has_recorder,
    install_truth,
    profile_start,
    profile_stop,
    randomize_weights,
    read_truth,
    reset_truth,
    zero_lm_head,
)

# ------------------------------------------------------------------ driver side


def log(msg: str) -> None:
    print(f"[gpu_overhead {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def gpu_info() -> dict:
    try:
        out = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,memory.total,memory.used,driver_version,clocks.sm,clocks.mem",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.strip()
        return {"nvidia_smi": out}
    except Exception as e:  # CPU dry run
        return {"nvidia_smi": f"unavailable ({e})"}


def ops_fingerprint() -> dict:
    import vllm_maxact.ops as ops

    src = Path(ops.__file__).read_bytes()
    return {"file": ops.__file__, "sha256": hashlib.sha256(src).hexdigest()[:16]}


TOKEN_RANGE = (1000, 120000)  # ids drawn uniformly; capped at the vocab size in main()


def make_prompts(rng, batch: int, length: int) -> list[dict]:
    ids = rng.integers(*TOKEN_RANGE, size=(batch, length))
    return [{"prompt_token_ids": row.tolist()} for row in ids]


def gpu_used_mib() -> float | None:
    dev = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    try:
        out = subprocess.run(
            ["nvidia-smi", "-i", dev, "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
        return float(out.strip().splitlines()[0])
    except Exception:  # noqa: BLE001  (CPU dry run)
        return None


def shutdown(llm) -> None:
    before = gpu_used_mib()
    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception as e:  # noqa: BLE001
        log(f"shutdown: {e!r}")
    del llm
    gc.collect()
    # The engine's memory is freed when its process exits: wait for it before the next start-up
    # (vLLM refuses to start when less than its share is free).
    for _ in range(30):
        now = gpu_used_mib()
        if before is None or now is None or now < before - 10 * 1024:
            break
        time.sleep(1)
    log(f"engine shut down; GPU memory used {before} -> {gpu_used_mib()} MiB")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        pkg = Path(__import__("vllm_maxact").__file__).parent
        self.results: dict = {
            "label": args.label,
            "package": {
                str(p.relative_to(pkg)): hashlib.sha256(p.read_bytes()).hexdigest()[:12]
                for p in sorted(pkg.rglob("*.py"))
            },
            "started": dt.datetime.now(dt.timezone.utc).isoformat(),
            "argv": sys.argv,
            "model": str(args.model),
            "env": {k: v for k, v in os.environ.items() if k.startswith(("VLLM_", "CUDA_VISIBLE"))},
            "gpu": gpu_info(),
            "python": platform.python_version(),
            "engines": {},
            "checks": {},
            "workloads": {},
            "correctness": {},
            "errors": [],
        }

    def save(self) -> None:
        path = self.out / f"{self.args.label}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.results, indent=1, default=str))
        tmp.replace(path)
        (self.out / f"{self.args.label}.md").write_text(markdown(self.results))

    # -- engines
    def build(self, name: str, *, enable: bool, eager: bool = False, env: dict | None = None):
        from vllm import LLM

        os.environ["VLLM_MAXACT_ENABLE"] = "1" if enable else "0"
        kw = dict(
            model=str(self.args.model),
            load_format="dummy",
            skip_tokenizer_init=True,
            seed=0,
            enforce_eager=eager,
            gpu_memory_utilization=self.args.mem,
            tensor_parallel_size=self.args.tp,
        )
        if self.args.tp > 1:
            # vLLM 0.26's all-reduce + RMSNorm fusion picks FlashInfer's "mnnvl" backend, which
            # needs NVLink multicast (off on the lent machines); see gpu_tp2.py --allreduce-fusion.
            kw["compilation_config"] = {"pass_config": {"fuse_allreduce_rms": False}}
        if self.args.max_model_len:
            kw["max_model_len"] = self.args.max_model_len
        log(f"building engine {name} (plugin {'on' if enable else 'off'}, eager={eager}, env={env or {}})")
        t0 = time.perf_counter()
        with mock.patch.dict(os.environ, env or {}):  # read by the engine's processes as they start
            llm = LLM(**kw)
        secs = time.perf_counter() - t0
        log(f"engine {name} ready in {secs:.1f} s")
        self.results["engines"][name] = {"enable": enable, "enforce_eager": eager, "startup_s": secs}
        self.save()
        return llm

    def recording(self, llm) -> tuple[bool, str]:
        """(records?, detail) through the public API: `read_stats` raises where nothing records."""
        from vllm_maxact import read_stats

        try:
            t = read_stats(llm)
            return True, f"read_stats: {t.num_rows} sites"
        except Exception as e:  # noqa: BLE001  (a disabled plugin has no worker method at all)
            return False, f"read_stats raised {type(e).__name__}: {str(e)[:300]}"

    # -- timing
    def run_once(self, llm, prompts, out_len: int) -> dict:
        from vllm import SamplingParams

        sp = SamplingParams(
            max_tokens=out_len, min_tokens=out_len, ignore_eos=True, temperature=0.0, detokenize=False
        )
        t0 = time.perf_counter()
        outs = llm.generate(prompts, sp, use_tqdm=False)
        secs = time.perf_counter() - t0
        n_out = sum(len(o.outputs[0].token_ids) for o in outs)
        n_in = sum(len(o.prompt_token_ids) for o in outs)
        return {"seconds": secs, "output_tokens": n_out, "prompt_tokens": n_in}

    def timing(self, engines: dict) -> None:
        import numpy as np

        workloads = QUICK_WORKLOADS if self.args.quick else WORKLOADS
        if self.args.workloads:
            workloads = [w for w in workloads if w[0] in self.args.workloads.split(",")]
        for wi, (name, batch, plen, olen, metric) in enumerate(workloads):
            rng = np.random.default_rng(1000 + wi)
            entry = {
                "batch": batch,
                "prompt_len": plen,
                "output_len": olen,
                "metric": metric,
                "runs": {k: [] for k in engines},
            }
            self.results["workloads"][name] = entry
            warm = make_prompts(rng, batch, plen)
            for label, llm in engines.items():
                r = self.run_once(llm, warm, olen)
                log(f"{name}: warm-up {label} {r['seconds']:.2f} s")
            for rep in range(self.args.reps):
                prompts = make_prompts(rng, batch, plen)  # fresh per repetition, same for A and B
                order = list(engines.items())  # ABBA: reversed every other repetition (drift)
                for label, llm in (order if rep % 2 == 0 else order[::-1]):
                    r = self.run_once(llm, prompts, olen)
                    r["rep"] = rep
                    toks = r["output_tokens"] if metric == "output" else r["prompt_tokens"]
                    r["tok_per_s"] = toks / r["seconds"]
                    entry["runs"][label].append(r)
                    log(
                        f"{name} rep {rep} {label}: {r['tok_per_s']:.1f} {metric} tok/s ({r['seconds']:.2f} s)"
                    )
            med = {k: statistics.median(x["tok_per_s"] for x in v) for k, v in entry["runs"].items()}
            entry["median_tok_per_s"] = med
            for label, suffix in (("maxact", ""), ("maxact_sync", "_sync")):
                if "plain" not in med or label not in med:
                    continue
                entry["ratio" + suffix] = med[label] / med["plain"]
                # per-repetition ratios (pairs run back to back) show the noise
                entry["pair_ratios" + suffix] = [
                    b["tok_per_s"] / a["tok_per_s"]
                    for a, b in zip(entry["runs"]["plain"], entry["runs"][label], strict=True)
                ]
                log(f"{name}: median plain {med['plain']:.1f}, {label} {med[label]:.1f}, "
                    f"ratio {entry['ratio' + suffix]:.4f}")
            self.save()

    # -- where the time goes
    def profile(self, engines: dict) -> None:
        """For each workload in --profile: one untimed run, then one run under torch's profiler in
        each engine's worker (alternating), reporting wall time, GPU kernel time, the time the
        GPU was busy and the kernels by total time. Profiled runs are slower than timed ones;
        the differences between engines are what matter."""
        import numpy as np

        workloads = {w[0]: w for w in (QUICK_WORKLOADS if self.args.quick else WORKLOADS)}
        for name in self.args.profile.split(","):
            if name not in workloads:
                raise SystemExit(f"--profile: unknown workload {name!r}; known: {', '.join(workloads)}")
            _, batch, plen, olen, _ = workloads[name]
            olen = min(olen, self.args.profile_steps)
            prompts = make_prompts(np.random.default_rng(77), batch, plen)
            entry = self.results.setdefault("profile", {})[name] = {"output_len": olen}
            for llm in engines.values():  # untimed warm-up of these shapes
                self.run_once(llm, prompts, olen)
            for label, llm in engines.items():
                llm.apply_model(profile_start)
                r = self.run_once(llm, prompts, olen)
                summary = llm.apply_model(profile_stop)[0]
                entry[label] = {"wall_us": r["seconds"] * 1e6, **summary}
                log(f"profile {name} {label}: wall {r['seconds'] * 1e3:.1f} ms, kernels {summary['kernels']}, "
                    f"kernel {summary['kernel_us'] / 1e3:.1f} ms, busy {summary['busy_us'] / 1e3:.1f} ms, "
                    f"span {summary['span_us'] / 1e3:.1f} ms")
            self.save()

    # -- correctness
    def correctness(self, graph_llm, eager_llm) -> None:
        import numpy as np

        from vllm_maxact import read_stats, reset_stats

        res = self.results["correctness"]
        for llm in (graph_llm, eager_llm):
            llm.apply_model(randomize_weights)
            llm.apply_model(zero_lm_head)
        res["truth_sites"] = eager_llm.apply_model(install_truth)[0]
        rng = np.random.default_rng(7)
        if self.args.quick:
            mixed_lens, mixed_out = [1, 3, 17, 64, 100, 255], [1, 8, 5, 16, 2, 9]
            dec_n, dec_out = 6, 12
        else:
            mixed_lens = [1, 3, 17, 64, 100, 255, 513, 1024, 2047, 3000, 7, 130]
            mixed_out = [1, 8, 33, 64, 2, 17, 40, 1, 5, 12, 64, 48]
            dec_n, dec_out = 37, 64  # 37: decode batches get padded to a captured size
        # padding: a 40-token prompt puts HOT_TOKEN at rows 14 and 15 of vLLM's input buffer;
        # after a reset, 13 one-token prompts run as one step padded to the captured size 16,
        # whose padding rows 13-15 still hold those stale ids (vLLM zeroes padded positions, not
        # ids). A recorder that let padding rows through would show the hot embedding (~5000x).
        hot = rng.integers(*TOKEN_RANGE, size=40)
        hot[14] = hot[15] = HOT_TOKEN
        pre = {"padding": [({"prompt_token_ids": hot.tolist()}, 1)]}
        phases = {
            "padding": [({"prompt_token_ids": [int(rng.integers(*TOKEN_RANGE))]}, 1) for _ in range(13)],
            "mixed": [
                ({"prompt_token_ids": rng.integers(*TOKEN_RANGE, size=n).tolist()}, o)
                for n, o in zip(mixed_lens, mixed_out, strict=True)
            ],
            "decode": [
                (
                    {"prompt_token_ids": rng.integers(*TOKEN_RANGE, size=int(rng.integers(1, 9))).tolist()},
                    dec_out,
                )
                for _ in range(dec_n)
            ],
        }
        from vllm import SamplingParams

        def sampling(o: int) -> SamplingParams:
            return SamplingParams(
                max_tokens=o, min_tokens=o, ignore_eos=True, temperature=0.0, detokenize=False
            )

        for phase, reqs in phases.items():
            for llm in (graph_llm, eager_llm):
                if phase in pre:
                    llm.generate(
                        [r[0] for r in pre[phase]], [sampling(o) for _, o in pre[phase]], use_tqdm=False
                    )
                reset_stats(llm)
            eager_llm.apply_model(reset_truth)
            prompts = [r[0] for r in reqs]
            sps = [sampling(o) for _, o in reqs]
            outs = {}
            for label, llm in (("graph", graph_llm), ("eager", eager_llm)):
                outs[label] = [
                    list(o.outputs[0].token_ids) for o in llm.generate(prompts, sps, use_tqdm=False)
                ]
            tables = {"graph": read_stats(graph_llm).to_pylist(), "eager": read_stats(eager_llm).to_pylist()}
            truth = eager_llm.apply_model(read_truth)[0]
            res[phase] = compare(tables, truth, outs, reqs)
            log(f"correctness {phase}: {json.dumps(res[phase]['summary'])}")
            self.save()


def rel(a: float | None, b: float | None) -> float:
    if a is None or b is None:
        return math.inf if a != b else 0.0
    if a == b:
        return 0.0
    return abs(a - b) / max(abs(b), 1e-30)


def compare(tables: dict, truth: dict, outs: dict, reqs: list) -> dict:
    g = {r["site"]: r for r in tables["graph"]}
    e = {r["site"]: r for r in tables["eager"]}
    t = {n: (mx, mn) for n, mx, mn in zip(truth["names"], truth["max"], truth["min"], strict=True)}
    sites = []
    # the truth recorder hooks every site the adapter declares; the engines record the selected
    # (default) ones: compare those, and count the rest
    truth_only = [n for n in t if n not in g and n not in e]
    for name in t:
        if name in truth_only:
            continue
        tmx, tmn = t[name]
        tabs = max(abs(tmx), abs(tmn))
        row = {"site": name, "truth_max": tmx, "truth_min": tmn}
        for label, src in (("graph", g), ("eager", e)):
            r = src.get(name)
            row[f"{label}_max"], row[f"{label}_min"] = (r["max"], r["min"]) if r else (None, None)
            row[f"{label}_absmax"] = r["absmax"] if r else None
        row["graph_vs_eager"] = max(
            rel(row["graph_max"], row["eager_max"]),
            rel(row["graph_min"], row["eager_min"]),
            rel(row["graph_absmax"], row["eager_absmax"]),
        )
        row["eager_vs_truth"] = max(
            rel(row["eager_max"], tmx), rel(row["eager_min"], tmn), rel(row["eager_absmax"], tabs)
        )
        row["graph_vs_truth"] = max(
            rel(row["graph_max"], tmx), rel(row["graph_min"], tmn), rel(row["graph_absmax"], tabs)
        )
        sites.append(row)
    computed = sum(
        len(r[0]["prompt_token_ids"]) + o - 1 for r, o in zip(reqs, [x[1] for x in reqs], strict=True)
    )
    tok = {
        "graph": tables["graph"][0]["tokens"] if tables["graph"] else None,
        "eager": tables["eager"][0]["tokens"] if tables["eager"] else None,
        "truth": truth["tokens"],
        "expected_prompt_plus_output_minus_1": computed,
    }
    gve = [s["graph_vs_eager"] for s in sites]
    top = sorted(sites, key=lambda s: -s["graph_vs_eager"])[:5]
    summary = {
        "sites": len(sites),
        "truth_only_sites": len(truth_only),
        "graph_vs_eager_max_rel": max(gve),
        "graph_vs_eager_median_rel": statistics.median(gve),
        "graph_vs_eager_exact_sites": sum(1 for x in gve if x == 0.0),
        "eager_vs_truth_max_rel": max(s["eager_vs_truth"] for s in sites),
        "graph_vs_truth_max_rel": max(s["graph_vs_truth"] for s in sites),
        "tokens": tok,
        "tokens_equal": len({tok["graph"], tok["eager"], tok["truth"]}) == 1,
        "same_generated_tokens": outs["graph"] == outs["eager"],
        "truth_row_mismatch": truth["row_mismatch"],
        "global_absmax_truth": max(max(abs(s["truth_max"]), abs(s["truth_min"])) for s in sites),
        "worst_sites": [(s["site"], s["graph_vs_eager"], s["graph_absmax"], s["eager_absmax"]) for s in top],
    }
    return {"summary": summary, "sites": sites}


def markdown(res: dict) -> str:
    lines = [f"### {res['label']}", "", f"GPU: {res['gpu'].get('nvidia_smi')}", ""]
    for name, eng in res["engines"].items():
        lines.append(
            f"- engine `{name}`: plugin {'on' if eng['enable'] else 'off'}, "
            f"enforce_eager={eng['enforce_eager']}, start-up {eng['startup_s']:.0f} s"
        )
    lines += [
        "",
        "| workload | metric | plain tok/s (median) | maxact tok/s (median) | maxact / plain | per-pair ratios |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for name, w in res["workloads"].items():
        med = w.get("median_tok_per_s", {})
        if "ratio" not in w:
            continue
        pairs = ", ".join(f"{x:.3f}" for x in w["pair_ratios"])
        lines.append(
            f"| {name} (batch {w['batch']}, {w['prompt_len']}/{w['output_len']}) | {w['metric']} | "
            f"{med['plain']:.1f} | {med['maxact']:.1f} | {w['ratio']:.4f} | {pairs} |"
        )
        if "ratio_sync" in w:
            pairs = ", ".join(f"{x:.3f}" for x in w["pair_ratios_sync"])
            lines.append(f"| {name}, collect waiting (`maxact_sync`) | {w['metric']} | {med['plain']:.1f} | "
                         f"{med['maxact_sync']:.1f} | {w['ratio_sync']:.4f} | {pairs} |")
    for phase, c in res["correctness"].items():
        if isinstance(c, dict) and "summary" in c:
            s = c["summary"]
            lines += [
                "",
                f"correctness `{phase}`: {s['sites']} sites, graph vs eager max rel "
                f"{s['graph_vs_eager_max_rel']:.3g} (median {s['graph_vs_eager_median_rel']:.3g}, "
                f"{s['graph_vs_eager_exact_sites']} exact), eager vs truth max rel {s['eager_vs_truth_max_rel']:.3g}, "
                f"graph vs truth max rel {s['graph_vs_truth_max_rel']:.3g}, tokens {s['tokens']}, "
                f"global absmax {s['global_absmax_truth']:.4g}",
            ]
    if res.get("errors"):
        lines += ["", "errors:"] + [f"- {e.splitlines()[-1] if e else e}" for e in res["errors"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", type=Path, default=DEFAULT_MODEL, help="folder with config.json (dummy weights)"
    )
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--label", default="gpu_overhead")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--mem", type=float, default=0.4, help="gpu_memory_utilization of each engine")
    ap.add_argument("--max-model-len", type=int, default=None)
    ap.add_argument("--tp", type=int, default=1, help="tensor_parallel_size (TP>1: all-reduce fusion off)")
    ap.add_argument("--quick", action="store_true", help="tiny workloads (CPU dry run)")
    ap.add_argument("--workloads", default="", help="comma-separated subset of workload names")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--skip-correctness", action="store_true")
    ap.add_argument("--profile", default="", help="comma-separated workloads to profile after the timing")
    ap.add_argument("--profile-steps", type=int, default=64, help="output tokens per profiled run")
    ap.add_argument(
        "--fallback-path",
        type=Path,
        default=None,
        help="folder with a vllm_maxact package to use if the instrumented engine fails to build",
    )
    ap.add_argument(
        "--also-sync",
        action="store_true",
        help="also time a third engine whose periodic collect waits for the device "
        "(VLLM_MAXACT_ASYNC_COLLECT=0), alternated with the other two; lower --mem to fit three",
    )
    ap.add_argument(
        "--v2-runner",
        action="store_true",
        help="leave vLLM's model-runner choice alone (0.26 picks the V2 runner for dense models)",
    )
    args = ap.parse_args()

    # Spawned engine processes read VLLM_MAXACT_ENABLE afresh (a forked one would inherit this
    # process's cached plugin config). Functions go to workers by value through apply_model.
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
    if not args.v2_runner:
        os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
    if args.tp > 1:  # NVLink multicast stays off (the lent machines' rule)
        for k, v in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"), ("NVSHMEM_DISABLE_NVLS", "1")):
            os.environ.setdefault(k, v)

    bench = Bench(args)
    import torch
    import vllm

    bench.results["versions"] = {"vllm": vllm.__version__, "torch": torch.__version__}
    bench.results["ops"] = ops_fingerprint()
    cfg = json.loads((args.model / "config.json").read_text())
    global TOKEN_RANGE
    TOKEN_RANGE = (min(TOKEN_RANGE[0], cfg["vocab_size"] // 4), min(TOKEN_RANGE[1], cfg["vocab_size"]))
    bench.results["byte_floor"] = byte_floor(cfg)
    bench.save()

    # Correctness first (it is the part a time limit must not cut), with at most two engines
    # alive at once: instrumented + eager reference, then instrumented + plain for the timing.
    plain = maxact = eager = sync = None
    try:
        try:
            maxact = bench.build("maxact", enable=True)
        except Exception:
            if not args.fallback_path:
                raise
            # An experimental variant that does not build must not cost the whole run: the
            # spawned engine process takes this process's sys.path.
            bench.results["errors"].append(traceback.format_exc())
            bench.results["fallback"] = str(args.fallback_path)
            log(f"maxact engine failed; falling back to {args.fallback_path}")
            sys.path.insert(0, str(args.fallback_path))
            maxact = bench.build("maxact", enable=True)
        checks = bench.results["checks"]
        checks["maxact_has_recorder"] = maxact.apply_model(has_recorder)
        checks["maxact_records"] = bench.recording(maxact)
        bench.save()
        if not args.skip_correctness:
            try:
                eager = bench.build("maxact_eager", enable=True, eager=True)
                checks["eager_records"] = bench.recording(eager)
                bench.correctness(maxact, eager)
            except Exception:
                bench.results["errors"].append(traceback.format_exc())
                log(traceback.format_exc())
                bench.save()
            finally:
                if eager is not None:
                    shutdown(eager)
                    eager = None
        if not args.skip_timing:
            plain = bench.build("plain", enable=False)
            checks["plain_has_recorder"] = plain.apply_model(has_recorder)
            log(f"checks: {checks}")
            bench.save()
            if any(checks["plain_has_recorder"]) or not all(checks["maxact_has_recorder"]):
                raise RuntimeError(f"plugin switch not honoured: {checks}")
            timed = {"plain": plain, "maxact": maxact}
            if args.also_sync:
                sync = bench.build("maxact_sync", enable=True, env={"VLLM_MAXACT_ASYNC_COLLECT": "0"})
                timed["maxact_sync"] = sync
            for llm in timed.values():  # realistic values for the timed runs too (same seed)
                llm.apply_model(randomize_weights)
            bench.timing(timed)
            if args.profile:
                bench.profile({"plain": plain, "maxact": maxact})
            # Last, since a failed worker RPC may leave an engine unusable: the public API must
            # refuse to read statistics from the plain engine.
            checks["plain_records"] = bench.recording(plain)
            log(f"plain engine read_stats: {checks['plain_records']}")
            if checks["plain_records"][0]:
                raise RuntimeError("the plain engine records statistics")
    except Exception:
        bench.results["errors"].append(traceback.format_exc())
        log(traceback.format_exc())
    bench.results["finished"] = dt.datetime.now(dt.timezone.utc).isoformat()
    bench.save()
    print(markdown(bench.results), flush=True)
    for llm in (plain, maxact, sync):
        if llm is not None:
            shutdown(llm)


def byte_floor(cfg: dict, batch: int = 64, context: int = 384) -> dict:
    """Extra bytes the default sites' reductions read per decode step, against the step's bytes.

    Counted as if every site were a separate pass over its tensor (bf16): the floor for any
    recorder that does not fuse into the kernel that produces or consumes the tensor. A fused
    recorder reads nothing extra. ``context`` is the mean KV length during decode_b64
    (256 prompt + half of 256 output).
    """
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or h // heads
    vocab = cfg["vocab_size"]
    per_layer_sites = {"residual": h, "attn_out": h, "mlp_out": h, "gate": inter}
    per_token = layers * sum(per_layer_sites.values()) + 2 * h  # + embedding + final_norm
    site_bytes = 2 * per_token * batch
    layer_params = h * (heads + 2 * kv) * hd + heads * hd * h + 3 * h * inter + 2 * h
    weight_bytes = 2 * (layers * layer_params + vocab * h + h)  # decoder + lm_head + final norm
    kv_bytes = 2 * 2 * layers * kv * hd * context * batch
    return {
        "batch": batch,
        "sites": 2 + 4 * layers,
        "site_elements_per_token": per_token,
        "site_bytes_per_step": site_bytes,
        "weight_bytes_per_step": weight_bytes,
        "kv_bytes_per_step_at_mean_context": kv_bytes,
        "floor_vs_weights": site_bytes / weight_bytes,
        "floor_vs_weights_plus_kv": site_bytes / (weight_bytes + kv_bytes),
    }


if __name__ == "__main__":
    main()
