"""Export without an engine: rank merging, the Prometheus exposition, atomic snapshots."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.feather as feather
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from vllm_maxact.export.arrow import table_from_payloads, write_table
from vllm_maxact.export.prometheus import MaxActCollector
from vllm_maxact.export.snapshot import STATUS, SnapshotWriter

SITES = ["embedding", "layers.0.residual", "layers.0.gate", "final_norm"]


def stats(mx, mn, nan=(0, 0, 0, 0), tokens=10):
    return {"max": list(mx), "min": list(mn), "nan": list(nan), "inf": [0] * 4, "tokens": tokens,
            "start": 1.0, "end": 2.0}


def payload(rank: int, mx, mn, nan=(0, 0, 0, 0), pid=None):
    s = stats(mx, mn, nan)
    return {"version": 1, "model": "m", "architecture": "LlamaForCausalLM", "adapter": "llama",
            "vllm_version": "x", "plugin_version": "y", "pid": pid or os.getpid(), "time": time.time(),
            "window_s": 60, "tp_rank": rank, "tp_size": 2, "pp_rank": 0, "pp_size": 1, "sites": SITES,
            "lifetime": s, "recent": s}


TP = [payload(0, [1, 5, 3, None], [-2, -1, -3, None], nan=(0, 1, 2, 0)),
      payload(1, [1, 4, 7, None], [-2, -6, -1, None], nan=(0, 1, 3, 0))]


def test_tp_ranks_merge_by_max_and_keep_per_rank_rows():
    t = table_from_payloads(TP, per_rank=True)
    merged = {r["site"]: r for r in t.to_pylist() if r["rank"] is None}
    assert merged["layers.0.residual"]["absmax"] == 6  # max over ranks of max(|max|, |min|)
    assert merged["layers.0.gate"]["max"] == 7
    # Replicated sites saw the same NaN on both ranks; the gate is sharded: its counts add up.
    assert merged["layers.0.residual"]["nan_count"] == 1
    assert merged["layers.0.gate"]["nan_count"] == 5
    assert merged["final_norm"]["absmax"] is None  # nothing observed is null, not 0
    assert sorted(r["rank"] for r in t.to_pylist() if r["site"] == "embedding" and r["rank"] is not None) == [0, 1]


def payload_name(p) -> str:
    """The file name a worker gives its payload (readers match it exactly)."""
    return f"worker-tp{p['tp_rank']}-pp{p['pp_rank']}-{p['pid']}.json"


def exposition(tmp_path: Path, payloads) -> str:
    for p in payloads:
        (tmp_path / payload_name(p)).write_text(json.dumps(p))
    reg = CollectorRegistry(auto_describe=False)
    reg.register(MaxActCollector(tmp_path))
    return generate_latest(reg).decode()


def test_exposition_values_and_promtool(tmp_path):
    text = exposition(tmp_path, TP)
    assert 'vllm_maxact_absmax{kind="residual",layer="0",model_name="m"} 6.0' in text
    assert 'vllm_maxact_absmax{kind="final_norm"' not in text  # no fake zero for unobserved sites
    assert 'vllm_maxact_nonfinite_total{kind="gate",layer="0",model_name="m",value="nan"} 5.0' in text
    assert 'vllm_maxact_global_absmax{model_name="m"} 6.0' in text  # gate (7) is excluded from M
    if shutil.which("promtool"):
        lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert lint.returncode == 0 and not (lint.stdout + lint.stderr).strip(), lint.stdout + lint.stderr


def test_dead_workers_are_not_exported(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    text = exposition(tmp_path, [payload(0, [1, 2, 3, 4], [0, 0, 0, 0], pid=int(dead))])
    assert "vllm_maxact_absmax{" not in text


def test_unwritable_snapshot_dir_sets_error_metric_and_keeps_going(tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    w = SnapshotWriter(blocker / "snapshots", tmp_path, interval=60, retain=3)
    assert STATUS["error"] and "snapshots" in caplog.text
    assert w.write_now() == []  # no payloads: nothing to do, no crash
    (tmp_path / payload_name(TP[0])).write_text(json.dumps(TP[0]))
    errors = STATUS["errors"]
    assert w.write_now() == [] and STATUS["errors"] == errors + 1
    text = generate_latest(_reg(tmp_path)).decode()
    assert "vllm_maxact_snapshot_error 1.0" in text
    w.directory = tmp_path / "ok"
    assert len(w.write_now()) == 1 and STATUS["error"] is None
    assert "vllm_maxact_snapshot_error 0.0" in generate_latest(_reg(tmp_path)).decode()


def _reg(d):
    reg = CollectorRegistry(auto_describe=False)
    reg.register(MaxActCollector(d, STATUS))
    return reg


WRITER = r"""
import sys, pyarrow as pa
from vllm_maxact.export.arrow import write_table
big = pa.table({"x": list(range(200_000))})
i = 0
while True:
    write_table(big, f"{sys.argv[1]}/maxact-m-{i:06d}.arrow")
    i += 1
