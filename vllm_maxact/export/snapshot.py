"""Arrow snapshots: periodic, at shutdown and on demand; atomic; with a retention limit.

The writer runs in the front-end process (the API server, or the script that built the `LLM`)
and reads the payloads workers publish, so one snapshot holds every rank: merged rows
(``rank`` null) plus per-rank rows. Files are named ``maxact-<model>-<UTC stamp>.arrow`` and
written atomically (`arrow.write_table`), so a reader (or a crash) never sees a partial file.
Retention matches names exactly (model and stamp), so one model's pruning never touches another
model's files, whatever their names share. The writer thread survives any error: it logs it,
sets ``vllm_maxact_snapshot_error`` and tries again at the next interval.
"""

from __future__ import annotations

import atexit
import datetime as dt
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from vllm_maxact.export.arrow import SNAPSHOT_NAME, safe_name, table_from_payloads, write_table
from vllm_maxact.export.atomic import temp_for
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
    """Snapshot files in ``directory`` (of ``model`` only: its exact name), oldest first."""
    want = safe_name(model) if model else None
    found = []
    for p in directory.glob("maxact-*.arrow"):
        m = SNAPSHOT_NAME.match(p.name)
        if m and (want is None or m["model"] == want):
            found.append((m["stamp"], p.name, p))
    return [p for *_, p in sorted(found)]


def latest(directory: Path, model: str | None = None) -> Path | None:
    snaps = list_snapshots(directory, model)
    return snaps[-1] if snaps else None


def prune(directory: Path, model: str, retain: int) -> None:
    for old in list_snapshots(directory, model)[:-retain]:
        old.unlink(missing_ok=True)


def clean_partials(directory: Path, min_age_s: float = 600.0) -> int:
    """Temp files left by a writer that was killed mid-write (never valid snapshots); only old
    ones, so another instance writing into the same directory keeps its own."""
    n = 0
    now = time.time()
    for tmp in directory.glob(".maxact-*.arrow.tmp.*"):
        try:
            if now - os.lstat(tmp).st_mtime < min_age_s:
                continue
            tmp.unlink()
        except OSError:
            continue
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
            fd, probe = temp_for(self.directory / ".maxact-probe")  # exclusive: never a planted name
            os.close(fd)
            os.unlink(probe)
            STATUS["error"] = None
        except OSError as e:
            self._fail(e)

    def _fail(self, e: BaseException) -> None:
        msg = str(e) if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
        if STATUS["error"] != msg:
            logger.error("vllm-maxact: cannot write snapshots to %s: %s (serving continues; "
                         "metric vllm_maxact_snapshot_error is 1)", self.directory, msg,
                         exc_info=not isinstance(e, OSError))
        STATUS["error"] = msg
        STATUS["errors"] += 1

    def start(self) -> SnapshotWriter:
        self.thread.start()
        atexit.register(self.write_final)
        return self

    def write_now(self, *, final: bool = False) -> list[Path]:
        """One snapshot per model, of the live workers' payloads (what /metrics serves); the
        final one, at exit, also of workers that have already stopped (their last state)."""
        try:
            payloads = read_payloads(self.runtime_dir, include_dead=final)
            if not payloads:
                return []
            self.directory.mkdir(parents=True, exist_ok=True)
            paths = write_snapshots(self.directory, payloads, self.retain)
        except Exception as e:  # noqa: BLE001  (any failure: logged, counted, tried again)
            self._fail(e)
            return []
        STATUS["error"] = None
        STATUS["last_ok"] = time.time()
        return paths

    def write_final(self) -> list[Path]:
        return self.write_now(final=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.write_now()
            except BaseException as e:  # noqa: BLE001  (write_now catches everything; belt and braces)
                self._fail(e)

    def stop(self) -> None:
        self._stop.set()
