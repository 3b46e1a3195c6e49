"""Qwen2-VL and Qwen2.5-VL: the text backbone (a Qwen2 decoder) of the multimodal model.

vLLM builds the language model as ``language_model`` (a `Qwen2ForCausalLM`), so the decoder
is ``language_model.model``; its layers are Qwen2's. Only the text backbone is instrumented:
the vision tower's blocks are not sites. The embedding site is the first layer's input, i.e.
the token embeddings with image/video embeddings merged in.
"""

from vllm_maxact.plugins.qwen2 import Qwen2Adapter


class Qwen2VLAdapter(Qwen2Adapter):
    name = "qwen2_vl"
    architectures = ("Qwen2_5_VLForConditionalGeneration", "Qwen2VLForConditionalGeneration")
    decoder_path = ("language_model", "model")
