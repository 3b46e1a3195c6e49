"""A W8A8 INT8 checkpoint in compressed-tensors format, with static activation scales measured
by a replay, and FP8 KV-cache scales.

From a checkpoint folder (transformers layout, bf16/fp32; optionally smoothed first with
`vllm_maxact.smoothquant`) and an Arrow file of a replay of that same checkpoint that recorded
the inputs of every linear layer (``attn_in``, ``o_in``, ``mlp_in``, ``down_in``) and the KV
cache (``k``, ``v``), `build` writes what vLLM loads natively (``quant_method:
compressed-tensors``, format ``int-quantized``):

- every decoder linear layer (q/k/v/o, gate/up/down): int8 weights with one symmetric scale per
  output channel (``weight_scale`` [out, 1]), and a static per-tensor symmetric ``input_scale``
  from the site that layer reads (``threshold / 127.5``: the package's own convention,
  `compressed_tensors.quantization.utils.calculate_qparams`, so that the threshold maps onto the
  int8 range as llm-compressor's observers map theirs);
- per attention layer, FP8 E4M3 ``k_scale`` / ``v_scale`` = threshold / 448 of the keys and
  values the attention writes to its cache, with the config's ``kv_cache_scheme`` (serve with
  ``kv_cache_dtype="fp8"``);
- embeddings, norms and the LM head unchanged (``ignore: [lm_head]``);
- optionally, some linear-input sites left unquantized (``keep``: mixed precision for the sites
  the INT-8 check flags; ``only``: quantize just these, e.g. to measure one site's loss): their
  layers keep their weights and are listed in the config's ``ignore``.

The quantization config is built with the `compressed_tensors` package's own classes (so it is
the format vLLM reads, validated by the package), and the scales file the checkpoint was built
with is written next to it (``maxact-scales.json``), for live monitoring
(``VLLM_MAXACT_CALIBRATION``).
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from vllm_maxact.sites import Kind, Site

#: The scales file written next to the checkpoint: what it was calibrated with.
SCALES_FILE = "maxact-scales.json"
FP8_E4M3_MAX = 448.0

#: transformers' name of each linear layer (under ``...layers.{i}.``) -> the site it reads.
LINEAR_SITES = {
    "self_attn.q_proj": Kind.ATTN_IN,
    "self_attn.k_proj": Kind.ATTN_IN,
    "self_attn.v_proj": Kind.ATTN_IN,
    "self_attn.o_proj": Kind.O_IN,
    "mlp.gate_proj": Kind.MLP_IN,
    "mlp.up_proj": Kind.MLP_IN,
    "mlp.down_proj": Kind.DOWN_IN,
}


class QuantizeError(ValueError):
    pass


def _args(**kw):
    from compressed_tensors.quantization import QuantizationArgs

    return QuantizationArgs(**kw)


def quantization_config(*, kv_cache: bool, input_zero_point: bool = False, dynamic: bool = False,
                        kv_only: bool = False, ignore: list[str] = ()) -> dict[str, Any]:
    """The ``quantization_config`` of config.json, built and validated by compressed-tensors.

    ``input_zero_point``: describe the static activation scales as asymmetric with a zero point
    of 0 (the same numbers: with zero point 0 the int8 range and rounding are those of the
    symmetric scheme). vLLM 0.32's CPU build needs it on CPUs with AMX: there its symmetric int8
    kernel (``int8_scaled_mm_with_quant``) quantizes activations per token and never reads a
    static ``input_scale``, while the asymmetric one (oneDNN) uses the checkpoint's scale.
    ``dynamic``: per-token activation scales computed by vLLM at run time (no input scales; the
    reference point static scales are compared with)."""
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme, QuantizationStatus

    weights = _args(num_bits=8, type="int", symmetric=True, strategy="channel", dynamic=False)
    inputs = (_args(num_bits=8, type="int", symmetric=True, strategy="token", dynamic=True) if dynamic else
              _args(num_bits=8, type="int", symmetric=not input_zero_point, strategy="tensor", dynamic=False))
    groups = {} if kv_only else {"group_0": QuantizationScheme(targets=["Linear"], weights=weights,
                                                                 input_activations=inputs)}
    cfg = QuantizationConfig(
        config_groups=groups,
        format="int-quantized",
        quantization_status=QuantizationStatus.COMPRESSED,
        ignore=["lm_head", *ignore],
        kv_cache_scheme=(_args(num_bits=8, type="float", symmetric=True, strategy="tensor", dynamic=False)
                         if kv_cache else None),
    )
    return cfg.model_dump(exclude_none=True)


def int8_scale(threshold: float) -> float:
    """compressed-tensors' symmetric int8 scale for a range of +-threshold."""
    import torch
    from compressed_tensors.quantization.utils import calculate_qparams

    t = torch.tensor([float(threshold)])
    scale, _ = calculate_qparams(-t, t, _args(num_bits=8, type="int", symmetric=True, strategy="tensor"))
    return float(scale.reshape(-1)[0])


