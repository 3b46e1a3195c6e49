"""Qwen3: Llama layout with q/k norms inside attention (inside the attn_out site)."""

from vllm_maxact.adapters import Adapter


class Qwen3Adapter(Adapter):
    name = "qwen3"
    architectures = ("Qwen3ForCausalLM",)
    fusable_layout = True
    residual_chain = True
