#!/usr/bin/env python3
"""Served outputs and speed with the plugin on vs off, one engine per process (GPU).

Each engine is a fresh process (tests/scripts/served_outputs.py) with vLLM's defaults: the
runner vLLM picks (V2 for dense models from 0.26; ``--runner v1`` sets
VLLM_USE_V2_MODEL_RUNNER=0), torch.compile and CUDA graphs (``--eager``: enforce_eager), the
LM head random like every other weight (``maxact_bench_worker.randomize_weights`` after
``load_format="dummy"``). Compared bit for bit: every prompt logprob (prompt_logprobs=1), every
sampled token and its logprob, greedy, 48 prompts of 8-1,900 random token ids, the batch's first
run after start-up, a later run, and prompts served alone.

    # bitwise: configs run as plain / instrumented pairs (plain twice for the V2 default)
    python benchmarks/gpu_invisible.py bitwise --out $OUT/bitwise --configs llama-v2,llama-v1
    # timing: one engine per process, alternated plain / instrumented / instrumented / plain
    python benchmarks/gpu_invisible.py timing --out $OUT/timing --rounds 2

Results: $OUT/<phase>.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CHILD = ROOT / "tests" / "scripts" / "served_outputs.py"
sys.path.insert(0, str(CHILD.parent))

from served_outputs import compare  # noqa: E402

#: name -> (model config folder, layers override or None, runner, eager)
CONFIGS = {
    "llama-v2": ("llama3-8b", 4, "default", False),
    "llama-v1": ("llama3-8b", 4, "v1", False),
    "llama-v2-eager": ("llama3-8b", 4, "default", True),
    "llama-v1-eager": ("llama3-8b", 4, "v1", True),
    "moe": ("qwen3-moe-small", None, "default", False),
    "moe-eager": ("qwen3-moe-small", None, "default", True),
    "tiny": ("llama-tiny", None, "default", False),  # a CPU dry run of the flow
}


def model_dir(name: str, layers: int | None, tmp: Path) -> str:
    src = HERE / "configs" / name
    if layers is None:
        return str(src)
    dst = tmp / f"{name}-{layers}l"
    dst.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((src / "config.json").read_text())
    cfg["num_hidden_layers"] = layers
    (dst / "config.json").write_text(json.dumps(cfg))
    return str(dst)


def child_env(plugin: bool, runner: str, cache: Path) -> dict:
    env = {**os.environ, "VLLM_MAXACT_ENABLE": "1" if plugin else "0", "PYTHONUNBUFFERED": "1",
           "VLLM_ALLOW_INSECURE_SERIALIZATION": "1", "VLLM_CACHE_ROOT": str(cache)}
    env.pop("VLLM_USE_V2_MODEL_RUNNER", None)
    if runner == "v1":
        env["VLLM_USE_V2_MODEL_RUNNER"] = "0"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH")) if p)
    return env


def launch(model: str, out: Path, *, plugin: bool, runner: str, eager: bool, mem: float, cache: Path,
           extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, str(CHILD), "--model", model, "--out", str(out), "--dummy",
           "--init", "maxact_bench_worker:randomize_weights", "--gpu-mem", str(mem), "--max-model-len", "4096",
           *extra]
    if eager:
        cmd.append("--eager")
    log = open(str(out) + ".log", "w")
    return subprocess.Popen(cmd, env=child_env(plugin, runner, cache), stdout=log, stderr=subprocess.STDOUT)


def wait_all(procs: list[tuple[str, subprocess.Popen]], limit: float) -> dict[str, int]:
    t_end = time.time() + limit
    codes = {}
    for name, p in procs:
        try:
            codes[name] = p.wait(timeout=max(1.0, t_end - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            codes[name] = -9
    return codes


def bitwise(args) -> dict:
    tmp = Path(tempfile.mkdtemp())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extra = ["--prompts", "48", "--min-len", "8", "--max-len", "1900", "--out-tokens", "48", "--repeat", "2",
             "--solo", "4", "--stats"]
    if args.inproc:
        extra.append("--inproc")
    jobs = []
    for cfg in args.configs.split(","):
        name, layers, runner, eager = CONFIGS[cfg]
        model = model_dir(name, layers, tmp)
        variants = (["off2", "on2"] if args.only_repeat else ["off", "on"]) + (
            ["off2", "on2"] if args.repeat_default and cfg == "llama-v2" and not args.only_repeat else [])
        for v in variants:
            jobs.append((cfg, v, model, runner, eager))
    codes: dict[str, int] = {}
    t_end = time.time() + args.limit
    for w in range(0, len(jobs), args.parallel):  # waves of --parallel engines
        procs = []
        for cfg, v, model, runner, eager in jobs[w:w + args.parallel]:
            path = out / f"{cfg}-{v}.json"
            cache = Path(args.cache) / f"{cfg}-{v.rstrip('2')}"
            procs.append((f"{cfg}-{v}", launch(model, path, plugin=v.startswith("on"), runner=runner, eager=eager,
                                              mem=args.mem, cache=cache, extra=extra)))
            time.sleep(args.stagger)
        codes.update(wait_all(procs, max(1.0, t_end - time.time())))
        print("wave", w // args.parallel, {k: codes[k] for k, _ in procs}, flush=True)
    res = {"codes": codes, "configs": {}}
    for cfg in args.configs.split(","):
        r = {}
        files = {v: out / f"{cfg}-{v}.json" for v in ("off", "on", "off2", "on2")}
        files.update({v: Path(args.previous) / f"{cfg}-{v}.json" for v in ("off", "on")
                      if args.previous and not files[v].exists()})
        data = {v: json.loads(f.read_text()) for v, f in files.items() if f.exists()}
        if "off" in data and "on" in data:
            a, b = data["off"], data["on"]
            r["on_vs_off"] = [compare(x, y) for x, y in zip(a["runs"] + [a["solo"]], b["runs"] + [b["solo"]],
                                                             strict=True)]
            r["off_first_vs_later"] = compare(a["runs"][0], a["runs"][1])
            r["on_first_vs_later"] = compare(b["runs"][0], b["runs"][1])
            # batch dependence: a prompt alone vs the same prompt in the batch
            r["off_solo_vs_batch"] = compare(a["solo"], a["runs"][1][: len(a["solo"])])
            r["on_solo_vs_batch"] = compare(b["solo"], b["runs"][1][: len(b["solo"])])
            st = b.get("stats", {})
            r["stats_sites"] = len(st) if "error" not in st else st["error"]
            if "error" not in st and st:
                top = max(st.items(), key=lambda kv: max(abs(kv[1][0] or 0), abs(kv[1][1] or 0)))
                r["stats_top"] = [top[0], top[1]]
                r["stats_tokens"] = sorted({v[2] for v in st.values()})
            r["plain_stats"] = a.get("stats")
        if "off2" in data:
            r["off_vs_off2"] = compare(data["off"]["runs"][0], data["off2"]["runs"][0])
        if "on2" in data:
            r["on_vs_on2"] = compare(data["on"]["runs"][0], data["on2"]["runs"][0])
        res["configs"][cfg] = r
    (out / "bitwise.json").write_text(json.dumps(res, indent=1))
    print("| config | on vs off: prompt logprobs equal | max diff | continuations | sampled logprobs equal |"
          " first vs later (on) | solo vs batch off / on | sites |")
    print("|---|---|---|---|---|---|---|---|")
    for cfg, r in res["configs"].items():
        if "on_vs_off" not in r:
            print(f"| {cfg} | missing (codes {codes}) |")
            continue
        c = r["on_vs_off"][0]
        print(f"| {cfg} | {c['prompt_logprobs_equal']}/{c['prompt_logprobs']} "
              f"(all runs bitwise: {all(x['bitwise'] for x in r['on_vs_off'])}) | {c['max_abs_diff']} | "
              f"{c['continuations_identical']}/{c['continuations']} | {c['sampled_logprobs_equal']}/{c['sampled_logprobs']} | "
              f"{r['on_first_vs_later']['bitwise']} | {r['off_solo_vs_batch']['prompt_logprobs_equal']}/"
              f"{r['on_solo_vs_batch']['prompt_logprobs_equal']} of {r['on_solo_vs_batch']['prompt_logprobs']} | "
              f"{r.get('stats_sites')} {r.get('stats_top')} |")
        for k in ("off_vs_off2", "on_vs_on2"):
            if k in r:
                print(f"|   {k} | bitwise {r[k]['bitwise']} ({r[k]['prompt_logprobs_equal']}/{r[k]['prompt_logprobs']}) |")
    return res


def timing(args) -> dict:
    tmp = Path(tempfile.mkdtemp())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name, layers, runner, eager = args.model, args.layers, args.runner, False
    model = model_dir(name, layers, tmp)
    extra = ["--prompts", "4", "--out-tokens", "4", "--repeat", "1", "--solo", "0", "--timing", args.workloads,
             "--reps", str(args.reps)]
    caches = {v: Path(args.cache) / f"timing-{runner}-{v}" for v in ("off", "on")}
    results: dict[str, list] = {"off": [], "on": []}
    if args.compile_first:  # both compile caches at once; nothing timed
        procs = [(v, launch(model, out / f"compile-{v}.json", plugin=v == "on", runner=runner, eager=eager,
                            mem=args.compile_mem, cache=caches[v],
                            extra=["--prompts", "1", "--out-tokens", "1", "--repeat", "1", "--solo", "0"]))
                 for v in ("off", "on")]
        print("compile:", wait_all(procs, args.limit), flush=True)
    order = []
    for r in range(args.rounds):
        order += ["off", "on"] if r % 2 == 0 else ["on", "off"]
    for i, v in enumerate(order):
        path = out / f"time-{runner}-{v}-{i}.json"
        p = launch(model, path, plugin=v == "on", runner=runner, eager=eager, mem=args.mem, cache=caches[v], extra=extra)
        code = wait_all([(v, p)], args.limit)[v]
        if code == 0:
            d = json.loads(path.read_text())
            results[v].append({"start_s": d["start_s"], **{w: t["median"] for w, t in d["timing"].items()}})
        print(f"{v} #{i}: exit {code} {results[v][-1] if code == 0 else ''}", flush=True)
    res = {"model": name, "layers": layers, "runner": runner, "runs": results, "ratios": {}}
    for w in args.workloads.split(","):
        offs = [r[w] for r in results["off"] if w in r]
        ons = [r[w] for r in results["on"] if w in r]
        if offs and ons:
            res["ratios"][w] = {"off": statistics.median(offs), "on": statistics.median(ons),
                                "ratio": statistics.median(ons) / statistics.median(offs), "n": [len(offs), len(ons)]}
    (out / f"timing-{runner}.json").write_text(json.dumps(res, indent=1))
    print(f"| workload ({runner}) | plain | instrumented | ratio | processes |")
    print("|---|---|---|---|---|")
    for w, r in res["ratios"].items():
        print(f"| {w} | {r['off']:.1f} | {r['on']:.1f} | {r['ratio']:.4f} | {r['n']} |")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="phase", required=True)
    b = sub.add_parser("bitwise")
    b.add_argument("--configs", default="llama-v2,llama-v1")
    b.add_argument("--repeat-default", action="store_true", help="plain and instrumented twice for llama-v2")
    b.add_argument("--only-repeat", action="store_true", help="only the second plain / instrumented processes")
    b.add_argument("--parallel", type=int, default=2, help="engines at once")
    b.add_argument("--inproc", action=argparse.BooleanOptionalAction, default=True,
                   help="engine core in the child process, every prompt queued before the first step "
                        "(with an engine-core process, batch composition depends on timing)")
    b.add_argument("--previous", default=None, help="a folder with earlier off/on results to compare with")
    t = sub.add_parser("timing")
    t.add_argument("--model", default="llama3-8b")
    t.add_argument("--layers", type=int, default=None)
    t.add_argument("--runner", default="default", choices=["default", "v1"])
    t.add_argument("--workloads", default="decode_b1,decode_b64,decode_b256,prefill_b64x2048")
    t.add_argument("--rounds", type=int, default=2)
    t.add_argument("--reps", type=int, default=3)
    t.add_argument("--compile-first", action="store_true")
    t.add_argument("--compile-mem", type=float, default=0.4)
    for p in (b, t):
        p.add_argument("--out", required=True)
        p.add_argument("--mem", type=float, default=0.25)
        p.add_argument("--cache", default=str(Path.home() / "vcache_invisible"))
        p.add_argument("--limit", type=float, default=560.0)
        p.add_argument("--stagger", type=float, default=3.0)
    args = ap.parse_args()
    if shutil.which("nvidia-smi"):
        subprocess.run(["nvidia-smi", "-L"])
    (bitwise if args.phase == "bitwise" else timing)(args)


if __name__ == "__main__":
    main()
