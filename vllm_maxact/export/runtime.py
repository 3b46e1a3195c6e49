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

ENV = "VLLM_MAXACT_RUNTIME_DIR"


def ensure_runtime_dir() -> tuple[Path, bool]:
    """The instance's runtime dir, and whether this process created it (the front end)."""
    if value := os.environ.get(ENV):
        return Path(value), False
    base = Path(tempfile.gettempdir()) / f"vllm-maxact-{os.getuid()}"
    path = base / f"{os.getpid()}-{int(time.time())}"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.environ[ENV] = str(path)
    return path, True


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
