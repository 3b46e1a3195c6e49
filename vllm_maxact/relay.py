"""Statistics of Ray workers reach the front end through vLLM's own RPC, not a shared disk.

With vLLM's ``ray`` executor the workers are Ray actors, possibly on other nodes with their own
``/tmp``; they publish nothing to disk (`export.runtime.is_ray_worker`). Their engine core runs
on the front end's node, as its `multiprocessing` child (or inside it), and shares its runtime
dir. The engine core pulls every worker's payload with ``collective_rpc("maxact_payload")`` (the
executor's own channel: shared-memory / ZeroMQ message queues with vLLM's default Ray executor,
Ray actor calls with the legacy one) and writes them into the runtime dir, where `/metrics`, the
snapshot writer and ``vllm-maxact snapshot`` read them as they read local workers' files.

When the engine core pulls, all from its own busy-loop thread, so a pull is ordered with the
steps like any of vLLM's utility calls:

- after a step, at most every ``publish_interval_s``, without waiting: the request is queued
  behind the steps already in flight (a pipeline keeps running) and its reply is written when a
  later step has drained it; it returns what the workers last collected (no device sync);
- when the engine goes idle, once: the workers collect first, so the tail of a burst is out at
  once;
- while idle, every ``max(publish_interval_s, 10)`` seconds: a heartbeat (no collect);
- at shutdown, a last collect, for the front end's final snapshot.

A relayed payload names the engine core as its ``pid`` (the process whose liveness the readers
check: a worker's pid means nothing on this node) and keeps the worker's own as ``worker_pid``
with its ``node``. Cost: one RPC round trip of a few kB per worker per publish interval.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import queue
import time
from typing import Any

from vllm_maxact.export.atomic import write_atomic
from vllm_maxact.export.runtime import payload_name

logger = logging.getLogger("vllm_maxact")

_PATCHED = "_vllm_maxact_relay_patched"
#: No single pull may hold the engine longer than this (a dead worker fails the engine anyway).
PULL_TIMEOUT_S = 30.0


class Relay:
    """Pulls the workers' payloads into the runtime dir; lives in the engine core."""

    def __init__(self, executor, directory, interval_s: float) -> None:
        self.executor = executor
        self.dir = directory
        self.interval = interval_s
        self.heartbeat = max(interval_s, 10.0)
        self.pending = None  # a non-blocking pull whose reply is not written yet
        self.next_pull = 0.0
        self.last_pull = 0.0
        self.dirty = False
        self.error: str | None = None
        self.errors = 0
        self.written: dict[tuple[int, int], str] = {}  # (tp, pp) -> file name

    # -- the engine core's hooks (its busy-loop thread) -----------------------------------------

    def after_step(self, model_executed: bool) -> None:
        if model_executed:
            self.dirty = True
        if self.pending is not None and _landed(self.pending):
            self._finish()
        if self.pending is None and time.monotonic() >= self.next_pull:
            self._start(collect=False)

    def idle(self) -> None:
        """The engine has no work: publish the tail of the burst, or a heartbeat."""
        if self.pending is not None:
            self._finish()
        if self.dirty:
            self.pull(collect=True)
        elif time.monotonic() - self.last_pull >= self.heartbeat:
            self.pull(collect=False)

    def pull(self, collect: bool) -> None:
        """A blocking pull (idle engine, start-up, shutdown)."""
        self.dirty = False if collect else self.dirty
        self._mark()
        try:
            replies = self.executor.collective_rpc("maxact_payload", timeout=PULL_TIMEOUT_S,
                                                   kwargs={"collect": collect})
        except Exception as e:  # noqa: BLE001  (serving continues; counted in the next payload)
            self._failed(e)
            return
        self._write(replies)

    # -- internals -----------------------------------------------------------------------------

    def _mark(self) -> None:
        now = time.monotonic()
        self.last_pull = now
        self.next_pull = now + self.interval

    def _start(self, collect: bool) -> None:
        self._mark()
        try:
            self.pending = self.executor.collective_rpc("maxact_payload", kwargs={"collect": collect},
                                                        non_block=True)
        except Exception as e:  # noqa: BLE001
            self._failed(e)

    def _finish(self) -> None:
        fut, self.pending = self.pending, None
        try:
            replies = fut.result()
        except Exception as e:  # noqa: BLE001
            self._failed(e)
            return
        self._write(replies)

    def _write(self, replies: list[Any]) -> None:
        if not self.dir.is_dir():
            return  # the front end has exited and removed it (an engine shutting down after it)
        try:
            for p in replies or ():
                if not p:
                    continue
                p = relayed(p, self.errors)
                name = payload_name(p, p["pid"])
                write_atomic(self.dir / name, json.dumps(p).encode(), mode=0o600)
                self.written[(p["tp_rank"], p["pp_rank"])] = name
            self.error = None
        except Exception as e:  # noqa: BLE001
            self._failed(e)

    def _failed(self, e: Exception) -> None:
        self.errors += 1
        msg = str(e) if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
        if self.error != msg:
            logger.error("vllm-maxact: cannot relay the Ray workers' statistics to %s: %s (serving continues)",
                         self.dir, msg)
        self.error = msg


