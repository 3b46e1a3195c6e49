"""An independent reference recorder: plain PyTorch forward hooks on a transformers model.

This is the yardstick the vLLM recorder is tested against, so it deliberately shares no code
with it: the only import from this package is the site naming in `sites.py`. It follows the
study's method (Hugging Face forward hooks, one sequence at a time) and reduces every
activation inside its hook in float32, so nothing is stored.

Where each site is, per decoder layer i (module names of Llama, Mistral, Qwen2, Qwen3,
Qwen3-MoE, Qwen3-Next, Mixtral, Gemma 1/2/3, Phi-3, OLMo 2, DeepSeek V2/V3 and gpt-oss in
transformers; for multimodal wrappers such as Gemma 3 multimodal and Qwen2.5-VL, those of their
text backbone, found as the module with `embed_tokens`, `layers` and `norm`: the vision
tower's blocks are not sites):

- `layers.{i}.residual`: the decoder layer's output (output[0] if it returns a tuple), i.e.
  the residual stream after the layer (hidden + residual).
- `layers.{i}.attn_out`: the `self_attn` module's output[0]: after o_proj, before any
  post-attention norm (Gemma 2/3 and OLMo 2 norm it afterwards in the decoder layer); in hybrid
  stacks (Qwen3-Next, Qwen3.5) the `linear_attn` module's output on linear-attention layers.
- `layers.{i}.mlp_out`: the `mlp` (or `block_sparse_moe`) module's output; for MoE blocks the
  whole block's output; before any post-feedforward norm.
- `layers.{i}.gate`: `mlp.gate_proj` output, before the activation, or the first half of
  `mlp.gate_up_proj`'s output where the projection is merged (Phi-3) (dense MLPs only: fused
  MoE experts have no per-expert module to hook).
- `layers.{i}.router`: the MoE block's `gate` (gpt-oss: `router`) module output (output[0]
  when the router returns `(logits, scores, indices)` as transformers 5 does): the router
  logits.
- `embedding`: `embed_tokens` output including the embedding scale. Gemma 1/2/3 scale by
  sqrt(hidden_size). In transformers 5 the scale lives inside the embedding module
  (`*ScaledWordEmbedding`, which has an `embed_scale` buffer), so the hook sees it; older
  transformers applied Gemma 1/2's `normalizer` in the model forward instead, so for those
  model types, when the module has no `embed_scale`, the hook multiplies by the normalizer
  itself (in the activation dtype, as the model does).
- `final_norm`: the base model's `norm` output.

Opt-in sites, recorded by the reference too:

- `layers.{i}.o_in` / `layers.{i}.down_in`: the input of `self_attn.o_proj` / `mlp.down_proj`
  (forward pre-hooks), with per-channel max |x|; `attn_in` / `mlp_in` likewise on the inputs of
  `q_proj` (or `qkv_proj`) and `gate_proj` (or `gate_up_proj`).
- `layers.{i}.k` / `layers.{i}.v`: the keys and values the layer hands its KV cache (a
  `DynamicCache` whose ``update`` records them: after RoPE and any k-norm, whatever the
  attention implementation), one row per token.

Models with attention logit soft-capping (Gemma 2: `attn_logit_softcapping`) are loaded with
the eager attention implementation: transformers' default SDPA path ignores the soft-cap, so it
would compute a different function from the model (and from vLLM, which applies it).

max/min/absmax ignore NaN (counted in `nan`) and include +-inf (also counted in `inf`): an
overflow to inf is an extreme the user wants to see, a NaN is not a magnitude.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vllm_maxact.sites import GLOBAL_KINDS, Kind, Site

#: Model types whose embedding is multiplied by sqrt(hidden_size) before the first layer.
_SCALED_EMBEDDING_TYPES = frozenset({"gemma", "gemma2", "gemma3", "gemma3_text", "gemma3n", "gemma3n_text"})


@dataclass
class SiteStats:
    max: float = -math.inf
    min: float = math.inf
    absmax: float = 0.0
    tokens: int = 0
    nan: int = 0
    inf: int = 0
    #: per-channel max |x| (float64 [features]) of the linear-input sites, else None
    channel_absmax: Any = None

    def update(self, x: torch.Tensor, channels: bool = False) -> None:
        """Fold one activation tensor (any shape, last dim = features) into the stats."""
        x = x.detach().float()
        if channels:
            c = torch.nan_to_num(x.abs(), nan=0.0).reshape(-1, x.shape[-1]).amax(0).double()
            self.channel_absmax = c if self.channel_absmax is None else torch.maximum(self.channel_absmax, c)
        self.tokens += x.numel() // x.shape[-1] if x.dim() else 1
        isnan = torch.isnan(x)
        n_nan = int(isnan.sum())
        self.nan += n_nan
        self.inf += int(torch.isinf(x).sum())
        if n_nan:
            x = x[~isnan]
        if x.numel() == 0:
            return
        hi, lo = float(x.max()), float(x.min())
        self.max = max(self.max, hi)
        self.min = min(self.min, lo)
        self.absmax = max(self.absmax, abs(hi), abs(lo))


def _first(output: Any) -> torch.Tensor:
    # Decoder layers, attention and routers may return tuples; the activation is element 0.
    return output[0] if isinstance(output, (tuple, list)) else output


def _gate_half(output: Any) -> torch.Tensor:
    x = _first(output)
    return x[..., : x.shape[-1] // 2]


def _find_base_model(model: nn.Module) -> nn.Module:
    """The module holding `embed_tokens`, `layers` and `norm` (the decoder stack)."""
    for _, module in model.named_modules():
        if (
            isinstance(getattr(module, "layers", None), nn.ModuleList)
            and isinstance(getattr(module, "embed_tokens", None), nn.Module)
            and isinstance(getattr(module, "norm", None), nn.Module)
        ):
            return module
    raise ValueError(f"{type(model).__name__}: no submodule with embed_tokens, layers and norm")


def _model_type(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    text_config = getattr(config, "text_config", None)  # multimodal wrappers (Gemma3ForConditionalGeneration)
    return str(getattr(text_config or config, "model_type", ""))


def _hidden_size(model: nn.Module) -> int:
    config = model.config
    return int((getattr(config, "text_config", None) or config).hidden_size)


def site_modules(model: nn.Module) -> list[tuple[str, nn.Module, Callable[[Any], torch.Tensor]]]:
    """(site name, module to hook, output -> activation) for every site this model has."""
    base = _find_base_model(model)
    sites: list[tuple[str, nn.Module, Callable[[Any], torch.Tensor]]] = []

    embed = base.embed_tokens
    if _model_type(model) in _SCALED_EMBEDDING_TYPES and not hasattr(embed, "embed_scale"):
        # Older transformers: Gemma 1/2 multiply by the normalizer in the model forward, in the
        # activation dtype (bf16 rounding of sqrt(hidden) included), so do the same here.
        scale = _hidden_size(model) ** 0.5

        def embed_get(out: Any) -> torch.Tensor:
            out = _first(out)
            return out * torch.tensor(scale, dtype=out.dtype)

        sites.append((Site(Kind.EMBEDDING).name, embed, embed_get))
    else:
        sites.append((Site(Kind.EMBEDDING).name, embed, _first))

    for i, layer in enumerate(base.layers):
        sites.append((Site(Kind.RESIDUAL, i).name, layer, _first))
        attn = getattr(layer, "self_attn", None)
        if attn is None:  # hybrid stacks (Qwen3-Next, Qwen3.5): a linear-attention layer
            attn = getattr(layer, "linear_attn", None)
        if attn is not None:
            sites.append((Site(Kind.ATTN_OUT, i).name, attn, _first))
        mlp = getattr(layer, "mlp", None)
        if mlp is None:  # transformers 4 named Mixtral's MoE block `block_sparse_moe`
            mlp = getattr(layer, "block_sparse_moe", None)
        if mlp is None:
            continue
        sites.append((Site(Kind.MLP_OUT, i).name, mlp, _first))
        gate_proj = getattr(mlp, "gate_proj", None)
        gate_up_proj = getattr(mlp, "gate_up_proj", None)
        if isinstance(gate_proj, nn.Module):
            sites.append((Site(Kind.GATE, i).name, gate_proj, _first))
        elif isinstance(gate_up_proj, nn.Module):  # Phi-3's merged projection: gate half first
            sites.append((Site(Kind.GATE, i).name, gate_up_proj, _gate_half))
        if hasattr(mlp, "experts"):  # MoE block: `gate` (gpt-oss: `router`) is the router
            router = getattr(mlp, "gate", None)
            if not isinstance(router, nn.Module):
                router = getattr(mlp, "router", None)
            if isinstance(router, nn.Module):
                sites.append((Site(Kind.ROUTER, i).name, router, _first))

    sites.append((Site(Kind.FINAL_NORM).name, base.norm, _first))
    return sites


def input_site_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(site name, linear layer) for the linear-input sites: the site is the layer's input."""
    base = _find_base_model(model)
    out: list[tuple[str, nn.Module]] = []
    for i, layer in enumerate(base.layers):
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        for kind, parent, names in ((Kind.ATTN_IN, attn, ("qkv_proj", "q_proj")), (Kind.O_IN, attn, ("o_proj",)),
                                    (Kind.MLP_IN, mlp, ("gate_up_proj", "gate_proj")),
                                    (Kind.DOWN_IN, mlp, ("down_proj",))):
            mod = next((getattr(parent, n) for n in names if isinstance(getattr(parent, n, None), nn.Module)), None)
            if mod is not None:
                out.append((Site(kind, i).name, mod))
    return out


