"""Gemma (1): Llama layout with GeGLU; vLLM scales the embedding by sqrt(hidden) in the model
forward (`embed_input_ids`), and the embedding site (the first layer's input) includes it."""

from vllm_maxact.adapters import Adapter


class GemmaAdapter(Adapter):
    name = "gemma"
    architectures = ("GemmaForCausalLM",)
