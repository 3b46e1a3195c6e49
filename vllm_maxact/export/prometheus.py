"""Prometheus metrics, served on vLLM's own ``/metrics`` (and by a standalone exporter).

A custom collector reads the workers' latest payloads from the runtime directory at scrape
time, merges tensor-parallel ranks (max/min) and pipeline stages (disjoint sites), and yields
one series per (model, kind, layer). Names start with ``vllm_maxact_``: vLLM unregisters every
collector whose name starts with ``vllm:``.

Series per model: 3 lifetime gauges + 3 window gauges + 2 non-finite counters per site, where a
model with L layers and all default kinds has 4L + 2 sites (5L + 2 for MoE with routers), plus
a handful of per-model series. A 32-layer dense model therefore exports 8 * 130 + 8 = 1,048
series; restrict kinds or layers (VLLM_MAXACT_KINDS / VLLM_MAXACT_LAYERS) to export fewer.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

from vllm_maxact.export.runtime import by_model, read_payloads
from vllm_maxact.metrics import family
from vllm_maxact.sites import GLOBAL_KINDS, Site
from vllm_maxact.stats import group_stages, is_sharded, merge_ranks

logger = logging.getLogger("vllm_maxact")



_lock = threading.Lock()
#: Failures while building series at a scrape (each costs one model's series, for one scrape).
SCRAPE_STATUS: dict[str, Any] = {"errors": 0, "last": None}


class MaxActCollector(Collector):
    """Reads published payloads at scrape time; holds no state of its own."""

    def __init__(self, runtime_dir: Path | None, status: dict[str, Any] | None = None) -> None:
        self.runtime_dir = runtime_dir
        self.status = status if status is not None else {}

    def describe(self) -> list[Metric]:
        return []  # dynamic: never let the registry call collect() at registration time

    def collect(self) -> Iterator[Metric]:
        try:
            payloads = read_payloads(self.runtime_dir)  # valid ones only; bad files are counted there
        except Exception as e:  # noqa: BLE001  (the scrape still serves the status series)
            self._scrape_failed(None, e)
            payloads = []
        g = {name: family(name) for name in ("absmax", "max", "min", "window_absmax", "window_max", "window_min")}
        nonfinite, tokens, window_tokens = family("nonfinite"), family("tokens"), family("window_tokens")
        gmax, wgmax, window_s = family("global_absmax"), family("window_global_absmax"), family("window_seconds")
        sites_g, updated, info = family("sites"), family("last_update_timestamp_seconds"), family("info")
        thr_g, clip_g, sqnr_g = family("int8_threshold"), family("int8_clip_rate"), family("int8_sqnr_db")
        publish_errors = family("publish_errors")
        for model, group in sorted(by_model(payloads).items()):
            # One model's series are built apart and added only when complete: a failure costs
            # that model's series for this scrape, never the scrape.
            part = {name: [] for name in (*g, "nonfinite", "tokens", "window_tokens", "gmax", "wgmax", "window_s",
                                          "sites", "updated", "info", "thr", "clip", "sqnr", "publish_errors")}
            try:
                self._model(model, group, part)
            except Exception as e:  # noqa: BLE001
                self._scrape_failed(model, e)
                continue
            fams = {**g, "nonfinite": nonfinite, "tokens": tokens, "window_tokens": window_tokens, "gmax": gmax,
                    "wgmax": wgmax, "window_s": window_s, "sites": sites_g, "updated": updated, "info": info,
                    "thr": thr_g, "clip": clip_g, "sqnr": sqnr_g, "publish_errors": publish_errors}
            for name, samples in part.items():
                for labels, value in samples:
                    fams[name].add_metric(labels, value)
        yield from g.values()
        yield from (nonfinite, tokens, window_tokens, gmax, wgmax, window_s, sites_g, updated, info, publish_errors)
        yield from (thr_g, clip_g, sqnr_g)
        yield from self._status_metrics()

    def _model(self, model: str, group: list[dict[str, Any]], part: dict[str, list]) -> None:
        """One model's samples, into ``part`` (family -> [(labels, value)])."""
        self._int8(model, group, part)
        gl, gw = None, None
        n_sites, tok_l, tok_w, last = 0, 0, 0, 0.0
        for stage in group_stages(group):
            sites = stage[0]["sites"]
            n_sites += len(sites)
            life = merge_ranks([p["lifetime"] for p in stage], sites)
            win = merge_ranks([p["recent"] for p in stage], sites)
            tok_l, tok_w = max(tok_l, life["tokens"]), max(tok_w, win["tokens"])
            last = max(last, *(p["time"] for p in stage))
            for i, name in enumerate(sites):
                site = Site.parse(name)
                labels = [model, site.kind.value, "" if site.layer is None else str(site.layer)]
                for prefix, st in (("", life), ("window_", win)):
                    mx, mn = st["max"][i], st["min"][i]
                    if mx is None or mn is None:
                        continue  # nothing observed: no sample beats a fake zero
                    am = max(abs(mx), abs(mn))
                    part[prefix + "absmax"].append((labels, am))
                    part[prefix + "max"].append((labels, mx))
                    part[prefix + "min"].append((labels, mn))
                    if site.kind in GLOBAL_KINDS:
                        if prefix:
                            gw = am if gw is None else max(gw, am)
                        else:
                            gl = am if gl is None else max(gl, am)
                part["nonfinite"].append(([*labels, "nan"], life["nan"][i]))
                part["nonfinite"].append(([*labels, "inf"], life["inf"][i]))
        p0 = group[0]
        part["tokens"].append(([model], tok_l))
        part["window_tokens"].append(([model], tok_w))
        part["window_s"].append(([model], float(p0.get("window_s", 0))))
        part["sites"].append(([model], n_sites))
        part["publish_errors"].append(([model], sum(p.get("publish_errors", 0) for p in group)))
        part["updated"].append(([model], last))
        part["info"].append(([model, str(p0.get("architecture")), str(p0.get("adapter")),
                              str(p0.get("plugin_version")), str(p0.get("vllm_version")), str(p0.get("tp_size", 1)),
                              str(p0.get("pp_size", 1)), _hot_path_label(p0)], 1))
        if gl is not None:
            part["gmax"].append(([model], gl))
        if gw is not None:
            part["wgmax"].append(([model], gw))

    @staticmethod
    def _int8(model, group, part) -> None:
        """Live drift against a loaded calibration: the first threshold column (the deployed one: the
        threshold the scales file was built with, `vllm_maxact.instrument.load_calibration`)."""
        import numpy as np

        from vllm_maxact.int8 import figures

        merged: dict[str, list] = {}
        for p in sorted(group, key=lambda p: p.get("tp_rank", 0)):
            q = p.get("int8")
            if not q:
                continue
            acc, cnt = np.asarray(q["recent"]["acc"]), np.asarray(q["recent"]["cnt"])
            for i, name in enumerate(p["sites"]):
                if name not in merged:
                    merged[name] = [q["thresholds"][i][0], acc[i, 0].copy(), cnt[i, 0].copy()]
                elif is_sharded(name):  # disjoint parts on the TP ranks: sums add up
                    merged[name][1] += acc[i, 0]
                    merged[name][2] += cnt[i, 0]
        for name, (thr, acc, cnt) in merged.items():
            if not thr:
                continue
            site = Site.parse(name)
            labels = [model, site.kind.value, "" if site.layer is None else str(site.layer)]
            part["thr"].append((labels, thr))
            f = figures(acc, cnt)
            if np.isfinite(f["clip_rate"]):
                part["clip"].append((labels, float(f["clip_rate"])))
            if np.isfinite(f["sqnr_db"]):
                part["sqnr"].append((labels, float(f["sqnr_db"])))

    def _scrape_failed(self, model: str | None, e: Exception) -> None:
        with _lock:
            SCRAPE_STATUS["errors"] += 1
            first = SCRAPE_STATUS.get("last") != f"{model}: {type(e).__name__}: {e}"
            SCRAPE_STATUS["last"] = f"{model}: {type(e).__name__}: {e}"
        if first:
            logger.error("vllm-maxact: cannot export %s at this scrape (%s: %s); the rest of /metrics is served, "
                         "metric vllm_maxact_scrape_errors_total counts these", model or "statistics",
                         type(e).__name__, e, exc_info=True)

    def _status_metrics(self) -> Iterator[Metric]:
        from vllm_maxact.export.runtime import PAYLOAD_STATUS

        bad, bad_now, scrape = family("payload_errors"), family("payloads_invalid"), family("scrape_errors")
        bad.add_metric([], PAYLOAD_STATUS["errors"])
        bad_now.add_metric([], PAYLOAD_STATUS["invalid"])
        scrape.add_metric([], SCRAPE_STATUS["errors"])
        yield from (bad, bad_now, scrape)
        err, n_err = family("snapshot_error"), family("snapshot_errors")
        ok = family("snapshot_last_success_timestamp_seconds")
        if self.status.get("snapshots_enabled"):
            err.add_metric([], 1.0 if self.status.get("error") else 0.0)
            n_err.add_metric([], self.status.get("errors", 0))
            if self.status.get("last_ok"):
                ok.add_metric([], self.status["last_ok"])
        yield from (err, n_err, ok)


