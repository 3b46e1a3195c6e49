"""End to end with real parts: `vllm serve` (CPU build, real SmolLM2-135M) with the plugin,
concurrent chat and completion requests from the `openai` client, Debian's Prometheus scraping
vLLM's own /metrics. PromQL results, the latest Arrow snapshot and the Python API agree.
Then the live part of the fault suite: a soak of concurrent completions, scrapes and
`vllm-maxact snapshot` calls with memory, open files, runtime-dir size and series count flat; a
full and a read-only disk under the snapshot dir while serving; reset over vLLM's dev-mode RPC.
The last test kills the server with SIGKILL while snapshots are being written."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow.feather as feather
import pytest
import requests
from servers import Prometheus, VllmServer

import vllm_maxact
from vllm_maxact.export.arrow import SCHEMA_VERSION
from vllm_maxact.export.snapshot import latest, list_snapshots

# One server for the module's tests: on one pytest-xdist worker.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("serve_e2e")]
PUBLISH_S = 0.5
ADMIN_TOKEN = "e2e-admin-token-0123456789"


@pytest.fixture(scope="module")
def server(smollm2_dir, tmp_path_factory, smollm2_calibration):
    work = tmp_path_factory.mktemp("serve")
    snaps = work / "snapshots"
    srv = VllmServer(smollm2_dir, work, env={
        "VLLM_MAXACT_CALIBRATION": str(smollm2_calibration),
        "VLLM_MAXACT_SNAPSHOT_DIR": str(snaps),
        "VLLM_MAXACT_SNAPSHOT_INTERVAL_S": "1",
        "VLLM_MAXACT_SNAPSHOT_RETAIN": "5",
        "VLLM_MAXACT_PUBLISH_INTERVAL_S": str(PUBLISH_S),
        "VLLM_MAXACT_WINDOW_S": "30",
        # vLLM's dev mode opens POST /collective_rpc to anyone who reaches the port: our reset
        # must still refuse callers without the admin token (test_dev_mode_reset_needs_the_token).
        "VLLM_SERVER_DEV_MODE": "1",
        "VLLM_MAXACT_ADMIN_TOKEN": ADMIN_TOKEN,
    })
    srv.snapshots = snaps
    yield srv
    srv.kill()


@pytest.fixture(scope="module")
def prometheus(server, tmp_path_factory):
    prom = Prometheus.with_alert_rules(tmp_path_factory.mktemp("prometheus"), f"127.0.0.1:{server.port}")
    yield prom
    prom.stop()


@pytest.fixture(scope="module")
def traffic(server, domain_texts):
    """Concurrent chat and completion requests; returns once published statistics are stable."""
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused")

    def chat(text: str) -> str:
        r = client.chat.completions.create(
            model=server.name, messages=[{"role": "user", "content": text[:200]}], max_tokens=16)
        return r.choices[0].message.content

    def complete(text: str) -> str:
        r = client.completions.create(model=server.name, prompt=text[:250], max_tokens=16)
        return r.choices[0].text

    jobs = [(chat if i % 2 else complete, t) for i, (_, t) in enumerate(domain_texts)]
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda j: j[0](j[1]), jobs))
    assert all(isinstance(o, str) for o in outs)
    time.sleep(4 * PUBLISH_S + 3)  # the tail is published once traffic stops, then snapshotted
    return len(jobs)


def scrape(server) -> str:
    r = requests.get(server.url + "/metrics", timeout=10)
    r.raise_for_status()
    return r.text


def test_metrics_on_vllms_own_endpoint(server, traffic):
    text = scrape(server)
    assert "vllm:prompt_tokens_total" in text  # vLLM's own metrics are still there
    assert 'vllm_maxact_absmax{kind="residual",layer="0",model_name="smollm2"}' in text
    assert 'vllm_maxact_absmax{kind="embedding",layer="",model_name="smollm2"}' in text
    assert "vllm_maxact_tokens_total" in text and "vllm_maxact_window_absmax" in text
    ours = "\n".join(line for line in text.splitlines() if "vllm_maxact_" in line) + "\n"
    lint = subprocess.run(["promtool", "check", "metrics"], input=ours, capture_output=True, text=True)
    assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), lint.stdout + lint.stderr


def test_promql_equals_snapshot_and_python_api(server, prometheus, traffic):
    deadline = time.time() + 30
    while time.time() < deadline and not prometheus.query('vllm_maxact_absmax{model_name="smollm2"}'):
        time.sleep(1)
    time.sleep(2)  # one more scrape after the last publish
    prom = {(r["metric"]["kind"], r["metric"].get("layer", "")): float(r["value"][1])
            for r in prometheus.query('vllm_maxact_absmax{model_name="smollm2"}')}
    assert len(prom) == 30 * 4 + 2  # SmolLM2: 30 layers x 4 kinds + embedding + final_norm

    snap = feather.read_table(latest(server.snapshots))
    snap_rows = {(r["kind"], "" if r["layer"] is None else str(r["layer"])): r["absmax"]
                 for r in snap.to_pylist() if r["window"] == "lifetime" and r["rank"] is None}
    api = vllm_maxact.read_instance(pid=server.proc.pid)
    api_rows = {(r["kind"], "" if r["layer"] is None else str(r["layer"])): r["absmax"] for r in api.to_pylist()}
    assert set(prom) == set(snap_rows) == set(api_rows)
    for key, v in prom.items():
        assert math.isclose(v, snap_rows[key], rel_tol=1e-9), key
        assert math.isclose(v, api_rows[key], rel_tol=1e-9), key
    # Real traffic through SmolLM2 reaches its massive residual activations.
    assert max(prom.values()) > 5_000
    tokens = prometheus.query('vllm_maxact_tokens_total{model_name="smollm2"}')
    assert int(float(tokens[0]["value"][1])) == api["tokens"][0].as_py() > 16 * 20


def test_window_and_lifetime_series(prometheus, traffic):
    life = prometheus.query('vllm_maxact_global_absmax{model_name="smollm2"}')
    win = prometheus.query('vllm_maxact_window_global_absmax{model_name="smollm2"}')
    assert life and win
    assert float(win[0]["value"][1]) <= float(life[0]["value"][1])
    assert prometheus.query('vllm_maxact_window_seconds{model_name="smollm2"}')[0]["value"][1] == "30"


def test_snapshot_schema_and_retention(server, traffic):
    snaps = list_snapshots(server.snapshots)
    assert 1 <= len(snaps) <= 5  # retention
    t = feather.read_table(snaps[-1])
    assert t.schema.metadata[b"vllm_maxact.schema_version"] == SCHEMA_VERSION.encode()
    assert set(t["window"].to_pylist()) == {"lifetime", "recent"}
    assert {"timestamp", "model", "vllm_version", "plugin_version", "site", "kind", "layer", "rank",
            "absmax", "max", "min", "tokens", "nan_count", "inf_count"} <= set(t.column_names)
    assert t.filter(t["rank"].is_valid())["rank"].to_pylist()[0] == 0  # per-rank rows kept


def panel_queries() -> dict[str, str]:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "grafana"))
    import build_dashboard

    subst = {"$model_name": "smollm2", "$kind": ".*", "$layer": ".*"}
    out = {}
    for title, expr in build_dashboard.QUERIES.items():
        for k, v in subst.items():
            expr = expr.replace(k, v)
        out[title] = expr
    return out


def test_every_dashboard_panel_has_data(server, prometheus, traffic):
    from openai import OpenAI

    OpenAI(base_url=server.url + "/v1", api_key="unused").completions.create(
        model=server.name, prompt="The recent window needs fresh traffic: " * 8, max_tokens=4)
    time.sleep(4 * PUBLISH_S + 3)
    empty = [title for title, expr in panel_queries().items() if not prometheus.query(expr)]
    assert not empty, f"panels without data: {empty}"
    # Live drift against the (deliberately tight) calibration.
    clip = prometheus.query('max(vllm_maxact_int8_clip_rate{model_name="smollm2"})')
    assert float(clip[0]["value"][1]) > 0


def test_alert_states(server, prometheus, traffic):
    deadline = time.time() + 40
    firing: set[str] = set()
    while time.time() < deadline:
        firing = {a["labels"]["alertname"] for a in prometheus.alerts() if a["state"] == "firing"}
        if "VllmMaxactInt8ClipRateHigh" in firing:
            break
        time.sleep(2)
    assert "VllmMaxactInt8ClipRateHigh" in firing  # traffic exceeds the calibrated range
    # SmolLM2 peaks near 3e4: below fp16's limit; no NaN/Inf; live data; snapshots written.
    assert not firing & {"VllmMaxactNonFiniteActivations", "VllmMaxactFp16Overflow",
                         "VllmMaxactFp16OverflowLifetime", "VllmMaxactNoData", "VllmMaxactSnapshotFailing"}


def _tree(pid: int) -> list:
    import psutil

    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _footprint(server) -> dict[str, float]:
    """Resident memory and open files of the server's process tree, its runtime dir's files and
    bytes, and the number of our series on /metrics."""
    import psutil

    from vllm_maxact.export.runtime import PAYLOAD_NAME, discover

    rss = fds = 0
    for p in _tree(server.proc.pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            rss += p.memory_info().rss
            fds += p.num_fds()
    (run,) = discover(server.proc.pid)
    files = [f for f in run.iterdir()]
    published = [f for f in files if PAYLOAD_NAME.match(f.name)]
    series = [line for line in scrape(server).splitlines() if line.startswith("vllm_maxact_")]
    # A publish in flight shows its temporary file next to the published one (atomic write);
    # `in_flight` counts those, `run_files` the published payloads.
    return {"rss_mib": rss / 2**20, "fds": fds, "run_files": len(published),
            "in_flight": len(files) - len(published),
            "run_kib": sum(f.stat().st_size for f in files if f.exists()) / 1024, "series": len(series)}


@pytest.mark.faults
def test_soak_memory_files_and_series_stay_flat(server, traffic, tmp_path):
    """Concurrent completions, scrapes and `vllm-maxact snapshot` calls for MAXACT_SOAK_S seconds
    (60 in CI; longer as a benchmark, e.g. MAXACT_SOAK_S=1800). After a warm-up, resident memory
    and open files of the server's processes, the runtime dir and the series count stay flat,
    every request, scrape and snapshot succeeds, and retention bounds the snapshot dir."""
    import os
    import sys
    import threading

    from openai import OpenAI

    duration = float(os.environ.get("MAXACT_SOAK_S", "60"))
    client = OpenAI(base_url=server.url + "/v1", api_key="unused")
    stop, errors, counts = threading.Event(), [], {"requests": 0, "scrapes": 0, "snapshots": 0}

    def guarded(fn):
        def loop():
            while not stop.is_set():
                try:
                    fn()
                except Exception as e:  # noqa: BLE001
                    errors.append(f"{fn.__name__}: {e!r}")
                    time.sleep(0.5)
        return loop

    def request():
        client.completions.create(model=server.name, prompt="Soak test: the numbers " * 6, max_tokens=8)
        counts["requests"] += 1

    def scraper():
        assert "vllm_maxact_absmax" in scrape(server)
        counts["scrapes"] += 1
        time.sleep(0.2)

    def snapshotter():
        out = tmp_path / f"cli-{counts['snapshots']}"
        r = subprocess.run([sys.executable, "-m", "vllm_maxact.cli", "snapshot", "--pid", str(server.proc.pid),
                            "--out-dir", str(out)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and len(list(out.iterdir())) == 1, r.stderr[-500:]
        shutil.rmtree(out)
        counts["snapshots"] += 1

    threads = [threading.Thread(target=guarded(f), daemon=True) for f in (request, request, request, scraper, snapshotter)]
    for t in threads:
        t.start()
    time.sleep(min(20.0, duration / 3))  # warm-up: every code path has run, caches are filled
    start, samples, t0 = _footprint(server), [], time.time()
    while time.time() - t0 < duration:
        time.sleep(min(10.0, duration / 6))
        samples.append(_footprint(server))
    stop.set()
    for t in threads:
        t.join(120)
    end = _footprint(server)
    print(f"soak {duration:.0f} s: {counts}; start {start}; end {end}")
    assert not errors, errors[:5]
    assert counts["requests"] > 10 and counts["scrapes"] > 10 and counts["snapshots"] >= 2, counts
    for s in [*samples, end]:
        assert s["series"] == start["series"], (start, s)
        assert s["run_files"] == start["run_files"], (start, s)
        assert s["in_flight"] <= s["run_files"], (start, s)  # at most one write per publisher: no leaked temp files
        assert s["run_kib"] <= 1.5 * start["run_kib"] + 16, (start, s)
        assert s["fds"] <= start["fds"] + 16, (start, s)
        assert s["rss_mib"] <= 1.10 * start["rss_mib"] + 64, (start, s)
    assert len(list_snapshots(server.snapshots)) <= 5


@contextlib.contextmanager
def _mounted(path, disk: str, work):
    """A tmpfs over ``path``: read-only, or full (filled elsewhere, then moved into place, so the
    writer never sees it with room left)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    target = path if disk == "read-only" else work / "fill"
    target.mkdir(exist_ok=True)
    opts = "size=64k,ro" if disk == "read-only" else "size=64k"
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(target)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    if disk == "full":
        with contextlib.suppress(OSError), open(target / "filler", "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        r = subprocess.run(["mount", "--move", str(target), str(path)], capture_output=True, text=True)
        if r.returncode != 0:
            subprocess.run(["umount", "-l", str(target)], check=False)
            pytest.skip(f"cannot move a mount here: {r.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _snapshot_error(server) -> float | None:
    for line in scrape(server).splitlines():
        if line.startswith("vllm_maxact_snapshot_error "):
            return float(line.split()[1])
    return None


def _until(cond, timeout: float = 30.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline and not cond():
        time.sleep(0.5)
    return cond()


@pytest.mark.faults
@pytest.mark.parametrize("disk", ["full", "read-only"])
def test_a_full_or_read_only_disk_keeps_serving_with_the_error_metric_set(server, traffic, disk, tmp_path):
    """A full tmpfs or a read-only one mounted over the snapshot dir while serving: snapshots fail, vllm_maxact_snapshot_error is 1, completions and
    /metrics keep working, nothing partial is left; unmounted, the error clears."""
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused")
    with _mounted(server.snapshots, disk, tmp_path):
        assert _until(lambda: _snapshot_error(server) == 1.0), "snapshot error not reported"
        r = client.completions.create(model=server.name, prompt="Still serving? " * 4, max_tokens=4)
        assert r.choices[0].text is not None
        time.sleep(2)  # a few more failed attempts
        assert [f for f in os.listdir(server.snapshots) if f != "filler"] == []  # nothing partial
    assert _until(lambda: _snapshot_error(server) == 0.0), "snapshot error did not clear"


@pytest.mark.faults
def test_dev_mode_reset_needs_the_token(server, traffic):
    """vLLM's dev mode serves POST /collective_rpc to anyone who reaches the port. Our reset
    refuses a caller without the admin token (nothing is reset) and runs with it."""
    from openai import OpenAI

    def tokens() -> float:
        for line in scrape(server).splitlines():
            if line.startswith('vllm_maxact_tokens_total{model_name="smollm2"}'):
                return float(line.split()[-1])
        return 0.0

    before = tokens()
    assert before > 0
    for body in ({"method": "maxact_reset"}, {"method": "maxact_reset", "kwargs": {"token": "guess"}},
                 {"method": "maxact_collect", "kwargs": {"reset": "true"}}):
        r = requests.post(server.url + "/collective_rpc", json=body, timeout=60)
        assert r.status_code == 500, r.text  # the worker's PermissionError, passed on by vLLM
    OpenAI(base_url=server.url + "/v1", api_key="unused").completions.create(
        model=server.name, prompt="After a refused reset", max_tokens=2)
    assert _until(lambda: tokens() > before), "statistics were reset (or not published)"
    grown = tokens()
    r = requests.post(server.url + "/collective_rpc", json={"method": "maxact_reset", "kwargs": {"token": ADMIN_TOKEN}},
                      timeout=60)
    assert r.status_code == 200 and r.json()["results"] == ["True"], r.text  # vLLM's endpoint str()s results
    OpenAI(base_url=server.url + "/v1", api_key="unused").completions.create(
        model=server.name, prompt="After the reset", max_tokens=2)
    assert _until(lambda: 0 < tokens() < grown), "the authorised reset did not reset"


def test_kill_9_mid_snapshot_leaves_complete_files(server, traffic):
    """Last in the module: snapshots every second; SIGKILL lands at an arbitrary point."""
    time.sleep(2.5)
    server.kill(signal.SIGKILL)
    files = sorted(p.name for p in server.snapshots.iterdir())
    assert files and all(f.startswith("maxact-") and f.endswith(".arrow") for f in files), files
    for name in files:  # every file present is complete and readable
        assert feather.read_table(server.snapshots / name).num_rows > 0
