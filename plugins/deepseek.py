"""DeepSeek V2 / V3 (and DeepSeek V1, same vLLM module): MLA attention, MoE with shared experts.

- attn_out: ``self_attn`` output. For MLA (`DeepseekV2MLAAttention`) that is the
  `MultiHeadLatentAttentionWrapper` output, after ``o_proj``; V1's MHA `DeepseekAttention`
  likewise ends in ``o_proj``.
- mlp_out: the block output: `DeepseekV2MoE` (routed experts times ``routed_scaling_factor``
  plus the shared experts) on sparse layers, `DeepseekV2MLP` on the first
  ``first_k_dense_replace`` dense layers.
- gate: dense layers only (``mlp.gate_up_proj``). In MoE layers the routed experts' gates run
  inside the fused-MoE kernel; the shared experts' ``gate_up_proj`` is not recorded (the
  site is defined for the layer's dense MLP).
- router: ``mlp.gate`` (a `GateLinear`, fp32 out for V3), the router logits before the
  ``e_score_correction_bias`` (V3) is added for top-k selection. vLLM's MoE runner calls it
  inside the fused-MoE forward; the hook fires there.

In float16 vLLM divides the hidden states (and the residual, at layer 0) by
``routed_scaling_factor`` to avoid overflow, so fp16 residual maxima are scaled; bf16 is not.
"""

from vllm_maxact.adapters import Adapter


class DeepseekAdapter(Adapter):
    name = "deepseek"
    architectures = ("DeepseekForCausalLM", "DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM")
    router_attr = "gate"
