"""Grafana dashboard and Prometheus alert rules (grafana/): generated, consistent, valid PromQL.

Fast and offline: no vLLM, no Prometheus server. ``promtool`` (Debian/Ubuntu package
``prometheus``) checks the rule files, syntax-checks every dashboard query and unit-tests the
alerts; those tests skip when it is absent. The byte-for-byte regeneration test needs the pinned
``grafana-foundation-sdk`` (grafana/requirements.txt).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vllm_maxact.metrics import CATALOG, EXPOSED
from vllm_maxact.sites import Kind

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "vllm-maxact.json"
RULES = GRAFANA / "alerts" / "vllm-maxact-rules.yaml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")

# The exporter contract: the metric catalog (vllm_maxact/metrics.py), which the exporter, the
# dashboard and the rules all take their names from.
CONTRACT = set(EXPOSED)
NAME_RE = re.compile(r"vllm_maxact_[a-z0-9_]+")
VARS = ("model_name", "kind", "layer")
REQUIRED_ALERTS = {"VllmMaxactNonFiniteActivations", "VllmMaxactFp16Overflow", "VllmMaxactInt8ClipRateHigh",
                   "VllmMaxactNoData", "VllmMaxactSnapshotFailing"}


def _load(name: str):
    if name in sys.modules and getattr(sys.modules[name], "__file__", "") == str(GRAFANA / f"{name}.py"):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, GRAFANA / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # rules.py imports build_dashboard by name
    spec.loader.exec_module(mod)
    return mod


bd = _load("build_dashboard")
rules = _load("rules")


@pytest.fixture(scope="module")
def dash() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def rule_file() -> dict:
    return yaml.safe_load(RULES.read_text(encoding="utf-8"))


def _panels(d: dict) -> list[dict]:
    out = []
    for p in d["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # panels of collapsed rows
    return [p for p in out if p["type"] != "row"]


def _targets(d: dict) -> list[dict]:
    return [t for p in _panels(d) for t in p.get("targets", [])]


def _substitute(expr: str) -> str:
    for v in VARS:
        expr = expr.replace("${" + v + "}", ".*").replace("$" + v, ".*")
    return expr


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


# --- generation ---------------------------------------------------------------------------------
def test_committed_files_equal_generator_output(tmp_path):
    pytest.importorskip("grafana_foundation_sdk", reason="pip install -r grafana/requirements.txt")
    assert bd.main(["--out", str(tmp_path)]) == 0
    for rel in (DASHBOARD.relative_to(GRAFANA), RULES.relative_to(GRAFANA)):
        fresh, committed = (tmp_path / rel).read_text(encoding="utf-8"), (GRAFANA / rel).read_text(encoding="utf-8")
        assert fresh == committed, (
            f"grafana/{rel} is stale or was edited by hand: run `python grafana/build_dashboard.py` "
            "(with the SDK pinned in grafana/requirements.txt)")


def test_committed_rules_equal_rules_generator():
    """The rules need only PyYAML, so this check runs even without the SDK."""
    assert RULES.read_text(encoding="utf-8") == rules.render_rules()


# --- metric names -------------------------------------------------------------------------------
def test_generator_metric_list_is_the_contract():
    assert set(bd.METRICS) == CONTRACT
    assert len(bd.METRICS) == len(set(bd.METRICS))
    with pytest.raises(KeyError):
        bd.metric("vllm_maxact_not_a_metric")


def test_exporter_emits_exactly_the_catalog():
    """Every family the exporter yields is in the catalog with its type and labels, and every catalog
    entry is yielded (so neither can drift from the other)."""
    prom = pytest.importorskip("vllm_maxact.export.prometheus")
    families = {f.name: f for f in prom.MaxActCollector(None, {"snapshots_enabled": True}).collect()}
    assert set(families) == {m.full for m in CATALOG}
    for m in CATALOG:
        assert families[m.full].type == m.type, m.name


def test_dashboard_kind_table_has_every_kind(dash):
    """The layer x kind table orders a column for every kind the exporter can emit (a kind missing
    there would be shuffled to the end, unlabelled by the ordering)."""
    orders = [t["options"]["indexByName"] for p in _panels(dash) for t in p.get("transformations", [])
              if t.get("id") == "organize" and "layer\\kind" in t.get("options", {}).get("indexByName", {})]
    assert orders, "no layer x kind table with a column order"
    for order in orders:
        assert {k.value for k in Kind} <= set(order), {k.value for k in Kind} - set(order)


def test_exporter_names_are_in_the_generator_list():
    """Every family the exporter yields (counters exposed with _total) is known to the dashboard."""
    prom = pytest.importorskip("vllm_maxact.export.prometheus")
    families = list(prom.MaxActCollector(None, {"snapshots_enabled": True}).collect())
    exported = {f.name + ("_total" if f.type == "counter" else "") for f in families}
    assert exported, "the collector yielded no metric families"
    assert exported <= set(bd.METRICS), f"exporter names missing from METRICS: {exported - set(bd.METRICS)}"


def test_every_expression_uses_only_contract_names(dash, rule_file):
    exprs = [t["expr"] for t in _targets(dash)]
    exprs += [v["query"] if isinstance(v["query"], str) else v["query"]["query"]
              for v in dash["templating"]["list"] if v["type"] == "query"]
    exprs += list(bd.QUERIES.values()) + list(bd.VARIABLE_QUERIES.values())
    exprs += [r["expr"] for g in rule_file["groups"] for r in g["rules"]]
    used = set()
    for e in exprs:
        names = set(NAME_RE.findall(e))
        assert names, f"no vllm_maxact metric in {e!r}"
        assert names <= CONTRACT, f"unknown metric(s) {names - CONTRACT} in {e!r}"
        used |= names
    # the dashboard and rules cover the interesting part of the contract
    assert used >= CONTRACT - {"vllm_maxact_max", "vllm_maxact_min", "vllm_maxact_window_max",
                               "vllm_maxact_window_min", "vllm_maxact_window_seconds",
                               "vllm_maxact_snapshot_last_success_timestamp_seconds"}


# --- dashboard structure ------------------------------------------------------------------------
def test_dashboard_is_importable_shape(dash):
    assert "__inputs" not in dash and "__requires" not in dash
    assert dash["schemaVersion"] >= 38
    assert dash["uid"] == "vllm-maxact" and dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) and i > 0 for i in ids)
    cells = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps another panel"
                cells.add((x, y))


def test_variables(dash):
    v = {x["name"]: x for x in dash["templating"]["list"]}
    assert v["datasource"]["type"] == "datasource" and v["datasource"]["query"] == "prometheus"
    assert v["model_name"]["type"] == "query"
    assert v["model_name"]["query"] == "label_values(vllm_maxact_info, model_name)"
    for name in ("kind", "layer"):
        assert v[name]["type"] == "query" and v[name]["multi"] and v[name]["includeAll"]
        assert v[name]["query"] == f'label_values(vllm_maxact_absmax{{model_name=~"$model_name"}}, {name})'
        # "All" must be .* so the layer-less sites (layer label absent) still match layer=~"$layer"
        assert v[name]["allValue"] == ".*"
    for name in ("model_name", "kind", "layer"):
        assert v[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_every_panel_uses_the_datasource_variable_and_has_a_description(dash):
    for p in _panels(dash):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert len(p.get("description", "")) > 20, f"{p['title']}: no description"
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]


def test_queries_dict_matches_the_panels(dash):
    by_title = {p["title"]: [t["expr"] for t in p["targets"]] for p in _panels(dash)}
    expected: dict[str, list[str]] = {}
    for key, expr in bd.QUERIES.items():
        expected.setdefault(key.split(" [")[0], []).append(expr)
    assert by_title == expected


def _panel(dash, prefix: str) -> dict:
    (p,) = [p for p in _panels(dash) if p["title"].startswith(prefix)]
    return p


def test_required_panels(dash):
    exprs = {e for p in _panels(dash) for e in (t["expr"] for t in p["targets"])}
    blob = "\n".join(exprs)
    site = 'model_name=~"$model_name",kind=~"$kind",layer=~"$layer"'
    for needle in (
        'vllm_maxact_global_absmax{model_name=~"$model_name"}',
        'vllm_maxact_window_global_absmax{model_name=~"$model_name"}',
        'topk(10, vllm_maxact_absmax{model_name=~"$model_name"})',
        f"65504 / vllm_maxact_absmax{{{site}}}",
        f"448 / vllm_maxact_absmax{{{site}}}",
        f"vllm_maxact_int8_threshold{{{site}}} / vllm_maxact_window_absmax{{{site}}}",
        f"vllm_maxact_int8_clip_rate{{{site}}}",
        f"vllm_maxact_int8_sqnr_db{{{site}}}",
        'rate(vllm_maxact_tokens_total{model_name=~"$model_name"}[5m])',
        'vllm_maxact_window_tokens{model_name=~"$model_name"}',
        f"sum by (kind, value) (increase(vllm_maxact_nonfinite_total{{{site}}}[5m]))",
        'vllm_maxact_absmax{model_name=~"$model_name",kind="residual"',
        f"vllm_maxact_absmax{{{site}}}",
    ):
        assert needle in blob, needle

    g = _panel(dash, "Global absmax")
    custom = g["fieldConfig"]["defaults"]["custom"]
    assert custom["scaleDistribution"] == {"type": "log", "log": 10}
    assert custom["thresholdsStyle"]["mode"] in ("line", "dashed", "line+area", "dashed+area")
    steps = {s["value"] for s in g["fieldConfig"]["defaults"]["thresholds"]["steps"]}
    assert {65504, 448} <= steps

    heat = _panel(dash, "Absmax by layer")
    ids = [t["id"] for t in heat["transformations"]]
    assert "groupingToMatrix" in ids
    opts = heat["transformations"][ids.index("groupingToMatrix")]["options"]
    assert (opts["rowField"], opts["columnField"]) == ("layer", "kind")

    resid = _panel(dash, "Residual-stream absmax")
    assert resid["type"] == "barchart" and resid["options"]["xField"] == "layer"
    assert _panel(dash, "Top 10 sites")["type"] in ("bargauge", "table")
    for prefix in ("INT-8 clip rate", "INT-8 SQNR", "Headroom to the calibrated INT-8"):
        assert "calibration file" in _panel(dash, prefix)["description"]


# --- PromQL validity ----------------------------------------------------------------------------
@needs_promtool
def test_promtool_check_committed_rules():
    r = _promtool("check", "rules", str(RULES), cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(rules.FOR_DEFAULTS)} rules found" in r.stdout


@needs_promtool
def test_promtool_check_every_dashboard_query(tmp_path, dash):
    """Each panel query (variables replaced by .*) wrapped as a recording rule: promtool parses it."""
    exprs = sorted({t["expr"] for t in _targets(dash)} | set(bd.QUERIES.values()))
    recs = []
    for i, e in enumerate(exprs):
        e = _substitute(e)
        assert "$" not in e, f"unsubstituted variable in {e!r}"
        recs.append({"record": f"grafana_query:q{i:02d}", "expr": e})
    f = tmp_path / "dashboard-queries.yaml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recs}]}, sort_keys=False))
    r = _promtool("check", "rules", str(f), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(recs)} rules found" in r.stdout


def _strip_annotations(text: str) -> dict:
    """promtool unit tests compare annotations exactly; the label/for logic is what is tested here."""
    doc = yaml.safe_load(text)
    for g in doc["groups"]:
        for r in g["rules"]:
            r.pop("annotations", None)
    return doc


def _site(name: str, kind: str, layer: str, model: str = "m", **extra: str) -> str:
    labels = {"model_name": model, "kind": kind, "layer": layer, **extra}
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


@needs_promtool
def test_promtool_alert_unit_tests(tmp_path):
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(_strip_annotations(rules.render_rules())))
    (tmp_path / "rules-0s.yaml").write_text(yaml.safe_dump(_strip_annotations(rules.render_rules("0s"))))
    sev = {a: s for a, s in (("VllmMaxactNonFiniteActivations", "critical"), ("VllmMaxactFp16Overflow", "warning"),
                             ("VllmMaxactFp16OverflowLifetime", "info"), ("VllmMaxactInt8ClipRateHigh", "warning"),
                             ("VllmMaxactNoData", "warning"), ("VllmMaxactSnapshotFailing", "warning"),
                             ("VllmMaxactExportErrors", "warning"))}
    series = [
        # a NaN burst at 10m on one site; another site stays clean
        {"series": _site("vllm_maxact_nonfinite_total", "residual", "3", value="nan"), "values": "0x9 4x6"},
        {"series": _site("vllm_maxact_nonfinite_total", "residual", "3", value="inf"), "values": "0x15"},
        {"series": _site("vllm_maxact_window_absmax", "residual", "1"), "values": "70000x15"},
        {"series": _site("vllm_maxact_window_absmax", "mlp_out", "1"), "values": "100x15"},
        {"series": _site("vllm_maxact_absmax", "residual", "1"), "values": "70000x15"},
        {"series": _site("vllm_maxact_absmax", "mlp_out", "1"), "values": "65504x15"},  # == max: fits
        {"series": _site("vllm_maxact_int8_clip_rate", "attn_out", "0"), "values": "0.01x15"},
        {"series": _site("vllm_maxact_int8_clip_rate", "attn_out", "2"), "values": "0.0001x15"},
        # model "stale" last published at t=0; model "fresh" publishes every minute
        {"series": 'vllm_maxact_last_update_timestamp_seconds{model_name="stale"}', "values": "0x15"},
        {"series": 'vllm_maxact_last_update_timestamp_seconds{model_name="fresh"}', "values": "0+60x15"},
        {"series": 'vllm_maxact_info{model_name="stale"}', "values": "1x15"},
        {"series": "vllm_maxact_snapshot_error", "values": "1x15"},
        # one invalid payload skipped at 10m (counted once); nothing invalid is left by 12m
        {"series": "vllm_maxact_payload_errors_total", "values": "0x9 1x6"},
        {"series": "vllm_maxact_payloads_invalid", "values": "0x15"},
    ]

    def alert(name: str, **labels: str) -> dict:
        return {"exp_labels": {"severity": sev[name], **labels}}

    expected_12m = {
        "VllmMaxactNonFiniteActivations": [
            alert("VllmMaxactNonFiniteActivations", model_name="m", kind="residual", layer="3", value="nan")],
        "VllmMaxactFp16Overflow": [alert("VllmMaxactFp16Overflow", model_name="m", kind="residual", layer="1")],
        "VllmMaxactFp16OverflowLifetime": [
            alert("VllmMaxactFp16OverflowLifetime", model_name="m", kind="residual", layer="1")],
        "VllmMaxactInt8ClipRateHigh": [
            alert("VllmMaxactInt8ClipRateHigh", model_name="m", kind="attn_out", layer="0")],
        "VllmMaxactNoData": [alert("VllmMaxactNoData", model_name="stale")],
        "VllmMaxactSnapshotFailing": [alert("VllmMaxactSnapshotFailing")],
        "VllmMaxactExportErrors": [alert("VllmMaxactExportErrors")],
    }
    tests = [
        {   # defaults: everything fires once its condition held for `for`
            "interval": "1m", "input_series": series,
            "alert_rule_test": [{"eval_time": "12m", "alertname": a, "exp_alerts": e}
                                for a, e in expected_12m.items()]
            # pending, not yet firing: the NaN burst is 0 min old, clip rate needs 5m
            + [{"eval_time": "10m", "alertname": "VllmMaxactNonFiniteActivations", "exp_alerts": []},
               {"eval_time": "8m", "alertname": "VllmMaxactExportErrors", "exp_alerts": []},
               {"eval_time": "4m", "alertname": "VllmMaxactInt8ClipRateHigh", "exp_alerts": []}],
        },
        {   # nothing scraped at all: the absent() branch
            "interval": "1m", "input_series": [],
            "alert_rule_test": [{"eval_time": "6m", "alertname": "VllmMaxactNoData",
                                 "exp_alerts": [alert("VllmMaxactNoData")]}],
        },
    ]
    fast = [{   # for_override="0s": firing on the first evaluation that sees the condition
        "interval": "1m", "input_series": series,
        "alert_rule_test": [
            {"eval_time": "10m", "alertname": "VllmMaxactNonFiniteActivations",
             "exp_alerts": expected_12m["VllmMaxactNonFiniteActivations"]},
            {"eval_time": "0m", "alertname": "VllmMaxactInt8ClipRateHigh",
             "exp_alerts": expected_12m["VllmMaxactInt8ClipRateHigh"]},
            {"eval_time": "0m", "alertname": "VllmMaxactSnapshotFailing",
             "exp_alerts": expected_12m["VllmMaxactSnapshotFailing"]},
        ],
    }]
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(
        {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}, sort_keys=False))
    (tmp_path / "t0.yaml").write_text(yaml.safe_dump(
        {"rule_files": ["rules-0s.yaml"], "evaluation_interval": "1m", "tests": fast}, sort_keys=False))
    r = _promtool("test", "rules", "t.yaml", "t0.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_promtool_panel_query_semantics(tmp_path):
    """A few panel queries evaluated on synthetic series (variables replaced by .*)."""
    q = {k: _substitute(v) for k, v in bd.QUERIES.items()}
    series = [
        {"series": _site("vllm_maxact_absmax", "embedding", ""), "values": "3x3"},
        {"series": _site("vllm_maxact_absmax", "final_norm", ""), "values": "40x3"},
        {"series": _site("vllm_maxact_absmax", "residual", "0"), "values": "100x3"},
        {"series": _site("vllm_maxact_absmax", "residual", "1"), "values": "896x3"},
        {"series": _site("vllm_maxact_window_absmax", "residual", "1"), "values": "200x3"},
        {"series": _site("vllm_maxact_int8_threshold", "residual", "1"), "values": "100x3"},
    ]
    tests = [{"interval": "1m", "input_series": series, "promql_expr_test": [
        {   # layer-less sites land in row -1 of the layer x kind matrix
            "expr": q[bd.T_HEAT], "eval_time": "2m", "exp_samples": [
                {"labels": '{kind="embedding",layer="-1"}', "value": 3},
                {"labels": '{kind="final_norm",layer="-1"}', "value": 40},
                {"labels": '{kind="residual",layer="0"}', "value": 100},
                {"labels": '{kind="residual",layer="1"}', "value": 896}]},
        {   # FP8 headroom: 448 / absmax
            "expr": q[bd.T_H_FP8], "eval_time": "2m", "exp_samples": [
                {"labels": '{model_name="m",kind="embedding"}', "value": 448 / 3},
                {"labels": '{model_name="m",kind="final_norm"}', "value": 448 / 40},
                {"labels": '{model_name="m",kind="residual",layer="0"}', "value": 4.48},
                {"labels": '{model_name="m",kind="residual",layer="1"}', "value": 0.5}]},
        {   # INT-8 headroom < 1: traffic exceeds the calibrated range
            "expr": q[bd.T_H_INT8], "eval_time": "2m", "exp_samples": [
                {"labels": '{model_name="m",kind="residual",layer="1"}', "value": 0.5}]},
        {   "expr": q[bd.T_RESID], "eval_time": "2m", "exp_samples": [
                {"labels": '{layer="0"}', "value": 100}, {"labels": '{layer="1"}', "value": 896}]},
    ]}]
    (tmp_path / "empty.yaml").write_text("groups: []\n")
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(
        {"rule_files": ["empty.yaml"], "evaluation_interval": "1m", "tests": tests}, sort_keys=False))
    r = _promtool("test", "rules", "t.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


# --- rules structure ----------------------------------------------------------------------------
def test_rules_structure(rule_file):
    (group,) = rule_file["groups"]
    assert group["name"] == "vllm-maxact"
    by_name = {r["alert"]: r for r in group["rules"]}
    assert REQUIRED_ALERTS <= set(by_name)
    for name, r in by_name.items():
        assert r["labels"]["severity"] in ("critical", "warning", "info"), name
        assert r["annotations"]["summary"] and r["annotations"]["description"], name
        assert "$labels" in r["annotations"]["summary"] + r["annotations"]["description"], name
        assert r["for"] == rules.FOR_DEFAULTS[name]
    assert by_name["VllmMaxactInt8ClipRateHigh"]["expr"] == "vllm_maxact_int8_clip_rate > 0.001"
    assert by_name["VllmMaxactInt8ClipRateHigh"]["for"] == "5m"
    assert "increase(vllm_maxact_nonfinite_total[5m]) > 0" in by_name["VllmMaxactNonFiniteActivations"]["expr"]
    assert "vllm_maxact_window_absmax > 65504" in by_name["VllmMaxactFp16Overflow"]["expr"]
    assert "absent(vllm_maxact_info)" in by_name["VllmMaxactNoData"]["expr"]
    assert "time() - vllm_maxact_last_update_timestamp_seconds > 300" in by_name["VllmMaxactNoData"]["expr"]
    assert by_name["VllmMaxactSnapshotFailing"]["expr"] == "vllm_maxact_snapshot_error == 1"


def test_rules_for_override_and_thresholds(tmp_path):
    doc = yaml.safe_load(rules.render_rules(for_override="0s", int8_clip_rate=0.05, stale_after_s=60))
    rs = {r["alert"]: r for r in doc["groups"][0]["rules"]}
    assert all(r["for"] == "0s" for r in rs.values())
    assert rs["VllmMaxactInt8ClipRateHigh"]["expr"] == "vllm_maxact_int8_clip_rate > 0.05"
    assert "> 60)" in rs["VllmMaxactNoData"]["expr"]
    out = tmp_path / "r.yaml"
    assert rules.main(["--for-override", "0s", "--out", str(out)]) == 0
    assert all(r["for"] == "0s" for r in yaml.safe_load(out.read_text())["groups"][0]["rules"])
    if PROMTOOL:
        r = _promtool("check", "rules", str(out), cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr


def test_provisioning_files():
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    (d,) = ds["datasources"]
    assert d["type"] == "prometheus" and d["uid"] == "prometheus" and d["url"] == "${PROMETHEUS_URL}"
    prov = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "vllm-maxact.yaml").read_text())
    (p,) = prov["providers"]
    assert p["type"] == "file" and p["options"]["path"]


def test_readme_lists_every_panel_and_alert(dash, rule_file):
    readme = (GRAFANA / "README.md").read_text(encoding="utf-8")
    for p in _panels(dash):
        assert f"| {p['title']} |" in readme, f"README panel table lacks {p['title']!r}"
    for r in rule_file["groups"][0]["rules"]:
        assert f"`{r['alert']}`" in readme
