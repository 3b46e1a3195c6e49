"""SmoothQuant factors and the smoothed checkpoint (fast: a tiny random Llama, transformers only).

The statistics here come from transformers hooks on the norm outputs (what the attn_in / mlp_in
sites record inside vLLM; tests/test_engine_channels.py checks the engine against the same
hooks). What is checked: the factors follow the SmoothQuant formula from the activations and
the checkpoint's own weights; the smoothed checkpoint computes the same function; its
activations at the smoothed sites are exactly the old ones divided by s, so their spread
across channels shrinks.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from click.testing import CliRunner

from vllm_maxact import smoothquant
from vllm_maxact.cli import main
from vllm_maxact.export.arrow import SCHEMA, rows_from_stats


def tiny_llama(path, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # outlier channels, as real residual streams have
        for layer in model.model.layers:
            layer.input_layernorm.weight[[3, 17]] = 40.0
            layer.post_attention_layernorm.weight[[5]] = 25.0
    model.save_pretrained(path, safe_serialization=True)
    return path


def capture(model_dir, ids, dtype=torch.float32):
    """Per-channel max |x| at every norm that feeds q/k/v and gate/up, and the logits."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    got: dict[str, torch.Tensor] = {}

    def hook(name):
        def f(_m, _a, out):
            m = out.detach().abs().reshape(-1, out.shape[-1]).amax(0).double()
            got[name] = torch.maximum(got[name], m) if name in got else m

        return f

    for i, layer in enumerate(model.model.layers):
        layer.input_layernorm.register_forward_hook(hook(f"layers.{i}.attn_in"))
        layer.post_attention_layernorm.register_forward_hook(hook(f"layers.{i}.mlp_in"))
    with torch.no_grad():
        logits = torch.cat([model(input_ids=torch.tensor([t])).logits[0] for t in ids])
    return {k: v.numpy() for k, v in got.items()}, logits


def table(channels: dict[str, np.ndarray]) -> pa.Table:
    sites = sorted(channels)
    stats = {"max": [float(v.max()) for v in channels.values()], "min": [0.0] * len(sites),
             "nan": [0] * len(sites), "inf": [0] * len(sites), "tokens": 10,
             "channels": {str(i): list(channels[s]) for i, s in enumerate(sites)}}
    return pa.Table.from_pylist(rows_from_stats({}, sites, stats, window="replay", rank=None), schema=SCHEMA)


IDS = [[5, 9, 200, 17, 3, 44], [7, 7, 8, 120, 250, 1, 2, 3, 99]]


def test_factors_follow_the_formula_and_smoothing_keeps_the_function(tmp_path):
    src = tiny_llama(tmp_path / "src")
    acts, logits = capture(src, IDS)
    # o_in / down_in channels (recorded for static scales) have no norm in front: not smoothed
    extra = {"layers.0.o_in": np.ones(64), "layers.1.down_in": np.ones(128)}
    doc = smoothquant.document(table({**acts, **extra}), src, alpha=0.5)
    assert sorted(e["site"] for e in doc["layers"]) == sorted(acts)
    from safetensors.torch import load_file

    w = load_file(str(src / "model.safetensors"))
    e = next(e for e in doc["layers"] if e["site"] == "layers.1.attn_in")
    wmax = np.max([w[f"model.layers.1.self_attn.{p}_proj.weight"].abs().amax(0).double().numpy() for p in "qkv"], 0)
    np.testing.assert_allclose(e["smooth"], np.sqrt(acts["layers.1.attn_in"]) / np.sqrt(wmax), rtol=1e-6)
    assert e["norm"] == "model.layers.1.input_layernorm.weight"

    # The CLI writes the same smoothed checkpoint as the API.
    doc_path = tmp_path / "smooth.json"
    doc_path.write_text(json.dumps(doc))
    res = CliRunner().invoke(main, ["smooth", str(src), str(doc_path), "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    acts2, logits2 = capture(tmp_path / "out", IDS)
    torch.testing.assert_close(logits2, logits, rtol=1e-4, atol=1e-4)  # the same function
    for e in doc["layers"]:
        s = np.asarray(e["smooth"])
        np.testing.assert_allclose(acts2[e["site"]], acts[e["site"]] / s, rtol=1e-4)
        spread = lambda a: a.max() / np.median(a)  # noqa: E731
        assert spread(acts2[e["site"]]) < spread(acts[e["site"]])
        assert e["act_absmax_smoothed"] == pytest.approx(float((acts[e["site"]] / s).max()))


def test_cli_errors_name_the_problem(tmp_path):
    src = tiny_llama(tmp_path / "src")
    plain = pa.Table.from_pylist(rows_from_stats({}, ["layers.0.residual"], {
        "max": [1.0], "min": [-1.0], "nan": [0], "inf": [0], "tokens": 3}, window="replay", rank=None), schema=SCHEMA)
    arrow = tmp_path / "plain.arrow"
    import pyarrow.feather as feather

    feather.write_feather(plain, arrow)
    r = CliRunner().invoke(main, ["scales", str(arrow), "--format", "smoothquant", "--model", str(src)])
    assert r.exit_code != 0 and "attn_in" in r.output and "--kinds" in r.output
    r = CliRunner().invoke(main, ["scales", str(arrow), "--format", "smoothquant"])
    assert r.exit_code != 0 and "--model" in r.output
    # Stats from another model (other width) are refused, not silently misapplied.
    wrong = table({"layers.0.attn_in": np.ones(32)})
    with pytest.raises(smoothquant.SmoothQuantError, match="not the same model"):
        smoothquant.document(wrong, src)
    with pytest.raises(smoothquant.SmoothQuantError, match="must differ"):
        smoothquant.apply(src, {"layers": []}, src)


def test_report_and_scales_accept_channel_sites(tmp_path):
    """A replay file with the opt-in channel kinds goes through report and the per-site scales."""
    import pyarrow.feather as feather

    rng = np.random.default_rng(0)
    chans = {f"layers.{i}.{k}": rng.random(16) * (i + 1) for i in range(2) for k in ("attn_in", "mlp_in")}
    sites = sorted(chans) + ["layers.0.residual", "layers.1.residual"]
    stats = {"max": [float(chans[s].max()) if s in chans else 50.0 * (j + 1) for j, s in enumerate(sites)],
             "min": [-1.0] * len(sites), "nan": [0] * len(sites), "inf": [0] * len(sites), "tokens": 7,
             "channels": {str(i): list(chans[s]) for i, s in enumerate(sites) if s in chans}}
    path = tmp_path / "stats.arrow"
    feather.write_feather(pa.Table.from_pylist(
        rows_from_stats({"model": "m"}, sites, stats, window="replay", rank=None), schema=SCHEMA), path)
    r = CliRunner().invoke(main, ["report", str(path), "--out-dir", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "attn_in" in html and "mlp_in" in html
    r = CliRunner().invoke(main, ["scales", str(path), "--format", "csv"])
    assert r.exit_code == 0 and "layers.1.mlp_in" in r.output, r.output
