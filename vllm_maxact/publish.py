"""Worker side of export: turn a recorder into plain payloads and publish them periodically.

The model runs in a worker process; `/metrics` is served by the API server. Workers publish
their statistics as small JSON files (written atomically) in a runtime directory that every
process of one vLLM instance shares through the environment; the API server's collector reads
them at scrape time. Files, not sockets: nothing to bind, nothing lost if a reader restarts.
A Ray worker has no such directory (it may be on another node): its publisher only collects,
and the engine core relays its payloads over vLLM's RPC (`vllm_maxact.relay`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

from vllm_maxact.config import MaxActConfig
from vllm_maxact.export.atomic import write_atomic
from vllm_maxact.export.runtime import instance_dir, payload_name
from vllm_maxact.recorder import Recorder
from vllm_maxact.stats import WIRE_VERSION, to_wire

logger = logging.getLogger("vllm_maxact")



def rank_info() -> dict[str, int]:
    info = {"tp_rank": 0, "pp_rank": 0, "tp_size": 1, "pp_size": 1}
    try:
        from vllm.distributed import parallel_state as ps

        info["tp_rank"] = ps.get_tensor_model_parallel_rank()
        info["tp_size"] = ps.get_tensor_model_parallel_world_size()
        info["pp_rank"] = ps.get_pp_group().rank_in_group
        info["pp_size"] = ps.get_pp_group().world_size
    except Exception:  # not initialised (tests, single process): rank 0 of 1
        pass
    return info


def node_info() -> dict[str, str]:
    """Where this worker runs, when that is not the front end's machine (a Ray worker)."""
    from vllm_maxact.export.runtime import is_ray_worker

    if not is_ray_worker():
        return {}
    try:
        import ray

        return {"node": str(ray.get_runtime_context().get_node_id())}
    except Exception:  # noqa: BLE001
        return {}


def model_name(vllm_config) -> str:
    mc = vllm_config.model_config
    served = getattr(mc, "served_model_name", None)
    if isinstance(served, list | tuple):
        served = served[0] if served else None
    return str(served or mc.model)


def payload(rec: Recorder, vllm_config) -> dict[str, Any]:
    import vllm

    from vllm_maxact import __version__

    return {
        "version": WIRE_VERSION,
        "model": model_name(vllm_config),
        "architecture": getattr(rec, "architecture", None),
        "adapter": getattr(rec, "adapter_name", None),
        "hot_path": rec.strategy.describe(),
        "in_kernel_sites": list(getattr(rec, "in_kernel_sites", [])),
        "vllm_version": vllm.__version__,
        "plugin_version": __version__,
        "pid": os.getpid(),
        "time": time.time(),
        "window_s": rec.window_s,
        **rank_info(),
        **node_info(),
        "sites": [s.name for s in rec.sites],
        "lifetime": to_wire(rec.lifetime),
        "recent": to_wire(rec.recent()),
        **(int8_dict(rec) if rec.int8 else {}),
    }


def int8_dict(rec: Recorder) -> dict[str, Any]:
    """Raw INT-8 accumulators (sums merge across ranks and windows; figures are derived later)."""
    recent = rec.int8_recent()
    return {
        "int8": {
            "thresholds": rec.qthr_host.tolist(),
            "lifetime": {"acc": rec.int8_lifetime[0].tolist(), "cnt": rec.int8_lifetime[1].tolist()},
            "recent": {"acc": recent[0].tolist(), "cnt": recent[1].tolist()},
            "window": {"acc": rec.int8_last[0].tolist(), "cnt": rec.int8_last[1].tolist()},
        }
    }