def _kv_cache(model: nn.Module, stats: dict[str, SiteStats]):
    """A `DynamicCache` that records what each layer writes to it (keys, values)."""
    from transformers import DynamicCache

    class RecordingCache(DynamicCache):
        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            for kind, t in ((Kind.K, key_states), (Kind.V, value_states)):
                # [batch, kv heads, tokens, head dim] -> one row per token
                rows = t.transpose(1, 2).reshape(-1, t.shape[1] * t.shape[3])
                stats.setdefault(Site(kind, layer_idx).name, SiteStats()).update(rows)
            return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    return RecordingCache(config=model.config)


@torch.inference_mode()
def reference_stats_for_model(model: nn.Module, token_ids: Iterable[list[int]]) -> dict[str, SiteStats]:
    """Run each sequence alone (batch 1, no padding: nothing to mask) through an HF model."""
    stats: dict[str, SiteStats] = {}
    handles = []
    for name, module, get in site_modules(model):
        site_stats = stats.setdefault(name, SiteStats())

        def hook(_mod: nn.Module, _args: Any, output: Any, s: SiteStats = site_stats, g=get) -> None:
            s.update(g(output))  # reduce right here: no activation is kept

        handles.append(module.register_forward_hook(hook))
    for name, module in input_site_modules(model):
        site_stats = stats.setdefault(name, SiteStats())

        def pre_hook(_mod: nn.Module, args: Any, s: SiteStats = site_stats) -> None:
            s.update(args[0], channels=True)

        handles.append(module.register_forward_pre_hook(pre_hook))
    device = next(model.parameters()).device
    try:
        for ids in token_ids:
            if not ids:
                continue
            model(input_ids=torch.tensor([ids], device=device), past_key_values=_kv_cache(model, stats),
                  use_cache=True)
    finally:
        for h in handles:
            h.remove()
    return stats


