"""Attach a `Recorder` to a loaded vLLM model, before vLLM compiles it.

Hooks are registered right after weights load and before the first forward, so Dynamo traces
them into the compiled graph (hooks added after the first trace would never run).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn

from vllm_maxact.adapters import Adapter, Probe, find_adapter, first, hidden_arg, is_missing
from vllm_maxact.config import MaxActConfig
from vllm_maxact.hotpath import CHAIN_ADD, CHAIN_SET, Operand, choose
from vllm_maxact.recorder import Recorder
from vllm_maxact.sites import CHANNEL_KINDS, Kind, Site

logger = logging.getLogger("vllm_maxact")


def select(probes: Iterable[Probe], cfg: MaxActConfig) -> list[Probe]:
    kinds = set(cfg.kinds)
    layers = cfg.layer_set()
    out = []
    for p in probes:
        if p.site.kind not in kinds:
            continue
        if layers is not None and p.site.layer is not None and p.site.layer not in layers:
            continue
        out.append(p)
    # Stable slot order: embedding, then by layer and kind, then final norm.
    order = {k: i for i, k in enumerate(Kind)}
    out.sort(key=lambda p: (p.site.layer is None and p.site.kind != Kind.EMBEDDING,
                            -1 if p.site.layer is None else p.site.layer, order[p.site.kind]))
    return out


def _record(rec: Recorder, slot: int, x) -> None:
    if x is not None:
        rec.record(slot, x)


def _output_hook(rec: Recorder, slot: int, extract):
    def hook(module: nn.Module, args, output) -> None:
        _record(rec, slot, extract(output))

    return hook


def _input_hook(rec: Recorder, slot: int, extract):
    def hook(module: nn.Module, args, kwargs) -> None:
        _record(rec, slot, extract(args, kwargs))

    return hook


def _flush_hook(rec: Recorder, group: int):
    def hook(module: nn.Module, args, output) -> None:
        rec.flush(group)

    return hook


def _flush_pre_hook(rec: Recorder, group: int):
    def hook(module: nn.Module, args) -> None:
        rec.flush(group)

    return hook


def _join_hook(rec: Recorder):
    def hook(module: nn.Module, *args) -> None:
        rec.join()

    return hook


def _is_norm(module: nn.Module) -> bool:
    return type(module).__name__.endswith("Norm")


def linear_width(module: nn.Module) -> int:
    """Input features of a (vLLM or torch) linear layer as this rank sees them: the width of a
    channel site (a row-parallel layer's shard under tensor parallelism)."""
    for attr in ("input_size_per_partition", "input_size", "in_features"):
        if isinstance(getattr(module, attr, None), int):
            return getattr(module, attr)
    return module.weight.shape[-1]


def _contains(outer: nn.Module, inner: nn.Module) -> bool:
    return any(m is inner for m in outer.modules())


def _keep_inputs(norm: nn.Module) -> bool:
    """Make vLLM's RMSNorm ``norm`` call the fused add + RMSNorm's default (functional) overload
    instead of ``maybe_inplace``, so its inputs stay valid after it and a layer's pending sites
    can wait for the layer's end. Only the exact RMSNorm class, whose native forward is known,
    dispatched to that native forward (compiled) or to ``forward_cuda`` (eager, which ends in
    ``self.forward_native``); returns False for anything else (the caller folds before it)."""
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

    func = getattr(getattr(norm, "_forward_method", None), "__func__", None)
    if func is RMSNorm.forward_native:
        norm._forward_method = forward_native
    elif func is not RMSNorm.forward_cuda:
        return False
    norm.forward_native = forward_native
    return True


def defer_layer_folds(rec: Recorder, probes: list[Probe], skip: set[int] | frozenset = frozenset()) -> int:
    """Fold each decoder layer's sites once, after the layer returns (one kernel, or one CPU op
    call, per layer instead of one per site). A layer qualifies when one of its probed modules
    contains all the others (the layer itself, for every shipped adapter): a forward hook on it,
    added after the site hooks, runs after all of them. Returns the number of deferred layers.

    The fold reads the activations themselves at the layer's end, and vLLM's fused add + RMSNorm
    may take its inputs in place (``maybe_inplace``: it donates them). Under torch.compile,
    vLLM's RMSNorm inside such a layer calls the functional overload instead (`_keep_inputs`),
    which is exactly what vLLM's own compile pass turns ``maybe_inplace`` into, so the compiled
    model is the same. Eager (no compile), the in-place kernel really runs: any norm inside the
    layer gets a fold of what is pending just before it. Slots in ``skip`` are recorded
    elsewhere (`HotPath.take_sites`) and have no hook."""
    by_layer: dict[int, list[tuple[int, Probe]]] = {}
    for slot, p in enumerate(probes):
        if p.site.layer is not None and slot not in skip:
            by_layer.setdefault(p.site.layer, []).append((slot, p))
    n = kept = 0
    for members in by_layer.values():
        anchor = next((p.module for _, p in members if all(_contains(p.module, q.module) for _, q in members)), None)
        if anchor is None:
            continue
        group = rec.defer(members[0][0])
        anchor.register_forward_hook(_flush_hook(rec, group))
        for m in anchor.modules():
            if m is not anchor and _is_norm(m):
                if rec.strategy.compiled and _keep_inputs(m):
                    kept += 1
                else:
                    m.register_forward_pre_hook(_flush_pre_hook(rec, group))
        n += 1
    if n:
        logger.info("vllm-maxact: %d layers fold once each; %d norms inside them keep their inputs", n, kept)
    return n


def _attention_op(layer: nn.Module) -> nn.Module | None:
    """vLLM's attention op module inside ``layer`` (the call vLLM splits its compiled graph at)."""
    return next((m for m in layer.modules() if type(m).__name__ in ("Attention", "MLAAttention")), None)


def add_join_points(rec: Recorder, adapter: Adapter, model: nn.Module, probes: list[Probe]) -> None:
    """Where overlapped folds (`HotPath.overlapped`) are joined: before each decoder layer's
    attention op (the folds of the layer before it have had that layer's norm, projections and
    rotary embedding to run alongside; vLLM compiles and captures the code between two attention
    calls as one piece, so a fold and its join always share a piece), and after the stage's last
    site (the final norm, or the last layer of a pipeline stage without one). The tensors a fold
    reads stay unwritten until its join (`HotPath.join`)."""
    dec = adapter.decoder(model)
    layers = getattr(dec, adapter.layers_attr)
    last = None
    for i in adapter.layer_range(dec):
        if is_missing(layers[i]):
            continue
        last = layers[i]
        attn = _attention_op(last)
        (attn or last).register_forward_pre_hook(_join_hook(rec))
    final = next((p.module for p in probes if p.site.layer is None and p.site.kind.value == "final_norm"), None)
    if final is not None:
        final.register_forward_hook(_join_hook(rec))
    elif last is not None:
        last.register_forward_hook(_join_hook(rec))


def hidden_size(model: nn.Module, adapter: Adapter) -> int | None:
    """The width of the residual stream: the model config's hidden size, else the embedding's."""
    for obj in (model, adapter.decoder(model)):
        size = getattr(getattr(obj, "config", None), "hidden_size", None)
        if isinstance(size, int):
            return size
    emb = getattr(adapter.decoder(model), "embed_tokens", None)
    weight = getattr(emb, "weight", None)
    return int(weight.shape[-1]) if weight is not None and weight.dim() == 2 else None


def residual_chain(rec: Recorder, adapter: Adapter, model: nn.Module, probes: list[Probe]) -> set[int]:
    """Record the residual stream of a compiled model from tensors it writes anyway.

    vLLM's decoder layers hand the stream on as ``(hidden, residual)`` not yet added, and under
    torch.compile Inductor never writes it out: the next norm adds it up in float32 in its own
    kernel, and carries the chain in float32 from layer to layer (it drops the round trip through
    the model's dtype that eager execution has). Reading it would make Inductor write it, in the
    model's dtype, and the next layers would then read it back rounded: different logprobs. So
    the recorder keeps its own float32 chain, set from the embedding (or, on a later pipeline
    stage, from the pair it receives) and incremented by each layer's attention and MLP outputs,
    which are projection outputs the model writes anyway; the residual sites are its values.
    In order: ``(chain + attn) + mlp``, as the norms add it. Returns the residual slots it
    records (they get no hook). Needs the family's residual to be exactly those increments
    (`Adapter.residual_chain`)."""
    dec = adapter.decoder(model)
    layers = getattr(dec, adapter.layers_attr)
    rng = adapter.layer_range(dec)
    present = [i for i in rng if not is_missing(layers[i])]
    if not present or rec.chain.numel() == 0:
        return set()
    parts = {i: (getattr(layers[i], adapter.attn_attr, None), getattr(layers[i], adapter.mlp_attr, None))
             for i in present}
    if any(a is None or m is None for a, m in parts.values()):
        return set()
    slot_of = {p.site: s for s, p in enumerate(probes)}
    layer_slots: dict[int, list[int]] = {}
    for s, p in enumerate(probes):
        if p.site.layer is not None:
            layer_slots.setdefault(p.site.layer, []).append(s)
    stash: dict[tuple[int, str], torch.Tensor] = {}
    extract = hidden_arg(adapter.hidden_arg_index)

    def init(module, args, kwargs) -> None:
        residual = kwargs.get("residual", args[adapter.hidden_arg_index + 1]
                              if len(args) > adapter.hidden_arg_index + 1 else None)
        rec.update_chain(Operand(extract(args, kwargs), residual, chain=CHAIN_SET))

    layers[present[0]].register_forward_pre_hook(init, with_kwargs=True)
    taken = set()
    for i in present:
        attn, mlp = parts[i]
        attn.register_forward_hook(lambda m, a, o, i=i: stash.__setitem__((i, "attn"), first(o)))
        mlp.register_forward_hook(lambda m, a, o, i=i: stash.__setitem__((i, "mlp"), first(o)))
        slot = slot_of.get(Site(Kind.RESIDUAL, i))
        group = rec.where[layer_slots[i][0]][0] if i in layer_slots else None

        def step(module, args, out, i=i, slot=slot, group=group) -> None:
            op = Operand(stash.pop((i, "attn")), stash.pop((i, "mlp")), chain=CHAIN_ADD)
            if slot is not None:
                rec.record(slot, op)
            else:
                rec.update_chain(op, group)

        layers[i].register_forward_hook(step)
        if slot is not None:
            taken.add(slot)
    return taken


def load_calibration(rec: Recorder, path) -> None:
    """Live drift: thresholds from a `vllm-maxact scales` file; evaluate from the start. The
    first column (the one exported) is the threshold the file's scales were chosen with
    (``quantization.threshold``: ``max``, or ``p999`` for a checkpoint built with p99.9 scales),
    so the clip rate is against the deployed scale."""
    from vllm_maxact.int8 import deployed_threshold, read_scales

    scales = read_scales(path)
    first, second = ("threshold_p999", "threshold_max") if deployed_threshold(path) == "p999" else \
        ("threshold_max", "threshold_p999")
    thr = [[scales.get(s.name, {}).get(first) or 0.0, scales.get(s.name, {}).get(second) or 0.0]
           for s in rec.sites]
    missing = [s.name for s, t in zip(rec.sites, thr, strict=True) if not t[0]]
    if missing:
        logger.warning("vllm-maxact: calibration %s has no threshold for %d sites (e.g. %s)", path, len(missing),
                       missing[0])
    rec.set_int8(2, thr)


#: rows of the residual chain where the engine's token budget is unknown (tests)
DEFAULT_CHAIN_ROWS = 4096


def instrument(
    model: nn.Module, cfg: MaxActConfig, device: torch.device, adapter: Adapter | None = None,
    compiled: bool = True, max_tokens: int | None = None,
) -> Recorder | None:
    """Register recording hooks on ``model``; returns its recorder, or None if unsupported.
    ``compiled``: vLLM will run the model under torch.compile (False: enforce_eager);
    ``max_tokens``: the most tokens one forward carries (vLLM's max_num_batched_tokens)."""
    adapter = adapter or find_adapter(model)
    arch = type(model).__name__
    if adapter is None:
        logger.warning(
            "vllm-maxact: no adapter for architecture %s; this model is served WITHOUT activation "
            "recording. Add an adapter (entry-point group 'vllm_maxact.adapters') to cover it.",
            arch,
        )
        return None
    probes = select(adapter.probes(model), cfg)
    seen = set()
    for p in probes:
        if p.site in seen:
            raise RuntimeError(f"adapter {adapter.name!r} yields site {p.site} twice")
        seen.add(p.site)
    widths = {p.site: linear_width(p.module) for p in probes if p.site.kind in CHANNEL_KINDS}
    strategy = choose(cfg.hot_path, device, compiled)
    hidden = hidden_size(model, adapter)
    chained = (compiled and not strategy.changes_outputs and not cfg.int8_enabled and hidden is not None
               and getattr(adapter, "residual_chain", False) and any(p.site.kind == Kind.RESIDUAL for p in probes))
    rec = Recorder([p.site for p in probes], device=device, window_s=cfg.window_s, int8=cfg.int8_enabled,
                   int8_hist=cfg.int8_check, hot_path=strategy, widths=widths,
                   chain_shape=(max_tokens or DEFAULT_CHAIN_ROWS, hidden) if chained else None)
    if cfg.calibration is not None:
        load_calibration(rec, cfg.calibration)
    rec.adapter_name = adapter.name
    rec.architecture = arch
    taken = strategy.take_sites(rec, adapter, model, probes)
    rec.in_kernel_sites = [rec.sites[s].name for s in sorted(taken)]
    chain_slots = residual_chain(rec, adapter, model, probes) if chained else set()
    for slot, p in enumerate(probes):
        if slot in taken or slot in chain_slots:
            continue
        if p.on == "output":
            p.module.register_forward_hook(_output_hook(rec, slot, p.extract))
        else:
            p.module.register_forward_pre_hook(_input_hook(rec, slot, p.extract), with_kwargs=True)
    defer_layer_folds(rec, probes, taken)
    if compiled:
        # A fold or join may read a norm's inputs after the norm (the last layer's MLP output
        # after the final norm, a join after the next layer's norm): every vLLM RMSNorm of the
        # decoder calls the functional overload, which is what vLLM's compile pass makes of
        # ``maybe_inplace`` anyway (the same compiled model), and passes its check that no
        # donated input is used again.
        for m in adapter.decoder(model).modules():
            if _is_norm(m):
                _keep_inputs(m)
    if strategy.overlapped:
        add_join_points(rec, adapter, model, probes)
    # Keep the recorder reachable from the compiled module so its buffers are module state.
    adapter.decoder(model).maxact_recorder = rec
    n_layers = len({p.site.layer for p in probes if p.site.layer is not None})
    logger.info(
        "vllm-maxact: recording %d sites of %s (adapter %s, %d layers, kinds %s, hot path %s%s%s)",
        len(probes), arch, adapter.name, n_layers, ",".join(sorted({p.site.kind.value for p in probes})),
        strategy.describe(), f", {len(taken)} inside the model's kernels" if taken else "",
        "; the served outputs CHANGE (in-kernel recording rounds differently)" if strategy.changes_outputs else "",
    )
    return rec