_collector: MaxActCollector | None = None
_registered: weakref.WeakSet[CollectorRegistry] = weakref.WeakSet()  # ids would be reused after GC


def collector() -> MaxActCollector:
    global _collector
    from vllm_maxact.export.runtime import instance_dir
    from vllm_maxact.export.snapshot import STATUS

    with _lock:
        if _collector is None:
            _collector = MaxActCollector(instance_dir(), STATUS)
        return _collector


def register_into(registry: CollectorRegistry) -> CollectorRegistry:
    with _lock:
        already = registry in _registered
        _registered.add(registry)
    if not already:
        registry.register(collector())
    return registry


def install_front_end() -> None:
    """Put our collector behind vLLM's ``/metrics`` in this process (single or multiple API servers)."""
    from vllm_maxact.importhooks import when_imported

    register_into(REGISTRY)

    def patch(mod) -> None:
        original = getattr(mod, "get_prometheus_registry", None)
        if original is None or getattr(original, "_vllm_maxact", False):
            return

        def get_prometheus_registry():
            # Multi-API-server mode builds a fresh registry with a MultiProcessCollector.
            return register_into(original())

        get_prometheus_registry._vllm_maxact = True
        mod.get_prometheus_registry = get_prometheus_registry

    when_imported("vllm.v1.metrics.prometheus", patch)
    when_imported("vllm.entrypoints.serve.instrumentator.metrics", patch)
    when_imported("prometheus_fastapi_instrumentator.instrumentation", _patch_instrumentator)


