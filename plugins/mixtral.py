"""Mixtral: Llama attention, and a `MixtralMoE` named ``block_sparse_moe`` instead of ``mlp``.

- mlp_out: the ``block_sparse_moe`` output (all experts, weighted).
- router: ``block_sparse_moe.gate`` (a `GateLinear`), the router logits.
- gate: not observable (every layer is sparse; the experts' w1 runs inside the fused-MoE
  kernel).
"""

from vllm_maxact.adapters import Adapter


class MixtralAdapter(Adapter):
    name = "mixtral"
    architectures = ("MixtralForCausalLM",)
    mlp_attr = "block_sparse_moe"
    router_attr = "gate"
    residual_chain = True
