"""Llama, Mistral and SmolLM2: vLLM's reference decoder layout."""

from vllm_maxact.adapters import Adapter


class LlamaAdapter(Adapter):
    name = "llama"
    architectures = ("LlamaForCausalLM", "MistralForCausalLM")
    fusable_layout = True
    residual_chain = True
