"""Reports on statistics tables: terminal, PNG plots, self-contained HTML, comparison, CLI.

Fast: synthetic tables, no vLLM. The headless-Chromium rendering test is marked slow.
"""

from __future__ import annotations

import datetime as dt
import io
import math
import random
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner

from vllm_maxact import report
from vllm_maxact.export.arrow import SCHEMA, write_table
from vllm_maxact.sites import KIND_ORDER

DOMAINS = ["code", "math", "chat", "news", "science", "legal", "multilingual", "fiction"]
N_LAYERS = 30


def _profile(n_layers: int, scale: float) -> dict[str, float]:
    """Whole-corpus absmax per site, shaped like SmolLM2: residual growing from ~10 to ~3e4 (x scale),
    with a massive-activation spike at layer 3 written by that layer's MLP."""
    out = {"embedding": 1.4 * scale, "final_norm": 182.0 * scale}
    for i in range(n_layers):
        res = 10 * 3000 ** (i / (n_layers - 1))
        mlp = 0.35 * res
        if i == 3:
            res, mlp = 1.9e4, 1.85e4  # the spike
        out[f"layers.{i}.residual"] = res * scale
        out[f"layers.{i}.attn_out"] = (4 + 0.04 * res) * scale
        out[f"layers.{i}.mlp_out"] = mlp * scale
        out[f"layers.{i}.gate"] = (12 + 1.5 * i) * scale
    return out


def synthetic_rows(model: str = "HuggingFaceTB/SmolLM2-135M-Instruct", *, scale: float = 1.0,
                   n_layers: int = N_LAYERS, window: str = "replay", domains=DOMAINS, seed: int = 0,
                   int8: bool = False, per_rank: int = 0) -> list[dict]:
    rng = random.Random(seed)
    prof = _profile(n_layers, scale)
    ts = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.timezone.utc)
    base = {"timestamp": ts, "model": model, "architecture": "LlamaForCausalLM", "vllm_version": "0.32.0",
            "plugin_version": "0.1.0", "window": window, "window_start": ts - dt.timedelta(minutes=5),
            "window_end": ts}

    def row(site: str, absmax: float, tokens: int, domain=None, rank=None) -> dict:
        parts = site.split(".")
        kind, layer = (parts[0], None) if len(parts) == 1 else (parts[2], int(parts[1]))
        r = {**base, "domain": domain, "site": site, "kind": kind, "layer": layer, "rank": rank,
             "absmax": absmax, "max": absmax, "min": -0.8 * absmax, "tokens": tokens, "nan_count": 0,
             "inf_count": 0}
        if int8:
            r["int8_sqnr_db"] = 58.0 - 8.0 * math.log10(absmax) + rng.uniform(-2, 2)
            r["int8_rel_rmse"] = 10 ** (-r["int8_sqnr_db"] / 20)
            r["headroom_fp16"] = 65504.0 / absmax
        return r

    rows: list[dict] = []
    whole = dict.fromkeys(prof, 0.0)
    total = 0
    dom_rows = []
    for j, d in enumerate(domains or []):
        tokens = 4000 + 1000 * j
        total += tokens
        f = 1.0 if j == 0 else rng.uniform(0.35, 0.97)
        for site, v in prof.items():
            x = v * f * rng.uniform(0.9, 1.0)
            whole[site] = max(whole[site], x)
            dom_rows.append(row(site, x, tokens, domain=d))
    if not domains:
        whole, total = dict(prof), 50_000
    rows += [row(s, v, total) for s, v in whole.items()]
    rows += dom_rows
    for rank in range(per_rank):
        rows += [row(s, v * (0.97 if rank else 1.0), total, rank=rank) for s, v in whole.items()]
    return rows


def synthetic_table(model: str = "HuggingFaceTB/SmolLM2-135M-Instruct", **kw) -> pa.Table:
    rows = synthetic_rows(model, **kw)
    schema = SCHEMA
    if kw.get("int8"):
        for name in ("int8_sqnr_db", "int8_rel_rmse", "headroom_fp16"):
            schema = schema.append(pa.field(name, pa.float64()))
    t = pa.Table.from_pylist(rows, schema=schema)
    return t.replace_schema_metadata({**SCHEMA.metadata, b"vllm_maxact.samples": b"520",
                                      b"vllm_maxact.tokens": str(rows[0]["tokens"]).encode(),
                                      b"vllm_maxact.truncated": b"3"})


