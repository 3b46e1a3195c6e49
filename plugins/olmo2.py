"""OLMo 2 (and OLMo 3, same layer layout): served by vLLM's Transformers modeling backend.

vLLM 0.32 has no native OLMo 2 model: the registry maps `Olmo2ForCausalLM` to
`TransformersForCausalLM`, which wraps the Hugging Face `Olmo2Model` (``model``) and swaps in
vLLM's linear, norm, embedding and attention layers. So the module tree is Hugging Face's:

- Layers are `Olmo2DecoderLayer`s called as ``layer(hidden_states, ...)`` (first positional
  argument). OLMo 2 is post-norm: ``h = h + post_attention_layernorm(self_attn(h))``, then
  ``h = h + post_feedforward_layernorm(mlp(h))``; the layer returns that single tensor, which
  already is the residual stream (``residual_sum`` passes a tensor through).
- attn_out: ``self_attn`` output[0] (after ``o_proj``, before ``post_attention_layernorm``);
  the q/k norms are inside.
- mlp_out: ``mlp`` output, before ``post_feedforward_layernorm``.
- gate: vLLM's GLU fuser usually merges ``gate_proj``/``up_proj`` into ``gate_up_proj`` (gate
  half first); where it does not, the unfused ``gate_proj`` output is recorded.
- final_norm: ``model.norm``.

Matching is on the wrapper class *and* the config's model type, because
`TransformersForCausalLM` serves many families (the rest get the generic fallback).
"""

from collections.abc import Iterator

from torch import nn

from vllm_maxact.adapters import Adapter, Probe, first
from vllm_maxact.sites import Kind, Site


class Olmo2Adapter(Adapter):
    name = "olmo2"
    architectures = ("TransformersForCausalLM",)
    model_types = ("olmo2", "olmo3")
    hidden_arg_index = 0

    def matches(self, model: nn.Module) -> bool:
        if not super().matches(model):
            return False
        config = getattr(model, "text_config", None) or getattr(model, "config", None)
        return getattr(config, "model_type", None) in self.model_types

    def layer_probes(self, i: int, layer: nn.Module) -> Iterator[Probe]:
        yield from super().layer_probes(i, layer)
        mlp = getattr(layer, self.mlp_attr, None)
        if mlp is not None and getattr(mlp, self.gate_up_attr, None) is None:
            gate_proj = getattr(mlp, "gate_proj", None)
            if gate_proj is not None:
                yield Probe(Site(Kind.GATE, i), gate_proj, "output", first)
