#!/usr/bin/env python3
"""Prometheus alerting rules for vllm-maxact (group ``vllm-maxact``), generated from code.

The committed ``alerts/vllm-maxact-rules.yaml`` is ``render_rules()`` with the defaults below
(``python grafana/build_dashboard.py`` rewrites it together with the dashboard). For a quick
end-to-end test, emit a copy whose alerts fire on the first evaluation:

    python grafana/rules.py --for-override 0s --out /tmp/vllm-maxact-rules.yaml

or from Python: ``rules.render_rules(for_override="0s")``. Thresholds are keyword arguments of
``build_rules`` (and command-line options), so a tuned copy is one call away; the defaults are
module constants. Metric names come from ``build_dashboard.METRICS``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from vllm_maxact.formats import FP16_MAX  # noqa: E402
from vllm_maxact.metrics import exposed as metric  # noqa: E402

DASHBOARD_UID = "vllm-maxact"

RULES_PATH = HERE / "alerts" / "vllm-maxact-rules.yaml"
GROUP = "vllm-maxact"

# Defaults (documented in README.md, "Alerts").
INT8_CLIP_RATE_THRESHOLD = 0.001  # fraction of recent-window values above the calibrated threshold
STALE_AFTER_S = 300  # statistics older than this count as missing
FOR_DEFAULTS = {
    "VllmMaxactNonFiniteActivations": "1m",
    "VllmMaxactFp16Overflow": "1m",
    "VllmMaxactFp16OverflowLifetime": "1m",
    "VllmMaxactInt8ClipRateHigh": "5m",
    "VllmMaxactNoData": "5m",
    "VllmMaxactSnapshotFailing": "5m",
    "VllmMaxactExportErrors": "1m",
}

_SITE = "{{ $labels.kind }}{{ if $labels.layer }} layer {{ $labels.layer }}{{ end }} of model {{ $labels.model_name }}"
_RUNBOOK = f"Dashboard: /d/{DASHBOARD_UID}"


def _g(x: float) -> str:
    return f"{x:g}"


def build_rules(for_override: str | None = None, *, int8_clip_rate: float = INT8_CLIP_RATE_THRESHOLD,
                stale_after_s: int = STALE_AFTER_S, fp16_max: float = FP16_MAX) -> dict[str, Any]:
    """The rule file as a dict. ``for_override`` (e.g. ``"0s"``) replaces every rule's ``for``."""
    nonfinite, absmax, wabsmax = metric("nonfinite_total"), metric("absmax"), metric("window_absmax")
    clip, updated, info = metric("int8_clip_rate"), metric("last_update_timestamp_seconds"), metric("info")
    snap_err = metric("snapshot_error")
    export_errors = " or ".join(
        [f"increase({metric(n)}[10m]) > 0" for n in ("payload_errors_total", "scrape_errors_total",
                                                     "publish_errors_total")] + [f"{metric('payloads_invalid')} > 0"])
    rules: list[dict[str, Any]] = [
        {
            "alert": "VllmMaxactNonFiniteActivations",
            "expr": f"increase({nonfinite}[5m]) > 0",
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": "{{ $labels.value }} activations at " + _SITE,
                "description": "vllm-maxact counted {{ $value | humanize }} new {{ $labels.value }} values at "
                               + _SITE + " in the last 5 minutes (instance {{ $labels.instance }}). The model is "
                               "producing non-finite activations: check dtype overflow (fp16), bad weights or "
                               "inputs. " + _RUNBOOK,
            },
        },
        {
            "alert": "VllmMaxactFp16Overflow",
            "expr": f"{wabsmax} > {_g(fp16_max)}",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "Activations beyond the fp16 range at " + _SITE,
                "description": "The recent-window absmax at " + _SITE + " is {{ $value | humanize }}, above the "
                               f"largest finite fp16 value ({_g(fp16_max)}): serving this model in float16 would "
                               "overflow to inf here. Serve in bfloat16 or rescale. " + _RUNBOOK,
            },
        },
        {
            "alert": "VllmMaxactFp16OverflowLifetime",
            "expr": f"{absmax} > {_g(fp16_max)}",
            "labels": {"severity": "info"},
            "annotations": {
                "summary": "Lifetime absmax beyond the fp16 range at " + _SITE,
                "description": "Since start (or the last reset) " + _SITE + " reached |x| = "
                               "{{ $value | humanize }}, above the largest finite fp16 value "
                               f"({_g(fp16_max)}). Stays active until the recorder is reset. " + _RUNBOOK,
            },
        },
        {
            "alert": "VllmMaxactInt8ClipRateHigh",
            "expr": f"{clip} > {_g(int8_clip_rate)}",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "INT-8 clip rate above " + f"{int8_clip_rate:.2%}" + " at " + _SITE,
                "description": "{{ $value | humanizePercentage }} of the recent-window values at " + _SITE
                               + " exceed the calibrated INT-8 threshold (alert threshold "
                               + f"{int8_clip_rate:.2%}). Traffic has drifted from the calibration set; "
                               "recalibrate or widen the range. " + _RUNBOOK,
            },
        },
        {
            "alert": "VllmMaxactNoData",
            "expr": f"(time() - {updated} > {stale_after_s}) or absent({info})",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "vllm-maxact statistics missing or stale{{ if $labels.model_name }} for model "
                           "{{ $labels.model_name }}{{ end }}",
                "description": "Either no vllm_maxact_info series is scraped (plugin not loaded, vLLM down, "
                               "scrape failing, or no step has run yet) or the workers last published "
                               f"statistics more than {stale_after_s} s ago"
                               "{{ if $labels.model_name }} (last update {{ $value | humanizeDuration }} ago)"
                               "{{ end }}. "
                               "Workers publish after steps only, so an idle server also goes stale. "
                               + _RUNBOOK,
            },
        },
        {
            "alert": "VllmMaxactSnapshotFailing",
            "expr": f"{snap_err} == 1",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "vllm-maxact cannot write Arrow snapshots on {{ $labels.instance }}",
                "description": "vllm_maxact_snapshot_error has been 1 on {{ $labels.instance }}: Arrow "
                               "snapshots are not being written (full or read-only disk, permissions). "
                               "Serving is unaffected; see the vLLM log for the cause. " + _RUNBOOK,
            },
        },
        {
            "alert": "VllmMaxactExportErrors",
            "expr": export_errors,
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "vllm-maxact skips statistics on {{ $labels.instance }}",
                "description": "Worker payloads were invalid and skipped, a scrape left a model out, or the "
                               "workers could not publish (full or read-only disk){{ if $labels.model_name }} "
                               "for model {{ $labels.model_name }}{{ end }}. Serving is unaffected; the other "
                               "statistics are exported. The vLLM log names the file and the cause. " + _RUNBOOK,
            },
        },
    ]
    for r in rules:
        r["for"] = for_override if for_override is not None else FOR_DEFAULTS[r["alert"]]
        # keep a stable, readable key order: alert, expr, for, labels, annotations
        r_sorted = {k: r[k] for k in ("alert", "expr", "for", "labels", "annotations")}
        r.clear()
        r.update(r_sorted)
    return {"groups": [{"name": GROUP, "rules": rules}]}


HEADER = ("# Generated by grafana/build_dashboard.py (grafana/rules.py): do not edit by hand.\n"
          "# Prometheus alerting rules for the vllm-maxact plugin; see grafana/README.md.\n")


def render_rules(for_override: str | None = None, **thresholds: Any) -> str:
    body = yaml.safe_dump(build_rules(for_override, **thresholds), sort_keys=False, width=10_000,
                          allow_unicode=True, default_flow_style=False)
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write the vllm-maxact Prometheus alerting rules.")
    ap.add_argument("--out", type=Path, default=RULES_PATH, help="output file (default: %(default)s)")
    ap.add_argument("--for-override", default=None, help='replace every rule\'s "for" (e.g. 0s for tests)')
    ap.add_argument("--int8-clip-rate", type=float, default=INT8_CLIP_RATE_THRESHOLD)
    ap.add_argument("--stale-after-s", type=int, default=STALE_AFTER_S)
    args = ap.parse_args(argv)
    text = render_rules(args.for_override, int8_clip_rate=args.int8_clip_rate, stale_after_s=args.stale_after_s)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
