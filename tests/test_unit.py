"""Fast checks of naming, configuration and adapter selection (no engine)."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from vllm_maxact.adapters import Adapter, discover, find_adapter
from vllm_maxact.config import ConfigError, load_config
from vllm_maxact.instrument import instrument
from vllm_maxact.sites import Kind, Site


def test_site_names_round_trip():
    for site in (Site(Kind.EMBEDDING), Site(Kind.RESIDUAL, 3), Site(Kind.GATE, 0), Site(Kind.FINAL_NORM)):
        assert Site.parse(site.name) == site
    assert Site(Kind.ATTN_OUT, 12).name == "layers.12.attn_out"
    with pytest.raises(ValueError, match="not a site name"):
        Site.parse("layer_3_hidden")


def test_config_errors_name_the_field(monkeypatch):
    monkeypatch.setenv("VLLM_MAXACT_KINDS", "residual,hidden")
    with pytest.raises(ConfigError, match=r"VLLM_MAXACT_KINDS \(kinds\).*unknown site kind 'hidden'"):
        load_config()
    monkeypatch.setenv("VLLM_MAXACT_KINDS", "residual")
    monkeypatch.setenv("VLLM_MAXACT_LAYERS", "3-1")
    with pytest.raises(ConfigError, match="VLLM_MAXACT_LAYERS"):
        load_config()
    monkeypatch.setenv("VLLM_MAXACT_LAYERS", "0-2,7")
    cfg = load_config()
    assert cfg.kinds == (Kind.RESIDUAL,) and cfg.layer_set() == {0, 1, 2, 7}


def test_config_file_and_env_precedence(tmp_path, monkeypatch):
    f = tmp_path / "maxact.toml"
    f.write_text('[vllm_maxact]\nwindow_s = 30\nkinds = ["residual", "gate"]\n')
    monkeypatch.setenv("VLLM_MAXACT_CONFIG", str(f))
    monkeypatch.setenv("VLLM_MAXACT_KINDS", "embedding")
    cfg = load_config()
    assert cfg.window_s == 30 and cfg.kinds == (Kind.EMBEDDING,)
    f.write_text("window_s = ")
    with pytest.raises(ConfigError, match="not valid"):
        load_config()
    f.write_text("window_sec = 5\n")
    monkeypatch.delenv("VLLM_MAXACT_KINDS")
    with pytest.raises(ConfigError, match="window_sec"):
        load_config()


def test_listeners_default_to_loopback():
    assert load_config().exporter_host == "127.0.0.1"


def test_shipped_adapters_are_discovered_through_entry_points():
    names = {a.name for a in discover()}
    assert {"llama", "qwen2", "qwen3", "gemma3"} <= names


class Unknown(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)


def test_unknown_architecture_warns_and_does_not_instrument(caplog):
    model = Unknown()
    assert find_adapter(model) is None
    with caplog.at_level(logging.WARNING, logger="vllm_maxact"):
        assert instrument(model, load_config(), device=torch.device("cpu")) is None
    assert "no adapter for architecture Unknown" in caplog.text
    assert not model.proj._forward_hooks


def test_adapter_site_selection_by_kind_and_layer(monkeypatch):
    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.self_attn = nn.Identity()
            self.mlp = nn.Identity()

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([Layer() for _ in range(3)])
            self.norm = nn.Identity()

    class FakeForCausalLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = Decoder()

    class FakeAdapter(Adapter):
        name = "fake"
        architectures = ("FakeForCausalLM",)

    monkeypatch.setenv("VLLM_MAXACT_KINDS", "residual,final_norm")
    monkeypatch.setenv("VLLM_MAXACT_LAYERS", "1-2")
    rec = instrument(FakeForCausalLM(), load_config(), torch.device("cpu"), adapter=FakeAdapter())
    assert [s.name for s in rec.sites] == ["layers.1.residual", "layers.2.residual", "final_norm"]


def test_in_kernel_on_a_family_without_the_llama_layout_says_why_and_takes_nothing(caplog):
    """VLLM_MAXACT_HOT_PATH=in_kernel on a family it cannot serve: every site stays on hooks (no
    module's forward replaced) and the log names the reason."""
    from vllm_maxact.adapters import Adapter
    from vllm_maxact.hotpath.in_kernel import fuse_sites
    from vllm_maxact.recorder import Recorder

    rec = Recorder([Site(Kind.RESIDUAL, 0)], device=torch.device("cpu"), hot_path="cpu_op")
    with caplog.at_level(logging.WARNING, logger="vllm_maxact"):
        assert fuse_sites(rec, Adapter(), nn.Module(), []) == set()
    assert "does not declare vLLM's Llama layout" in caplog.text


def test_hot_path_choice_names_the_setting_and_the_device():
    """One strategy per engine, chosen once; a choice that cannot run there fails naming the
    variable, the value and what runs instead."""
    from vllm_maxact.hotpath import CpuOp, choose

    assert isinstance(choose("auto", "cpu"), CpuOp) and isinstance(choose(None, "cpu"), CpuOp)
    assert choose("cpu_op", "cpu", compiled=False).compiled is False
    for name, device, words in (("fused", "cpu", "is not a hot path"), ("cpu_op", "cuda", "runs on cpu models"),
                                ("in_kernel", "cpu", "runs on cuda models"), ("triton", "cpu", "runs on cuda models")):
        with pytest.raises(ValueError, match=words) as e:
            choose(name, device)
        assert "VLLM_MAXACT_HOT_PATH" in str(e.value)


def test_engine_settings_travel_in_the_vllm_config(monkeypatch):
    """An engine's own settings (vLLM's additional_config) win over the environment for that
    engine; an engine without them gets the environment's; a bad one is an error, not ignored."""
    from types import SimpleNamespace

    from vllm_maxact.config import ENGINE_KEY, ConfigError, engine_config
    from vllm_maxact.sites import Kind

    monkeypatch.setenv("VLLM_MAXACT_KINDS", "residual")
    monkeypatch.delenv("VLLM_MAXACT_INT8_CHECK", raising=False)
    own = SimpleNamespace(additional_config={ENGINE_KEY: {"kinds": ["attn_in", "embedding"], "int8_check": True}})
    cfg = engine_config(own)
    assert cfg.kinds == (Kind.ATTN_IN, Kind.EMBEDDING) and cfg.int8_check
    plain = engine_config(SimpleNamespace(additional_config={}))
    assert plain.kinds == (Kind.RESIDUAL,) and not plain.int8_check
    with pytest.raises(ConfigError, match="kinds"):
        engine_config(SimpleNamespace(additional_config={ENGINE_KEY: {"kinds": ["nonsense"]}}))
