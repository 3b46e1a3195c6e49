#!/usr/bin/env python3
"""A newcomer's first run: `vllm-maxact replay` with no arguments, from fresh caches.

Each repetition runs the command in an empty folder with empty model, vLLM and Inductor caches
(`VLLM_MAXACT_CACHE`, `VLLM_CACHE_ROOT`, `TORCHINDUCTOR_CACHE_DIR`), so the bundled model is
converted from GGUF and torch.compile runs from scratch, as right after `bash install.sh`. The
child's output is timestamped as it arrives (the progress bar's `\\r` updates included) to
measure: model conversion, engine start (until the bar appears), the first bar movement after
it, the longest gap between movements, the summary's arrival and the command's exit, with the
machine's load average before and after. Repetitions run one after another.

`--eta-samples N` adds one longer run (N samples at full length, warm caches) and reports the
ETA the bar showed one minute in against the time actually left, and the time the no-argument
run's rate predicts for those N samples (what its `--full` estimate does) against the time
they took.

    python benchmarks/newcomer.py --reps 3 --out benchmarks/results/newcomer.json
    python benchmarks/newcomer.py --reps 3 --replay-args "--dtype float32" --eta-samples 60 \\
        --out benchmarks/results/newcomer_fp32.json

Prints a Markdown section for benchmarks/RESULTS.md (`--results FILE` writes it there, between
the markers `<!-- newcomer:ARGS -->` / `<!-- /newcomer:ARGS -->`, replacing an earlier one).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BAR = re.compile(r"replay: +(\d+)%\|.*?\| ([\d,]+)/([\d,]+) tok \[([^\],]+)(?:, ([^\]]*))?\]")


def machine() -> dict:
    info = {"python": platform.python_version(), "cores": len(os.sched_getaffinity(0))}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        info["cpu"] = re.search(r"Model name:\s*(.+)", lscpu)[1].strip()
        flags = set(re.search(r"Flags:\s*(.+)", lscpu)[1].split())
        info["bf16_units"] = sorted(flags & {"avx512_bf16", "amx_bf16"}) or "none"
    except Exception:
        pass
    try:
        import torch
        import vllm

        info["torch"], info["vllm"] = torch.__version__, vllm.__version__
    except Exception:
        pass
    return info


def command() -> list[str]:
    exe = shutil.which("vllm-maxact")
    return [exe] if exe else [sys.executable, "-m", "vllm_maxact.cli"]


def run_once(args: list[str], workdir: Path, cache: Path, timeout: float) -> dict:
    """Run `vllm-maxact replay ARGS` in ``workdir`` with caches under ``cache``; timestamp output."""
    env = {**os.environ, "VLLM_MAXACT_CACHE": str(cache / "maxact"), "VLLM_CACHE_ROOT": str(cache / "vllm"),
           "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"), "COLUMNS": "100"}
    load0 = os.getloadavg()
    t0 = time.monotonic()
    proc = subprocess.Popen([*command(), "replay", *args], cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    events: list[tuple[float, str, str]] = []  # (seconds since start, stream, text)
    lock = threading.Lock()

    def pump(stream, name):
        buf = b""
        while chunk := stream.read1(65536) if hasattr(stream, "read1") else stream.read(1):
            now = time.monotonic() - t0
            buf += chunk
            *parts, buf = re.split(rb"[\r\n]", buf)
            with lock:
                events.extend((now, name, p.decode(errors="replace")) for p in parts if p.strip())
        if buf.strip():
            events.append((time.monotonic() - t0, name, buf.decode(errors="replace")))

    threads = [threading.Thread(target=pump, args=(proc.stdout, "out")),
               threading.Thread(target=pump, args=(proc.stderr, "err"))]
    for t in threads:
        t.start()
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = -9
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    events.sort(key=lambda e: e[0])
    r: dict = {"rc": rc, "wall_exit_s": round(wall, 1), "load_before": [round(x, 2) for x in load0],
               "load_after": [round(x, 2) for x in os.getloadavg()]}
    bar: list[tuple[float, int, int, str]] = []
    for k, (t, _, text) in enumerate(events):
        if (m := re.search(r"smollm2-135m ready in (\d+) s", text)) and "conversion_s" not in r:
            r["conversion_s"] = int(m[1])
        if (m := BAR.search(text)) is not None:
            bar.append((t, int(m[2].replace(",", "")), int(m[3].replace(",", "")), m[5] or ""))
        if "activation ranges" in text and "summary_s" not in r:
            r["summary_s"] = round(t, 1)
        if (m := re.search(r"--full +# the whole corpus: (\d+) samples, ([\d,]+) tokens, about (.+) here", text)):
            r["full_estimate"] = m[3]
        if (m := re.search(r"([\d,]+) prompt tok/s", text)):
            r["tok_s"] = int(m[1].replace(",", ""))
        if (m := re.search(r"global max \|x\| \(M\)\s+([\d,.]+) at (\S+?);", text)):
            r["global_max"], r["global_max_site"] = float(m[1].replace(",", "")), m[2]
        if (m := re.search(r"replayed\s+(.*)", text)):
            more = events[k + 1][2] if k + 1 < len(events) else ""  # the summary wraps long values:
            wrapped = more.startswith(" ")  # continuation lines leave the label column blank
            r["replayed"] = m[1].strip() + (" " + more.strip() if wrapped else "")
    if bar:
        ready = bar[0][0]
        r["engine_ready_s"] = round(ready, 1)
        moves = [ready] + [t for i, (t, n, _, _) in enumerate(bar) if i and n != bar[i - 1][1]]
        r["first_move_after_ready_s"] = round(moves[1] - ready, 1) if len(moves) > 1 else None
        r["max_gap_between_moves_s"] = round(max(b - a for a, b in zip(moves, moves[1:], strict=False)), 1) \
            if len(moves) > 1 else None
        r["replay_s"] = round(moves[-1] - ready, 1)
        r["tokens"] = bar[-1][2]
        r["bar"] = [(round(t - ready, 1), n, post) for t, n, _, post in bar]
    if rc != 0:
        r["tail"] = "\n".join(e[2] for e in events[-30:])
    return r


def eta_check(run: dict) -> dict:
    """The ETA shown at the first bar update at least 60 s after the bar appeared, against the
    time actually left until the bar's last movement."""
    bar = run.get("bar") or []
    end = bar[-1][0] if bar else None
    for t, _, post in bar:
        if t >= 60 and (m := re.search(r"ETA (\d+):(\d\d)(?::(\d\d))?", post)):
            eta = int(m[1]) * 60 + int(m[2]) if m[3] is None else int(m[1]) * 3600 + int(m[2]) * 60 + int(m[3])
            left = end - t
            return {"at_s": t, "eta_s": eta, "actual_left_s": round(left, 1),
                    "error_pct": round(100 * (eta - left) / left, 1) if left > 0 else None}
    return {}


