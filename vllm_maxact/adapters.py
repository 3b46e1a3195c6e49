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

from vllm_maxact.hotpath.operand import Operand
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


def residual_sum(out: Any) -> torch.Tensor | Operand:
    """vLLM decoder layers return ``(hidden_states, residual)`` not yet added: the residual
    stream is their sum, which the recorder forms itself (an `Operand`), rounded as the next
    norm rounds it, without adding a node to the model's graph."""
    if isinstance(out, tuple | list):
        hidden, residual = out[0], out[1] if len(out) > 1 else None
        return hidden if residual is None else Operand(hidden, residual)
    return out


def gate_half(out: Any) -> Operand:
    """Merged ``gate_up_proj`` output: the gate half comes first (SiluAndMul/GeluAndMul); read
    in place as the first half of the columns."""
    x = first(out)
    return Operand(x, width=x.shape[-1] // 2)


def hidden_arg(index: int = 1, name: str = "hidden_states") -> Callable[[tuple, dict], torch.Tensor | None]:
    def extract(args: tuple, kwargs: dict) -> torch.Tensor | None:
        if name in kwargs:
            return kwargs[name]
        return args[index] if len(args) > index else None

    return extract


def linear_input(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """A vLLM linear layer's input (``forward(input_)``)."""
    if "input_" in kwargs:
        return kwargs["input_"]
    return args[0] if args else None


def tensor_input(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """A linear layer's input where it is a plain tensor: vLLM may hand a quantized layer a
    `QuantizedActivation` made by a fused activation + quantization kernel (FP8 static scales on
    CUDA), whose unquantized value is never written; the site then records nothing rather than
    make the model write it."""
    x = linear_input(args, kwargs)
    return x if isinstance(x, torch.Tensor) else None


def kv_arg(index: int, name: str) -> Callable[[tuple, dict], torch.Tensor | None]:
    """Keys (1) or values (2) as vLLM's attention op takes them (``forward(query, key, value)``,
    [tokens, heads * head_size] or [tokens, heads, head_size]): what it writes to the KV cache.
    One row per token; None where the layer reads another layer's cache (KV sharing)."""

    def extract(args: tuple, kwargs: dict) -> torch.Tensor | None:
        x = kwargs[name] if name in kwargs else (args[index] if len(args) > index else None)
        if not isinstance(x, torch.Tensor):
            return None
        return x if x.dim() == 2 else x.reshape(x.shape[0], -1)

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
    qkv_attr = "qkv_proj"  # inside the attention block: its input is the attn_in site
    o_proj_attr = "o_proj"  # inside the attention block: its input is the o_in site
    down_proj_attr = "down_proj"  # inside the MLP: its input is the down_in site
    attn_op_attr = "attn"  # vLLM's attention op inside the attention block: its key / value inputs
    router_attr: str | None = None  # e.g. "gate" inside an MoE block
    norm_attr = "norm"
    #: Position of the hidden states among a decoder layer's positional arguments (Llama's
    #: layers take ``(positions, hidden_states, residual)``); a keyword argument wins.
    hidden_arg_index = 1
    #: The decoder is vLLM's Llama layout exactly (``input_layernorm(x, residual)``, attention,
    #: ``post_attention_layernorm(x, residual)``, an MLP whose ``act_fn`` takes the merged
    #: gate/up projection, a final ``norm(x, residual)``), so the opt-in `in_kernel` hot path may record
    #: the default sites inside those norms and activations (`vllm_maxact.hotpath.in_kernel`).
    fusable_layout = False
    #: The residual stream after layer i is the stream before it plus exactly the outputs of
    #: the layer's ``attn_attr`` and ``mlp_attr`` modules, added in that order (pre-norm layers
    #: without post-norms or layer scales: Llama, Qwen2/3, Mixtral, Qwen3-MoE). A compiled
    #: model's residual sites are then recorded without changing its arithmetic
    #: (`vllm_maxact.instrument.residual_chain`); other families read the stream from the pair
    #: each layer returns, which can change the compiled model's rounding.
    residual_chain = False

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
            yield Probe(Site(Kind.EMBEDDING), layers[0], "input", hidden_arg(self.hidden_arg_index))
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
            qkv = getattr(attn, self.qkv_attr, None)
            if qkv is not None:
                yield Probe(Site(Kind.ATTN_IN, i), qkv, "input", linear_input)
            yield from self.kv_probes(i, attn)
            o_proj = getattr(attn, self.o_proj_attr, None)
            if o_proj is not None:
                yield Probe(Site(Kind.O_IN, i), o_proj, "input", tensor_input)
        mlp = getattr(layer, self.mlp_attr, None)
        if mlp is not None:
            yield Probe(Site(Kind.MLP_OUT, i), mlp, "output", first)
            gate_up = getattr(mlp, self.gate_up_attr, None)
            if gate_up is not None:
                yield Probe(Site(Kind.GATE, i), gate_up, "output", gate_half)
                yield Probe(Site(Kind.MLP_IN, i), gate_up, "input", linear_input)
            down = getattr(mlp, self.down_proj_attr, None)
            if down is not None:
                yield Probe(Site(Kind.DOWN_IN, i), down, "input", tensor_input)
            router = getattr(mlp, self.router_attr, None) if self.router_attr else None
            if router is not None:
                yield Probe(Site(Kind.ROUTER, i), router, "output", first)


    def kv_probes(self, i: int, attn: nn.Module) -> Iterator[Probe]:
        """Keys and values at the input of vLLM's attention op (after RoPE and any k-norm: the
        tensors it writes to the KV cache), unless the layer reuses another layer's cache."""
        op = getattr(attn, self.attn_op_attr, None)
        if op is None or not isinstance(op, nn.Module) or getattr(op, "kv_sharing_target_layer_name", None):
            return
        if type(op).__name__ != "Attention":  # MLA and linear attention cache other tensors
            return
        yield Probe(Site(Kind.K, i), op, "input", kv_arg(1, "key"))
        yield Probe(Site(Kind.V, i), op, "input", kv_arg(2, "value"))


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


#: Attribute names a decoder stack's layer list goes by, in the order the fallback tries them.
_LAYER_LIST_NAMES = ("layers", "h", "blocks", "layer", "decoder_layers")
#: Attribute names of a token embedding next to a decoder layer list.
_EMBEDDING_NAMES = ("embed_tokens", "wte", "word_embeddings", "embedding", "embeddings", "tok_embeddings")
#: Attribute names of a final norm on the module that holds the layer list.
_FINAL_NORM_NAMES = ("norm", "final_norm", "final_layernorm", "ln_f", "norm_f", "final_layer_norm")


def _pair_sum(out: Any) -> torch.Tensor | Operand:
    """Like `residual_sum`, but adds element 1 only if it is a tensor shaped like element 0:
    an unknown layer may return ``(hidden, attn_weights)`` or ``(hidden, cache)`` instead."""
    if isinstance(out, tuple | list):
        hidden = out[0]
        other = out[1] if len(out) > 1 else None
        if isinstance(other, torch.Tensor) and other.shape == hidden.shape and other.dtype == hidden.dtype:
            return Operand(hidden, other)
        return hidden
    return out


class GenericAdapter(Adapter):
    """The fallback for decoder-only models no adapter covers: residual sites only.

    It takes the first ``nn.ModuleList`` named like a layer list (``*.layers``, ``*.h``,
    ``*.blocks``, ...) in module order, preferring one that sits next to a token embedding (a
    multimodal model's vision tower has block lists too), and records each layer's output as
    ``residual`` (the sum if the layer returns vLLM's ``(hidden, residual)`` pair), plus the
    final norm found next to that list. Attention, MLP, gate and router sites need family knowledge, so they are left
    out; so is the embedding (the fallback cannot know where a layer takes its hidden states).
    """

    name = "generic"

    def _find(self, model: nn.Module) -> tuple[nn.Module, str] | None:
        # Multimodal models also hold encoder block lists (a vision tower's `blocks` or
        # `layers`, often registered first): a list next to a token embedding is the decoder.
        candidates = [
            (module, attr)
            for _, module in model.named_modules()
            for attr in _LAYER_LIST_NAMES
            if isinstance(getattr(module, attr, None), nn.ModuleList) and len(getattr(module, attr)) > 0
        ]
        for module, attr in candidates:
            if any(isinstance(getattr(module, e, None), nn.Module) for e in _EMBEDDING_NAMES):
                return module, attr
        return candidates[0] if candidates else None

    def matches(self, model: nn.Module) -> bool:
        return self._find(model) is not None

    def decoder(self, model: nn.Module) -> nn.Module:
        found = self._find(model)
        if found is None:
            raise ValueError(f"{type(model).__name__} has no decoder layer list")
        return found[0]

    def probes(self, model: nn.Module) -> Iterator[Probe]:
        found = self._find(model)
        if found is None:
            return
        dec, attr = found
        layers = getattr(dec, attr)
        start = getattr(dec, "start_layer", 0)
        end = getattr(dec, "end_layer", len(layers))
        for i in range(start, end):
            if not is_missing(layers[i]):
                yield Probe(Site(Kind.RESIDUAL, i), layers[i], "output", _pair_sum)
        for norm_attr in _FINAL_NORM_NAMES:
            norm = getattr(dec, norm_attr, None)
            if isinstance(norm, nn.Module) and not is_missing(norm):
                yield Probe(Site(Kind.FINAL_NORM), norm, "output", first)
                break


def find_adapter(
    model: nn.Module, adapters: list[Adapter] | None = None, *, fallback: bool = True
) -> Adapter | None:
    """The first registered adapter that matches ``model``; else the generic fallback if the
    model has a decoder layer list (and ``fallback``); else None."""
    for adapter in adapters if adapters is not None else discover():
        if adapter.matches(model):
            return adapter
    if fallback:
        generic = GenericAdapter()
        if generic.matches(model):
            logger.warning(
                "vllm-maxact: no adapter for %s; using the generic fallback: residual sites only "
                "(add an adapter, entry-point group %r, for attention/MLP/gate/router sites).",
                type(model).__name__, ENTRY_POINT_GROUP,
            )
            return generic
    return None