def quantize_weight(w):
    """Per-output-channel symmetric int8 (compressed-tensors' rounding: round half to even, clamp
    to [-128, 127]); returns (int8 weight, float32 scale [out, 1])."""
    import torch
    from compressed_tensors.quantization.lifecycle.forward import quantize
    from compressed_tensors.quantization.utils import calculate_qparams

    w32 = w.float()
    args = _args(num_bits=8, type="int", symmetric=True, strategy="channel")
    amax = w32.abs().amax(dim=1, keepdim=True)
    scale, zp = calculate_qparams(-amax, amax, args)
    q = quantize(w32, scale, zp, args, dtype=torch.int8)
    return q.contiguous(), scale.to(torch.float32).contiguous()


def thresholds(table, threshold: str) -> dict[str, dict]:
    """Site -> its entry of the scales document (`vllm_maxact.int8.scales_document`)."""
    from vllm_maxact.int8 import scales_document

    return scales_document(table, threshold=threshold)


def linear_input_sites(n_layers: int) -> list[str]:
    """Every linear-input site of a decoder of ``n_layers`` layers, layer by layer."""
    return [Site(kind, i).name for i in range(n_layers) for kind in dict.fromkeys(LINEAR_SITES.values())]


def select_sites(n_layers: int, only: list[str] = (), keep: list[str] = ()) -> set[str]:
    """The linear-input sites to quantize: those matching ``only`` (site names or shell patterns
    such as ``layers.*.down_in``; empty: every one), less those matching ``keep``. A pattern that
    matches no linear-input site is a QuantizeError naming it."""
    every = linear_input_sites(n_layers)

    def matching(patterns) -> set[str]:
        out: set[str] = set()
        for pat in patterns:
            hits = fnmatch.filter(every, pat)
            if not hits:
                raise QuantizeError(f"site pattern {pat!r} matches no linear-input site of this model "
                                    f"({every[0]} ... {every[-1]}; kinds {', '.join(k.value for k in dict.fromkeys(LINEAR_SITES.values()))})")
            out.update(hits)
        return out

    return (matching(only) if only else set(every)) - matching(keep)


def low_sqnr_sites(doc: dict, sites: set[str], below_db: float) -> set[str]:
    """Those of ``sites`` whose INT-8 check SQNR in the scales document is below ``below_db``."""
    sqnr = {n: (doc["sites"].get(n) or {}).get("int8_sqnr_db") for n in sites}
    unknown = sorted(n for n, v in sqnr.items() if v is None)
    if unknown:
        raise QuantizeError(f"--keep-below-sqnr needs the INT-8 check's SQNR, which the Arrow file lacks for "
                            f"{len(unknown)} sites (e.g. {unknown[0]}): replay with --int8-check")
    return {n for n, v in sqnr.items() if v < below_db}


def plan(doc: dict, n_layers: int, *, kv_cache: bool, linears: bool = True,
         quantized: set[str] | None = None) -> dict[str, float]:
    """Checkpoint tensor suffix (``layers.{i}.self_attn.q_proj.input_scale``, ...) -> value; a
    QuantizeError listing the sites the Arrow file lacks."""
    sites = doc["sites"]
    key = "threshold_p999" if doc["quantization"]["threshold"] == "p999" else "threshold_max"
    out: dict[str, float] = {}
    missing: list[str] = []

    def chosen(site: Site) -> float | None:
        e = sites.get(site.name)
        t = e.get(key) if e else None
        if not t:
            missing.append(site.name)
        return t

    for i in range(n_layers):
        for rel, kind in LINEAR_SITES.items() if linears else ():
            if quantized is not None and Site(kind, i).name not in quantized:
                continue
            t = chosen(Site(kind, i))
            if t:
                out[f"layers.{i}.{rel}.input_scale"] = int8_scale(t)
        if kv_cache:
            for kind in (Kind.K, Kind.V):
                t = chosen(Site(kind, i))
                if t:
                    out[f"layers.{i}.self_attn.{kind.value}_scale"] = t / FP8_E4M3_MAX
    if missing:
        kinds = sorted({Site.parse(m).kind.value for m in missing})
        raise QuantizeError(
            f"the Arrow file has no {key.replace('threshold_', '')} threshold for {len(missing)} sites "
            f"(e.g. {missing[0]}); replay this checkpoint with --kinds default,{','.join(kinds)}"
            + (" and --int8-check" if key == "threshold_p999" else ""))
    return out


