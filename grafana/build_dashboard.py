#!/usr/bin/env python3
"""Generate the vLLM activation-maxima Grafana dashboard (``dashboards/vllm-maxact.json``).

The dashboard is built in code with the Grafana Foundation SDK (``grafana-foundation-sdk``, the
Python builder library generated from Grafana's own schemas; see ``requirements.txt`` for the
pinned build). Do not edit the JSON by hand: change this file and run

    python grafana/build_dashboard.py            # writes grafana/dashboards/vllm-maxact.json
                                                 # and grafana/alerts/vllm-maxact-rules.yaml
    python grafana/build_dashboard.py --check    # exit 1 if the committed files are stale

Every metric name used by a panel, a variable or an alert comes from ``METRICS``, which mirrors
the names ``vllm_maxact.export.prometheus`` exports (``metric()`` refuses any other name). The
module-level dict ``QUERIES`` maps each query to its PromQL expression (the key is the panel
title, or ``"<panel title> [<series>]"`` for the one panel with two queries) so tests can run
or syntax-check every query. The SDK is imported lazily: ``METRICS``, ``QUERIES`` and the alert
rules (``rules.py``) work without it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from rules import DASHBOARD_UID  # noqa: E402

from vllm_maxact.formats import FP8_E4M3_MAX, FP16_MAX  # noqa: E402
from vllm_maxact.metrics import EXPOSED, exposed  # noqa: E402
from vllm_maxact.sites import KIND_ORDER as KIND_ORDER_ENUM  # noqa: E402

DASHBOARD_PATH = HERE / "dashboards" / "vllm-maxact.json"
SCHEMA_VERSION = 41  # Grafana 11.6 (what the pinned SDK emits); Grafana 10+ imports it

# --- the exporter contract: declared once in vllm_maxact.metrics -----------------------------
# (the generator imports only the catalog, the format limits and the site kinds: no torch, no vLLM)
METRICS: list[str] = EXPOSED
# Column order of the layer x kind table: every kind the exporter can emit.
KIND_ORDER = [k.value for k in KIND_ORDER_ENUM]


def metric(name: str) -> str:
    """Full metric name for ``name`` (with or without the ``vllm_maxact_`` prefix); only known names."""
    return exposed(name)


MODEL = 'model_name=~"$model_name"'
SITE = 'model_name=~"$model_name",kind=~"$kind",layer=~"$layer"'
RESIDUAL = 'model_name=~"$model_name",kind="residual",layer=~"$layer"'


def sel(name: str, matchers: str = MODEL) -> str:
    return f"{metric(name)}{{{matchers}}}" if matchers else metric(name)


# --- every query on the dashboard -------------------------------------------------------------
T_GLOBAL = "Global absmax over time"
T_HEAT = "Absmax by layer × kind (lifetime)"
T_TOP = "Top 10 sites by absmax (lifetime)"
T_RESID = "Residual-stream absmax per layer (lifetime)"
T_BY_KIND = "Window absmax by kind (max over layers)"
T_H_FP16 = "Headroom to fp16 (15 tightest sites)"
T_H_FP8 = "Headroom to FP8 E4M3 (15 tightest sites)"
T_H_INT8 = "Headroom to the calibrated INT-8 range (15 tightest sites)"
T_CLIP = "INT-8 clip rate (recent window)"
T_SQNR = "INT-8 SQNR with the calibrated scale (recent window)"
T_TOK_RATE = "Tokens observed per second"
T_TOK_WIN = "Tokens in the recent window"
T_NONFINITE = "Non-finite activations (increase over 5m)"
T_INFO = "Recorder"
T_AGE = "Statistics age"
T_SITES = "Recorded sites"
T_SNAP = "Arrow snapshots"
T_SNAP_ERR = "Snapshot errors (1h)"

# ``layer`` is absent for embedding/final_norm: show those in row -1 of the layer x kind table.
_HEAT = f'max by (kind, layer) (label_replace({sel("absmax", SITE)}, "layer", "-1", "layer", ""))'

QUERIES: dict[str, str] = {
    f"{T_GLOBAL} [lifetime]": f"max by (model_name) ({sel('global_absmax')})",
    f"{T_GLOBAL} [window]": f"max by (model_name) ({sel('window_global_absmax')})",
    T_HEAT: _HEAT,
    T_TOP: f"sort_desc(topk(10, {sel('absmax')}))",
    T_RESID: f"max by (layer) ({sel('absmax', RESIDUAL)})",
    T_BY_KIND: f"max by (kind) ({sel('window_absmax', SITE)})",
    T_H_FP16: f"sort(bottomk(15, {FP16_MAX:g} / {sel('absmax', SITE)}))",
    T_H_FP8: f"sort(bottomk(15, {FP8_E4M3_MAX:g} / {sel('absmax', SITE)}))",
    T_H_INT8: f"sort(bottomk(15, {sel('int8_threshold', SITE)} / {sel('window_absmax', SITE)}))",
    T_CLIP: sel("int8_clip_rate", SITE),
    T_SQNR: sel("int8_sqnr_db", SITE),
    T_TOK_RATE: f"rate({sel('tokens_total')}[5m])",
    T_TOK_WIN: sel("window_tokens"),
    T_NONFINITE: f"sum by (kind, value) (increase({sel('nonfinite_total', SITE)}[5m]))",
    T_INFO: sel("info"),
    T_AGE: f"time() - {sel('last_update_timestamp_seconds')}",
    T_SITES: sel("sites"),
    T_SNAP: metric("snapshot_error"),
    T_SNAP_ERR: f"increase({metric('snapshot_errors_total')}[1h])",
}

VARIABLE_QUERIES: dict[str, str] = {
    "model_name": f"label_values({metric('info')}, model_name)",
    "kind": f"label_values({sel('absmax')}, kind)",
    "layer": f"label_values({sel('absmax')}, layer)",
}

_CAL_NOTE = (" These series exist only while a calibration file is loaded (VLLM_MAXACT_CALIBRATION, "
             "a JSON from `vllm-maxact scales`); without one the panel shows no data.")
DESCRIPTIONS: dict[str, str] = {
    T_GLOBAL: "Largest |activation| over all embedding, residual, attn_out, mlp_out and final_norm sites: "
              "lifetime (since start or reset) and over the recent window. Log scale; the threshold lines "
              "mark the largest finite fp16 (65504) and FP8 E4M3 (448) values.",
    T_HEAT: "Lifetime absmax per site, one row per layer and one column per kind (a Grafana heatmap needs "
            "time on its x axis, so this is a table turned into a layer × kind matrix with the "
            "'Grouping to matrix' transformation and coloured cells). Row -1 holds the sites without a "
            "layer (embedding, final_norm). Colours: green below 448 (fits FP8 E4M3), yellow up to 8192, "
            "orange up to 65504, red above the fp16 range.",
    T_TOP: "The 10 sites with the largest lifetime |activation| for the selected model (all kinds and layers).",
    T_RESID: "Lifetime absmax of the residual stream after each decoder layer. Massive activations show up as "
             "a jump of several orders of magnitude at a few early layers. Log scale.",
    T_BY_KIND: "Largest |activation| per kind over the selected layers, in the recent window only "
               "(series are absent while the window saw no tokens). Log scale.",
    T_H_FP16: "65504 / lifetime absmax for the 15 sites with the least margin: how many times larger the "
              "activation could grow before overflowing fp16. Below 1 (red) the site already exceeds the "
              "fp16 range; 1-2 is orange.",
    T_H_FP8: "448 / lifetime absmax for the 15 sites with the least margin: the margin to the largest finite "
             "FP8 E4M3 value without per-tensor scaling. Below 1 (red) the site would clip (or needs a "
             "scale); 1-2 is orange.",
    T_H_INT8: "Calibrated INT-8 absmax threshold / recent-window absmax for the 15 sites with the least "
              "margin. Below 1 the current traffic exceeds the calibrated range, so values clip." + _CAL_NOTE,
    T_CLIP: "Fraction of recent-window values with |x| above the calibrated INT-8 threshold, per site. The "
            "dashed line is the VllmMaxactInt8ClipRateHigh alert threshold (0.1 %)." + _CAL_NOTE,
    T_SQNR: "Signal-to-quantization-noise ratio (dB) of recent traffic quantized with the calibrated INT-8 "
            "scale, per site. Higher is better; a drop means the traffic drifted from calibration." + _CAL_NOTE,
    T_TOK_RATE: "Tokens per second seen by the recorder (computed tokens: prefix-cache hits are not "
                "recomputed, so they are not observed).",
    T_TOK_WIN: "Tokens the recorder saw in the recent window (window length: vllm_maxact_window_seconds).",
    T_NONFINITE: "NaN and Inf activation values seen in the last 5 minutes, by kind and value. Anything above "
                 "zero fires VllmMaxactNonFiniteActivations.",
    T_INFO: "Recorder build information: architecture, adapter, plugin and vLLM versions, tensor- and "
            "pipeline-parallel sizes.",
    T_AGE: "Seconds since the workers last published statistics. Workers publish only after steps, so the "
           "age also grows while the server is idle; above 300 s fires VllmMaxactNoData.",
    T_SITES: "Number of recorded sites (kinds × layers) of the selected model.",
    T_SNAP: "Whether Arrow snapshots are being written (vllm_maxact_snapshot_error). Absent when snapshots are "
            "disabled. FAILING fires VllmMaxactSnapshotFailing; see the server log for the cause.",
    T_SNAP_ERR: "Failed Arrow snapshot writes in the last hour. Absent when snapshots are disabled.",
}

ROWS = ["Overview", "Per-site maxima", "Quantization headroom", "INT-8 drift (needs a calibration file)",
        "Traffic and health"]


# --- building -------------------------------------------------------------------------------
def build_dashboard() -> dict[str, Any]:
    """The dashboard as a plain JSON-able dict (Grafana's dashboard model)."""
    try:
        from grafana_foundation_sdk.builders import (
            barchart,
            bargauge,
            common,
            dashboard,
            prometheus,
            stat,
            table,
            timeseries,
        )
        from grafana_foundation_sdk.cog.encoder import JSONEncoder
        from grafana_foundation_sdk.models import common as mcommon
        from grafana_foundation_sdk.models import dashboard as mdash
        from grafana_foundation_sdk.models import prometheus as mprom
    except ImportError as e:  # pragma: no cover - message only
        raise SystemExit("grafana-foundation-sdk is required: pip install -r grafana/requirements.txt") from e

    ds = mdash.DataSourceRef(type_val="prometheus", uid="${datasource}")

    def target(key: str, legend: str = "__auto", *, instant: bool = False, table_fmt: bool = False,
               ref: str = "A"):
        q = prometheus.Dataquery().expr(QUERIES[key]).ref_id(ref).legend_format(legend).datasource(ds)
        q = q.instant() if instant else q.range()
        if table_fmt:
            q = q.format(mprom.PromQueryFormat.TABLE)
        return q

    def thresholds(*steps: tuple[float | None, str]):
        return dashboard.ThresholdsConfig().mode(mdash.ThresholdsMode.ABSOLUTE).steps(
            [mdash.Threshold(value=v, color=c) for v, c in steps])

    def common_panel(p, title: str, w: int, h: int):
        return p.title(title).description(DESCRIPTIONS[title]).datasource(ds).span(w).height(h)

    def transform(id_: str, options: dict[str, Any]):
        return mdash.DataTransformerConfig(id_val=id_, options=options)

    log10 = common.ScaleDistributionConfig().type(mcommon.ScaleDistribution.LOG).log(10)
    fmt_lines = thresholds((None, "green"), (FP8_E4M3_MAX, "orange"), (FP16_MAX, "red"))
    table_legend = (common.VizLegendOptions().display_mode(mcommon.LegendDisplayMode.TABLE)
                    .placement(mcommon.LegendPlacement.RIGHT).show_legend(True).calcs(["max", "lastNotNull"])
                    .sort_by("Max").sort_desc(True))
    headroom_colors = thresholds((None, "red"), (1, "orange"), (2, "green"))
    site_legend = "{{kind}} {{layer}}"

    def timeseries_panel(title: str, w: int, h: int, *, unit: str, log: bool = False):
        p = common_panel(timeseries.Panel(), title, w, h).unit(unit).tooltip(
            common.VizTooltipOptions().mode(mcommon.TooltipDisplayMode.MULTI).sort(mcommon.SortOrder.DESCENDING))
        return p.scale_distribution(log10) if log else p

    def headroom_panel(title: str):
        return (common_panel(bargauge.Panel(), title, 8, 10)
                .with_target(target(title, site_legend, instant=True))
                .orientation(mcommon.VizOrientation.HORIZONTAL)
                .display_mode(mcommon.BarGaugeDisplayMode.BASIC)
                .value_mode(mcommon.BarGaugeValueMode.COLOR)
                .name_placement(mcommon.BarGaugeNamePlacement.LEFT)
                .show_unfilled(True)
                .reduce_options(common.ReduceDataOptions().values(False).calcs(["lastNotNull"]))
                .unit("suffix:×").decimals(2).min(0)
                .color_scheme(dashboard.FieldColor().mode(mdash.FieldColorModeId.THRESHOLDS))
                .thresholds(headroom_colors))

    def stat_panel(title: str, w: int, h: int = 5):
        return (common_panel(stat.Panel(), title, w, h)
                .reduce_options(common.ReduceDataOptions().values(False).calcs(["lastNotNull"]))
                .graph_mode(mcommon.BigValueGraphMode.NONE)
                .color_mode(mcommon.BigValueColorMode.BACKGROUND))

    heat = (common_panel(table.Panel(), T_HEAT, 24, 14)
            .with_target(target(T_HEAT, instant=True, table_fmt=True))
            .with_transformation(transform("convertFieldType", {
                "conversions": [{"targetField": "layer", "destinationType": "number"}], "fields": {}}))
            .with_transformation(transform("groupingToMatrix", {
                "rowField": "layer", "columnField": "kind", "valueField": "Value", "emptyValue": "null"}))
            .with_transformation(transform("organize", {
                "indexByName": {"layer\\kind": 0, **{k: i + 1 for i, k in enumerate(KIND_ORDER)}},
                "renameByName": {"layer\\kind": "layer"}, "excludeByName": {}}))
            .sort_by([common.TableSortByFieldState().display_name("layer").desc(False)])
            .unit("short")
            .cell_options(mcommon.TableColoredBackgroundCellOptions(
                mode=mcommon.TableCellBackgroundDisplayMode.BASIC))
            .color_scheme(dashboard.FieldColor().mode(mdash.FieldColorModeId.THRESHOLDS))
            .thresholds(thresholds((None, "green"), (FP8_E4M3_MAX, "yellow"), (8192, "orange"),
                                   (FP16_MAX, "red")))
            .override_by_name("layer", [
                mdash.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "auto"}),
                mdash.DynamicConfigValue(id_val="decimals", value=0),
                mdash.DynamicConfigValue(id_val="custom.width", value=80),
                mdash.DynamicConfigValue(id_val="mappings", value=[
                    {"type": "value", "options": {"-1": {"text": "none", "index": 0}}}]),
            ]))

    b = (dashboard.Dashboard("vLLM activation maxima")
         .uid(DASHBOARD_UID)
         .description("Activation maxima recorded by the vllm-maxact plugin inside vLLM: lifetime and "
                      "recent-window absmax per (layer, kind) site, headroom to fp16 / FP8 / calibrated "
                      "INT-8 ranges, INT-8 drift, non-finite values and recorder health.")
         .tags(["vllm", "vllm-maxact", "quantization"])
         .editable()
         .tooltip(mdash.DashboardCursorSync.CROSSHAIR)
         .time("now-1h", "now")
         .refresh("30s")
         .with_variable(dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus"))
         .with_variable(dashboard.QueryVariable("model_name").label("Model")
                        .description("Served model name (vLLM --served-model-name)")
                        .datasource(ds).query(VARIABLE_QUERIES["model_name"])
                        .refresh(mdash.VariableRefresh.ON_TIME_RANGE_CHANGED)
                        .sort(mdash.VariableSort.ALPHABETICAL_ASC))
         .with_variable(dashboard.QueryVariable("kind").label("Kind")
                        .description("Site kinds (embedding, residual, attn_out, mlp_out, gate, router, final_norm)")
                        .datasource(ds).query(VARIABLE_QUERIES["kind"])
                        .refresh(mdash.VariableRefresh.ON_TIME_RANGE_CHANGED)
                        .sort(mdash.VariableSort.ALPHABETICAL_ASC)
                        .multi(True).include_all(True).all_value(".*")
                        .current(mdash.VariableOption(selected=True, text=["All"], value=["$__all"])))
         .with_variable(dashboard.QueryVariable("layer").label("Layer")
                        .description("Decoder layers; All also keeps the layer-less sites (embedding, final_norm)")
                        .datasource(ds).query(VARIABLE_QUERIES["layer"])
                        .refresh(mdash.VariableRefresh.ON_TIME_RANGE_CHANGED)
                        .sort(mdash.VariableSort.NUMERICAL_ASC)
                        .multi(True).include_all(True).all_value(".*")
                        .current(mdash.VariableOption(selected=True, text=["All"], value=["$__all"]))))

    # Overview: recorder facts and health in one strip, then the global maxima
    b = b.with_row(dashboard.Row(ROWS[0]))
    b = b.with_panel(
        common_panel(table.Panel(), T_INFO, 8, 5)
        .with_target(target(T_INFO, instant=True, table_fmt=True))
        .with_transformation(transform("organize", {
            "excludeByName": {"Time": True, "Value": True, "__name__": True, "job": True},
            "indexByName": {"model_name": 0, "architecture": 1, "adapter": 2, "tp_size": 3, "pp_size": 4,
                            "plugin_version": 5, "vllm_version": 6, "instance": 7},
            "renameByName": {}})))
    b = b.with_panel(stat_panel(T_AGE, 4).with_target(target(T_AGE, "{{model_name}}", instant=True))
                     .unit("s").decimals(0).thresholds(thresholds((None, "green"), (300, "orange"))))
    b = b.with_panel(stat_panel(T_SITES, 4).with_target(target(T_SITES, "{{model_name}}", instant=True))
                     .unit("none").color_mode(mcommon.BigValueColorMode.NONE))
    b = b.with_panel(
        stat_panel(T_SNAP, 4).with_target(target(T_SNAP, "snapshots", instant=True))
        .thresholds(thresholds((None, "green"), (1, "red")))
        .mappings([mdash.ValueMap(options={"0": mdash.ValueMappingResult(text="OK", index=0),
                                           "1": mdash.ValueMappingResult(text="FAILING", index=1)})])
        .no_value("disabled"))
    b = b.with_panel(
        stat_panel(T_SNAP_ERR, 4).with_target(target(T_SNAP_ERR, "errors", instant=True))
        .unit("none").decimals(0).thresholds(thresholds((None, "green"), (1, "red")))
        .no_value("disabled"))
    b = b.with_panel(
        timeseries_panel(T_GLOBAL, 24, 9, unit="short", log=True)
        .with_target(target(f"{T_GLOBAL} [lifetime]", "lifetime {{model_name}}", ref="A"))
        .with_target(target(f"{T_GLOBAL} [window]", "window {{model_name}}", ref="B"))
        .thresholds(fmt_lines)
        .thresholds_style(common.GraphThresholdsStyleConfig().mode(mcommon.GraphThresholdsStyleMode.DASHED))
        .legend(common.VizLegendOptions().display_mode(mcommon.LegendDisplayMode.LIST)
                .placement(mcommon.LegendPlacement.BOTTOM).show_legend(True)))

    # Per-site maxima
    b = b.with_row(dashboard.Row(ROWS[1]))
    b = b.with_panel(heat)
    b = b.with_panel(
        common_panel(bargauge.Panel(), T_TOP, 12, 10)
        .with_target(target(T_TOP, site_legend, instant=True))
        .orientation(mcommon.VizOrientation.HORIZONTAL)
        .display_mode(mcommon.BarGaugeDisplayMode.GRADIENT)
        .name_placement(mcommon.BarGaugeNamePlacement.LEFT)
        .reduce_options(common.ReduceDataOptions().values(False).calcs(["lastNotNull"]))
        .unit("short").min(0)
        .color_scheme(dashboard.FieldColor().mode(mdash.FieldColorModeId.THRESHOLDS))
        .thresholds(thresholds((None, "green"), (FP8_E4M3_MAX, "yellow"), (8192, "orange"), (FP16_MAX, "red"))))
    b = b.with_panel(
        common_panel(barchart.Panel(), T_RESID, 12, 10)
        .with_target(target(T_RESID, instant=True, table_fmt=True))
        .with_transformation(transform("convertFieldType", {
            "conversions": [{"targetField": "layer", "destinationType": "number"}], "fields": {}}))
        .with_transformation(transform("sortBy", {"sort": [{"field": "layer", "desc": False}], "fields": {}}))
        .with_transformation(transform("convertFieldType", {
            "conversions": [{"targetField": "layer", "destinationType": "string"}], "fields": {}}))
        .with_transformation(transform("organize", {
            "excludeByName": {"Time": True}, "renameByName": {"Value": "residual absmax"}, "indexByName": {}}))
        .x_field("layer")
        .scale_distribution(log10)
        .show_value(mcommon.VisibilityMode.NEVER)
        .unit("short")
        .color_scheme(dashboard.FieldColor().mode(mdash.FieldColorModeId.THRESHOLDS))
        .thresholds(fmt_lines)
        .thresholds_style(common.GraphThresholdsStyleConfig().mode(mcommon.GraphThresholdsStyleMode.DASHED))
        .legend(common.VizLegendOptions().show_legend(False).display_mode(mcommon.LegendDisplayMode.HIDDEN)
                .placement(mcommon.LegendPlacement.BOTTOM)))
    b = b.with_panel(
        timeseries_panel(T_BY_KIND, 24, 8, unit="short", log=True)
        .with_target(target(T_BY_KIND, "{{kind}}"))
        .thresholds(fmt_lines)
        .thresholds_style(common.GraphThresholdsStyleConfig().mode(mcommon.GraphThresholdsStyleMode.DASHED))
        .legend(table_legend))

    # Quantization headroom
    b = b.with_row(dashboard.Row(ROWS[2]))
    for title in (T_H_FP16, T_H_FP8, T_H_INT8):
        b = b.with_panel(headroom_panel(title))

    # INT-8 drift
    b = b.with_row(dashboard.Row(ROWS[3]))
    b = b.with_panel(
        timeseries_panel(T_CLIP, 12, 9, unit="percentunit")
        .with_target(target(T_CLIP, site_legend))
        .min(0)
        .thresholds(thresholds((None, "green"), (0.001, "red")))
        .thresholds_style(common.GraphThresholdsStyleConfig().mode(mcommon.GraphThresholdsStyleMode.DASHED))
        .legend(table_legend))
    b = b.with_panel(
        timeseries_panel(T_SQNR, 12, 9, unit="dB")
        .with_target(target(T_SQNR, site_legend))
        .legend(common.VizLegendOptions().display_mode(mcommon.LegendDisplayMode.TABLE)
                .placement(mcommon.LegendPlacement.RIGHT).show_legend(True).calcs(["min", "lastNotNull"])
                .sort_by("Min").sort_desc(False)))

    # Traffic and health
    b = b.with_row(dashboard.Row(ROWS[4]))
    b = b.with_panel(timeseries_panel(T_TOK_RATE, 8, 8, unit="suffix: tok/s")
                     .with_target(target(T_TOK_RATE, "{{model_name}}")).min(0))
    b = b.with_panel(timeseries_panel(T_TOK_WIN, 8, 8, unit="short")
                     .with_target(target(T_TOK_WIN, "{{model_name}}")).min(0))
    b = b.with_panel(
        timeseries_panel(T_NONFINITE, 8, 8, unit="short")
        .with_target(target(T_NONFINITE, "{{kind}} {{value}}"))
        .draw_style(mcommon.GraphDrawStyle.BARS).fill_opacity(80).min(0)
        .color_scheme(dashboard.FieldColor().mode(mdash.FieldColorModeId.PALETTE_CLASSIC)))

    model = b.build()
    model.schema_version = SCHEMA_VERSION
    out = json.loads(JSONEncoder(sort_keys=True).encode(model))
    for i, panel in enumerate(out["panels"], start=1):  # the SDK leaves ids unset (rows get 0)
        panel["id"] = i
    return out


def render_dashboard() -> str:
    return json.dumps(build_dashboard(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def outputs() -> dict[Path, str]:
    """Every generated file (relative to this directory) and its content."""
    sys.path.insert(0, str(HERE))
    try:
        import rules
    finally:
        sys.path.remove(str(HERE))
    return {
        DASHBOARD_PATH.relative_to(HERE): render_dashboard(),
        rules.RULES_PATH.relative_to(HERE): rules.render_rules(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE,
                    help="directory to write dashboards/ and alerts/ under (default: grafana/)")
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 if a committed file differs")
    args = ap.parse_args(argv)
    stale = []
    for rel, text in outputs().items():
        path = args.out / rel
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    if stale:
        print("stale (run python grafana/build_dashboard.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
