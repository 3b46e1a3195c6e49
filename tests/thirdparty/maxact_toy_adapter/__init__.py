"""An adapter for a made-up family, laid out unlike Llama on purpose.

``ToyForCausalLM`` keeps its decoder under ``backbone``, its layers in ``blocks``, attention as
``mixer``, the MLP as ``ffn`` (with a merged ``w_in`` whose first half is the gate) and the final
norm as ``ln_out``; a block is called as ``block(hidden_states)`` and returns one tensor, the
residual stream. Everything the core needs is attribute names; nothing in vllm-maxact names
this family.
"""

from vllm_maxact.adapters import Adapter


class ToyAdapter(Adapter):
    name = "toy"
    architectures = ("ToyForCausalLM",)
    decoder_path = ("backbone",)
    layers_attr = "blocks"
    attn_attr = "mixer"
    mlp_attr = "ffn"
    gate_up_attr = "w_in"
    norm_attr = "ln_out"
    hidden_arg_index = 0
