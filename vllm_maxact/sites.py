"""Sites: named places in a model where activation ranges are recorded.

A site is data (a name, a kind, a layer index), never a code branch. The same names are
used in the recorder, the Arrow columns, the Prometheus labels and the dashboard.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass


class Kind(str, enum.Enum):
    EMBEDDING = "embedding"  # embedding output, after any embedding scale
    RESIDUAL = "residual"  # residual stream after decoder layer i (hidden + residual)
    ATTN_OUT = "attn_out"  # attention block output (after o_proj)
    MLP_OUT = "mlp_out"  # MLP or MoE block output
    GATE = "gate"  # pre-activation gate half of the merged gate_up projection
    ROUTER = "router"  # MoE router logits
    FINAL_NORM = "final_norm"  # output of the final norm
    # Optional (not recorded by default): inputs of the linear layers SmoothQuant smooths, with
    # per-channel max |x| besides the usual statistics.
    ATTN_IN = "attn_in"  # input of the attention's QKV projection (the input norm's output)
    MLP_IN = "mlp_in"  # input of the MLP's gate/up projection (the pre-MLP norm's output)
    # Optional too: the inputs of the other two quantized linear layers (per-channel as well),
    # and the keys and values as the attention writes them to the KV cache (after RoPE and any
    # k-norm), which FP8 KV-cache scales are taken from.
    O_IN = "o_in"  # input of the attention's output projection (the attention op's output)
    DOWN_IN = "down_in"  # input of the MLP's down projection (the activation's output)
    K = "k"  # keys written to the KV cache
    V = "v"  # values written to the KV cache

    def __str__(self) -> str:  # so f-strings and labels print the bare value
        return self.value


#: Kinds that make up the study's global maximum M (gates and routers excluded).
GLOBAL_KINDS = frozenset({Kind.EMBEDDING, Kind.RESIDUAL, Kind.ATTN_OUT, Kind.MLP_OUT, Kind.FINAL_NORM})

#: The order kinds are listed in tables and plots.
KIND_ORDER = [
    Kind.EMBEDDING,
    Kind.RESIDUAL,
    Kind.ATTN_OUT,
    Kind.MLP_OUT,
    Kind.GATE,
    Kind.ROUTER,
    Kind.ATTN_IN,
    Kind.K,
    Kind.V,
    Kind.O_IN,
    Kind.MLP_IN,
    Kind.DOWN_IN,
    Kind.FINAL_NORM,
]

#: Kinds that also record per-channel max |x| (opt-in sites: linear inputs, for SmoothQuant and
#: static activation scales).
CHANNEL_KINDS = frozenset({Kind.ATTN_IN, Kind.MLP_IN, Kind.O_IN, Kind.DOWN_IN})

#: Kinds recorded only when asked for (`VLLM_MAXACT_KINDS`, replay ``--kinds``).
OPTIONAL_KINDS = CHANNEL_KINDS | {Kind.K, Kind.V}

#: The input of every quantized linear layer of a decoder layer, and the module that reads it
#: (vLLM's merged names): the sites a static W8A8 checkpoint takes its activation scales from.
LINEAR_INPUTS = {Kind.ATTN_IN: "qkv_proj", Kind.O_IN: "o_proj", Kind.MLP_IN: "gate_up_proj",
                 Kind.DOWN_IN: "down_proj"}


@dataclass(frozen=True, order=True)
class Site:
    kind: Kind
    layer: int | None = None

    @property
    def name(self) -> str:
        """`embedding`, `final_norm`, or `layers.{i}.{kind}`."""
        if self.layer is None:
            return self.kind.value
        return f"layers.{self.layer}.{self.kind.value}"

    @classmethod
    def parse(cls, name: str) -> Site:
        """The site a name denotes (cached: tables and merges parse every row's name)."""
        return _parse(name)

    def __str__(self) -> str:
        return self.name


@functools.lru_cache(maxsize=4096)
def _parse(name: str) -> Site:
    parts = name.split(".")
    try:
        if len(parts) == 1:
            return Site(Kind(parts[0]))
        if len(parts) == 3 and parts[0] == "layers":
            return Site(Kind(parts[2]), int(parts[1]))
    except ValueError:
        pass
    raise ValueError(f"not a site name: {name!r} (expected 'embedding', 'final_norm' or 'layers.<i>.<kind>')")
