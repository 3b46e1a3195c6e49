"""The runtime directory: where workers publish payloads and front ends read them.

One directory per vLLM instance, created by the first process that loads the plugin (the API
server or the script that builds `vllm.LLM`) and handed to every child through the environment.
Only local `multiprocessing` children join it. A Ray worker (vLLM's ``ray`` executor) may run on
another node, with its own ``/tmp``: it never creates, joins or writes a runtime dir; its engine
core, a local child of the front end, pulls its statistics over vLLM's own RPC and publishes
them here (`vllm_maxact.relay`).

Nothing in it is trusted on sight. The directories are private to the user (mode 0700, owner
checked; another user's or a group/world-accessible one is refused, so nobody else can plant a
payload or a symlink in them); payload file names are matched exactly and must agree with the
payload's own pid and ranks; every payload is validated (`payloads.validate_payload`) and a bad
one is skipped, logged once and counted (``vllm_maxact_payload_errors_total``); a payload whose
worker is gone is not exported while serving. An instance removes its directory when its front
end exits, and the next front end removes those of instances that died without doing so.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import secrets
import shutil
import stat
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from vllm_maxact.export.payloads import PayloadError, shape, slot, validate_payload

logger = logging.getLogger("vllm_maxact")

#: Private hand-off from an instance's front end to the processes it starts.
HANDOFF = "_VLLM_MAXACT_INSTANCE_DIR"  # no VLLM_ prefix: vLLM warns on unknown VLLM_* names
#: The instance's own secret, handed down the same way: the state-changing worker methods
#: (reset, the INT-8 phase switch) run only for callers that present it or the admin token.
TOKEN_HANDOFF = "_VLLM_MAXACT_INSTANCE_TOKEN"

PAYLOAD_NAME = re.compile(r"^worker-tp(?P<tp>\d+)-pp(?P<pp>\d+)-(?P<pid>\d+)\.json$")


def payload_name(p: dict, pid: int) -> str:
    """The file a payload is published as (what `PAYLOAD_NAME` matches)."""
    return f"worker-tp{p.get('tp_rank', 0)}-pp{p.get('pp_rank', 0)}-{pid}.json"
INSTANCE_NAME = re.compile(r"^(?P<pid>\d+)-(?P<stamp>\d+)$")

#: Shared with the Prometheus collector: payload files skipped as invalid.
PAYLOAD_STATUS: dict[str, int] = {"errors": 0, "invalid": 0}
_lock = threading.Lock()
_seen_bad: dict[tuple, str] = {}  # (path, mtime_ns, size, inode) -> reason: each bad version logged and counted once
_SEEN_BAD_MAX = 4096


class RuntimeDirError(RuntimeError):
    """A runtime directory that is not safe to use; the message names it and the fix."""


def check_private(path: Path, what: str = "runtime directory", mask: int = 0o022) -> None:
    """``path`` is a real directory (not a symlink), owned by this user, with none of the ``mask``
    permission bits: by default writable by nobody else (nothing can be planted in it); 0o077 for
    the dirs this plugin creates itself (0700)."""
    try:
        st = os.lstat(path)
    except OSError as e:
        raise RuntimeDirError(f"vllm-maxact: cannot use {what} {path}: {e.strerror or e}") from None
    problem = None
    if stat.S_ISLNK(st.st_mode):
        problem = "is a symbolic link"
    elif not stat.S_ISDIR(st.st_mode):
        problem = "is not a directory"
    elif st.st_uid != os.geteuid():
        problem = f"is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})"
    elif st.st_mode & mask:
        kind = "writable" if st.st_mode & mask & 0o022 else "readable"
        problem = f"is {kind} by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    if problem:
        raise RuntimeDirError(
            f"vllm-maxact: refusing {what} {path}: it {problem}, so another user could plant or read "
            f"statistics there. Remove it (it is recreated private, mode 0700), or set "
            f"VLLM_MAXACT_RUNTIME_DIR to a directory of yours that only you can write (chmod 700).")


def _make_private(path: Path, what: str, mask: int = 0o077) -> None:
    try:
        path.mkdir(mode=0o700, exist_ok=True)  # the mode applies only when created: checked below
    except OSError as e:
        raise RuntimeDirError(f"vllm-maxact: cannot create {what} {path}: {e.strerror or e}") from None
    try:
        st = os.lstat(path)
        if (mask == 0o077 and stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and st.st_mode & 0o077
                and not st.st_mode & 0o022):
            # Ours, readable by others but writable by nobody else (earlier versions made the
            # root 0755): nothing can have been planted in it, so closing it is enough.
            os.chmod(path, 0o700)  # a directory (lstat), in sticky or private parents
    except OSError:
        pass
    check_private(path, what, mask)


def is_ray_worker() -> bool:
    """This process is a Ray worker (an actor vLLM's ``ray`` executor started), not a driver.

    Ray starts its workers itself (raylet), on this node or another: they are nobody's
    `multiprocessing` child, and vLLM's Ray executors copy the driver's environment into them
    (all of it, from vLLM 0.32's default executor), so neither the parent test nor an inherited
    variable can tell them apart from a front end. Ray's own worker mode can."""
    if "ray" not in sys.modules:  # a Ray worker process has imported ray before any user code
        return False
    try:
        from ray._private import worker as ray_worker

        return ray_worker.global_worker.mode == ray_worker.WORKER_MODE
    except Exception:  # noqa: BLE001  (another Ray layout: fall back to the public API)
        try:
            import ray

            return bool(ray.is_initialized()) and ray.get_runtime_context().worker.mode == ray.WORKER_MODE
        except Exception:  # noqa: BLE001
            return False


def ensure_runtime_dir(configured: Path | None = None) -> tuple[Path | None, bool]:
    """The instance's runtime dir, and whether this process is the instance's front end.

    vLLM starts its engine core, workers and extra API servers with ``multiprocessing``; those
    join the dir their parent handed down. Any other process (``vllm serve``, a script) is the
    front end of a new instance, even when another instance's process launched it (a test
    runner, a job script), so two instances never share a dir through an inherited variable.
    The front end creates the dir private (or refuses an unsafe one: `RuntimeDirError`), removes
    it when it exits, and removes the dirs of dead instances it finds next to it.
    """
    import multiprocessing

    if is_ray_worker():
        # Not a front end, and no dir: statistics leave this process only as RPC replies.
        return None, False
    inherited = os.environ.get(HANDOFF)
    if inherited and multiprocessing.parent_process() is not None:
        return Path(inherited), False
    if configured is not None:
        path = Path(configured)
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True, exist_ok=True)
        # the user's own dir: created 0700, else used as it is if nobody else can write it
        _make_private(path, "runtime directory (VLLM_MAXACT_RUNTIME_DIR)", mask=0o022)
        atexit.register(remove_payloads, path)
    else:
        root = instances_root()
        _make_private(root, "runtime directory root")
        remove_stale(root)
        path = root / f"{os.getpid()}-{int(time.time())}"
        _make_private(path, "instance runtime directory")
        atexit.register(remove_instance_dir, path)
    os.environ[HANDOFF] = str(path)
    os.environ[TOKEN_HANDOFF] = secrets.token_urlsafe(32)  # fresh per instance, never inherited
    _copy_to_ray_workers(TOKEN_HANDOFF)
    return path, True


def _copy_to_ray_workers(name: str) -> None:
    """Ask vLLM's Ray executors to copy ``name`` into their workers' environment (vLLM's own
    ``VLLM_RAY_EXTRA_ENV_VARS_TO_COPY``; its default executor copies everything anyway), so a
    Ray worker accepts the instance's token. The runtime dir is not copied: Ray workers have none."""
    key = "VLLM_RAY_EXTRA_ENV_VARS_TO_COPY"
    names = [n for n in os.environ.get(key, "").split(",") if n.strip()]
    if name not in names:
        os.environ[key] = ",".join([*names, name])


def instance_dir() -> Path | None:
    """This process's instance runtime dir (set by `ensure_runtime_dir`); None in a Ray worker,
    whose environment may hold the driver's path (copied by vLLM), on another machine's disk."""
    if is_ray_worker():
        return None
    value = os.environ.get(HANDOFF)
    return Path(value) if value else None


def instance_token() -> str | None:
    """This instance's secret (set by `ensure_runtime_dir` in the front end, inherited below it)."""
    return os.environ.get(TOKEN_HANDOFF)


def alive(pid: int) -> bool:
    if pid <= 0:  # 0 / negative would signal a process group: never a worker
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def _instance_alive(name: str) -> bool:
    """The instance named ``<pid>-<start time>`` still runs (a reused pid started later is not it)."""
    m = INSTANCE_NAME.match(name)
    if not m:
        return False
    pid, started = int(m["pid"]), int(m["stamp"])
    if not alive(pid):
        return False
    try:
        import psutil

        return psutil.Process(pid).create_time() <= started + 2
    except Exception:  # noqa: BLE001 (psutil missing or the process just ended)
        return alive(pid)


def remove_stale(root: Path) -> int:
    """Remove the runtime dirs of instances that are gone (killed before they could clean up)."""
    n = 0
    try:
        entries = list(os.scandir(root))
    except OSError:
        return 0
    for e in entries:
        if not INSTANCE_NAME.match(e.name) or not e.is_dir(follow_symlinks=False) or _instance_alive(e.name):
            continue
        shutil.rmtree(e.path, ignore_errors=True)
        n += 1
    if n:
        logger.info("vllm-maxact: removed %d runtime dirs of instances that are gone, in %s", n, root)
    return n


def remove_instance_dir(path: Path) -> None:
    """At the front end's exit (after its final snapshot): its instance dir goes."""
    shutil.rmtree(path, ignore_errors=True)


def remove_payloads(path: Path) -> None:
    """At exit, in a configured (shared, long-lived) dir: this instance's payloads only."""
    for _, f, _ in _payload_files(path):
        m = PAYLOAD_NAME.match(f.name)
        if m and not alive(int(m["pid"])):
            f.unlink(missing_ok=True)


def _payload_files(path: Path) -> list[tuple[str, Path, os.stat_result]]:
    out = []
    try:
        entries = list(os.scandir(path))
    except OSError:
        return out
    for e in entries:
        if e.name.startswith("worker-") and e.name.endswith(".json"):
            try:
                out.append((e.name, Path(e.path), e.stat(follow_symlinks=False)))
            except OSError:
                continue
    return sorted(out)


def _load(name: str, f: Path, st: os.stat_result) -> dict[str, Any]:
    m = PAYLOAD_NAME.match(name)
    if m is None:
        raise PayloadError("not a payload file name (worker-tpN-ppN-PID.json)")
    if not stat.S_ISREG(st.st_mode):
        raise PayloadError("not a regular file")
    if st.st_uid != os.geteuid():
        raise PayloadError(f"owned by uid {st.st_uid}, not by this user")
    fd = os.open(f, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as fh:
        raw = fh.read()
    try:
        p = json.loads(raw)
    except ValueError as e:
        raise PayloadError(f"not JSON ({e})") from None
    p = validate_payload(p)
    if (p["pid"], p.get("tp_rank", 0), p.get("pp_rank", 0)) != (int(m["pid"]), int(m["tp"]), int(m["pp"])):
        raise PayloadError("its pid and ranks differ from its file name")
    return p


def _reject(key: tuple, f: Path, reason: str) -> None:
    with _lock:
        if key in _seen_bad:
            return
        if len(_seen_bad) >= _SEEN_BAD_MAX:
            _seen_bad.clear()
        _seen_bad[key] = reason
        PAYLOAD_STATUS["errors"] += 1
    logger.error("vllm-maxact: skipping worker payload %s: %s (the other payloads are exported; "
                 "metric vllm_maxact_payload_errors_total counts these)", f, reason)


def read_payloads(path: Path | None, *, include_dead: bool = False) -> list[dict[str, Any]]:
    """The latest valid payload of every worker (model, stage, rank), live workers only unless
    ``include_dead``. Invalid files are skipped, logged once and counted: never a failed scrape."""
    if path is None or not path.is_dir():
        return []
    found: dict[tuple, dict[str, Any]] = {}
    invalid = 0
    for name, f, st in _payload_files(path):
        key = (str(f), st.st_mtime_ns, st.st_size, st.st_ino)
        try:
            p = _load(name, f, st)
        except FileNotFoundError:
            continue  # replaced or removed between listing and reading
        except (PayloadError, OSError) as e:
            invalid += 1
            _reject(key, f, str(e))
            continue
        if not include_dead and not alive(p["pid"]):
            continue
        s = slot(p)
        if s not in found or p["time"] > found[s]["time"]:
            found[s] = p  # e.g. a dead engine's worker and the live one of a later engine
    out = [found[s] for s in sorted(found)]
    # Ranks of one stage must describe the same sites (and channel widths), or nothing can merge them.
    stage_shape: dict[tuple[str, int], tuple] = {}
    for p in sorted(out, key=lambda p: -p["time"]):
        stage_shape.setdefault((p["model"], p.get("pp_rank", 0)), shape(p))
    kept = []
    for p in out:
        if shape(p) != stage_shape[(p["model"], p.get("pp_rank", 0))]:
            invalid += 1
            f = path / payload_name(p, p["pid"])
            _reject((str(f), p["time"]), f, "its sites differ from the newest payload of the same stage")
            continue
        kept.append(p)
    with _lock:
        PAYLOAD_STATUS["invalid"] = invalid
    return kept


def by_model(payloads: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for p in payloads:
        groups.setdefault(p["model"], []).append(p)
    return groups


def instances_root() -> Path:
    return Path(tempfile.gettempdir()) / f"vllm-maxact-{os.geteuid()}"


def discover(pid: int | None = None) -> list[Path]:
    """Runtime dirs of running instances (newest first); ``pid`` = the server's main process.
    Raises `RuntimeDirError` when the root is not private to this user."""
    root = instances_root()
    if not os.path.lexists(root):
        return []
    check_private(root, "runtime directory root")
    found = []
    for d in root.iterdir():
        m = INSTANCE_NAME.match(d.name)
        if not m or (pid is not None and int(m["pid"]) != pid):
            continue
        try:
            check_private(d, "instance runtime directory")
        except RuntimeDirError as e:
            logger.warning("%s", e)
            continue
        if _instance_alive(d.name) and read_payloads(d):
            found.append(d)
    return sorted(found, key=lambda d: d.stat().st_mtime, reverse=True)
