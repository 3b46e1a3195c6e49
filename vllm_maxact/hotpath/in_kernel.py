"""Record sites inside the model's own norm and activation kernels (the opt-in `in_kernel` hot
path: no extra launch, but the served outputs change).

Where an adapter declares vLLM's Llama decoder layout (`Adapter.fusable_layout`), every
default site already flows through a kernel the model runs:

    layer i:   input_layernorm(x, residual)     x = mlp_out[i-1], x + residual = residual[i-1]
                                                 (layer 0: x = the embedding, no residual)
               post_attention_layernorm(x, r)   x = attn_out[i]
               mlp.act_fn(gate_up)              gate_up[..., :d] = gate[i]
    decoder:   norm(x, residual)                x = mlp_out[last], x + residual = residual[last],
                                                 output = final_norm

Each such module (exactly vLLM's `RMSNorm` or `SiluAndMul`, nothing derived) gets a forward
that calls `norm_kernels` (the operations of vLLM's native implementation, plus the fold), and
those sites get no hook. The operations are the same but not their order: Inductor's generated
norm sums a row in another order than these kernels, so the outputs differ in their last bits,
and every logprob downstream with them (benchmarks/RESULTS.md). Hence opt-in. Anything that does not match stays on the hooks, so a partial match
(pipeline stages, a norm with a variance size override, an adapter's own extractor) only
means fewer fused sites.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import nn

from vllm_maxact.adapters import Adapter, Probe, is_missing
from vllm_maxact.sites import Kind, Site

if TYPE_CHECKING:  # pragma: no cover
    from vllm_maxact.recorder import Recorder

logger = logging.getLogger("vllm_maxact")


def _vllm_classes() -> tuple[type, type] | None:
    try:
        from vllm.model_executor.layers.activation import SiluAndMul
        from vllm.model_executor.layers.layernorm import RMSNorm
    except ImportError:
        return None
    return RMSNorm, SiluAndMul


def _norm_ok(norm: nn.Module | None, rms_norm: type) -> bool:
    return (norm is not None and type(norm) is rms_norm and getattr(norm, "variance_size_override", None) is None
            and hasattr(norm, "_forward_method"))


def _norm_forward(norm: nn.Module, rec: Recorder, a: tuple[int, int, int] | None, b: tuple[int, int] | None):
    """A forward for vLLM ``RMSNorm`` ``norm`` that records: ``a`` = (group, position of x,
    position of x + residual) and ``b`` = (group, position of the output); -1 = not recorded."""
    eps = norm.variance_epsilon
    ga, px, ps = a if a is not None else (None, -1, -1)
    gb, po = b if b is not None else (None, -1)

    def forward(x: torch.Tensor, residual: torch.Tensor | None = None):
        has_w = getattr(norm, "pass_weight" if residual is None else "pass_weight_add", norm.has_weight)
        A = rec.groups[ga] if ga is not None else None
        B = rec.groups[gb] if gb is not None else None
        out, res = torch.ops.vllm_maxact.rms_norm_rec(
            x, residual, norm.weight.data if has_w else None, eps, rec.n_valid,
            None if A is None else A.extrema, None if A is None else A.counts, px, ps,
            None if B is None else B.extrema, None if B is None else B.counts, po,
        )
        return out if residual is None else (out, res)

    return forward


def _act_forward(rec: Recorder, g: int, pos: int):
    def forward(x: torch.Tensor) -> torch.Tensor:
        group = rec.groups[g]
        return torch.ops.vllm_maxact.silu_and_mul_rec(x, rec.n_valid, group.extrema, group.counts, pos)

    return forward


def fuse_sites(rec: Recorder, adapter: Adapter, model: nn.Module, probes: Iterable[Probe]) -> set[int]:
    """Move what it can of ``probes``' sites into the model's norm / activation kernels;
    returns the slots it took (they need no hook). Where it cannot apply, a warning names the
    reason and every site stays on the hooks."""
    classes = _vllm_classes()
    why = (f"adapter {adapter.name!r} does not declare vLLM's Llama layout" if not getattr(adapter, "fusable_layout", False)
           else "the INT-8 check is on (it reads every site in the hooks)" if rec.int8
           else "vLLM's RMSNorm / SiluAndMul classes are not importable" if classes is None else None)
    if why is not None:
        logger.warning("vllm-maxact: VLLM_MAXACT_HOT_PATH=in_kernel records no site inside the model's kernels: "
                       "%s; every site is recorded by hooks", why)
        return set()
    from vllm_maxact.hotpath import norm_kernels  # noqa: F401  (registers the ops)

    rms_norm, silu_and_mul = classes
    dec = adapter.decoder(model)
    layers = getattr(dec, adapter.layers_attr)
    rng = adapter.layer_range(dec)
    slot = {p.site: s for s, p in enumerate(probes) if p.module is not None}

    def where(site: Site) -> tuple[int, int] | None:
        s = slot.get(site)
        return None if s is None else rec.where[s]

    taken: set[int] = set()
    norms: dict[int, tuple[nn.Module, tuple | None, tuple | None, list[Site]]] = {}

    def plan(norm: nn.Module | None, x: Site | None, s: Site | None = None, o: Site | None = None) -> None:
        if not _norm_ok(norm, rms_norm):
            return
        wx, ws, wo = (where(k) if k is not None else None for k in (x, s, o))
        if wx and ws and wx[0] != ws[0]:
            ws = None  # x and the sum must share a group (one buffer pair per launch); the sum stays hooked
        ga = (wx or ws or (None,))[0]
        a = (ga, wx[1] if wx else -1, ws[1] if ws else -1) if (wx or ws) else None
        b = wo
        if a is None and b is None:
            return
        norms[id(norm)] = (norm, a, b, [k for k, w in ((x, wx), (s, ws), (o, wo)) if w])

    def layer(i: int) -> nn.Module | None:
        return None if is_missing(layers[i]) else layers[i]

    last = len(layers) - 1
    for i in rng:
        ly = layer(i)
        if ly is None:
            continue
        if i == 0:
            plan(getattr(ly, "input_layernorm", None), Site(Kind.EMBEDDING))
        plan(getattr(ly, "post_attention_layernorm", None), Site(Kind.ATTN_OUT, i))
        if i + 1 in rng and layer(i + 1) is not None:
            plan(getattr(layer(i + 1), "input_layernorm", None), Site(Kind.MLP_OUT, i), Site(Kind.RESIDUAL, i))
        elif i == last:
            norm = getattr(dec, adapter.norm_attr, None)
            plan(None if is_missing(norm) else norm, Site(Kind.MLP_OUT, i), Site(Kind.RESIDUAL, i),
                 Site(Kind.FINAL_NORM))
        mlp = getattr(ly, adapter.mlp_attr, None)
        act = getattr(mlp, "act_fn", None)
        w = where(Site(Kind.GATE, i))
        if w and type(act) is silu_and_mul and hasattr(act, "_forward_method") and \
                getattr(mlp, adapter.gate_up_attr, None) is not None:
            act._forward_method = _act_forward(rec, w[0], w[1])
            taken.add(slot[Site(Kind.GATE, i)])
    for norm, a, b, sites in norms.values():
        norm._forward_method = _norm_forward(norm, rec, a, b)
        taken.update(slot[k] for k in sites)
    if taken:
        logger.info("vllm-maxact: %d of %d sites recorded inside the model's own norm and activation kernels "
                    "(%d norms, %d activations); the rest by hooks", len(taken), len(slot), len(norms),
                    sum(1 for s in taken if rec.sites[s].kind == Kind.GATE))
    return taken
