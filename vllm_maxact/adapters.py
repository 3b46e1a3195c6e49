"""The adapter interface, and how adapters are found.

An adapter knows where a family's sites live in vLLM's module tree; the core never tests a
model's name. Adapters are discovered through the entry-point group ``vllm_maxact.adapters``
(ours live in ``vllm_maxact.plugins``; a third-party package adds its own the same way). Each
entry point names an `Adapter` subclass or instance.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Literal

import torch
from torch import nn

from vllm_maxact.sites import Kind, Site

logger = logging.getLogger("vllm_maxact")

ENTRY_POINT_GROUP = "vllm_maxact.adapters"


@dataclass(frozen=True)
class Probe:
    """Record ``extract(...)`` of ``module``'s input (args, kwargs) or output at ``site``."""

    site: Site
    module: nn.Module
    on: Literal["input", "output"]
    extract: Callable[..., torch.Tensor | None]


def first(out: Any) -> torch.Tensor:
    """vLLM layers often return ``(tensor, extra)``; the tensor is what flows on."""
    return out[0] if isinstance(out, tuple | list) else out


def residual_sum(out: Any) -> torch.Tensor:
    """vLLM decoder layers return ``(hidden_states, residual)`` not yet added."""
    if isinstance(out, tuple | list):
        hidden, residual = out[0], out[1] if len(out) > 1 else None
        return hidden if residual is None else hidden + residual
    return out


def gate_half(out: Any) -> torch.Tensor:
    """Merged ``gate_up_proj`` output: the gate half comes first (SiluAndMul/GeluAndMul)."""
    x = first(out)
    return x[..., : x.shape[-1] // 2]


def hidden_arg(index: int = 1, name: str = "hidden_states") -> Callable[[tuple, dict], torch.Tensor | None]:
    def extract(args: tuple, kwargs: dict) -> torch.Tensor | None:
        if name in kwargs:
            return kwargs[name]
        return args[index] if len(args) > index else None

    return extract


def is_missing(module: Any) -> bool:
    """Pipeline-parallel placeholders for layers that live on another rank."""
    return module is None or type(module).__name__ == "PPMissingLayer"


class Adapter:
    """Base for decoder-only families laid out like vLLM's Llama.

    Subclasses override attribute names or `layer_probes` where their family differs.
    """

    name: str = "base"
    #: vLLM architecture class names (``type(model).__name__``) this adapter handles.
    architectures: tuple[str, ...] = ()
    decoder_path: tuple[str, ...] = ("model",)
    layers_attr = "layers"
    attn_attr = "self_attn"
    mlp_attr = "mlp"
    gate_up_attr = "gate_up_proj"
    router_attr: str | None = None  # e.g. "gate" inside an MoE block
    norm_attr = "norm"

    def matches(self, model: nn.Module) -> bool:
        return type(model).__name__ in self.architectures

    def decoder(self, model: nn.Module) -> nn.Module:
        mod = model
        for attr in self.decoder_path:
            mod = getattr(mod, attr)
        return mod

    def layer_range(self, decoder: nn.Module) -> range:
        layers = getattr(decoder, self.layers_attr)
        start = getattr(decoder, "start_layer", 0)
        end = getattr(decoder, "end_layer", len(layers))
        return range(start, end)

    def probes(self, model: nn.Module) -> Iterator[Probe]:
        dec = self.decoder(model)
        layers = getattr(dec, self.layers_attr)
        rng = self.layer_range(dec)
        if rng.start == 0 and len(rng) and not is_missing(layers[0]):
            # The first layer's input is the embedding output after any family scaling
            # (Gemma's sqrt(hidden) normalizer included), whatever the family does to get there.
            yield Probe(Site(Kind.EMBEDDING), layers[0], "input", hidden_arg())
        for i in rng:
            layer = layers[i]
            if not is_missing(layer):
                yield from self.layer_probes(i, layer)
        norm = getattr(dec, self.norm_attr, None)
        if norm is not None and not is_missing(norm):
            yield Probe(Site(Kind.FINAL_NORM), norm, "output", first)

    def layer_probes(self, i: int, layer: nn.Module) -> Iterator[Probe]:
        yield Probe(Site(Kind.RESIDUAL, i), layer, "output", residual_sum)
        attn = getattr(layer, self.attn_attr, None)
        if attn is not None:
            yield Probe(Site(Kind.ATTN_OUT, i), attn, "output", first)
        mlp = getattr(layer, self.mlp_attr, None)
        if mlp is not None:
            yield Probe(Site(Kind.MLP_OUT, i), mlp, "output", first)
            gate_up = getattr(mlp, self.gate_up_attr, None)
            if gate_up is not None:
                yield Probe(Site(Kind.GATE, i), gate_up, "output", gate_half)
            router = getattr(mlp, self.router_attr, None) if self.router_attr else None
            if router is not None:
                yield Probe(Site(Kind.ROUTER, i), router, "output", first)


def discover() -> list[Adapter]:
    """All adapters registered under the entry-point group, ours and third parties'."""
    found: list[Adapter] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as e:  # a broken third-party adapter must not take the server down
            logger.warning("vllm-maxact: adapter %r failed to load: %s", ep.name, e)
            continue
        found.append(obj() if isinstance(obj, type) else obj)
    return found


def find_adapter(model: nn.Module, adapters: list[Adapter] | None = None) -> Adapter | None:
    for adapter in adapters if adapters is not None else discover():
        if adapter.matches(model):
            return adapter
    return None
