"""Arrow snapshots: periodic, at shutdown and on demand; atomic; with a retention limit.

The writer runs in the front-end process (the API server, or the script that built the `LLM`)
and reads the payloads workers publish, so one snapshot holds every rank: merged rows
(``rank`` null) plus per-rank rows. Files are named ``maxact-<model>-<UTC stamp>.arrow`` and
written temp-file + fsync + rename, so a reader (or a crash) never sees a partial file.
"""

from __future__ import annotations

import atexit
import datetime as dt
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from vllm_maxact.export.arrow import safe_name, table_from_payloads, write_table
from vllm_maxact.export.runtime import by_model, read_payloads

logger = logging.getLogger("vllm_maxact")

#: Shared with the Prometheus collector (error metric).
STATUS: dict[str, Any] = {"snapshots_enabled": False, "error": None, "errors": 0, "last_ok": None}


def stamp(t: float | None = None) -> str:
    return dt.datetime.fromtimestamp(t or time.time(), tz=dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def snapshot_table(payloads: list[dict[str, Any]]) -> pa.Table:
    return table_from_payloads(payloads, windows=("lifetime", "recent"), per_rank=True)


def write_snapshots(directory: Path, payloads: list[dict[str, Any]], retain: int | None = None) -> list[Path]:
    """One file per model; prunes the oldest beyond ``retain``. Raises OSError on failure."""
    written = []
    for model, group in sorted(by_model(payloads).items()):
        path = directory / f"maxact-{safe_name(model)}-{stamp()}.arrow"
        write_table(snapshot_table(group), path)
        written.append(path)
        if retain:
            prune(directory, model, retain)
    return written


def list_snapshots(directory: Path, model: str | None = None) -> list[Path]:
    pattern = f"maxact-{safe_name(model)}-*.arrow" if model else "maxact-*.arrow"
    return sorted(p for p in directory.glob(pattern) if not p.name.startswith("."))


def latest(directory: Path, model: str | None = None) -> Path | None:
    snaps = list_snapshots(directory, model)
    return snaps[-1] if snaps else None


def prune(directory: Path, model: str, retain: int) -> None:
    for old in list_snapshots(directory, model)[:-retain]:
        old.unlink(missing_ok=True)


def clean_partials(directory: Path) -> int:
    """Temp files left by a writer that was killed mid-write (never valid snapshots)."""
    n = 0
    for tmp in directory.glob(".maxact-*.arrow.tmp.*"):
        tmp.unlink(missing_ok=True)
        n += 1
    return n


class SnapshotWriter:
    """Background thread in the front end: every ``interval`` seconds and once at exit."""

    def __init__(self, directory: Path, runtime_dir: Path, interval: float, retain: int) -> None:
        self.directory, self.runtime_dir = directory, runtime_dir
        self.interval, self.retain = interval, retain
        self._stop = threading.Event()
        STATUS["snapshots_enabled"] = True
        self._check_dir()
        self.thread = threading.Thread(target=self._run, name="vllm-maxact-snapshots", daemon=True)

    def _check_dir(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            clean_partials(self.directory)
            probe = self.directory / f".maxact-probe-{time.time_ns()}"
            probe.write_bytes(b"")
            probe.unlink()
            STATUS["error"] = None
        except OSError as e:
            self._fail(e)

    def _fail(self, e: OSError) -> None:
        if STATUS["error"] != str(e):
            logger.error("vllm-maxact: cannot write snapshots to %s: %s (serving continues; "
                         "metric vllm_maxact_snapshot_error is 1)", self.directory, e)
        STATUS["error"] = str(e)
        STATUS["errors"] += 1

    def start(self) -> SnapshotWriter:
        self.thread.start()
        atexit.register(self.write_now)
        return self

    def write_now(self) -> list[Path]:
        payloads = read_payloads(self.runtime_dir, include_dead=True)
        if not payloads:
            return []
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            paths = write_snapshots(self.directory, payloads, self.retain)
        except OSError as e:
            self._fail(e)
            return []
        STATUS["error"] = None
        STATUS["last_ok"] = time.time()
        return paths

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.write_now()

    def stop(self) -> None:
        self._stop.set()