def snapshot_table(model: str = "Qwen/Qwen2.5-0.5B", scale: float = 1.0) -> pa.Table:
    """lifetime + recent windows, merged and per-rank rows, no domains (like a snapshot file)."""
    rows = (synthetic_rows(model, scale=scale, window="lifetime", domains=None, per_rank=2)
            + synthetic_rows(model, scale=scale * 0.5, window="recent", domains=None, per_rank=2))
    return pa.Table.from_pylist(rows, schema=SCHEMA)


@pytest.fixture
def table() -> pa.Table:
    return synthetic_table()


@pytest.fixture
def arrow_file(tmp_path, table) -> Path:
    return write_table(table, tmp_path / "maxact-smollm2.arrow")


# ---------------------------------------------------------------------------------------------


def test_select_view_prefers_replay_and_merged_rows(table):
    view = report.select_view(table)
    assert set(view.column("window").to_pylist()) == {"replay"}
    assert view.column("rank").null_count == view.num_rows
    assert view.column("domain").null_count == view.num_rows
    assert view.num_rows == 2 + 4 * N_LAYERS
    with_domains = report.select_view(table, domains=True)
    assert with_domains.num_rows == view.num_rows * (1 + len(DOMAINS))
    assert report.select_view(view).equals(view)  # idempotent
    assert view.schema.metadata[b"vllm_maxact.samples"] == b"520"


def test_select_view_snapshot_windows():
    snap = snapshot_table()
    view = report.select_view(snap)
    assert set(view.column("window").to_pylist()) == {"lifetime"}
    assert view.column("rank").null_count == view.num_rows
    recent = report.select_view(snap, "recent")
    assert report.info(recent)["M"] == pytest.approx(report.info(view)["M"] * 0.5)
    with pytest.raises(report.ReportError, match="replay.*lifetime, recent"):
        report.select_view(snap, "replay")


def test_select_view_dedupes_concatenated_snapshots_and_rejects_mixed_models():
    old = synthetic_rows("m", window="lifetime", domains=None)
    new = synthetic_rows("m", window="lifetime", domains=None, scale=2.0)
    for r in new:
        r["timestamp"] += dt.timedelta(minutes=1)
    view = report.select_view(pa.Table.from_pylist(old + new, schema=SCHEMA))
    assert view.num_rows == len(old)
    assert report.info(view)["M"] == pytest.approx(2 * report.info(pa.Table.from_pylist(old, schema=SCHEMA))["M"])
    mixed = pa.Table.from_pylist(old + synthetic_rows("other", window="lifetime", domains=None), schema=SCHEMA)
    with pytest.raises(report.ReportError, match="2 models"):
        report.select_view(mixed)


def test_layer_table_matches_input(table):
    rows = report.layer_table(table)
    assert [r["row"] for r in rows] == ["embedding", *(f"layer {i}" for i in range(N_LAYERS)), "final_norm"]
    kinds = [k for k in rows[0] if k not in ("row", "layer")]
    assert kinds == [k.value for k in KIND_ORDER if k.value in {"embedding", "residual", "attn_out", "mlp_out",
                                                                  "gate", "final_norm"}]
    expected = {(r["site"]): r["absmax"] for r in table.to_pylist() if r["domain"] is None}
    for r in rows[1:-1]:
        for kind in ("residual", "attn_out", "mlp_out", "gate"):
            assert r[kind] == expected[f"layers.{r['layer']}.{kind}"]
        assert r["embedding"] is None and r["final_norm"] is None
    assert rows[0]["embedding"] == expected["embedding"] and rows[0]["residual"] is None
    assert rows[-1]["final_norm"] == expected["final_norm"]
    assert report.layer_table(table)[4]["residual"] == max(r["residual"] for r in rows[1:6])  # the spike at 3