def _landed(fut) -> bool:
    """Whether a non-blocking pull's replies are in. vLLM's default Ray executor (and the
    multiprocessing one) completes its futures in order as the engine drains them; the legacy Ray
    executor's future wraps Ray object refs and completes only when asked, so ask Ray."""
    if fut.done():
        return True
    refs = getattr(fut, "ref_or_refs", None)
    if refs is None:
        return False
    import ray

    refs = list(refs) if isinstance(refs, list | tuple) else [refs]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
    return len(ready) == len(refs)


def relayed(p: dict[str, Any], relay_errors: int = 0) -> dict[str, Any]:
    """A worker's payload as the engine core publishes it: the engine core's pid (alive here, as
    long as the engine is) and the worker's own pid and node kept apart."""
    out = dict(p)
    out["worker_pid"] = p["pid"]
    out["pid"] = os.getpid()
    out["publish_errors"] = int(p.get("publish_errors", 0)) + relay_errors
    return out


def _uses_remote_workers(executor) -> bool:
    """Workers that may not share this node's disk: vLLM's Ray executors."""
    return bool(getattr(executor, "uses_ray", False))


def patch_engine_core(mod) -> None:
    """Attach a `Relay` to every engine core whose executor runs its workers on Ray."""
    cls = mod.EngineCore
    if getattr(cls, _PATCHED, False):
        return
    setattr(cls, _PATCHED, True)
    original_post, original_shutdown = cls.post_step, cls.shutdown
    # vLLM loads general plugins inside EngineCore.__init__ (this patch runs then): a wrapped
    # __init__ would miss the engine being built. Its KV-cache set-up runs later in the same
    # __init__, after the workers are ready and warmed up.
    original_kv = getattr(cls, "_initialize_kv_caches", None)

    if original_kv is not None:

        @functools.wraps(original_kv)
        def _initialize_kv_caches(self, *args, **kwargs):
            out = original_kv(self, *args, **kwargs)
            _attach_safely(self)
            return out

        cls._initialize_kv_caches = _initialize_kv_caches

    @functools.wraps(original_post)
    def post_step(self, model_executed: bool) -> None:
        original_post(self, model_executed)
        if not hasattr(self, "_maxact_relay"):  # a vLLM without the KV-cache hook above
            _attach_safely(self)
        relay = getattr(self, "_maxact_relay", None)
        if relay is not None:
            relay.after_step(model_executed)

    @functools.wraps(original_shutdown)
    def shutdown(self, *args, **kwargs):
        relay = getattr(self, "_maxact_relay", None)
        # A failed executor may never answer (a dead worker): then nothing more is asked of it.
        if relay is not None and not getattr(self.model_executor, "is_failed", False):
            self._maxact_relay = None
            if relay.pending is not None:
                relay._finish()
            relay.pull(collect=True)  # the last state, for the front end's final snapshot
        return original_shutdown(self, *args, **kwargs)

    cls.post_step, cls.shutdown = post_step, shutdown


def _attach_safely(core) -> None:
    core._maxact_relay = None
    try:
        _attach(core)
    except Exception:  # noqa: BLE001  (never stop an engine for monitoring)
        logger.exception("vllm-maxact: cannot relay the Ray workers' statistics; serving without them")


def _attach(core) -> None:
    from vllm_maxact.config import engine_config
    from vllm_maxact.export.runtime import instance_dir, is_ray_worker

    cfg = engine_config()
    directory = instance_dir()
    if not cfg.enable or directory is None or is_ray_worker() or not _uses_remote_workers(core.model_executor):
        return
    relay = Relay(core.model_executor, directory, cfg.publish_interval_s)
    relay.pull(collect=False)  # announce the sites before any traffic
    core._maxact_relay = relay
    q = getattr(core, "input_queue", None)  # EngineCoreProc's busy loop waits on it when idle
    if q is not None:
        q.get = _idle_aware_get(q.get, relay)
    logger.info("vllm-maxact: relaying the statistics of %d Ray workers to %s over vLLM's RPC",
                len(relay.written), directory)


def _idle_aware_get(get, relay: Relay):
    """The busy loop's blocking wait for work, cut into heartbeat-long waits with the relay's
    idle work between them (in the busy-loop thread: nothing else drives the executor then)."""

    @functools.wraps(get)
    def wrapped(block: bool = True, timeout: float | None = None):
        if not block or timeout is not None:
            return get(block, timeout)
        while True:
            relay.idle()
            try:
                return get(True, relay.heartbeat)
            except queue.Empty:
                continue

    return wrapped
