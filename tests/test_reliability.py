"""What a bad file, a bad payload or a hostile neighbour can do, without an engine (fast).

Each test is one fault a user or another local user can cause, and what must hold afterwards:
no data lost, no scrape failed, no number planted, a one-line error naming the input. The
payloads are what workers write (`test_export.payload`); the HTTP scrapes go through
prometheus_client's own server and `requests`; the CLI runs as users run it.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pytest
import requests
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, start_http_server
from test_export import SITES, payload, payload_name

from vllm_maxact import smoothquant
from vllm_maxact.cli import main
from vllm_maxact.export import runtime
from vllm_maxact.export.arrow import table_from_payloads, write_table
from vllm_maxact.export.atomic import write_atomic
from vllm_maxact.export.prometheus import MaxActCollector
from vllm_maxact.export.runtime import PAYLOAD_STATUS, RuntimeDirError, ensure_runtime_dir, read_payloads
from vllm_maxact.export.snapshot import STATUS, SnapshotWriter, list_snapshots, write_snapshots

pytestmark = pytest.mark.faults


def put(d: Path, p: dict, name: str | None = None) -> Path:
    f = d / (name or payload_name(p))
    f.write_text(json.dumps(p))
    return f


def dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)


@pytest.fixture
def scrape(tmp_path):
    """A real /metrics over HTTP (prometheus_client's server) reading ``tmp_path / 'run'``."""
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    reg = CollectorRegistry(auto_describe=False)
    reg.register(MaxActCollector(run, STATUS))
    server, thread = start_http_server(0, addr="127.0.0.1", registry=reg)

    def get() -> str:
        r = requests.get(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10)
        assert r.status_code == 200, r.text[-2000:]
        return r.text

    get.dir = run
    yield get
    server.shutdown()
    server.server_close()


def value(text: str, series: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(series + " ") or line.startswith(series + "{") and line.split(" ")[0] == series:
            return float(line.rsplit(" ", 1)[1])
    return None


# 1. Retention -------------------------------------------------------------------------------


def test_retention_prunes_only_its_own_models_snapshots(tmp_path):
    """Two models whose names share a prefix in one snapshot dir: pruning one keeps its own
    newest files and every file of the other."""
    base, instruct = "Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B-Instruct"
    p_base = {**payload(0, [1, 5, 3, None], [-2, -1, -3, None]), "model": base}
    p_inst = {**payload(0, [1, 5, 3, None], [-2, -1, -3, None]), "model": instruct}
    inst_files = [write_snapshots(tmp_path, [p_inst], retain=2)[0] for _ in range(3)]
    base_files = [write_snapshots(tmp_path, [p_base], retain=2)[0] for _ in range(3)]
    assert list_snapshots(tmp_path, base) == base_files[1:]  # the newest two, the new one included
    assert list_snapshots(tmp_path, instruct) == inst_files[1:]
    assert all(p.exists() for p in base_files[1:] + inst_files[1:])


# 2. Malformed payloads ----------------------------------------------------------------------

BAD_PAYLOADS = {
    "site-count mismatch": lambda p: p["lifetime"]["max"].pop(),
    "missing recent": lambda p: p.pop("recent"),
    "string max": lambda p: p["lifetime"].__setitem__("max", ["1e6", 5, 3, None]),
    "non-dict body": lambda p: [p],
    "infinite value": lambda p: p["recent"]["min"].__setitem__(0, -math.inf),
    "unknown site": lambda p: p["sites"].__setitem__(1, "layers.0.bogus"),
}


@pytest.mark.parametrize("fault", sorted(BAD_PAYLOADS))
def test_a_malformed_payload_costs_only_its_own_series(scrape, caplog, fault):
    good = {**payload(0, [1, 5, 3, None], [-2, -1, -3, None]), "model": "good", "tp_size": 1}
    bad = copy.deepcopy({**payload(0, [9, 9, 9, 9], [-9, -9, -9, -9]), "model": "bad", "tp_size": 1, "pid": os.getppid()})
    bad = BAD_PAYLOADS[fault](bad) or bad
    put(scrape.dir, good)
    put(scrape.dir, bad, f"worker-tp0-pp0-{os.getppid()}.json")
    before = PAYLOAD_STATUS["errors"]
    with caplog.at_level("ERROR", logger="vllm_maxact"):
        first, second = scrape(), scrape()
    for text in (first, second):
        assert 'vllm_maxact_absmax{kind="residual",layer="0",model_name="good"} 5.0' in text
        assert 'model_name="bad"' not in text
        assert value(text, "vllm_maxact_payloads_invalid") == 1
    assert PAYLOAD_STATUS["errors"] == before + 1  # counted once, not per scrape
    assert value(second, "vllm_maxact_payload_errors_total") == before + 1
    logged = [r for r in caplog.records if "skipping worker payload" in r.getMessage()]
    assert len(logged) == 1 and f"worker-tp0-pp0-{os.getppid()}.json" in logged[0].getMessage()


def test_ranks_that_disagree_on_their_sites_are_not_merged(scrape):
    """Two ranks of one stage with other site lists cannot be merged: the newest is exported."""
    old = payload(0, [1, 5, 3, None], [-2, -1, -3, None])
    new = {**payload(1, [1, 4], [-2, -1]), "sites": SITES[:2], "pid": os.getppid(), "time": old["time"] + 1}
    for k in ("lifetime", "recent"):
        for key in ("nan", "inf"):
            new[k][key] = [0, 0]
    put(scrape.dir, old)
    put(scrape.dir, new)
    text = scrape()
    assert value(text, "vllm_maxact_payloads_invalid") == 1
    assert 'vllm_maxact_absmax{kind="residual",layer="0",model_name="m"} 4.0' in text


def test_the_snapshot_thread_survives_bad_payloads_and_any_exception(tmp_path, monkeypatch):
    """A bad payload is skipped by the snapshot writer too; an exception of any type inside a
    write sets the error metric and the thread goes on; the exit-time snapshot still comes."""
    from vllm_maxact.export import snapshot as snap

    run, out = tmp_path / "run", tmp_path / "snaps"
    run.mkdir(mode=0o700)
    put(run, {**payload(0, [1, 5, 3, None], [-2, -1, -3, None]), "tp_size": 1})
    put(run, {"not": "a payload"}, f"worker-tp1-pp0-{os.getpid()}.json")
    w = SnapshotWriter(out, run, interval=0.05, retain=1000).start()
    try:
        deadline = time.time() + 20
        while time.time() < deadline and len(list_snapshots(out)) < 2:
            time.sleep(0.05)
        assert len(list_snapshots(out)) >= 2 and STATUS["error"] is None

        def boom(*a, **k):
            raise ZeroDivisionError("injected")

        errors = STATUS["errors"]
        monkeypatch.setattr(snap, "write_snapshots", boom)
        deadline = time.time() + 20
        while time.time() < deadline and STATUS["errors"] < errors + 2:
            time.sleep(0.05)
        assert STATUS["errors"] >= errors + 2 and "ZeroDivisionError" in STATUS["error"]
        text = _exposition(run)
        assert "vllm_maxact_snapshot_error 1.0" in text
        assert w.thread.is_alive()
        monkeypatch.undo()
        n = len(list_snapshots(out))
        deadline = time.time() + 20
        while time.time() < deadline and (STATUS["error"] is not None or len(list_snapshots(out)) == n):
            time.sleep(0.05)
        assert STATUS["error"] is None and len(list_snapshots(out)) > n
    finally:
        w.stop()
        w.thread.join(5)
    assert w.write_final()  # what atexit runs


def _exposition(d: Path) -> str:
    from prometheus_client import generate_latest

    reg = CollectorRegistry(auto_describe=False)
    reg.register(MaxActCollector(d, STATUS))
    return generate_latest(reg).decode()


def test_a_failing_collector_costs_one_models_series_for_one_scrape(scrape, monkeypatch):
    """Defence in depth: whatever raises while one model's series are built, the scrape serves
    the other models and the status series, and counts the failure."""
    from vllm_maxact.export import prometheus

    put(scrape.dir, {**payload(0, [1, 5, 3, None], [-2, -1, -3, None]), "tp_size": 1})
    put(scrape.dir, {**payload(0, [1, 5, 3, None], [-2, -1, -3, None]), "tp_size": 1, "model": "z",
                     "pid": os.getppid()})
    original = prometheus.MaxActCollector._model

    def flaky(self, model, group, part):
        if model == "m":
            raise KeyError("injected")
        return original(self, model, group, part)

    monkeypatch.setattr(prometheus.MaxActCollector, "_model", flaky)
    before = prometheus.SCRAPE_STATUS["errors"]
    text = scrape()
    assert 'model_name="m"' not in text and 'vllm_maxact_absmax{kind="residual",layer="0",model_name="z"}' in text
    assert value(text, "vllm_maxact_scrape_errors_total") == before + 1


# 3. The runtime directory -------------------------------------------------------------------


@pytest.fixture
def temp_root(tmp_path, monkeypatch):
    """`tempfile.gettempdir()` and the instance hand-off isolated to this test."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv(runtime.HANDOFF, raising=False)
    monkeypatch.delenv(runtime.TOKEN_HANDOFF, raising=False)
    return tmp_path / f"vllm-maxact-{os.geteuid()}"


def test_the_runtime_dir_is_created_private(temp_root):
    path, front = ensure_runtime_dir()
    assert front and path.parent == temp_root
    for d in (temp_root, path):
        st = os.lstat(d)
        assert st.st_uid == os.geteuid() and (st.st_mode & 0o777) == 0o700, oct(st.st_mode)


@pytest.mark.parametrize("unsafe", ["world-writable", "other owner", "symlink"])
def test_an_unsafe_runtime_root_is_refused_with_a_clear_message(temp_root, tmp_path, unsafe):
    if unsafe == "symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        temp_root.symlink_to(tmp_path / "elsewhere")
    else:
        temp_root.mkdir()
        os.chmod(temp_root, 0o777 if unsafe == "world-writable" else 0o700)
        if unsafe == "other owner":
            if os.geteuid() != 0:
                pytest.skip("needs root to give a directory to another user")
            os.chown(temp_root, 65534, 65534)
    with pytest.raises(RuntimeDirError) as e:
        ensure_runtime_dir()
    msg = str(e.value)
    assert str(temp_root) in msg and "refusing" in msg and "VLLM_MAXACT_RUNTIME_DIR" in msg
    assert not any(p.name.split("-")[0].isdigit() for p in tmp_path.rglob("*") if p.is_dir())


def test_a_root_left_readable_by_an_earlier_version_is_closed(temp_root):
    temp_root.mkdir(mode=0o755)
    os.chmod(temp_root, 0o755)
    ensure_runtime_dir()
    assert os.lstat(temp_root).st_mode & 0o777 == 0o700


def test_a_planted_instance_is_not_exported_by_vllm_maxact_snapshot(temp_root, tmp_path):
    """Another user's root (or a world-writable one) holding a planted instance `1-0` whose
    payload names a live pid: refused, nothing written. In our own root the planted dir is not
    an instance (pid 1 started long before its stamp) and the next front end removes it."""
    planted = temp_root / "1-0"
    planted.mkdir(parents=True)
    p = {**payload(0, [1e6, 1e6, 1e6, 1e6], [0, 0, 0, 0], pid=1), "tp_size": 1}
    put(planted, p)
    os.chmod(temp_root, 0o777)
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["snapshot", "--out-dir", str(out)])
    assert r.exit_code == 1 and "refusing" in r.output and "Traceback" not in r.output, r.output
    assert not out.exists() or not any(out.iterdir())
    os.chmod(temp_root, 0o700)
    os.chmod(planted, 0o700)
    r = CliRunner().invoke(main, ["snapshot", "--out-dir", str(out)])
    assert r.exit_code == 1 and "no running vLLM instance" in r.output, r.output
    ensure_runtime_dir()  # the next front end
    assert not planted.exists()


def test_an_explicit_runtime_dir_must_be_private_too(tmp_path):
    d = tmp_path / "shared"
    d.mkdir()
    os.chmod(d, 0o777)
    put(d, {**payload(0, [1, 5, 3, None], [-2, -1, -3, None]), "tp_size": 1})
    r = CliRunner().invoke(main, ["snapshot", "--runtime-dir", str(d), "--out-dir", str(tmp_path / "o")])
    assert r.exit_code == 1 and "writable by group or others" in r.output, r.output


@pytest.mark.parametrize("writer", ["payload", "arrow replace"])
def test_temp_files_never_follow_a_planted_symlink(tmp_path, writer):
    """The names earlier versions used for temp files were guessable (`.NAME.tmp.<pid>`): a
    symlink planted there made the write go through it. Temp files are now created exclusively."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    target = tmp_path / ("worker-tp0-pp0-1.json" if writer == "payload" else "maxact-m.arrow")
    if writer == "arrow replace":
        write_table(pa.table({"x": [1]}), target)  # replacing: the path that used a temp name
    for name in (f".{target.name}.tmp.{os.getpid()}", f".{target.name}.tmp.{os.getpid()}.1"):
        (tmp_path / name).symlink_to(victim)
    if writer == "payload":
        write_atomic(target, b'{"ok": 1}', mode=0o600)
        assert json.loads(target.read_text()) == {"ok": 1}
    else:
        write_table(pa.table({"x": [1, 2, 3]}), target)
        assert feather.read_table(target).num_rows == 3
    assert victim.read_text() == "precious"
    assert not [p for p in tmp_path.iterdir() if ".tmp." in p.name and not p.is_symlink()]


_FRONT_END = """
import sys, time
from vllm_maxact.export.runtime import ensure_runtime_dir
path, _ = ensure_runtime_dir()
print(path, flush=True)
if sys.argv[1] == "wait":
    time.sleep(60)
"""


def test_an_instance_removes_its_runtime_dir_and_the_next_removes_a_killed_ones(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    env.pop(runtime.HANDOFF, None)
    done = subprocess.run([sys.executable, "-c", _FRONT_END, "exit"], env=env, capture_output=True, text=True,
                          check=True, timeout=120)
    assert not Path(done.stdout.strip()).exists()  # removed at exit
    proc = subprocess.Popen([sys.executable, "-c", _FRONT_END, "wait"], env=env, stdout=subprocess.PIPE, text=True)
    killed = Path(proc.stdout.readline().strip())
    assert killed.is_dir()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed.is_dir()  # no atexit after kill -9
    nxt = subprocess.run([sys.executable, "-c", _FRONT_END, "exit"], env=env, capture_output=True, text=True,
                         check=True, timeout=120)
    assert nxt.returncode == 0 and not killed.exists()
    assert not any((tmp_path / f"vllm-maxact-{os.geteuid()}").iterdir())


def test_snapshots_export_what_metrics_export(scrape, tmp_path):
    """A dead worker's newer payload for the same rank (an earlier engine of the same process)
    is neither on /metrics nor in the periodic snapshot; rank 0 appears once."""
    live = {**payload(0, [1, 2, 1, 1], [0, 0, 0, 0]), "tp_size": 1}
    dead = {**payload(0, [1e6] * 4, [0] * 4, pid=dead_pid()), "tp_size": 1, "time": live["time"] + 5}
    put(scrape.dir, live)
    put(scrape.dir, dead)
    assert 'vllm_maxact_absmax{kind="residual",layer="0",model_name="m"} 2.0' in scrape()
    w = SnapshotWriter(tmp_path / "snaps", scrape.dir, interval=60, retain=5)
    (path,) = w.write_now()
    rows = feather.read_table(path).to_pylist()
    life = [r for r in rows if r["window"] == "lifetime" and r["site"] == "layers.0.residual"]
    assert sorted((r["rank"] is None, r["absmax"]) for r in life) == [(False, 2.0), (True, 2.0)]


def test_a_payload_without_pid_or_with_a_name_that_lies_is_not_exported(scrape):
    p = {**payload(0, [1, 5, 3, None], [-2, -1, -3, None]), "tp_size": 1}
    no_pid = {k: v for k, v in p.items() if k != "pid"}
    put(scrape.dir, no_pid, "worker-tp0-pp0-0.json")
    put(scrape.dir, {**p, "model": "liar", "pid": 1}, f"worker-tp0-pp0-{os.getpid()}.json")
    text = scrape()
    assert "vllm_maxact_absmax{" not in text
    assert value(text, "vllm_maxact_payloads_invalid") == 2


# 4. Arrow inputs ----------------------------------------------------------------------------


def stats_file(path: Path, *, compression: str = "zstd", metadata: dict | None = None, **columns) -> Path:
    t = table_from_payloads([payload(r, [1, 5, 3, None], [-2, -1, -3, None]) for r in (0, 1)],
                            windows=("lifetime", "recent"), per_rank=True)
    for name, arr in columns.items():
        t = t.set_column(t.schema.get_field_index(name), name, arr)
    if metadata is not None:
        t = t.replace_schema_metadata(metadata)
    feather.write_feather(t, path, compression=compression)
    return path


def flip_offsets(path: Path, column: str) -> None:
    """Corrupt one offset of a string column inside the file's body (header and footer intact):
    the bytes are found through a memory map of the file itself."""
    with pa.memory_map(str(path)) as mm:
        whole = mm.read_buffer(mm.size())  # zero-copy: every buffer below is a slice of it
        batch = pa.ipc.open_file(whole).get_batch(0)
        offsets = batch.column(batch.schema.get_field_index(column)).buffers()[1]
        start = offsets.address - whole.address
        assert 0 < start < whole.size
        vals = np.frombuffer(offsets, dtype=np.int32).copy()
    k = len(vals) // 2
    with open(path, "r+b") as f:
        f.seek(start + 4 * k)
        f.write(np.int32(vals[k - 1] - 20).tobytes())


@pytest.mark.parametrize("command", ["report", "scales", "compare"])
def test_a_damaged_arrow_body_is_refused_in_one_line(tmp_path, command):
    path = stats_file(tmp_path / "s.arrow", compression="uncompressed")
    flip_offsets(path, "window")
    args = {"report": ["report", str(path), "--no-plots", "--out-dir", str(tmp_path / "r")],
            "scales": ["scales", str(path)], "compare": ["compare", str(path), str(path)]}[command]
    # A separate process: before the fix this crashed the interpreter (segmentation fault).
    r = subprocess.run([sys.executable, "-m", "vllm_maxact.cli", *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "damaged" in err[0] and str(path) in err[0], r.stderr


@pytest.mark.parametrize("command", ["report", "scales", "compare"])
def test_a_newer_schema_or_wrong_column_types_are_refused_in_one_line(tmp_path, command):
    newer = stats_file(tmp_path / "newer.arrow", metadata={"vllm_maxact.schema_version": "3"})
    n = len(feather.read_table(newer))
    wrong = stats_file(tmp_path / "wrong.arrow", absmax=pa.array(["big"] * n))
    for path, words in ((newer, "schema version 3"), (wrong, "column 'absmax'")):
        args = {"report": ["report", str(path), "--no-plots", "--out-dir", str(tmp_path / "r")],
                "scales": ["scales", str(path)], "compare": ["compare", str(path), str(path)]}[command]
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 1 and words in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1 and r.exception is None or isinstance(r.exception, SystemExit)


def test_compatible_column_types_are_read(tmp_path):
    """A file rewritten by another tool (float32, int64 layer, large strings) still reads."""
    from vllm_maxact.report import load

    t = feather.read_table(stats_file(tmp_path / "a.arrow"))
    t = t.set_column(t.schema.get_field_index("absmax"), "absmax", t["absmax"].cast(pa.float32()))
    t = t.set_column(t.schema.get_field_index("layer"), "layer", t["layer"].cast(pa.int64()))
    t = t.set_column(t.schema.get_field_index("site"), "site", t["site"].cast(pa.large_string()))
    feather.write_feather(t, tmp_path / "b.arrow")
    got = load(tmp_path / "b.arrow")
    assert got.schema.field("absmax").type == pa.float64() and got.schema.field("site").type == pa.string()


# 5. Smoothing -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoothing(tmp_path_factory):
    from test_smoothquant import IDS, capture, table, tiny_llama

    d = tmp_path_factory.mktemp("smooth")
    src = tiny_llama(d / "src")
    acts, _ = capture(src, IDS)
    return src, smoothquant.document(table(acts), src, alpha=0.5)


def _bad_factor(v):
    def f(doc):
        doc["layers"][0]["smooth"][3] = v
    return f


BAD_SMOOTHING = {
    "zero factor": (_bad_factor(0.0), "layers.0.smooth.3"),
    "NaN factor": (_bad_factor(float("nan")), "layers.0.smooth.3"),
    "infinite factor": (_bad_factor(float("inf")), "layers.0.smooth.3"),
    "short vector": (lambda doc: doc["layers"][1]["smooth"].pop(), "do not fit"),
    "missing key": (lambda doc: doc["layers"][0].pop("linears"), "layers.0.linears"),
    "unknown tensor": (lambda doc: doc["layers"][-1]["linears"].append("model.layers.9.mlp.up_proj.weight"),
                       "model.layers.9.mlp.up_proj.weight"),
    "tensor named twice": (lambda doc: doc["layers"][1]["linears"].append(doc["layers"][0]["linears"][0]),
                           "named twice"),
}


@pytest.mark.parametrize("fault", sorted(BAD_SMOOTHING))
def test_smooth_refuses_a_bad_smoothing_file_and_writes_nothing(smoothing, tmp_path, fault):
    src, doc = smoothing
    doc = copy.deepcopy(doc)
    mutate, words = BAD_SMOOTHING[fault]
    mutate(doc)
    f = tmp_path / "smooth.json"
    f.write_text(json.dumps(doc))  # NaN / Infinity as Python's json writes them
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["smooth", str(src), str(f), "--out", str(out)])
    assert r.exit_code == 1 and words in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["smooth.json"]


def test_scales_out_to_a_directory_leaves_no_temp_file(tmp_path):
    path = stats_file(tmp_path / "s.arrow")
    d = tmp_path / "outdir"
    d.mkdir()
    r = CliRunner().invoke(main, ["scales", str(path), "--out", str(d)])
    assert r.exit_code == 1 and "is a directory" in r.output, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outdir", "s.arrow"] and not any(d.iterdir())


# 6. Configuration and state-changing calls --------------------------------------------------


@pytest.mark.parametrize("var", ["PUBLISH_INTERVAL_S", "SNAPSHOT_INTERVAL_S", "WINDOW_S"])
@pytest.mark.parametrize("bad", ["inf", "nan", "1e300"])
def test_intervals_must_be_finite(monkeypatch, var, bad):
    from vllm_maxact.config import ConfigError, load_config

    if var == "WINDOW_S" and bad == "1e300":
        return  # a very long window is only a long window; no thread waits on it
    monkeypatch.setenv(f"VLLM_MAXACT_{var}", bad)
    with pytest.raises(ConfigError, match=var):
        load_config()


def test_state_changing_worker_methods_need_the_token(temp_root, monkeypatch):
    """Called as vLLM's dev-mode /collective_rpc calls them (no token, or a wrong one): refused
    before touching anything. The instance's own secret (the Python API) or the admin token pass."""
    from types import SimpleNamespace

    import torch

    from vllm_maxact import worker
    from vllm_maxact.config import get_config
    from vllm_maxact.recorder import Recorder
    from vllm_maxact.sites import Site

    ensure_runtime_dir()
    w = SimpleNamespace(model_runner=None)
    # a worker that records (a reset where nothing is recorded changes nothing and needs no token)
    wr = SimpleNamespace(model_runner=SimpleNamespace(
        _maxact_recorder=Recorder([Site.parse("layers.0.residual")], device=torch.device("cpu"), hot_path="cpu_op")))
    for call in (lambda t: worker.maxact_reset(wr, token=t), lambda t: worker.maxact_collect(w, reset=True, token=t),
                 lambda t: worker.maxact_int8(w, 0, token=t)):
        for token in (None, "", "guess", 42):
            with pytest.raises(PermissionError, match="needs a token"):
                call(token)
        assert call(runtime.instance_token()) in (True, False, None)  # allowed
    assert worker.maxact_collect(w) is None  # reading needs nothing
    assert worker.maxact_reset(w) is False  # nothing recorded: nothing to reset, no token asked
    monkeypatch.setenv("VLLM_MAXACT_ADMIN_TOKEN", "s3cret-admin-token-0123")
    get_config.cache_clear()
    try:
        assert worker.maxact_reset(wr, token="s3cret-admin-token-0123") is True
        with pytest.raises(PermissionError):
            worker.maxact_reset(wr, token="s3cret-admin-token-0124")
    finally:
        monkeypatch.delenv("VLLM_MAXACT_ADMIN_TOKEN")
        get_config.cache_clear()


def test_the_publisher_survives_a_lost_runtime_dir_and_says_so(tmp_path, monkeypatch):
    """A worker whose runtime dir disappears (or whose disk fills) keeps serving: publishing
    fails, is counted, and the count reaches /metrics once publishing works again."""
    from types import SimpleNamespace

    import torch

    from vllm_maxact.config import MaxActConfig
    from vllm_maxact.publish import Publisher
    from vllm_maxact.recorder import Recorder
    from vllm_maxact.sites import Site

    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    monkeypatch.setenv(runtime.HANDOFF, str(run))
    rec = Recorder([Site.parse(s) for s in SITES], device=torch.device("cpu"), hot_path="cpu_op")
    cfg = MaxActConfig(publish_interval_s=0.05, async_collect=False)
    vcfg = SimpleNamespace(model_config=SimpleNamespace(served_model_name="m", model="m"))
    pub = Publisher(rec, vcfg, cfg)
    try:
        deadline = time.time() + 20
        while time.time() < deadline and not list(run.glob("worker-*.json")):
            time.sleep(0.05)
        shutil.rmtree(run)
        with pub.lock:
            rec.begin_step(2)
            rec.record(1, torch.tensor([[3.0, -1.0], [2.0, 0.0]]))
            rec.end_step()
            pub.publish()
        assert pub.errors >= 1 and pub.thread.is_alive()
        run.mkdir(mode=0o700)
        with pub.lock:
            pub.publish()
        (p,) = read_payloads(run)
        assert p["publish_errors"] >= 1
        assert 'vllm_maxact_publish_errors_total{model_name="m"}' in _exposition(run)
    finally:
        pub.stop()