class _MultiprocessWithMaxAct:
    """Stands in for ``prometheus_client.multiprocess`` inside prometheus-fastapi-instrumentator.

    With several API servers vLLM sets ``PROMETHEUS_MULTIPROC_DIR``, and the instrumentator's
    ``/metrics`` handler (the route vLLM serves first) then builds a fresh registry per request
    with only a ``MultiProcessCollector``, ignoring the registry vLLM handed it. Our collector
    joins each of those registries; every API server reads the same runtime dir, so every one
    serves the same values."""

    def __init__(self, module) -> None:
        self._module = module

    def __getattr__(self, name: str):
        return getattr(self._module, name)

    def MultiProcessCollector(self, registry, *args, **kwargs):  # noqa: N802 (prometheus_client's name)
        out = self._module.MultiProcessCollector(registry, *args, **kwargs)
        if registry is not None:
            register_into(registry)
        return out


def _patch_instrumentator(mod) -> None:
    current = getattr(mod, "multiprocess", None)
    if current is None or isinstance(current, _MultiprocessWithMaxAct):
        return
    mod.multiprocess = _MultiprocessWithMaxAct(current)


def start_exporter(port: int, host: str = "127.0.0.1") -> tuple[Any, Any]:
    """Standalone HTTP exporter for offline use (scripts, notebooks, replay). Loopback by default."""
    from prometheus_client import start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector())
    server, thread = start_http_server(port, addr=host, registry=registry)
    logger.info("vllm-maxact: exporter on http://%s:%d/metrics", host, server.server_port)
    return server, thread


def _hot_path_label(payload: dict) -> str:
    """How the sites are recorded: the hot path (`vllm_maxact.hotpath`; older payloads:
    "unknown")."""
    hot = payload.get("hot_path")
    return "unknown" if hot is None else str(hot)