def test_info_and_domains(table):
    i = report.info(table)
    assert i["window"] == "replay" and i["samples"] == 520 and i["truncated"] == 3
    assert i["site"] in {f"layers.{N_LAYERS - 1}.residual"}
    assert not i["fp16_overflow"] and i["fp8_overflow"]
    dom = report.domain_table(table)
    assert {d["domain"] for d in dom} == set(DOMAINS)
    assert dom[0]["M"] == pytest.approx(i["M"]) and dom[0]["share"] == pytest.approx(1.0)
    assert all(d["M"] <= i["M"] for d in dom)


def test_print_report(table):
    from rich.console import Console

    buf = io.StringIO()
    report.print_report(table, Console(file=buf, width=160, color_system=None))
    out = buf.getvalue()
    assert "SmolLM2-135M-Instruct" in out and "layer 29" in out and "final_norm" in out
    assert "global max M per domain" in out and "multilingual" in out
    assert f"{report.info(table)['M']:,.1f}" in out


def _is_png(p: Path, min_bytes: int = 10_000) -> bool:
    data = p.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= min_bytes


def test_plots(tmp_path, table):
    pytest.importorskip("matplotlib")
    pngs = report.write_plots(table, tmp_path)
    assert [p.name for p in pngs] == ["layers.png", "domains.png", "top_sites.png"]
    assert all(_is_png(p) for p in pngs)
    int8 = report.write_plots(synthetic_table(int8=True), tmp_path / "int8")
    assert [p.name for p in int8][-1] == "int8_sqnr.png" and _is_png(int8[-1])
    snap = report.write_plots(snapshot_table(), tmp_path / "snap")  # no domains: no domains plot
    assert [p.name for p in snap] == ["layers.png", "top_sites.png"]


def test_html_self_contained(tmp_path, table):
    pytest.importorskip("matplotlib")
    pngs = report.write_plots(table, tmp_path)
    page = report.write_html(table, tmp_path / "report.html", pngs).read_text()
    assert page.count("data:image/png;base64,") == len(pngs)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert "<link" not in page and "<script" not in page and "@import" not in page
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in page
    assert f"{report.info(table)['M']:,.1f}" in page
    for i in range(N_LAYERS):
        assert f"<td>layer {i}</td>" in page
    assert 'class="n fp8"' in page and "multilingual" in page


def test_html_red_above_fp16_and_int8_column(tmp_path):
    t = synthetic_table("big", scale=3.0, int8=True)
    page = report.write_html(t, tmp_path / "r.html").read_text()
    assert 'class="n fp16"' in page and "overflows" in page and "INT-8 SQNR" in page


def test_strings_are_escaped(tmp_path):
    evil = '<script>alert("x")</script> & $x$'
    t = synthetic_table(evil, domains=["<b>code</b>", "math"])
    pytest.importorskip("matplotlib")
    pngs = report.write_plots(t, tmp_path)  # "$" must not start matplotlib's mathtext
    page = report.write_html(t, tmp_path / "r.html", pngs).read_text()
    assert "<script>" not in page and "<b>code</b>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp;" in page
    assert "&lt;b&gt;code&lt;/b&gt;" in page


def test_no_finite_values(tmp_path):
    rows = synthetic_rows("empty", domains=None)
    for r in rows:
        r.update(absmax=None, max=None, min=None, tokens=0)
    t = pa.Table.from_pylist(rows, schema=SCHEMA)
    from rich.console import Console

    buf = io.StringIO()
    report.print_report(t, Console(file=buf, width=120))
    assert "no finite values" in buf.getvalue()
    assert report.write_plots(t, tmp_path) == []
    assert "none" in report.write_html(t, tmp_path / "r.html").read_text()
    rows = report.compare([("a", t), ("b", synthetic_table())])
    assert rows[1]["ratio"] is None and rows[1]["kind_ratios"]["residual"] is None


