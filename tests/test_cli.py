"""The command line's bad-input paths: each fails before any engine starts, with a message that
names the bad input and the fix."""

from __future__ import annotations

import json

from click.testing import CliRunner

from vllm_maxact.cli import main


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_malformed_jsonl_names_the_line(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"text": "fine"}) + "\n{not json\n" + json.dumps({"txt": "x"}) + "\n")
    r = run("replay", "--corpus", str(f), "--out", str(tmp_path / "o.arrow"))
    assert r.exit_code != 0
    assert "line 2" in r.output and "line 3" in r.output and str(f) in r.output


def test_empty_corpus(tmp_path):
    f = tmp_path / "empty.jsonl"
    f.write_text("\n\n")
    r = run("replay", "--corpus", str(f))
    assert r.exit_code != 0 and "empty" in r.output.lower()


def test_unwritable_output(tmp_path):
    r = run("replay", "--samples", "2", "--out", str(tmp_path / "missing-dir" / "o.arrow"))
    assert r.exit_code != 0 and "does not exist" in r.output and "missing-dir" in r.output


def test_unknown_model_path(tmp_path):
    r = run("replay", "--samples", "2", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o.arrow"))
    assert r.exit_code != 0 and "nope" in r.output


def test_bad_buckets(tmp_path):
    r = run("replay", "--samples", "2", "--buckets", "256:50,512:x", "--out", str(tmp_path / "o.arrow"))
    assert r.exit_code != 0 and "512:x" in r.output


def test_scales_needs_int8_for_p999(tmp_path):
    import pyarrow as pa

    from vllm_maxact.export.arrow import SCHEMA, write_table

    rows = [{"timestamp": None, "window": "replay", "site": "layers.0.residual", "kind": "residual", "layer": 0,
             "absmax": 100.0, "max": 100.0, "min": -3.0, "tokens": 5, "nan_count": 0, "inf_count": 0,
             "model": "m"}]
    import datetime as dt

    rows[0]["timestamp"] = dt.datetime.now(dt.timezone.utc)
    path = write_table(pa.Table.from_pylist(rows, schema=SCHEMA), tmp_path / "r.arrow")
    r = run("scales", str(path), "--threshold", "p999")
    assert r.exit_code != 0 and "--int8-check" in r.output
    r = run("scales", str(path), "--out", str(tmp_path / "s.json"))
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "s.json").read_text())
    assert doc["sites"]["layers.0.residual"]["int8_scale"] == 100.0 / 127
    assert doc["sites"]["layers.0.residual"]["fp8_e4m3_scale"] == 100.0 / 448


def test_replay_dtype_on_cpus_without_bf16_matrix_units(monkeypatch):
    """x86 without AVX-512 BF16 or AMX: float32 (bf16 GEMMs ~10x slower there); an explicit
    --dtype always wins; CPUs with either extension keep the model's dtype."""
    import platform

    import torch

    from vllm_maxact.cli import _cpu_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert _cpu_dtype(None) == "float32"
    assert _cpu_dtype("bfloat16") == "bfloat16"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert _cpu_dtype(None) is None
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert _cpu_dtype(None) is None
