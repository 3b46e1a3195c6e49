"""Gemma 3 (text).

vLLM's Gemma3 multiplies the embedding by sqrt(hidden) inside the model forward; the embedding
site reads the first layer's input, so the scale is included. attn_out and mlp_out are the
block outputs before Gemma's post-attention / post-feedforward norms, as in the study.
"""

from vllm_maxact.adapters import Adapter


class Gemma3Adapter(Adapter):
    name = "gemma3"
    architectures = ("Gemma3ForCausalLM",)
