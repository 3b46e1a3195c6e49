"""Gemma 3 multimodal (`Gemma3ForConditionalGeneration`): the text backbone.

vLLM builds the language model as ``language_model`` (a `Gemma3ForCausalLM`), so the decoder
is ``language_model.model``; sites are Gemma 3's (see gemma3.py). The SigLIP vision tower is
not instrumented. The embedding site is the first layer's input: token embeddings times
sqrt(hidden), with the projected image embeddings merged in.
"""

from vllm_maxact.plugins.gemma3 import Gemma3Adapter


class Gemma3MultimodalAdapter(Gemma3Adapter):
    name = "gemma3_mm"
    architectures = ("Gemma3ForConditionalGeneration",)
    decoder_path = ("language_model", "model")
