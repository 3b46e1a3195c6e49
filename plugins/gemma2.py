"""Gemma 2: sandwich norms. attn_out is ``self_attn``'s output before
``post_attention_layernorm``; mlp_out is ``mlp``'s output before
``post_feedforward_layernorm`` (the study's semantics). The embedding site includes the
sqrt(hidden) scale. The layer returns ``(hidden, residual)`` unadded, like Llama's.
"""

from vllm_maxact.adapters import Adapter


class Gemma2Adapter(Adapter):
    name = "gemma2"
    architectures = ("Gemma2ForCausalLM",)