def build(model_dir: str | Path, table, out_dir: str | Path, *, threshold: str = "max", kv_cache: bool = True,
          input_zero_point: bool = False, dynamic: bool = False, kv_only: bool = False,
          source: str | None = None, only: list[str] = (), keep: list[str] = (),
          keep_below_sqnr: float | None = None) -> Path:
    """Write the W8A8 checkpoint of ``model_dir`` with the scales of ``table`` to ``out_dir``
    (refuses a non-empty folder; written in a temporary folder renamed into place). ``dynamic``:
    activations quantized per token at run time instead (``table`` then only sets the KV-cache
    scales). ``kv_only``: the weights stay as they are; only the FP8 KV-cache scales are added.
    ``only`` / ``keep``: site patterns to quantize / to leave unquantized (`select_sites`).
    ``keep_below_sqnr``: also leave unquantized every linear-input site whose INT-8 check SQNR
    (at the chosen threshold) is below this many dB (needs a replay with --int8-check)."""
    import torch
    from safetensors.torch import load_file, save_file

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if out_dir.resolve() == model_dir.resolve():
        raise QuantizeError("--out must differ from the model folder")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise QuantizeError(f"{out_dir} exists and is not an empty folder")
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise QuantizeError(f"{model_dir}/config.json cannot be read ({e})") from None
    if config.get("quantization_config"):
        raise QuantizeError(f"{model_dir} is already quantized ({config['quantization_config'].get('quant_method')})")
    n_layers = int(config.get("num_hidden_layers", 0))
    doc = thresholds(table, threshold)
    doc["source"] = source
    if kv_only and not kv_cache:
        raise QuantizeError("--kv-only writes KV-cache scales: it cannot go with --no-kv-cache")
    quantized = select_sites(n_layers, only, keep)
    if keep_below_sqnr is not None:
        quantized -= low_sqnr_sites(doc, quantized, keep_below_sqnr)
    if not quantized and not kv_only:
        raise QuantizeError("--only-sites / --keep-sites / --keep-below-sqnr leave no linear layer to quantize")
    values = plan(doc, n_layers, kv_cache=kv_cache, linears=not kv_only, quantized=quantized)
    if only or keep or keep_below_sqnr is not None:
        doc["unquantized"] = [n for n in linear_input_sites(n_layers) if n not in quantized]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise QuantizeError(f"{model_dir}: no .safetensors weights")
    linear = {f"{rel}.weight" for rel in LINEAR_SITES}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp."))
    try:
        done: set[str] = set()
        ignored: list[str] = []
        for f in files:
            tensors = load_file(str(f))
            out: dict[str, torch.Tensor] = {}
            for name, t in tensors.items():
                layer_rel = name.split("layers.", 1)[-1] if "layers." in name else ""
                rel = layer_rel.split(".", 1)[-1] if layer_rel else ""
                if rel in linear and "vision" not in name:
                    prefix = name[: -len(".weight")]
                    suffix = prefix.split("layers.", 1)[-1]
                    layer_no, layer_rel = suffix.split(".", 1)
                    kept = Site(LINEAR_SITES[layer_rel], int(layer_no)).name not in quantized
                    if kept and not kv_only:
                        ignored.append(prefix)
                    if kv_only or kept:
                        out[name] = t
                    else:
                        q, s = quantize_weight(t)
                        out[name], out[f"{prefix}.weight_scale"] = q, s
                    if not dynamic and not kv_only and not kept:
                        out[f"{prefix}.input_scale"] = torch.tensor([values[f"layers.{suffix}.input_scale"]],
                                                                    dtype=torch.float32)
                    if input_zero_point and not dynamic and not kv_only and not kept:
                        out[f"{prefix}.input_zero_point"] = torch.zeros(1, dtype=torch.int8)
                    done.add(f"layers.{suffix}")
                    if kv_cache and suffix.endswith(".self_attn.k_proj"):
                        attn = prefix[: -len(".k_proj")]
                        layer = suffix.split(".", 1)[0]
                        for kv in ("k", "v"):
                            out[f"{attn}.{kv}_scale"] = torch.tensor(
                                values[f"layers.{layer}.self_attn.{kv}_scale"], dtype=torch.float32)
                else:
                    out[name] = t
            save_file(out, str(tmp / (f.name if len(files) > 1 else "model.safetensors")), metadata={"format": "pt"})
            del tensors, out
        expected = {f"layers.{i}.{rel}" for i in range(n_layers) for rel in LINEAR_SITES}
        if done != expected:
            raise QuantizeError(f"{len(expected - done)} linear layers not found in the checkpoint "
                                f"(e.g. {sorted(expected - done)[0]}): not the Llama layout")
        for other in model_dir.iterdir():
            if other.is_file() and other.suffix != ".safetensors" and other.name != "model.safetensors.index.json":
                shutil.copy2(other, tmp / other.name)
        if len(files) > 1:
            _write_index(tmp)
        config["quantization_config"] = quantization_config(kv_cache=kv_cache, input_zero_point=input_zero_point,
                                                            dynamic=dynamic, kv_only=kv_only,
                                                            ignore=sorted(ignored))
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        (tmp / SCALES_FILE).write_text(json.dumps(doc, indent=1))
        os.chmod(tmp, 0o755)
        if out_dir.exists():
            out_dir.rmdir()
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _write_index(folder: Path) -> None:
    from safetensors import safe_open

    weight_map = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            weight_map.update(dict.fromkeys(h.keys(), f.name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
