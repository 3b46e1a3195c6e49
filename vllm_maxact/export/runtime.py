"""The runtime directory: where workers publish payloads and front ends read them.

One directory per vLLM instance, created by the first process that loads the plugin (the API
server or the script that builds `vllm.LLM`) and handed to every child through the environment.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger("vllm_maxact")

#: Private hand-off from an instance's front end to the processes it starts.
HANDOFF = "_VLLM_MAXACT_INSTANCE_DIR"  # no VLLM_ prefix: vLLM warns on unknown VLLM_* names


def ensure_runtime_dir(configured: Path | None = None) -> tuple[Path, bool]:
    """The instance's runtime dir, and whether this process is the instance's front end.

    vLLM starts its engine core, workers and extra API servers with ``multiprocessing``; those
    join the dir their parent handed down. Any other process (``vllm serve``, a script) is the
    front end of a new instance, even when another instance's process launched it (a test
    runner, a job script), so two instances never share a dir through an inherited variable.
    """
    import multiprocessing

    inherited = os.environ.get(HANDOFF)
    if inherited and multiprocessing.parent_process() is not None:
        return Path(inherited), False
    if configured is not None:
        path = Path(configured)
    else:
        path = instances_root() / f"{os.getpid()}-{int(time.time())}"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.environ[HANDOFF] = str(path)
    return path, True


def instance_dir() -> Path | None:
    """This process's instance runtime dir (set by `ensure_runtime_dir`)."""
    value = os.environ.get(HANDOFF)
    return Path(value) if value else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_payloads(path: Path | None, *, include_dead: bool = False) -> list[dict[str, Any]]:
    """Latest payload of every live worker. Unreadable files are skipped (never a failed scrape)."""
    if path is None or not path.is_dir():
        return []
    out = []
    for f in sorted(path.glob("worker-*.json")):
        try:
            p = json.loads(f.read_bytes())
        except (OSError, ValueError):
            continue
        if include_dead or _alive(int(p.get("pid", 0))):
            out.append(p)
    return out


def by_model(payloads: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for p in payloads:
        groups.setdefault(p["model"], []).append(p)
    return groups


def instances_root() -> Path:
    return Path(tempfile.gettempdir()) / f"vllm-maxact-{os.getuid()}"


def discover(pid: int | None = None) -> list[Path]:
    """Runtime dirs of running instances (newest first); ``pid`` = the server's main process."""
    root = instances_root()
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        head = d.name.split("-", 1)[0]
        if not head.isdigit() or (pid is not None and int(head) != pid):
            continue
        if read_payloads(d):
            found.append(d)
    return sorted(found, key=lambda d: d.stat().st_mtime, reverse=True)
