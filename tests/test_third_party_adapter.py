"""Adapters from outside the core: a third-party package, and the generic fallback.

A third party adds a family by installing a package with an entry point in the group
`vllm_maxact.adapters`; vllm-maxact's code is not touched. The test installs the toy package in
`tests/thirdparty` into a temporary target (no network, no build isolation) and runs a fresh
interpreter with that target on PYTHONPATH, so the entry point is seen exactly as it would be
after a real `pip install`. No engine: the toy model is a plain nn.Module, instrumented eagerly.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from vllm_maxact.adapters import GenericAdapter, discover, find_adapter
from vllm_maxact.config import load_config
from vllm_maxact.instrument import instrument
from vllm_maxact.sites import Kind, Site

THIRDPARTY = Path(__file__).parent / "thirdparty"

# Runs in a fresh interpreter with the installed toy package on PYTHONPATH.
CHECK = textwrap.dedent(
    '''
    import json
    import torch
    from torch import nn

    import maxact_toy_adapter
    from vllm_maxact.adapters import discover, find_adapter
    from vllm_maxact.config import load_config
    from vllm_maxact.instrument import instrument

    H = 8

    class Mixer(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(H, H)

        def forward(self, x):
            return self.proj(x)

    class Ffn(nn.Module):
        def __init__(self):
            super().__init__()
            self.w_in = nn.Linear(H, 2 * H)
            self.w_out = nn.Linear(H, H)

        def forward(self, x):
            gate, up = self.w_in(x).chunk(2, dim=-1)
            return self.w_out(torch.nn.functional.silu(gate) * up)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.mixer = Mixer()
            self.ffn = Ffn()

        def forward(self, hidden_states):
            h = hidden_states + self.mixer(hidden_states)
            return h + self.ffn(h)

    class Backbone(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(50, H)
            self.blocks = nn.ModuleList([Block() for _ in range(3)])
            self.ln_out = nn.LayerNorm(H)

        def forward(self, ids):
            x = self.emb(ids) * 2.0
            for b in self.blocks:
                x = b(x)
            return self.ln_out(x)

    class ToyForCausalLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = Backbone()

        def forward(self, ids):
            return self.backbone(ids)

    class OtherForCausalLM(ToyForCausalLM):
        pass

    torch.manual_seed(0)
    adapters = discover()
    names = [a.name for a in adapters]
    model = ToyForCausalLM()
    chosen = find_adapter(model)
    other = find_adapter(OtherForCausalLM())  # same layout, other name: not this adapter

    # Reference values with plain hooks, then the recorder through the adapter.
    ids = torch.randint(0, 50, (7,))
    ref = {}
    hooks = [model.backbone.blocks[0].register_forward_pre_hook(
        lambda m, a: ref.__setitem__("embedding", a[0].abs().max().item()))]
    for i, b in enumerate(model.backbone.blocks):
        hooks.append(b.register_forward_hook(
            lambda m, a, o, i=i: ref.__setitem__(f"layers.{i}.residual", o.abs().max().item())))
        hooks.append(b.mixer.register_forward_hook(
            lambda m, a, o, i=i: ref.__setitem__(f"layers.{i}.attn_out", o.abs().max().item())))
        hooks.append(b.ffn.register_forward_hook(
            lambda m, a, o, i=i: ref.__setitem__(f"layers.{i}.mlp_out", o.abs().max().item())))
        hooks.append(b.ffn.w_in.register_forward_hook(
            lambda m, a, o, i=i: ref.__setitem__(f"layers.{i}.gate", o[..., :H].abs().max().item())))
    hooks.append(model.backbone.ln_out.register_forward_hook(
        lambda m, a, o: ref.__setitem__("final_norm", o.abs().max().item())))
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()

    rec = instrument(model, load_config(), device=torch.device("cpu"))
    rec.begin_step(ids.shape[0])
    with torch.no_grad():
        model(ids)
    rec.end_step()
    win = rec.collect()
    got = {s.name: float(a) for s, a in zip(win.sites, win.absmax)}
    print(json.dumps({
        "names": names,
        "module": maxact_toy_adapter.__file__,
        "chosen": chosen.name if chosen else None,
        "other": other.name if other else None,
        "adapter_name": rec.adapter_name,
        "tokens": win.tokens,
        "got": got,
        "ref": ref,
    }))
    '''
)


@pytest.fixture(scope="module")
def toy_target(tmp_path_factory) -> Path:
    """`pip install --no-deps --no-build-isolation --target TMP` of tests/thirdparty."""
    work = tmp_path_factory.mktemp("thirdparty")
    src = work / "src"
    shutil.copytree(THIRDPARTY, src)  # build in a copy: no build/ or egg-info in the repo
    target = work / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--quiet", "--disable-pip-version-check", "--target", str(target), str(src)],
        check=True, timeout=300,
    )
    return target


def test_third_party_adapter_is_discovered_selected_and_records(toy_target):
    import json

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(toy_target), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    out = subprocess.run(
        [sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=300, cwd=toy_target.parent,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(res["module"]).is_relative_to(toy_target)  # the installed copy, not the source tree
    assert "toy" in res["names"] and "llama" in res["names"]  # ours and theirs, one group
    assert res["chosen"] == "toy" and res["adapter_name"] == "toy"
    # A model with the same layout but another architecture name is not the toy adapter's: it
    # falls back to the generic adapter (it has a `blocks` list next to an embedding).
    assert res["other"] == "generic"
    assert res["tokens"] == 7
    expected = {"embedding", "final_norm"} | {
        f"layers.{i}.{k}" for i in range(3) for k in ("residual", "attn_out", "mlp_out", "gate")
    }
    assert set(res["got"]) == expected
    for name in expected:
        assert res["got"][name] == pytest.approx(res["ref"][name], rel=1e-6), name


def test_third_party_adapter_is_invisible_without_the_package():
    assert "toy" not in {a.name for a in discover()}


# -- the generic fallback ------------------------------------------------------------------


class _PairLayer(nn.Module):
    """A vLLM-style layer: returns (hidden, residual) unadded."""

    def __init__(self, h: int):
        super().__init__()
        self.lin = nn.Linear(h, h)

    def forward(self, positions, hidden_states, residual):
        if residual is None:
            residual = hidden_states
        return self.lin(hidden_states), residual


class _Decoder(nn.Module):
    def __init__(self, h: int = 4, n: int = 2):
        super().__init__()
        self.embed_tokens = nn.Embedding(10, h)
        self.layers = nn.ModuleList([_PairLayer(h) for _ in range(n)])
        self.norm = nn.LayerNorm(h)

    def forward(self, ids):
        h, r = self.embed_tokens(ids), None
        for layer in self.layers:
            h, r = layer(None, h, r)
        return self.norm(h + r)


class _Vision(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(4, 4)])


class MysteryForCausalLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.visual = _Vision()  # registered first, but not the decoder
        self.model = _Decoder()

    def forward(self, ids):
        return self.model(ids)


def test_generic_fallback_records_residual_and_final_norm(caplog):
    torch.manual_seed(0)
    model = MysteryForCausalLM()
    with caplog.at_level(logging.WARNING, logger="vllm_maxact"):
        adapter = find_adapter(model)
    assert isinstance(adapter, GenericAdapter)
    assert "no adapter for MysteryForCausalLM; using the generic fallback: residual sites only" in caplog.text
    assert adapter.decoder(model) is model.model  # the list next to the embedding, not visual.blocks
    assert find_adapter(model, fallback=False) is None

    ids = torch.tensor([1, 2, 3, 4, 5])
    ref = {}
    hooks = [
        layer.register_forward_hook(lambda m, a, o, i=i: ref.__setitem__(i, (o[0] + o[1]).abs().max().item()))
        for i, layer in enumerate(model.model.layers)
    ]
    with torch.no_grad():
        final = model(ids)
    for h in hooks:
        h.remove()

    rec = instrument(model, load_config(), device=torch.device("cpu"))
    assert rec.adapter_name == "generic"
    assert rec.sites == [Site(Kind.RESIDUAL, 0), Site(Kind.RESIDUAL, 1), Site(Kind.FINAL_NORM)]
    rec.begin_step(len(ids))
    with torch.no_grad():
        model(ids)
    rec.end_step()
    absmax = dict(zip([s.name for s in rec.sites], rec.collect().absmax, strict=True))
    assert absmax["layers.0.residual"] == pytest.approx(ref[0], rel=1e-6)
    assert absmax["layers.1.residual"] == pytest.approx(ref[1], rel=1e-6)
    assert absmax["final_norm"] == pytest.approx(final.abs().max().item(), rel=1e-6)


def test_generic_fallback_needs_a_layer_list():
    class NoLayers(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4)

    assert not GenericAdapter().matches(NoLayers())
    assert find_adapter(NoLayers()) is None


def test_generic_fallback_does_not_add_attention_weights_to_the_residual():
    """A layer returning (hidden, attn_weights) is recorded as hidden alone."""

    class HFStyleLayer(nn.Module):
        def forward(self, hidden_states):
            return hidden_states * 2, torch.ones(1, 2, 3, 3)

    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.h = nn.ModuleList([HFStyleLayer()])

        def forward(self, x):
            return self.h[0](x)[0]

    model = Stack()
    rec = instrument(model, load_config(), device=torch.device("cpu"))
    x = torch.tensor([[1.0, -3.0, 2.0]])
    rec.begin_step(1)
    model(x)
    rec.end_step()
    assert rec.collect().absmax[0] == 6.0
