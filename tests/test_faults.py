"""Fault injection: kill -9 in the middle of snapshot writes, full and unwritable disks, NaN and
Inf inside the model on every hot path. (The live server's part of the fault suite, a soak and
disk faults under traffic, shares the serving tests' server: tests/test_serve_e2e.py.)
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pyarrow.feather as feather
import pytest

from vllm_maxact.export.arrow import read_table
from vllm_maxact.export.snapshot import STATUS, SnapshotWriter, list_snapshots
from vllm_maxact.sites import Kind, Site

pytestmark = pytest.mark.faults

LAYERS, WIDTH = 32, 512
MODEL = "org/model-32l"


def real_payloads(run: Path, ranks: int = 2) -> list[dict]:
    """The payloads a 32-layer model's workers publish (every default site, plus the per-channel
    sites at 512 channels; about 1.3 MB of JSON per rank): a real `Recorder` fed random
    activations, turned into payloads by the worker's own `publish.payload`, written where the
    workers write them (under this process's pid, which stays alive)."""
    import torch

    from vllm_maxact.publish import payload
    from vllm_maxact.recorder import Recorder

    kinds = (Kind.RESIDUAL, Kind.ATTN_OUT, Kind.MLP_OUT, Kind.GATE, Kind.ATTN_IN, Kind.MLP_IN)
    sites = [Site(Kind.EMBEDDING), *(Site(k, i) for i in range(LAYERS) for k in kinds), Site(Kind.FINAL_NORM)]
    widths = {s: WIDTH for s in sites if s.kind in (Kind.ATTN_IN, Kind.MLP_IN)}
    vcfg = SimpleNamespace(model_config=SimpleNamespace(served_model_name=MODEL, model=MODEL))
    out = []
    for rank in range(ranks):
        rec = Recorder(sites, device=torch.device("cpu"), hot_path="cpu_op", widths=widths)
        g = torch.Generator().manual_seed(rank)
        rec.begin_step(16)
        for i in range(len(sites)):
            rec.record(i, torch.randn(16, WIDTH, generator=g) * (i + 1))
        rec.end_step()
        rec.collect()
        p = {**payload(rec, vcfg), "tp_rank": rank, "tp_size": ranks}
        (run / f"worker-tp{rank}-pp0-{p['pid']}.json").write_text(json.dumps(p))
        out.append(p)
    return out


_WRITER = r"""
import sys, time
from pathlib import Path
from vllm_maxact.export.snapshot import SnapshotWriter
w = SnapshotWriter(Path(sys.argv[2]), Path(sys.argv[1]), interval=0.001, retain=int(sys.argv[3])).start()
print("ready", flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_kill_9_during_snapshot_writes_leaves_every_snapshot_absent_or_whole(tmp_path):
    """50 times: a child process runs the real snapshot writer (its thread, every millisecond, with
    retention) on a real payload set, and is killed with SIGKILL at a random moment. Every file
    left is a complete snapshot that reads and validates in full, no temporary file is left, and
    retention still bounds the directory.

    No vLLM engine per kill: the snapshot writer is what runs in the front end at that moment,
    and here it runs for real in a process of its own, on the payloads the workers publish;
    an engine would add a minute per kill and nothing to the write path."""
    run, out = tmp_path / "run", tmp_path / "snapshots"
    run.mkdir(mode=0o700)
    payloads = real_payloads(run)
    rows = 3 * 2 * len(payloads[0]["sites"])  # (merged + 2 ranks) x (lifetime, recent) x sites
    retain, rng, seen = 3, random.Random(25), set()
    # How long one snapshot takes here, from "ready" (a loaded machine writes several times more
    # slowly): kills are spread over about three writes, so they land in every phase of one.
    cal = tmp_path / "calibration"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(run), str(cal), str(retain)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    t_ready = time.monotonic()
    while not (cal.exists() and any(n.endswith(".arrow") for n in os.listdir(cal))):
        assert time.monotonic() - t_ready < 120, "the snapshot writer wrote nothing in 120 s"
        time.sleep(0.005)
    write_s = time.monotonic() - t_ready
    proc.kill()
    proc.wait()
    t0 = time.time()
    for _ in range(50):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(run), str(out), str(retain)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, max(0.8, 3 * write_s)))  # one write: ~0.2-0.3 s on an idle 2-core machine
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        names = sorted(os.listdir(out)) if out.exists() else []
        assert all(n.startswith("maxact-") and n.endswith(".arrow") for n in names), names  # no temp files
        assert len(names) <= retain + 1, names  # a kill between a write and its prune leaves one more
        for n in names:
            t = read_table(out / n)  # validated in full
            assert t.num_rows == rows and set(t["model"].to_pylist()) == {MODEL}
        seen.update(names)
    assert len(seen) >= 10, f"only {len(seen)} snapshots were written in 50 runs (one write: {write_s:.2f} s)"
    print(f"50 kills in {time.time() - t0:.0f} s, {len(seen)} snapshots written")


@contextlib.contextmanager
def tmpfs(path: Path, size: str, *, ro: bool = False):
    """A small tmpfs mounted on ``path`` (root only); skips the test where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    opts = f"size={size}" + (",ro" if ro else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _metric(run: Path, name: str) -> float:
    from prometheus_client import CollectorRegistry, generate_latest

    from vllm_maxact.export.prometheus import MaxActCollector

    reg = CollectorRegistry(auto_describe=False)
    reg.register(MaxActCollector(run, STATUS))
    for line in generate_latest(reg).decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def _wait(cond, timeout: float = 30.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


@pytest.mark.parametrize("fault", ["full disk", "read-only disk", "unwritable dir"])
def test_a_full_or_unwritable_snapshot_dir_sets_the_error_metric_and_leaves_no_partial_file(tmp_path, fault):
    """The real writer thread on real payloads, into a 64 KiB tmpfs (a snapshot here is ~3 MB),
    a read-only one, or a directory this user may not write (non-root: mode 0500): every write
    fails, the error metric says so, nothing partial is left; once space is back it recovers."""
    run, out = tmp_path / "run", tmp_path / "snapshots"
    run.mkdir(mode=0o700)
    real_payloads(run)
    if fault == "unwritable dir":
        if os.geteuid() == 0:
            pytest.skip("root writes any directory; the read-only tmpfs case covers this as root")
        out.mkdir()
        os.chmod(out, 0o500)
        ctx = contextlib.nullcontext(out)
    else:
        ctx = tmpfs(out, "64k", ro=fault == "read-only disk")
    errors = STATUS["errors"]
    with ctx:
        w = SnapshotWriter(out, run, interval=0.05, retain=3).start()
        try:
            assert _wait(lambda: STATUS["errors"] >= errors + 3)
            assert w.thread.is_alive() and STATUS["error"]
            assert _metric(run, "vllm_maxact_snapshot_error") == 1.0
            assert _metric(run, "vllm_maxact_snapshot_errors_total") >= errors + 3
            assert os.listdir(out) == []  # nothing partial, no temp file
        finally:
            w.stop()
            w.thread.join(5)
    if fault == "unwritable dir":
        os.chmod(out, 0o700)
    # Space (or permission) back: the next write succeeds and the error clears.
    w = SnapshotWriter(out, run, interval=0.05, retain=3).start()
    try:
        assert _wait(lambda: STATUS["error"] is None and list_snapshots(out))
        assert _metric(run, "vllm_maxact_snapshot_error") == 0.0
    finally:
        w.stop()
        w.thread.join(5)


# NaN / Inf inside the model -----------------------------------------------------------------


def _hot_paths() -> list:
    from vllm_maxact.hotpath import STRATEGIES

    out = []
    for hp in STRATEGIES:
        # Triton's kernels run on this CPU only under its interpreter (minutes per engine here).
        skip = hp != "cpu_op" and os.environ.get("MAXACT_TEST_TRITON_INTERPRET") != "1"
        out.append(pytest.param(hp, marks=pytest.mark.skipif(skip, reason="triton: set MAXACT_TEST_TRITON_INTERPRET=1")))
    return out


POISON, CHANNEL = 4242, 5


@pytest.fixture(scope="module")
def inf_model(tokenizer_dir, tmp_path_factory):
    """A one-layer tiny Llama (the least to compile per hot path) with one Inf in the embedding
    row of token POISON: every sequence holding that token sees an Inf at the embedding, then
    NaN (Inf / Inf in the norm) at every site from there on; sequences without it stay finite."""
    from safetensors.torch import load_file, save_file
    from tiny_models import make_tiny

    dst = make_tiny("llama", tmp_path_factory.mktemp("tiny-llama-inf"), tokenizer_dir=tokenizer_dir, layers=1)
    (weights,) = dst.glob("*.safetensors")
    tensors = load_file(str(weights))
    key = next(k for k in tensors if k.endswith("embed_tokens.weight"))
    tensors[key][POISON, CHANNEL] = float("inf")
    save_file(tensors, str(weights), metadata={"format": "pt"})
    return dst, tensors[key]


@pytest.mark.slow
@pytest.mark.parametrize("hot_path", _hot_paths())
def test_nan_and_inf_in_the_model_are_counted_on_every_hot_path(inf_model, hot_path, monkeypatch):
    from conftest import build_llm, close_llm
    from vllm import SamplingParams

    import vllm_maxact

    model_dir, embed = inf_model
    monkeypatch.setenv("VLLM_MAXACT_HOT_PATH", hot_path)
    monkeypatch.setenv("VLLM_MAXACT_KINDS", "embedding,residual,attn_out,mlp_out,gate,final_norm,attn_in,mlp_in")
    if hot_path != "cpu_op":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    rng = random.Random(0)
    clean = [rng.randrange(3, 4000) for _ in range(40)]
    poisoned = [rng.randrange(3, 4000) for _ in range(20)] + [POISON] + [rng.randrange(3, 4000) for _ in range(19)]
    poisoned[30] = POISON  # twice in one sequence
    llm = build_llm(str(model_dir))
    try:
        vllm_maxact.reset_stats(llm)
        # Greedy: the poisoned sequence's logits are NaN, which sampling at temperature 1 rejects.
        llm.generate([{"prompt_token_ids": t} for t in (clean, poisoned)],
                     SamplingParams(max_tokens=1, temperature=0.0), use_tqdm=False)
        payloads = vllm_maxact.api.collect(llm)
        rows = {r["site"]: r for r in vllm_maxact.read_stats(llm).to_pylist()}
    finally:
        close_llm(llm)
    assert {p["hot_path"] for p in payloads} == {hot_path}
    emb = rows["embedding"]
    assert emb["inf_count"] == 2 and emb["nan_count"] == 0  # exactly the two Inf values
    finite_rows = embed[[t for t in clean + poisoned if t != POISON]].float()
    assert emb["absmax"] == pytest.approx(float(finite_rows.abs().max()), rel=1e-6)  # never the Inf
    for name, r in rows.items():
        assert r["tokens"] == len(clean) + len(poisoned), name
        assert r["absmax"] is not None and 0 < r["absmax"] < 1e30, (name, r["absmax"])
        if name != "embedding":
            assert r["nan_count"] + r["inf_count"] >= 1, (name, r)  # every later site saw the NaN
        if Site.parse(name).kind in (Kind.ATTN_IN, Kind.MLP_IN):
            chans = r["channel_absmax"]
            assert chans and all(c is not None and c < 1e30 for c in chans), name
    assert {Site.parse(n).kind for n in rows} >= {Kind.ATTN_IN, Kind.MLP_IN, Kind.RESIDUAL, Kind.GATE}


def test_the_hot_path_list_is_the_recorders(monkeypatch):
    """The NaN/Inf test follows the strategies' registry, so a hot path added or removed there is
    tested (or dropped) without editing this file."""
    from vllm_maxact.hotpath import STRATEGIES

    assert [p.values[0] for p in _hot_paths()] == list(STRATEGIES)


def test_real_payloads_are_what_workers_publish(tmp_path):
    from vllm_maxact.export.runtime import read_payloads

    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    written = real_payloads(run, ranks=1)
    (got,) = read_payloads(run)  # valid, live
    assert got["sites"] == written[0]["sites"] and len(got["lifetime"]["channels"]) == 2 * LAYERS
    assert feather is not None
