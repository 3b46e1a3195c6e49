"""`vllm-maxact quantize` (fast: a tiny random Llama, no engine): the checkpoint is
compressed-tensors W8A8 INT8 with per-channel weights, the static input scale of every linear
layer comes from the site it reads, the FP8 KV-cache scales from the k / v sites, and the
config is the package's own format. `test_serve_quantized.py` serves such a checkpoint."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from test_smoothquant import tiny_llama

from vllm_maxact.cli import main
from vllm_maxact.export.arrow import SCHEMA, rows_from_stats
from vllm_maxact.quantize import LINEAR_SITES, SCALES_FILE

KINDS = ("attn_in", "o_in", "mlp_in", "down_in", "k", "v")


def table(n_layers: int = 2, kinds=KINDS) -> pa.Table:
    """A replay table whose every site has its own range: absmax = 10 * (layer + 1) + kind index."""
    sites = [f"layers.{i}.{k}" for i in range(n_layers) for k in kinds]
    absmax = [10.0 * (i + 1) + j for i in range(n_layers) for j in range(len(kinds))]
    stats = {"max": absmax, "min": [-a / 2 for a in absmax], "nan": [0] * len(sites), "inf": [0] * len(sites),
             "tokens": 100}
    return pa.Table.from_pylist(rows_from_stats({"model": "tiny"}, sites, stats, window="replay", rank=None),
                                schema=SCHEMA)


def absmax_of(site: str) -> float:
    layer, kind = site.split(".")[1:]
    return 10.0 * (int(layer) + 1) + KINDS.index(kind)


@pytest.fixture
def quantized(tmp_path):
    src = tiny_llama(tmp_path / "src")
    arrow = tmp_path / "stats.arrow"
    import pyarrow.feather as feather

    feather.write_feather(table(), arrow)
    out = tmp_path / "w8a8"
    r = CliRunner().invoke(main, ["quantize", str(src), str(arrow), "--out", str(out)])
    assert r.exit_code == 0, r.output
    return src, out


def test_checkpoint_is_compressed_tensors_w8a8(quantized):
    from compressed_tensors.quantization import QuantizationConfig

    src, out = quantized
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    parsed = QuantizationConfig.model_validate(cfg)  # the package's own format
    assert parsed.quant_method == "compressed-tensors" and parsed.format == "int-quantized"
    scheme = parsed.config_groups["group_0"]
    assert scheme.targets == ["Linear"] and parsed.ignore == ["lm_head"]
    assert (scheme.weights.num_bits, scheme.weights.strategy, scheme.weights.symmetric) == (8, "channel", True)
    acts = scheme.input_activations
    assert (acts.num_bits, acts.strategy, acts.dynamic, acts.symmetric) == (8, "tensor", False, True)
    assert (parsed.kv_cache_scheme.type, parsed.kv_cache_scheme.num_bits) == ("float", 8)
    # the scales the checkpoint was built with travel with it (VLLM_MAXACT_CALIBRATION)
    doc = json.loads((out / SCALES_FILE).read_text())
    assert doc["format"] == "vllm-maxact-scales" and doc["quantization"]["threshold"] == "max"


def test_scales_come_from_the_sites_each_layer_reads(quantized):
    src, out = quantized
    before, after = load_file(str(src / "model.safetensors")), load_file(str(out / "model.safetensors"))
    for i in range(2):
        for rel, kind in LINEAR_SITES.items():
            name = f"model.layers.{i}.{rel}"
            w, q, s = before[f"{name}.weight"].float(), after[f"{name}.weight"], after[f"{name}.weight_scale"]
            assert q.dtype == torch.int8 and s.shape == (w.shape[0], 1)
            assert torch.allclose(s[:, 0], w.abs().amax(1) / 127.5, rtol=1e-6)
            assert (q.float() * s - w).abs().max() <= s.max() / 2 + 1e-6  # rounding error only
            # static input scale: the site's threshold over compressed-tensors' symmetric int8 range
            assert after[f"{name}.input_scale"].item() == pytest.approx(absmax_of(f"layers.{i}.{kind.value}") / 127.5)
        for kv in ("k", "v"):
            got = after[f"model.layers.{i}.self_attn.{kv}_scale"].item()
            assert got == pytest.approx(absmax_of(f"layers.{i}.{kv}") / 448.0)
    # everything else as it was
    for key in ("model.embed_tokens.weight", "model.norm.weight", "model.layers.0.input_layernorm.weight"):
        assert torch.equal(before[key], after[key])


def test_missing_sites_are_named(tmp_path):
    import pyarrow.feather as feather

    src = tiny_llama(tmp_path / "src")
    arrow = tmp_path / "stats.arrow"
    feather.write_feather(table(kinds=("attn_in", "mlp_in")), arrow)
    r = CliRunner().invoke(main, ["quantize", str(src), str(arrow), "--out", str(tmp_path / "q")])
    assert r.exit_code == 1
    assert "--kinds default,down_in,k,o_in,v" in r.output, r.output
    assert not (tmp_path / "q").exists()
    r = CliRunner().invoke(main, ["quantize", str(src), str(arrow), "--out", str(tmp_path / "q"), "--threshold",
                                  "p999"])
    assert r.exit_code == 1 and "--int8-check" in r.output


def test_dynamic_and_kv_only(tmp_path):
    import pyarrow.feather as feather

    src = tiny_llama(tmp_path / "src")
    arrow = tmp_path / "stats.arrow"
    feather.write_feather(table(), arrow)
    run = CliRunner().invoke
    assert run(main, ["quantize", str(src), str(arrow), "--out", str(tmp_path / "dyn"), "--dynamic"]).exit_code == 0
    cfg = json.loads((tmp_path / "dyn" / "config.json").read_text())["quantization_config"]
    assert cfg["config_groups"]["group_0"]["input_activations"]["dynamic"] is True
    assert not any(k.endswith("input_scale") for k in load_file(str(tmp_path / "dyn" / "model.safetensors")))
    assert run(main, ["quantize", str(src), str(arrow), "--out", str(tmp_path / "kv"), "--kv-only"]).exit_code == 0
    t = load_file(str(tmp_path / "kv" / "model.safetensors"))
    assert t["model.layers.0.self_attn.q_proj.weight"].dtype != torch.int8 and "model.layers.1.self_attn.v_scale" in t
    zp = run(main, ["quantize", str(src), str(arrow), "--out", str(tmp_path / "zp"), "--input-zero-point"])
    assert zp.exit_code == 0
    t = load_file(str(tmp_path / "zp" / "model.safetensors"))
    assert t["model.layers.0.mlp.down_proj.input_zero_point"].item() == 0
    cfg = json.loads((tmp_path / "zp" / "config.json").read_text())["quantization_config"]
    assert cfg["config_groups"]["group_0"]["input_activations"]["symmetric"] is False


def test_keep_and_only_sites_leave_those_layers_unquantized(tmp_path):
    """--keep-sites leaves the matching sites' linears as they were and lists them in the
    config's ignore (vLLM then serves them unquantized); --only-sites quantizes just those; a
    pattern that matches nothing is named."""
    import pyarrow.feather as feather
    from compressed_tensors.quantization import QuantizationConfig

    src = tiny_llama(tmp_path / "src")
    arrow = tmp_path / "stats.arrow"
    feather.write_feather(table(), arrow)
    before = load_file(str(src / "model.safetensors"))
    run = CliRunner().invoke
    r = run(main, ["quantize", str(src), str(arrow), "--out", str(tmp_path / "keep"),
                   "--keep-sites", "layers.*.down_in, layers.1.attn_in"])
    assert r.exit_code == 0 and "3 linear-input sites left unquantized" in r.output, r.output
    t = load_file(str(tmp_path / "keep" / "model.safetensors"))
    kept = {"model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj", "model.layers.1.self_attn.q_proj",
            "model.layers.1.self_attn.k_proj", "model.layers.1.self_attn.v_proj"}
    for i in range(2):
        for rel in LINEAR_SITES:
            name = f"model.layers.{i}.{rel}"
            if name in kept:
                assert torch.equal(t[f"{name}.weight"], before[f"{name}.weight"]), name
                assert f"{name}.input_scale" not in t and f"{name}.weight_scale" not in t, name
            else:
                assert t[f"{name}.weight"].dtype == torch.int8 and f"{name}.input_scale" in t, name
    cfg = QuantizationConfig.model_validate(json.loads((tmp_path / "keep" / "config.json").read_text())
                                            ["quantization_config"])
    assert set(cfg.ignore) == {"lm_head", *kept}
    doc = json.loads((tmp_path / "keep" / SCALES_FILE).read_text())
    assert doc["unquantized"] == ["layers.0.down_in", "layers.1.attn_in", "layers.1.down_in"]
    assert "model.layers.1.self_attn.k_scale" in t  # the KV cache is still quantized

    r = run(main, ["quantize", str(src), str(arrow), "--out", str(tmp_path / "one"), "--only-sites", "layers.1.o_in"])
    assert r.exit_code == 0, r.output
    t = load_file(str(tmp_path / "one" / "model.safetensors"))
    assert [k for k in t if k.endswith(".input_scale")] == ["model.layers.1.self_attn.o_proj.input_scale"]
    assert t["model.layers.1.self_attn.o_proj.input_scale"].item() == pytest.approx(absmax_of("layers.1.o_in") / 127.5)

    r = run(main, ["quantize", str(src), str(arrow), "--out", str(tmp_path / "bad"), "--keep-sites", "layers.9.o_in"])
    assert r.exit_code == 1 and "'layers.9.o_in' matches no linear-input site" in r.output, r.output
    assert not (tmp_path / "bad").exists()


def test_keep_below_sqnr_uses_the_int8_checks_verdict(tmp_path):
    """--keep-below-sqnr DB leaves exactly the sites whose INT-8 check SQNR is below DB
    unquantized; without the check's columns it says to replay with --int8-check."""
    import pyarrow.feather as feather

    src = tiny_llama(tmp_path / "src")
    t = table()
    sqnr = [40.0 - a for a in t.column("absmax").to_pylist()]  # wider range, lower SQNR
    t = t.append_column("int8_sqnr_db", pa.array(sqnr, pa.float64()))  # what replay --int8-check adds
    arrow = tmp_path / "checked.arrow"
    feather.write_feather(t, arrow)
    r = CliRunner().invoke(main, ["quantize", str(src), str(arrow), "--out", str(tmp_path / "q"),
                                  "--keep-below-sqnr", "18.5"])
    assert r.exit_code == 0, r.output
    # layer 1's sites: absmax 20 + kind index, so SQNR 20, 19, 18, 17 (attn_in, o_in, mlp_in, down_in)
    doc = json.loads((tmp_path / "q" / SCALES_FILE).read_text())
    assert doc["unquantized"] == ["layers.1.mlp_in", "layers.1.down_in"]
    w = load_file(str(tmp_path / "q" / "model.safetensors"))
    assert w["model.layers.1.mlp.up_proj.weight"].dtype != torch.int8
    assert w["model.layers.1.self_attn.o_proj.weight"].dtype == torch.int8

    plain = tmp_path / "plain.arrow"
    feather.write_feather(table(), plain)
    r = CliRunner().invoke(main, ["quantize", str(src), str(plain), "--out", str(tmp_path / "q2"),
                                  "--keep-below-sqnr", "18.5"])
    assert r.exit_code == 1 and "replay with --int8-check" in r.output, r.output
