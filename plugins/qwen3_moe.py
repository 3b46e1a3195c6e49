"""Qwen3-MoE: Qwen3 attention; sparse layers hold a `Qwen3MoeSparseMoeBlock` as ``mlp``.

- mlp_out: the MoE block output (routed experts, plus the gated shared expert where the
  config has one).
- router: ``mlp.gate`` (a `GateLinear`), the router logits. vLLM's MoE runner calls it inside
  the fused-MoE forward; the forward hook still fires there.
- gate: only on dense layers (``mlp_only_layers``, a `Qwen3MoeMLP` with ``gate_up_proj``). The
  experts' gate projections live inside the fused-MoE kernel: not observable.
"""

from vllm_maxact.adapters import Adapter


class Qwen3MoeAdapter(Adapter):
    name = "qwen3_moe"
    architectures = ("Qwen3MoeForCausalLM",)
    router_attr = "gate"
    residual_chain = True