"""


@pytest.mark.parametrize("delay", [0.3, 0.45, 0.6, 0.75, 0.9])
def test_sigkill_during_writes_leaves_only_complete_files(tmp_path, delay):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)])
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob("maxact-*.arrow")):
        time.sleep(0.05)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    names = sorted(os.listdir(tmp_path))
    assert names and all(n.startswith("maxact-m-") and n.endswith(".arrow") for n in names), names
    for n in names:
        assert feather.read_table(tmp_path / n).num_rows == 200_000


def test_write_table_replaces_an_existing_file_whole(tmp_path):
    """Over an existing file (e.g. a replay's --out), the new table takes its place and no
    temporary file is left."""
    target = tmp_path / "maxact-m.arrow"
    write_table(pa.table({"x": [1, 2, 3]}), target)
    write_table(pa.table({"x": list(range(10))}), target)
    assert feather.read_table(target).column("x").to_pylist() == list(range(10))
    assert os.listdir(tmp_path) == ["maxact-m.arrow"]


def test_live_int8_drift_series(tmp_path):
    """With a calibration loaded, payloads carry INT-8 sums; the exposition turns the recent
    window into clip rate and SQNR per site (sharded gate: ranks' sums add up)."""
    import math

    ps = [payload(r, [1, 5, 3, None], [-2, -1, -3, None]) for r in (0, 1)]
    for p in ps:
        acc = [[[0.0] * 4, [0.0] * 4] for _ in SITES]
        cnt = [[[0, 0], [0, 0]] for _ in SITES]
        acc[1][0] = [100.0, 20.0, 1.0, 2.0]  # residual: sum x^2, sum|x|, sum err^2, sum|err|
        cnt[1][0] = [3, 50]                   # 3 of 50 values clipped
        acc[2][0] = [40.0, 10.0, 4.0, 1.0]    # gate, per rank
        cnt[2][0] = [1, 20]
        p["int8"] = {"thresholds": [[0, 0], [4.0, 0], [2.0, 0], [0, 0]],
                     "recent": {"acc": acc, "cnt": cnt}, "lifetime": {"acc": acc, "cnt": cnt}}
    text = exposition(tmp_path, ps)
    assert 'vllm_maxact_int8_clip_rate{kind="residual",layer="0",model_name="m"} 0.06' in text
    assert f'vllm_maxact_int8_sqnr_db{{kind="residual",layer="0",model_name="m"}} {10 * math.log10(100):.1f}' in text
    assert 'vllm_maxact_int8_clip_rate{kind="gate",layer="0",model_name="m"} 0.05' in text  # (1+1)/(20+20)
    assert 'vllm_maxact_int8_threshold{kind="embedding"' not in text  # no threshold: no series
    if shutil.which("promtool"):
        lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert lint.returncode == 0 and not (lint.stdout + lint.stderr).strip(), lint.stdout + lint.stderr


_PROBE = """
import json, multiprocessing, os, sys
from vllm_maxact.export.runtime import ensure_runtime_dir

def child(q):
    q.put([str(p) for p in ensure_runtime_dir()])

if __name__ == "__main__":
    path, front = ensure_runtime_dir()
    ctx = multiprocessing.get_context(sys.argv[1])
    q = ctx.Queue()
    p = ctx.Process(target=child, args=(q,))
    p.start()
    kid = q.get(timeout=60)
    p.join()
    print(json.dumps({"dir": str(path), "front": front, "child": kid}))
"""


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_instances_never_share_a_runtime_dir_through_the_environment(tmp_path, method):
    """A `vllm serve` started by a process that already runs an instance (a test runner, a job
    script) is a new front end; vLLM's own multiprocessing children join their parent's dir."""
    from vllm_maxact.export.runtime import HANDOFF

    script = tmp_path / "probe.py"
    script.write_text(_PROBE)
    inherited = tmp_path / "other-instance"
    out = subprocess.run([sys.executable, str(script), method], env={**os.environ, HANDOFF: str(inherited)},
                         capture_output=True, text=True, timeout=120, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["front"] is True and got["dir"] != str(inherited)
    assert got["child"] == [got["dir"], "False"]  # joined, not a front end


def _bound_port() -> tuple[socket.socket, int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s, s.getsockname()[1]


def test_vllms_registry_subprocess_is_not_a_front_end(tmp_path, monkeypatch):
    """vLLM inspects model classes in a `python -m vllm.model_executor.models.registry`
    subprocess that loads general plugins. Run through vLLM's own helper while the exporter port
    is taken (as by the real front end): the subprocess must neither fail nor start an instance."""
    from vllm.model_executor.models.registry import _run_in_subprocess

    sock, port = _bound_port()
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setenv("VLLM_MAXACT_ENABLE", "1")
    monkeypatch.setenv("VLLM_MAXACT_EXPORTER_PORT", str(port))
    monkeypatch.setenv("TMPDIR", str(root))  # where a front end would create its runtime dir
    try:
        assert _run_in_subprocess(lambda: 6 * 7) == 42
    finally:
        sock.close()
    assert not any(root.rglob("*")), list(root.rglob("*"))


def test_a_taken_exporter_port_is_logged_not_fatal(tmp_path, caplog):
    from vllm_maxact.config import MaxActConfig
    from vllm_maxact.plugin import _start_front_end

    sock, port = _bound_port()
    try:
        with caplog.at_level("ERROR", logger="vllm_maxact"):
            _start_front_end(MaxActConfig(exporter_port=port), tmp_path)
    finally:
        sock.close()
    assert any(str(port) in r.getMessage() and "VLLM_MAXACT_EXPORTER_PORT" in r.getMessage() for r in caplog.records)


def test_a_disabled_plugin_leaves_nothing_behind(tmp_path):
    env = {**os.environ, "VLLM_MAXACT_ENABLE": "0", "TMPDIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", "from vllm_maxact.plugin import register; register()"], env=env,
                   check=True, timeout=120)
    assert not any(tmp_path.rglob("*")), list(tmp_path.rglob("*"))
