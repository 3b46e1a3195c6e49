"""Ling / Bailing-MoE (`BailingMoeForCausalLM`, `BailingMoeV2ForCausalLM`).

- Layers are `BailingMoeBlock`s called as ``layer(hidden_states, position_ids, residual)``:
  the hidden states are the first positional argument (embedding site; the embedding module
  is ``word_embeddings``).
- attn_out: ``attention`` output (after its ``dense`` output projection).
- mlp_out: ``mlp`` output: `BailingMoE` (routed experts plus shared experts) or, for the first
  ``first_k_dense_replace`` layers, `BailingMLP`.
- gate: dense layers only (``mlp.gate_up_proj``); the experts' gates are inside the fused-MoE
  kernel.
- router: ``mlp.gate`` (a `GateLinear`), the router logits (before the expert bias).
"""

from vllm_maxact.adapters import Adapter


class BailingMoeAdapter(Adapter):
    name = "bailing_moe"
    architectures = ("BailingMoeForCausalLM", "BailingMoeV2ForCausalLM")
    attn_attr = "attention"
    router_attr = "gate"
    hidden_arg_index = 0