def test_compare_ratios(tmp_path):
    a, b = synthetic_table("small"), synthetic_table("big", scale=3.0, seed=1)
    rows = report.compare([("A", a), ("B", b)])
    ia, ib = report.info(a), report.info(b)
    assert [r["label"] for r in rows] == ["A", "B"]
    assert rows[0]["ratio"] == 1.0 and rows[1]["ratio"] == pytest.approx(ib["M"] / ia["M"])
    assert rows[1]["kinds"]["final_norm"] == pytest.approx(3.0 * rows[0]["kinds"]["final_norm"], rel=0.15)
    for k, v in rows[1]["kinds"].items():
        assert rows[1]["kind_ratios"][k] == pytest.approx(v / rows[0]["kinds"][k])
    assert rows[0]["fp16_overflow"] is False and rows[1]["fp16_overflow"] is True
    from rich.console import Console

    buf = io.StringIO()
    report.print_compare(rows, Console(file=buf, width=200, color_system=None))
    assert "overflows" in buf.getvalue() and f"{rows[1]['ratio']:,.2f}x" in buf.getvalue()
    pytest.importorskip("matplotlib")
    assert _is_png(report.plot_compare(rows, tmp_path / "compare.png"))


def test_load_errors(tmp_path):
    with pytest.raises(report.ReportError, match=re.escape(str(tmp_path / "nope.arrow"))):
        report.load(tmp_path / "nope.arrow")
    junk = tmp_path / "junk.arrow"
    junk.write_text("not arrow at all")
    with pytest.raises(report.ReportError, match="not an Arrow"):
        report.load(junk)
    partial = write_table(pa.table({"site": ["embedding"], "absmax": [1.0]}), tmp_path / "partial.arrow")
    with pytest.raises(report.ReportError, match=r"partial\.arrow.*missing required columns window, domain"):
        report.load(partial)
    with pytest.raises(report.ReportError, match="directory"):
        report.load(tmp_path)


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_report(tmp_path, arrow_file):
    pytest.importorskip("matplotlib")
    from vllm_maxact.cli import main

    out = tmp_path / "rep"
    res = CliRunner().invoke(main, ["report", str(arrow_file), "--out-dir", str(out)], terminal_width=160)
    assert res.exit_code == 0, res.output
    for name in ("layers.png", "domains.png", "top_sites.png", "report.html"):
        assert str(out / name) in res.output
        assert (out / name).stat().st_size > 1000
    assert "layer 29" in res.output


def test_cli_report_default_dir_window_no_plots(tmp_path, monkeypatch):
    from vllm_maxact.cli import main

    monkeypatch.chdir(tmp_path)
    write_table(snapshot_table(), "snap.arrow")
    runner = CliRunner()
    res = runner.invoke(main, ["report", "snap.arrow", "--window", "recent", "--no-plots"])
    assert res.exit_code == 0, res.output
    assert Path("snap-report/report.html").exists() and not Path("snap-report/layers.png").exists()
    assert "recent" in res.output
    bad = runner.invoke(main, ["report", "snap.arrow", "--window", "replay", "--no-plots"])
    assert bad.exit_code != 0 and "lifetime, recent" in bad.output


def test_cli_compare(tmp_path):
    pytest.importorskip("matplotlib")
    from vllm_maxact.cli import main

    a = write_table(synthetic_table("small"), tmp_path / "a.arrow")
    b = write_table(synthetic_table("big", scale=3.0), tmp_path / "b.arrow")
    res = CliRunner().invoke(main, ["compare", str(a), str(b), "--labels", "base,new", "--out-dir",
                                    str(tmp_path / "cmp")], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert str(tmp_path / "cmp" / "compare.png") in res.output and _is_png(tmp_path / "cmp" / "compare.png")
    assert "base" in res.output and "new" in res.output and "overflows" in res.output
    bad = CliRunner().invoke(main, ["compare", str(a), str(b), "--labels", "only-one"])
    assert bad.exit_code != 0 and "--labels" in bad.output


def test_cli_missing_file(tmp_path):
    from vllm_maxact.cli import main

    missing = tmp_path / "does-not-exist.arrow"
    for args in (["report", str(missing)], ["compare", str(missing), str(missing)]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code != 0
        assert str(missing) in res.output


# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("chromium"), reason="chromium is not installed")
def test_html_renders_in_headless_chromium(tmp_path, table):
    pytest.importorskip("matplotlib")
    pngs = report.write_plots(table, tmp_path)
    page = report.write_html(table, tmp_path / "report.html", pngs)
    shot = tmp_path / "shot.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1400,2400",
             page.resolve().as_uri()],
            check=True, capture_output=True, timeout=120,
        )
    assert _is_png(shot, 50_000)