class Publisher:
    """Collects a recorder every ``publish_interval_s`` and publishes it for the API server.

    Collection happens in the worker thread right after a step, or, once traffic stops, from a
    daemon thread that takes the step lock, so the last steps before a quiet period are
    published too. A collect never overlaps a forward.
    """

    def __init__(self, rec: Recorder, vllm_config, cfg: MaxActConfig, device=None) -> None:
        self.rec = rec
        self.vllm_config = vllm_config
        self.cfg = cfg
        self.device = device
        self.lock = threading.Lock()
        self.next_publish = 0.0
        self.last_step = 0.0
        self.last_publish = 0.0
        self.dirty = False
        self.dir = instance_dir()
        self.error: str | None = None
        self.errors = 0  # failed publishes and idle-loop errors so far (the payload carries it)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._idle_loop, name="vllm-maxact-publish", daemon=True)
        self.thread.start()

    def after_step(self) -> None:
        """Called with ``lock`` held, right after a step (its work queued, maybe not done).

        With ``async_collect`` the window's copy to the host is queued behind the step and
        published at a later step, once it has landed: nothing here waits for the device, so
        vLLM's asynchronous scheduling keeps preparing the next step while this one runs."""
        self.last_step = time.monotonic()
        self.dirty = True
        if self.cfg.async_collect:
            if self.rec.poll():
                self.publish(collect=False)
            if self.last_step >= self.next_publish and self.rec.start_collect():
                self.dirty = False
                self.next_publish = self.last_step + self.cfg.publish_interval_s
        elif self.last_step >= self.next_publish:
            self.publish()

    def publish(self, collect: bool = True) -> None:
        """Never raises: serving goes on whatever fails here (a full or read-only disk, a removed
        runtime dir, a bug); the failure is logged once per distinct message and counted in the
        next payload that gets out (``vllm_maxact_publish_errors_total``)."""
        self.next_publish = time.monotonic() + self.cfg.publish_interval_s
        self.last_publish = time.monotonic()
        try:
            if collect:
                self.dirty = False
                self.rec.collect()  # folds in a window still in flight first
            if self.dir is None:
                return
            p = payload(self.rec, self.vllm_config)
            p["publish_errors"] = self.errors
            name = payload_name(p, os.getpid())
            # The front end created the dir private; never recreate it here (it would not be).
            write_atomic(self.dir / name, json.dumps(p).encode(), mode=0o600)
            self.error = None
        except Exception as e:  # noqa: BLE001
            self._failed(e)

    def _failed(self, e: Exception) -> None:
        self.errors += 1
        msg = str(e) if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
        if isinstance(e, FileNotFoundError) and self.dir is not None and not self.dir.exists():
            # The front end removes the dir when its instance exits, maybe before this worker's
            # last publish: not worth an error at every shutdown. Counted all the same (a dir
            # removed under a running server shows in the count once it is back).
            if self.error != "gone":
                logger.debug("vllm-maxact: runtime dir %s is gone (the instance is exiting, or it was removed)",
                             self.dir)
            self.error = "gone"
            return
        if self.error != msg:
            logger.error("vllm-maxact: cannot publish statistics to %s: %s (serving continues)", self.dir, msg,
                         exc_info=not isinstance(e, OSError))
        self.error = msg

    def _idle_loop(self) -> None:
        interval = self.cfg.publish_interval_s
        heartbeat = max(interval, 10.0)
        with self.lock:
            # Announce the recorder (sites, info) before any traffic. Host data only: the device
            # may be busy with warm-up or CUDA-graph capture, which a side thread must not touch.
            self.publish(collect=False)
        while not self._stop.wait(interval / 2):
            try:
                self._idle_tick(interval, heartbeat)
            except Exception as e:  # noqa: BLE001  (the thread outlives any error; counted)
                self._failed(e)

    def _idle_tick(self, interval: float, heartbeat: float) -> None:
        now = time.monotonic()
        if now - self.last_step < interval / 2:
            return  # busy: the worker thread publishes after its steps
        if self.dirty or self.rec.in_flight:
            # Traffic stopped: publish the tail of the burst (real steps ran, so start-up
            # capture is over and the device is idle).
            with self.lock:
                if self.dirty or self.rec.in_flight:
                    if getattr(self.device, "type", "cpu") == "cuda":
                        import torch

                        torch.cuda.synchronize(self.device)
                    self.publish()
        elif now - self.last_publish >= heartbeat:
            # Heartbeat, so "no data" alerts mean a dead worker, not a quiet one.
            with self.lock:
                self.publish(collect=False)

    def stop(self) -> None:
        self._stop.set()
