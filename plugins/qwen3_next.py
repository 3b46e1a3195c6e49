"""Qwen3-Next and Qwen3.5 (dense and MoE): hybrid stacks of linear- and full-attention layers.

Each `Qwen3NextDecoderLayer` (Qwen3.5's subclasses it) has either ``linear_attn`` (a Gated
DeltaNet block, ``layer_type == "linear_attention"``) or ``self_attn`` (gated full attention).

- attn_out: whichever of the two the layer has: the linear-attention block output (after its
  gated RMSNorm and ``out_proj``) or the attention output (after the output gate and
  ``o_proj``); before the optional ``layer_scale``.
- mlp_out: the `Qwen3NextSparseMoeBlock` output (routed experts plus the sigmoid-gated shared
  expert) or, for dense layers, the `Qwen2MoeMLP` output.
- router: ``mlp.gate`` (a `GateLinear`), the router logits. When vLLM fuses the shared expert
  into the MoE kernel and concatenates the router and shared-expert-gate weights (the runner's
  ``_fse_fuse_gate`` path), ``gate`` is never called and the router is not observable.
- gate: dense layers only (``mlp.gate_up_proj``); the shared expert's is not recorded.
- residual, embedding, final_norm: as Llama (layers are called with keyword arguments).

The multimodal Qwen3.5 models hold the text model as ``language_model`` (a `Qwen3_5ForCausalLM`):
their decoder is ``language_model.model``.
"""

from collections.abc import Iterator

from torch import nn

from vllm_maxact.adapters import Adapter, Probe, first
from vllm_maxact.sites import Kind, Site


class Qwen3NextAdapter(Adapter):
    name = "qwen3_next"
    architectures = ("Qwen3NextForCausalLM", "Qwen3_5ForCausalLM", "Qwen3_5MoeForCausalLM")
    router_attr = "gate"
    linear_attn_attr = "linear_attn"

    def layer_probes(self, i: int, layer: nn.Module) -> Iterator[Probe]:
        yield from super().layer_probes(i, layer)
        if getattr(layer, self.attn_attr, None) is None:
            linear = getattr(layer, self.linear_attn_attr, None)
            if linear is not None:
                yield Probe(Site(Kind.ATTN_OUT, i), linear, "output", first)


class Qwen3_5MultimodalAdapter(Qwen3NextAdapter):
    name = "qwen3_5_mm"
    architectures = ("Qwen3_5ForConditionalGeneration", "Qwen3_5MoeForConditionalGeneration")
    decoder_path = ("language_model", "model")
