"""gpt-oss: `TransformerBlock` layers with ``attn`` (not ``self_attn``) and an `MLPBlock`.

- The layer is called as ``layer(x, positions, residual)``: the hidden states are the first
  positional argument (embedding site).
- attn_out: ``attn`` output (after ``o_proj``; attention sinks and sliding windows inside).
- mlp_out: the `MLPBlock` output (experts' weighted sum, trimmed to hidden size).
- router: ``mlp.router`` (a `GateLinear` with bias), the router logits.
- gate: not observable: every layer is MoE and the experts' interleaved gate/up projection
  and SwiGLU (with clamping) run inside the fused-MoE kernel.
- final_norm: ``norm`` (returns ``(normed, residual)``; the first element is recorded).
"""

from vllm_maxact.adapters import Adapter


class GptOssAdapter(Adapter):
    name = "gpt_oss"
    architectures = ("GptOssForCausalLM",)
    attn_attr = "attn"
    router_attr = "router"
    hidden_arg_index = 0
