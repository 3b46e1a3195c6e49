"""Qwen2 and Qwen2.5: Llama layout (QKV bias does not change the sites)."""

from vllm_maxact.adapters import Adapter


class Qwen2Adapter(Adapter):
    name = "qwen2"
    architectures = ("Qwen2ForCausalLM",)
    fusable_layout = True
    residual_chain = True