def predicted_by_quick_run(quick: dict, model_dir: Path, n: int) -> float | None:
    """Seconds the no-argument run's measured rate predicts for `--samples n` at full length (the
    same arithmetic as its `--full` estimate)."""
    from transformers import AutoTokenizer

    from vllm_maxact import cli, corpus
    from vllm_maxact.progress import estimate_seconds

    tok = AutoTokenizer.from_pretrained(model_dir)
    data = corpus.load_corpus("builtin")
    quick_samples = corpus.stratified(data, cli.QUICK_PER_DOMAIN, seed=0)
    q = [min(len(t), cli.QUICK_MAX_TOKENS) for t in tok([s.text for s in quick_samples]).input_ids]
    if sum(q) != quick.get("tokens") or not quick.get("tok_s"):
        return None  # the run was cut by its budget, or did not finish
    limit = 8191
    lens = [min(len(t), limit) for t in tok([s.text for s in corpus.load_corpus("builtin", samples=n, seed=0)]).input_ids]
    return estimate_seconds(lens, measured_lengths=q, measured_seconds=sum(q) / quick["tok_s"])


def median(runs: list[dict], key: str):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return round(statistics.median(vals), 1) if vals else None


def markdown(meta: dict, runs: list[dict], eta: dict | None) -> str:
    m = meta["machine"]
    args = meta["replay_args"] or "(none)"
    lines = [f"<!-- newcomer:{meta['replay_args']} -->",
             f"## CPU ({m.get('cores')} cores): a newcomer's first `vllm-maxact replay`, fresh caches — {meta['date']}",
             "",
             f"`{meta['command']}` ({meta['reps']} repetitions, one after another). Machine: {m.get('cpu')}, "
             f"{m.get('cores')} cores, bf16 units: {m.get('bf16_units')}; vLLM {m.get('vllm')}, torch {m.get('torch')}. "
             f"Replay arguments: {args}. Every repetition starts from empty model, vLLM and Inductor caches "
             "(model conversion and torch.compile included).",
             "",
             "| run | load before (1/5/15 min) | conversion s | engine ready s | first move s | longest gap s "
             "| replay s | summary s | exit s | tok/s | M (site) | `--full` estimate |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for i, r in enumerate(runs, 1):
        lines.append(f"| {i} | {' / '.join(map(str, r['load_before']))} | {r.get('conversion_s')} | "
                     f"{r.get('engine_ready_s')} | {r.get('first_move_after_ready_s')} | "
                     f"{r.get('max_gap_between_moves_s')} | {r.get('replay_s')} | {r.get('summary_s')} | "
                     f"{r['wall_exit_s']} | {r.get('tok_s')} | {r.get('global_max')} ({r.get('global_max_site')}) | "
                     f"{r.get('full_estimate')} |")
    lines.append(f"| **median** | | {median(runs, 'conversion_s')} | {median(runs, 'engine_ready_s')} | "
                 f"{median(runs, 'first_move_after_ready_s')} | {median(runs, 'max_gap_between_moves_s')} | "
                 f"{median(runs, 'replay_s')} | **{median(runs, 'summary_s')}** | **{median(runs, 'wall_exit_s')}** | "
                 f"{median(runs, 'tok_s')} | | |")
    lines += ["", f"Replayed: {runs[0].get('replayed')}. Times are seconds from the command's start except "
              "*first move* (after the bar appeared, i.e. the engine was ready) and *longest gap* (between two "
              "movements of the bar's token count)."]
    if eta:
        c = eta["check"]
        pe = eta.get("predicted_error_pct")
        said = (f"the bar's ETA {c['at_s']} s in said {c['eta_s']} s, {c['actual_left_s']} s were left "
                f"({c['error_pct']:+} %)" if c else "its replay took under a minute (no ETA check)")
        lines += ["", f"Longer run (`{eta['command']}`, warm caches, load before "
                  f"{' / '.join(map(str, eta['run']['load_before']))}): {said}; first movement "
                  f"{eta['run'].get('first_move_after_ready_s')} s after the bar appeared, longest gap between "
                  f"movements {eta['run'].get('max_gap_between_moves_s')} s; its replay took "
                  f"{eta['run'].get('replay_s')} s at {eta['run'].get('tok_s')} tok/s, where the no-argument run's "
                  f"rate predicted {eta.get('predicted_s')} s ({'?' if pe is None else f'{pe:+}'} %: the arithmetic "
                  "of its `--full` estimate)."]
    lines.append(f"<!-- /newcomer:{meta['replay_args']} -->")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--replay-args", default="", help="extra arguments for `vllm-maxact replay` (quoted)")
    ap.add_argument("--eta-samples", type=int, default=0, help="also a longer run of N full-length samples")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--out", type=Path, default=None, help="JSON with every run and its bar trace")
    ap.add_argument("--results", type=Path, default=None, help="write the Markdown section into this file")
    ap.add_argument("--keep", type=Path, default=None, help="keep the last run's folder here (Arrow file, caches)")
    args = ap.parse_args()
    extra = shlex.split(args.replay_args)
    meta = {"date": dt.date.today().isoformat(), "machine": machine(), "replay_args": args.replay_args,
            "command": shlex.join(["vllm-maxact", "replay", *extra]), "reps": args.reps}
    runs = []
    eta = None
    with tempfile.TemporaryDirectory(prefix="newcomer-") as tmp:
        for i in range(args.reps):
            work, cache = Path(tmp) / f"run{i}", Path(tmp) / f"cache{i}"
            work.mkdir()
            r = run_once(extra, work, cache, args.timeout)
            runs.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "bar"}), flush=True)
            if r["rc"] != 0:
                raise SystemExit(f"run {i + 1} failed:\n{r.get('tail')}")
            if i < args.reps - 1:
                shutil.rmtree(cache)
        if args.eta_samples:
            eta_args = [*extra, "--samples", str(args.eta_samples), "--out", "maxact-longer.arrow"]
            run = run_once(eta_args, work, cache, args.timeout)  # the last run's caches: warm
            eta = {"command": shlex.join(["vllm-maxact", "replay", *eta_args]), "run": run, "check": eta_check(run)}
            pred = predicted_by_quick_run(runs[-1], cache / "maxact" / "models" / "smollm2-135m", args.eta_samples)
            if pred and run.get("tok_s") and run.get("tokens"):
                took = run["tokens"] / run["tok_s"]
                eta["predicted_s"] = round(pred, 1)
                eta["predicted_error_pct"] = round(100 * (pred - took) / took, 1)
            print(json.dumps({k: v for k, v in eta.items() if k != "run"}), flush=True)
        if args.keep:
            shutil.copytree(work, args.keep, dirs_exist_ok=True)
    md = markdown(meta, runs, eta)
    print(md)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**meta, "runs": runs, "eta": eta}, indent=1))
    if args.results:
        text = args.results.read_text()
        start, end = f"<!-- newcomer:{args.replay_args} -->", f"<!-- /newcomer:{args.replay_args} -->"
        if start in text and end in text:
            text = text[: text.index(start)] + md + text[text.index(end) + len(end) + 1:]
        else:  # a new section at the top, after the page title
            head, _, rest = text.partition("\n\n")
            text = f"{head}\n\n{md}\n{rest}"
        args.results.write_text(text)


if __name__ == "__main__":
    main()
