"""VARIANT (benchmarks/variants/triton_one_fold), over the tree's instrument.py (kept by
benchmarks/variants/apply.sh as `_tree_instrument`): one fold per decoder layer on the
raw-tensor paths; vLLM's RMSNorm inside instrumented layers calls the non-donating fused
add + norm, so what a deferred fold still holds (the attention output) stays valid to the
layer's end. Only `defer_layer_folds` changes (patched into the tree module, whose
`instrument` calls it) and `_keep_inputs` is new."""

from __future__ import annotations

from torch import nn
from vllm_maxact._tree_instrument import *  # noqa: F403

from vllm_maxact import _tree_instrument as _tree
from vllm_maxact.adapters import Probe
from vllm_maxact.recorder import Recorder


def _keep_inputs(norm: nn.Module) -> bool:
    """Make vLLM's RMSNorm ``norm`` call the fused add + RMSNorm's default (functional)
    overload instead of ``maybe_inplace``, so its inputs stay valid after it. Only the exact
    RMSNorm class, whose native forward is known; returns False for anything else (the caller
    then folds before it)."""
    try:
        from vllm import ir
        from vllm.model_executor.layers.layernorm import RMSNorm
    except ImportError:
        return False
    if type(norm) is not RMSNorm:
        return False

    def forward_native(x, residual=None):
        if residual is None:
            return RMSNorm.forward_native(norm, x, None)
        return ir.ops.fused_add_rms_norm(
            x, residual, norm.weight.data if norm.pass_weight_add else None, norm.variance_epsilon,
            norm.variance_size_override,
        )

    # CustomOp binds its dispatch at init: forward_native itself, or forward_cuda, which ends in
    # self.forward_native; anything else (a compiled or device-specific kernel) is left alone.
    func = getattr(getattr(norm, "_forward_method", None), "__func__", None)
    if func is RMSNorm.forward_native:
        norm._forward_method = forward_native
    elif func is not RMSNorm.forward_cuda:
        return False
    norm.forward_native = forward_native
    return True


def defer_layer_folds(rec: Recorder, probes: list[Probe]) -> int:
    """The tree's, except that on the raw-tensor paths a norm `_keep_inputs` can change gets no
    fold before it (one fold per layer)."""
    by_layer: dict[int, list[tuple[int, Probe]]] = {}
    for slot, p in enumerate(probes):
        if p.site.layer is not None:
            by_layer.setdefault(p.site.layer, []).append((slot, p))
    n = kept = 0
    for members in by_layer.values():
        anchor = next((p.module for _, p in members if all(_tree._contains(p.module, q.module) for _, q in members)),
                      None)
        if anchor is None:
            continue
        group = rec.defer(members[0][0])
        anchor.register_forward_hook(_tree._flush_hook(rec, group))
        for m in anchor.modules():
            if m is not anchor and _tree._is_norm(m):
                if rec.hot_path != "fused" and _keep_inputs(m):
                    kept += 1
                else:
                    m.register_forward_pre_hook(_tree._flush_pre_hook(rec, group))
        n += 1
    _tree.logger.info("vllm-maxact: %d layers fold once each; %d norms inside them keep their inputs", n, kept)
    return n


_tree.defer_layer_folds = defer_layer_folds
