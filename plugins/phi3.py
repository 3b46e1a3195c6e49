"""Phi-3: vLLM's `Phi3ForCausalLM` is its Llama model (merged ``qkv_proj`` and ``gate_up_proj``
come straight from the checkpoint), so the sites are Llama's."""

from vllm_maxact.adapters import Adapter


class Phi3Adapter(Adapter):
    name = "phi3"
    architectures = ("Phi3ForCausalLM",)
    residual_chain = True
