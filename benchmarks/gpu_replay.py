#!/usr/bin/env python3
"""Replay throughput on the GPU: `vllm-maxact replay` against plain vLLM prefill, same tokens.

One process builds two engines that stay alive side by side on one GPU (each in its own
engine-core process, so each reads the plugin switch afresh): ``plain`` (plugin installed,
``VLLM_MAXACT_ENABLE=0``) and ``maxact`` (recording every default site). Both: the
Llama-3-8B-shaped config with dummy weights (overwritten with realistic random values, the same
seed in both), prefix caching off, default compilation and CUDA graphs, bf16.

Two corpora of random token ids (the weights are random, so text would add nothing):

  study   the study's length mix (256/512/1024/2048/4096 tokens at 1/1/2/3/93 %,
          `vllm_maxact.corpus.STUDY_BUCKETS`), ``--study-samples`` samples
  short   ``--short-samples`` samples of 32..256 tokens (uniform)

Timed per repetition, alternated (plain, maxact, maxact_split, then the reverse order in the
next repetition, and so on), after one untimed warm-up each:

  plain         one ``llm.generate`` over every prompt, ``max_tokens=1`` (the best plain vLLM does)
  maxact        ``vllm_maxact.replay.run_replay`` over the same token ids with its defaults (what
                ``vllm-maxact replay`` does: batches of at least 16 scheduler steps sized to about
                ``--batch-seconds``, each ending with the recorder's window read back; the Arrow
                table built); a corpus of a few seconds is one batch
  maxact_split  the same, cut into calls of about ``--split-seconds`` (``min_batch_tokens=0``):
                its extra time over its extra calls prices one batch boundary, which a corpus
                longer than one batch pays every ``--batch-seconds``
  maxact_var    (``--variant-env SPEC``) ``maxact`` on another engine whose kernels run with
                ``VLLM_MAXACT_OPS_NORM=SPEC`` (a launch setting of vllm_maxact/hotpath/norm_kernels.py,
                which only the ``in_kernel`` path runs)
  maxact_sync   (``--also-sync``) ``maxact`` on a third engine whose periodic collect waits for
                the device (``VLLM_MAXACT_ASYNC_COLLECT=0``, the behaviour before 2026-12-03)

``--profile`` then runs each engine once more per corpus under torch's profiler (in its worker)
and reports GPU kernel time, the time the GPU was busy, the span and the kernels by total time:
whether the replay's extra time is kernel time or gaps between steps.

Prompt tokens/s are the corpus's tokens over the wall time of that call. Medians and the ratio
maxact / plain are reported, plus the ratio to the transformers-hooks anchors measured on the
same GPU model (DESIGN.md: 31,441 and 33,355 tok/s) and the FLOP/s reached against a bf16
matmul ceiling measured in the same run.

GPU (see benchmarks/RESULTS.md for the command used):
    python benchmarks/gpu_replay.py --out $OUT/replay
CPU dry run (tiny model, a few minutes):
    python benchmarks/gpu_replay.py --model benchmarks/configs/llama-tiny --quick --out /tmp/r
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from maxact_bench_worker import randomize_weights  # noqa: E402  (pickled by reference)

#: transformers forward + max-recording hooks, batched to 16k tokens, on the H200
#: (DESIGN.md section 3): study mix (64 x 4,096) and short mix (512 x 256).
HF_HOOKS_ANCHOR = {"study": 31_441.0, "short": 33_355.0}
PLAIN_ANCHOR = {"study": 40_410.0, "short": 42_331.0}


def log(msg: str) -> None:
    print(f"[gpu_replay {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def corpora(args, vocab: int) -> dict[str, tuple[list, list[list[int]]]]:
    import numpy as np

    from vllm_maxact.corpus import STUDY_BUCKETS, Sample, bucket_plan

    rng = np.random.default_rng(7)
    lo, hi = min(1000, vocab // 4), min(120000, vocab)
    study_n, short_n = (8, 32) if args.quick else (args.study_samples, args.short_samples)
    study_len = bucket_plan(study_n, STUDY_BUCKETS, seed=0)
    if args.quick:
        study_len = [min(n, 256) for n in study_len]
    short_len = rng.integers(32, 257, size=short_n).tolist()
    out = {}
    for name, lens in (("study", study_len), ("short", short_len)):
        ids = [rng.integers(lo, hi, size=n).tolist() for n in lens]
        out[name] = ([Sample(id=f"{name}-{i}", text="") for i in range(len(ids))], ids)
    return out


def matmul_ceiling() -> dict:
    """bf16 matmul TFLOP/s (8192^3, median of 20 after warm-up): the matrix-unit ceiling."""
    import torch

    if not torch.cuda.is_available():
        return {"tflops": None}
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    times = []
    for _ in range(20):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        a @ b
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    t = statistics.median(times)
    return {"n": n, "seconds": t, "tflops": 2 * n**3 / t / 1e12}


def flops(cfg: dict, lens: list[int]) -> float:
    """Forward FLOPs of prompt-only prefill: 2 x matmul params per token (q, k, v, o, gate, up,
    down), causal attention (QK^T and PV over L^2/2 pairs per layer), the lm_head on the last
    token of each prompt only (vLLM computes logits for sampled positions)."""
    h, inter, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    per_tok = 2 * L * (h * q + 2 * h * kv + q * h + 3 * h * inter)
    total = 0.0
    for n in lens:
        total += per_tok * n + L * 2 * 2 * q * n * n / 2 + 2 * h * cfg["vocab_size"]
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=HERE / "configs" / "llama3-8b")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--label", default="gpu_replay")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--study-samples", type=int, default=96)
    ap.add_argument("--short-samples", type=int, default=2048)
    ap.add_argument("--mem", type=float, default=0.4, help="gpu_memory_utilization of each engine")
    ap.add_argument("--batch-seconds", type=float, default=10.0, help="run_replay's batch sizing (0: off)")
    ap.add_argument("--split-seconds", type=float, default=1.0,
                    help="also time replay cut into calls of about this long (min_batch_tokens=0), "
                    "which prices one batch boundary (0: skip)")
    ap.add_argument("--also-sync", action="store_true",
                    help="also time replay on a third engine whose periodic collect waits for the device "
                    "(VLLM_MAXACT_ASYNC_COLLECT=0); lower --mem to fit three engines")
    ap.add_argument("--variant-env", default="",
                    help="also time replay on a third engine whose kernels run with VLLM_MAXACT_OPS_NORM set to "
                    "this (e.g. ACT_PROGRAMS_PER_SM=32): a launch setting against the default in the same run")
    ap.add_argument("--corpora", default="study,short", help="which corpora to time (comma-separated)")
    ap.add_argument("--profile", action="store_true",
                    help="after the timing, one run of each engine on each corpus under torch's profiler in its "
                    "worker: GPU kernel time, busy time, span and the kernels by total time")
    ap.add_argument("--quick", action="store_true", help="tiny corpora (CPU dry run)")
    args = ap.parse_args()

    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
    import torch
    import vllm
    from vllm import LLM, SamplingParams

    from vllm_maxact.replay import run_replay

    args.out.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((args.model / "config.json").read_text())
    res: dict = {
        "started": dt.datetime.now(dt.timezone.utc).isoformat(),
        "argv": sys.argv,
        "versions": {"vllm": vllm.__version__, "torch": torch.__version__, "python": platform.python_version(),
                     "vllm_maxact": __import__("vllm_maxact").__version__},
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "env": {k: v for k, v in os.environ.items() if k.startswith(("VLLM_", "CUDA_VISIBLE"))},
        "engines": {},
        "workloads": {},
        "errors": [],
    }

    def save() -> None:
        tmp = args.out / f"{args.label}.json.tmp"
        tmp.write_text(json.dumps(res, indent=1, default=str))
        tmp.replace(args.out / f"{args.label}.json")

    data = corpora(args, cfg["vocab_size"])
    wanted = args.corpora.split(",")
    if unknown := set(wanted) - set(data):
        raise SystemExit(f"--corpora: unknown {sorted(unknown)}; known: {', '.join(data)}")
    data = {k: v for k, v in data.items() if k in wanted}
    max_len = max(len(t) for _, ids in data.values() for t in ids)
    engines = {}
    builds = [("plain", "0", "1", ""), ("maxact", "1", "1", "")] + \
        ([("maxact_sync", "1", "0", "")] if args.also_sync else []) + \
        ([("maxact_var", "1", "1", args.variant_env)] if args.variant_env else [])
    for name, enable, async_collect, tuning in builds:
        os.environ["VLLM_MAXACT_ENABLE"] = enable
        os.environ["VLLM_MAXACT_ASYNC_COLLECT"] = async_collect  # read by the spawned engine processes
        os.environ["VLLM_MAXACT_OPS_NORM"] = tuning
        t0 = time.perf_counter()
        engines[name] = LLM(str(args.model), load_format="dummy", skip_tokenizer_init=True, seed=0,
                            enable_prefix_caching=False, max_model_len=max_len + 1,
                            gpu_memory_utilization=args.mem, dtype="bfloat16")
        res["engines"][name] = {"startup_s": time.perf_counter() - t0}
        engines[name].apply_model(randomize_weights)
        log(f"engine {name} ready in {res['engines'][name]['startup_s']:.0f} s")
        save()
    sp = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False)

    variants = ["plain", "maxact"] + (["maxact_split"] if args.split_seconds else []) + \
        (["maxact_sync"] if args.also_sync else []) + (["maxact_var"] if args.variant_env else [])

    def run(name: str, samples, ids) -> dict:
        llm = engines[name if name in engines else "maxact"]
        t0 = time.perf_counter()
        if name == "plain":
            outs = llm.generate([{"prompt_token_ids": t} for t in ids], sp, use_tqdm=False)
            n = sum(len(o.prompt_token_ids) for o in outs)
            extra = {}
        else:
            calls: list[int] = []
            kw = (dict(batch_seconds=args.split_seconds, min_batch_tokens=0) if name == "maxact_split"
                  else dict(batch_seconds=args.batch_seconds or None))
            r = run_replay(llm, samples, model="llama3-8b-shape", token_ids=ids, targets=None,
                           on_progress=lambda n, t, g: calls.append(n), **kw)
            n = r.tokens
            extra = {"replay_tok_per_s": r.tokens_per_s, "rows": r.table.num_rows, "calls": len(calls)}
        secs = time.perf_counter() - t0
        return {"seconds": secs, "prompt_tokens": n, "tok_per_s": n / secs, **extra}

    try:
        for wname, (samples, ids) in data.items():
            lens = [len(t) for t in ids]
            entry = {"samples": len(ids), "tokens": sum(lens), "runs": {k: [] for k in variants},
                     "flops": flops(cfg, lens)}
            res["workloads"][wname] = entry
            k = max(1, len(ids) // 8)
            for name in engines:  # warm-up on an eighth of the corpus (each engine once)
                r = run(name, samples[:k], ids[:k])
                log(f"{wname}: warm-up {name} {r['tok_per_s']:.0f} tok/s")
            for rep in range(args.reps):
                # ABBA: the order reversed every other repetition, so a drift in the machine's
                # speed over the run (clocks, temperature) weighs on every variant alike
                for name in (variants if rep % 2 == 0 else variants[::-1]):
                    r = run(name, samples, ids)
                    r["rep"] = rep
                    entry["runs"][name].append(r)
                    log(f"{wname} rep {rep} {name}: {r['tok_per_s']:.0f} prompt tok/s ({r['seconds']:.2f} s)")
                save()
            med = {n: statistics.median(x["tok_per_s"] for x in v) for n, v in entry["runs"].items()}
            entry["median_tok_per_s"] = med
            for label, suffix in (("maxact", ""), ("maxact_sync", "_sync"), ("maxact_var", "_var")):
                if label in med:
                    entry["ratio" + suffix] = med[label] / med["plain"]
                    entry["pair_ratios" + suffix] = [b["tok_per_s"] / a["tok_per_s"] for a, b in
                                                     zip(entry["runs"]["plain"], entry["runs"][label], strict=True)]
            if "maxact_split" in med:
                # One batch boundary's price: the split run's extra time over its extra calls.
                split, whole = entry["runs"]["maxact_split"], entry["runs"]["maxact"]
                extra_calls = statistics.median(x["calls"] for x in split) - statistics.median(x["calls"] for x in whole)
                extra_s = statistics.median(x["seconds"] for x in split) - statistics.median(x["seconds"] for x in whole)
                entry["split"] = {"ratio": med["maxact_split"] / med["plain"], "extra_calls": extra_calls,
                                  "seconds_per_boundary": extra_s / extra_calls if extra_calls else None}
            entry["vs_hf_hooks_anchor"] = med["maxact"] / HF_HOOKS_ANCHOR[wname]
            entry["plain_vs_anchor"] = med["plain"] / PLAIN_ANCHOR[wname]
            secs = entry["tokens"] / med["maxact"]
            entry["tflops_maxact"] = entry["flops"] / secs / 1e12
            entry["tflops_plain"] = entry["flops"] / (entry["tokens"] / med["plain"]) / 1e12
            log(f"{wname}: median plain {med['plain']:.0f}, maxact {med['maxact']:.0f}, ratio {entry['ratio']:.4f}, "
                f"pairs {[round(x, 4) for x in entry['pair_ratios']]}, split {entry.get('split')}")
            save()
        if args.profile:
            # Where the replay's extra time goes: GPU kernel time (our kernels against Inductor's)
            # or idle gaps between steps (host work, batch ends). Profiled runs are slower than
            # timed ones; the differences between the engines are what matter.
            from maxact_bench_worker import profile_start, profile_stop

            for wname, (samples, ids) in data.items():
                prof = res["workloads"][wname]["profile"] = {}
                for name in engines:
                    engines[name].apply_model(profile_start)
                    r = run(name, samples, ids)
                    summary = engines[name].apply_model(profile_stop)[0]
                    prof[name] = {"wall_us": r["seconds"] * 1e6, **summary}
                    log(f"{wname} profile {name}: wall {r['seconds'] * 1e3:.1f} ms, kernels {summary['kernels']}, "
                        f"kernel {summary['kernel_us'] / 1e3:.1f} ms, busy {summary['busy_us'] / 1e3:.1f} ms, "
                        f"span {summary['span_us'] / 1e3:.1f} ms")
                save()
    except Exception:
        import traceback

        res["errors"].append(traceback.format_exc())
        log(traceback.format_exc())
    for llm in engines.values():
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception:  # noqa: BLE001
            pass
    engines.clear()
    try:
        res["matmul_ceiling"] = matmul_ceiling()
        c = res["matmul_ceiling"]["tflops"]
        for e in res["workloads"].values():
            if c and "tflops_maxact" in e:
                e["maxact_of_ceiling"] = e["tflops_maxact"] / c
                e["plain_of_ceiling"] = e["tflops_plain"] / c
    except Exception as e:  # noqa: BLE001
        res["errors"].append(repr(e))
    res["finished"] = dt.datetime.now(dt.timezone.utc).isoformat()
    save()
    print(json.dumps({k: {x: v.get(x) for x in ("samples", "tokens", "median_tok_per_s", "ratio", "pair_ratios",
                                               "split", "ratio_sync", "ratio_var", "pair_ratios_var", "vs_hf_hooks_anchor", "maxact_of_ceiling", "plain_of_ceiling")}
                      for k, v in res["workloads"].items()}, indent=1), flush=True)
    print("matmul ceiling:", res.get("matmul_ceiling"), "errors:", len(res["errors"]), flush=True)


if __name__ == "__main__":
    main()
