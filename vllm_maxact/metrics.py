"""Every Prometheus metric vllm-maxact exports: name, type, labels and help, declared once.

The exporter (`vllm_maxact.export.prometheus`) builds its families from this table, the Grafana
dashboard and alert-rule generators (`grafana/`) take their names from it, and the tests check
both against it. Counters are exposed with Prometheus' ``_total`` suffix (`MetricSpec.exposed`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PREFIX = "vllm_maxact_"
SITE_LABELS = ("model_name", "kind", "layer")
MODEL_LABELS = ("model_name",)
INFO_LABELS = ("model_name", "architecture", "adapter", "plugin_version", "vllm_version", "tp_size", "pp_size",
               "hot_path")


@dataclass(frozen=True)
class MetricSpec:
    name: str  #: without the prefix, without ``_total``
    type: Literal["gauge", "counter"]
    labels: tuple[str, ...]
    help: str

    @property
    def full(self) -> str:
        return PREFIX + self.name

    @property
    def exposed(self) -> str:
        """The name a scrape shows (and queries use)."""
        return self.full + ("_total" if self.type == "counter" else "")

    def family(self):
        """An empty prometheus-client family for one scrape."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        cls = CounterMetricFamily if self.type == "counter" else GaugeMetricFamily
        return cls(self.full, self.help, labels=list(self.labels))


_CAL = " Only while a calibration file is loaded (VLLM_MAXACT_CALIBRATION)."

CATALOG: tuple[MetricSpec, ...] = (
    # per site
    MetricSpec("absmax", "gauge", SITE_LABELS, "Largest |activation| observed at a site since start or reset (lifetime)."),
    MetricSpec("max", "gauge", SITE_LABELS, "Largest activation value observed at a site (lifetime)."),
    MetricSpec("min", "gauge", SITE_LABELS, "Smallest activation value observed at a site (lifetime)."),
    MetricSpec("window_absmax", "gauge", SITE_LABELS,
               "Largest |activation| at a site over the recent window (window_seconds)."),
    MetricSpec("window_max", "gauge", SITE_LABELS, "Largest activation value at a site over the recent window."),
    MetricSpec("window_min", "gauge", SITE_LABELS, "Smallest activation value at a site over the recent window."),
    MetricSpec("nonfinite", "counter", (*SITE_LABELS, "value"),
               "Non-finite activation values observed at a site (value=nan|inf)."),
    # per model
    MetricSpec("tokens", "counter", MODEL_LABELS, "Tokens observed by the recorder (computed tokens; prefix-cache "
               "hits are not recomputed, so not observed)."),
    MetricSpec("window_tokens", "gauge", MODEL_LABELS, "Tokens observed in the recent window."),
    MetricSpec("global_absmax", "gauge", MODEL_LABELS, "Global max |x| over embedding, residual, attn_out, mlp_out "
               "and final_norm sites (lifetime)."),
    MetricSpec("window_global_absmax", "gauge", MODEL_LABELS, "Global max |x| over the recent window."),
    MetricSpec("window_seconds", "gauge", MODEL_LABELS, "Length of the recent window."),
    MetricSpec("sites", "gauge", MODEL_LABELS, "Number of recorded sites."),
    MetricSpec("last_update_timestamp_seconds", "gauge", MODEL_LABELS, "When the workers last published statistics."),
    MetricSpec("info", "gauge", INFO_LABELS, "Recorder build information (value 1)."),
    MetricSpec("publish_errors", "counter", MODEL_LABELS,
               "Failed publishes of the workers' statistics (the worker's log says why; serving continues)."),
    # INT-8 drift, per site
    MetricSpec("int8_threshold", "gauge", SITE_LABELS,
               "Calibrated INT-8 threshold (scale = threshold / 127) loaded from VLLM_MAXACT_CALIBRATION."),
    MetricSpec("int8_clip_rate", "gauge", SITE_LABELS,
               "Fraction of recent-window values with |x| above the calibrated INT-8 threshold." + _CAL),
    MetricSpec("int8_sqnr_db", "gauge", SITE_LABELS,
               "SQNR (dB) of recent-window values quantized to INT-8 with the calibrated scale." + _CAL),
    # export health (no labels)
    MetricSpec("payload_errors", "counter", (), "Invalid worker payloads skipped (each bad file version counted and "
               "logged once; the other payloads are exported)."),
    MetricSpec("payloads_invalid", "gauge", (), "Worker payload files skipped as invalid at the latest read."),
    MetricSpec("scrape_errors", "counter", (),
               "Models whose series could not be built at a scrape (skipped for that scrape; see the log)."),
    # snapshot health (no labels; only while snapshots are enabled)
    MetricSpec("snapshot_error", "gauge", (), "1 while Arrow snapshots cannot be written (see the log), else 0."),
    MetricSpec("snapshot_errors", "counter", (),
               "Failed snapshot writes (any error of the snapshot thread; it keeps running)."),
    MetricSpec("snapshot_last_success_timestamp_seconds", "gauge", (), "When the last Arrow snapshot was written."),
)

BY_NAME: dict[str, MetricSpec] = {m.name: m for m in CATALOG}
#: every exposed name, in catalog order
EXPOSED: list[str] = [m.exposed for m in CATALOG]


def family(name: str):
    """The empty family of metric ``name`` (without prefix)."""
    return BY_NAME[name].family()


def exposed(name: str) -> str:
    """The exposed name for ``name`` (with or without the prefix / ``_total``); only known names."""
    short = name.removeprefix(PREFIX)
    spec = BY_NAME.get(short) or BY_NAME.get(short.removesuffix("_total"))
    if spec is None or (short != spec.name and short != spec.exposed.removeprefix(PREFIX)):
        raise KeyError(f"{PREFIX}{short} is not an exported vllm-maxact metric")
    return spec.exposed