def _attn_softcap(model_dir: str) -> bool:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    text = getattr(config, "text_config", None) or config
    return getattr(text, "attn_logit_softcapping", None) is not None


def load_model(model_dir: str, *, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    import transformers

    # transformers 4.56 renamed torch_dtype to dtype; older ones (a GPU image) only know torch_dtype.
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    key = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    kwargs: dict[str, Any] = {key: dtype}
    if _attn_softcap(model_dir):
        # Attention logit soft-capping (Gemma 2) is only applied by the eager attention path:
        # transformers' default SDPA path silently skips it, i.e. computes another function.
        kwargs["attn_implementation"] = "eager"
    model = _auto_class(model_dir).from_pretrained(model_dir, **kwargs)
    model.eval()
    return model


def _auto_class(model_dir: str) -> Any:
    """The class the checkpoint names (``architectures`` in its config) where transformers has
    it; otherwise AutoModelForCausalLM where the model type has a causal-LM class, else the
    image-text-to-text class (Qwen2-VL / Qwen2.5-VL: `*ForConditionalGeneration`, which
    transformers does not list as a causal LM). The named class matters for multimodal
    checkpoints whose model type also has a text-only causal-LM class: some transformers
    releases map ``qwen3_5`` to `Qwen3_5ForCausalLM`, which cannot be built from the multimodal
    config (no top-level ``vocab_size``). Every choice holds the text backbone and runs
    text-only input ids."""
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = AutoConfig.from_pretrained(model_dir)
    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if cls is not None and hasattr(cls, "from_pretrained"):
            return cls
    if getattr(config, "model_type", None) in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return AutoModelForCausalLM
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText


def reference_stats(
    model_dir: str, token_ids: list[list[int]], *, dtype: torch.dtype = torch.bfloat16
) -> dict[str, SiteStats]:
    """Per-site stats of `model_dir` (a transformers folder) over `token_ids`, one sequence at a time."""
    return reference_stats_for_model(load_model(model_dir, dtype=dtype), token_ids)


def global_absmax(stats: dict[str, SiteStats]) -> float:
    """The study's global M: max |x| over embedding, residual, attn_out, mlp_out and final_norm."""
    return max(
        (s.absmax for name, s in stats.items() if Site.parse(name).kind in GLOBAL_KINDS and s.tokens),
        default=0.0,
    )


@torch.inference_mode()
def int8_reference(
    model_dir: str, calib: list[list[int]], evals: list[list[int]], *, kind: str = "residual",
    dtype: torch.dtype = torch.bfloat16,
) -> dict[str, dict[str, float]]:
    """The study's INT-8 check in float64 NumPy over captured activations of one site kind:
    thresholds from the calibration split (max |x| and exact 99.9th percentile), figures on the
    evaluation split. Returns site -> {threshold_max, threshold_p999, sqnr_db, p999_sqnr_db, ...}."""
    import numpy as np

    model = load_model(model_dir, dtype=dtype)
    mods = [(n, m, g) for n, m, g in site_modules(model) if Site.parse(n).kind.value == kind]

    def capture(token_lists: list[list[int]]) -> dict[str, np.ndarray]:
        store: dict[str, list[np.ndarray]] = {n: [] for n, _, _ in mods}
        handles = [m.register_forward_hook(
            lambda _m, _a, out, n=n, g=g: store[n].append(g(out).float().reshape(-1).numpy()))
            for n, m, g in mods]
        try:
            for ids in token_lists:
                model(input_ids=torch.tensor([ids]), use_cache=False)
        finally:
            for h in handles:
                h.remove()
        return {n: np.concatenate(v).astype(np.float64) for n, v in store.items()}

    cal, ev = capture(calib), capture(evals)
    out = {}
    for name in cal:
        a = np.abs(cal[name])
        res: dict[str, float] = {"threshold_max": float(a.max()), "threshold_p999": float(np.percentile(a, 99.9))}
        x = ev[name]
        for prefix, thr in (("", res["threshold_max"]), ("p999_", res["threshold_p999"])):
            scale = thr / 127.0
            err = x - np.clip(np.round(x / scale), -127, 127) * scale
            res[prefix + "sqnr_db"] = float(10 * np.log10((x**2).sum() / (err**2).sum()))
            res[prefix + "rel_rmse"] = float(np.sqrt((err**2).sum() / (x**2).sum()))
            res[prefix + "clip_rate"] = float((np.abs(x) > thr).mean())
        out[name] = res
    return out
