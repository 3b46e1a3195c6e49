"""Attach a `Recorder` to a loaded vLLM model, before vLLM compiles it.

Hooks are registered right after weights load and before the first forward, so Dynamo traces
them into the compiled graph (hooks added after the first trace would never run).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn

from vllm_maxact import ops, ops_int8
from vllm_maxact.adapters import Adapter, Probe, find_adapter
from vllm_maxact.config import MaxActConfig
from vllm_maxact.recorder import Recorder
from vllm_maxact.sites import Kind

logger = logging.getLogger("vllm_maxact")


def select(probes: Iterable[Probe], cfg: MaxActConfig) -> list[Probe]:
    kinds = set(cfg.kinds)
    layers = cfg.layer_set()
    out = []
    for p in probes:
        if p.site.kind not in kinds:
            continue
        if layers is not None and p.site.layer is not None and p.site.layer not in layers:
            continue
        out.append(p)
    # Stable slot order: embedding, then by layer and kind, then final norm.
    order = {k: i for i, k in enumerate(Kind)}
    out.sort(
        key=lambda p: (
            p.site.layer is None and p.site.kind != Kind.EMBEDDING,
            -1 if p.site.layer is None else p.site.layer,
            order[p.site.kind],
        )
    )
    return out


class _Pending:
    """Variant v3: row statistics of the sites seen since the last fold. Python state traced by
    Dynamo; it is empty again at the end of every forward, so nothing escapes the graph."""

    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.slots: list[int] = []
        self.stats: list = []

    def add(self, slot: int, x) -> None:
        if x is None:
            return
        self.slots.append(slot)
        self.stats.append(ops.row_stats(x))
        rec = self.rec
        if rec.int8:
            ops_int8.record_int8(rec.qthr, rec.qacc, rec.qcnt, rec.qhist, rec.qmode, rec.n_valid, slot, x)

    def flush(self) -> None:
        if self.slots:
            ops.fold(
                self.rec.extrema, self.rec.counts, self.rec.n_valid, tuple(self.slots), tuple(self.stats)
            )
            self.slots.clear()
            self.stats.clear()


def _output_hook(pending: _Pending, slot: int, extract, flush: bool):
    def hook(module: nn.Module, args, output) -> None:
        pending.add(slot, extract(output))
        if flush:
            pending.flush()

    return hook


def _input_hook(pending: _Pending, slot: int, extract):
    def hook(module: nn.Module, args, kwargs) -> None:
        pending.add(slot, extract(args, kwargs))

    return hook


def _flush_hook(pending: _Pending):
    def hook(module: nn.Module, args, output) -> None:
        pending.flush()

    return hook


def load_calibration(rec: Recorder, path) -> None:
    """Live drift: thresholds from a `vllm-maxact scales` file; evaluate from the start."""
    from vllm_maxact.int8 import read_scales

    scales = read_scales(path)
    thr = [
        [
            scales.get(s.name, {}).get("threshold_max") or 0.0,
            scales.get(s.name, {}).get("threshold_p999") or 0.0,
        ]
        for s in rec.sites
    ]
    missing = [s.name for s, t in zip(rec.sites, thr, strict=True) if not t[0]]
    if missing:
        logger.warning(
            "vllm-maxact: calibration %s has no threshold for %d sites (e.g. %s)",
            path,
            len(missing),
            missing[0],
        )
    rec.set_int8(2, thr)


def instrument(
    model: nn.Module, cfg: MaxActConfig, device: torch.device, adapter: Adapter | None = None
) -> Recorder | None:
    """Register recording hooks on ``model``; returns its recorder, or None if unsupported."""
    adapter = adapter or find_adapter(model)
    arch = type(model).__name__
    if adapter is None:
        logger.warning(
            "vllm-maxact: no adapter for architecture %s; this model is served WITHOUT activation "
            "recording. Add an adapter (entry-point group 'vllm_maxact.adapters') to cover it.",
            arch,
        )
        return None
    probes = select(adapter.probes(model), cfg)
    seen = set()
    for p in probes:
        if p.site in seen:
            raise RuntimeError(f"adapter {adapter.name!r} yields site {p.site} twice")
        seen.add(p.site)
    rec = Recorder([p.site for p in probes], device=device, window_s=cfg.window_s, int8=cfg.int8_enabled)
    if cfg.calibration is not None:
        load_calibration(rec, cfg.calibration)
    rec.adapter_name = adapter.name
    rec.architecture = arch
    # Variant v3: sites add their row statistics to `pending`; one fold per decoder layer (after
    # its last site, the layer output) writes them all, so the small cross-row reduction runs
    # once per layer instead of once per site. The embedding's pre-hook sits on the first layer
    # and folds with it; other sites outside the layers (final norm) fold on their own.
    pending = _Pending(rec)
    layers = getattr(adapter.decoder(model), adapter.layers_attr)
    folds: dict[int, nn.Module] = {}
    for p in probes:
        if p.site.layer is not None:
            folds[id(layers[p.site.layer])] = layers[p.site.layer]
        elif p.on == "input":
            folds[id(p.module)] = p.module
    for slot, p in enumerate(probes):
        if p.on == "output":
            flush = p.site.layer is None and id(p.module) not in folds
            p.module.register_forward_hook(_output_hook(pending, slot, p.extract, flush))
        else:
            p.module.register_forward_pre_hook(_input_hook(pending, slot, p.extract), with_kwargs=True)
    for m in folds.values():
        m.register_forward_hook(_flush_hook(pending))  # registered last: runs after the layer's sites
    # Keep the recorder reachable from the compiled module so its buffers are module state.
    adapter.decoder(model).maxact_recorder = rec
    n_layers = len({p.site.layer for p in probes if p.site.layer is not None})
    logger.info(
        "vllm-maxact: recording %d sites of %s (adapter %s, %d layers, kinds %s)",
        len(probes),
        arch,
        adapter.name,
        n_layers,
        ",".join(sorted({p.site.kind.value for p in probes})),
    )
    return rec
