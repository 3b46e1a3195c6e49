"""SmoothQuant smoothing factors from recorded per-channel input maxima, and applying them.

SmoothQuant (Xiao et al., 2023) moves activation outliers into the weights: for the input X of
a linear layer (and every linear layer that reads the same X), per input channel j,

    s_j = max|X_j| ** alpha / max|W_:,j| ** (1 - alpha)

then X' = X / s (folded into the norm that produces X) and W' = W * s (per input column), so
X' W'^T = X W^T exactly and X' has a flatter range, easier to quantize per tensor.

`vllm-maxact` records max|X_j| where the model runs (the opt-in ``attn_in`` / ``mlp_in`` sites:
the inputs of the QKV and gate/up projections, i.e. the outputs of the two norms of each
layer). This module turns those into factors with the checkpoint's weights (`document`), and
writes a smoothed copy of the checkpoint (`apply`): the same model function, ready for any
W8A8 quantizer (see docs/int8-and-smoothquant.md).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

FORMAT = "vllm-maxact-smoothquant"
VERSION = 1

#: channel site kind -> (the norm that produces it, the linear layers that read it); names are
#: relative to the checkpoint's ``...layers.{i}.`` prefix (transformers layout).
LAYOUT = {
    "attn_in": ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    "mlp_in": ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
}
#: Families whose MLP input comes from a separate pre-feed-forward norm.
PRE_FFN_NORM = {"gemma2", "gemma3", "gemma3_text"}
#: Families whose RMSNorm scales by (1 + weight).
NORM_OFFSET_ONE = {"gemma", "gemma2", "gemma3", "gemma3_text"}


class SmoothQuantError(ValueError):
    pass


def _model_type(model_dir: Path) -> str:
    try:
        cfg = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise SmoothQuantError(f"{model_dir}/config.json cannot be read ({e}); pass the checkpoint folder") from None
    if not isinstance(cfg, dict):
        raise SmoothQuantError(f"{model_dir}/config.json is not a JSON object; pass the checkpoint folder")
    text = cfg.get("text_config") or {}
    return text.get("model_type") or cfg.get("model_type", "")


def _weight_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise SmoothQuantError(f"{model_dir}: no .safetensors weights (pass the checkpoint folder the stats came from)")
    return files


def _tensor_index(files: list[Path]) -> dict[str, Path]:
    from safetensors import safe_open

    out = {}
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            for key in h.keys():
                out[key] = f
    return out


def _find(index: dict[str, Path], layer: int, rel: str) -> str:
    suffix = f"layers.{layer}.{rel}.weight"
    hits = [k for k in index if k.endswith(suffix) and (k == suffix or k[: -len(suffix)].endswith("."))]
    hits = [k for k in hits if "vision" not in k]  # multimodal checkpoints: the text decoder's
    if len(hits) != 1:
        raise SmoothQuantError(f"checkpoint has {len(hits)} tensors named *{suffix} (expected one); "
                               "this family's layout is not supported for smoothing")
    return hits[0]


def _load(index: dict[str, Path], key: str):
    from safetensors import safe_open

    with safe_open(str(index[key]), framework="pt") as h:
        return h.get_tensor(key)


def channel_rows(table) -> dict[str, np.ndarray]:
    """site -> per-channel max |x| from a replay or snapshot table (merged rows, whole corpus)."""
    rows = [r for r in table.to_pylist()
            if r.get("channel_absmax") is not None and r.get("rank") is None and r.get("domain") is None]
    for window in ("replay", "lifetime"):
        picked = {r["site"]: np.asarray(r["channel_absmax"], np.float64) for r in rows if r["window"] == window}
        if picked:
            return picked
    raise SmoothQuantError(
        "no per-channel maxima in this file: record the attn_in / mlp_in sites "
        "(`vllm-maxact replay --kinds default,attn_in,mlp_in ...`, or VLLM_MAXACT_KINDS when serving)")


def document(table, model_dir: str | Path, *, alpha: float = 0.5, source: str | None = None) -> dict[str, Any]:
    """Smoothing factors for every recorded attn_in / mlp_in site, with the checkpoint's weights."""
    if not 0.0 <= alpha <= 1.0:
        raise SmoothQuantError(f"alpha must be in [0, 1], got {alpha}")
    from vllm_maxact.sites import Site

    model_dir = Path(model_dir)
    model_type = _model_type(model_dir)
    index = _tensor_index(_weight_files(model_dir))
    entries = []
    for site_name, act in sorted(channel_rows(table).items(), key=lambda kv: Site.parse(kv[0])):
        site = Site.parse(site_name)
        if site.kind.value not in LAYOUT:  # o_in / down_in: no norm in front to fold a factor into
            continue
        norm_rel, linears = LAYOUT[site.kind.value]
        if site.kind.value == "mlp_in" and model_type in PRE_FFN_NORM:
            norm_rel = "pre_feedforward_layernorm"
        norm_key = _find(index, site.layer, norm_rel)
        lin_keys = [_find(index, site.layer, rel) for rel in linears]
        w_max = np.zeros_like(act)
        for key in lin_keys:
            w = _load(index, key).float().abs()
            if w.shape[-1] != act.shape[0]:
                raise SmoothQuantError(f"{key} reads {w.shape[-1]} channels but {site_name} has {act.shape[0]}: "
                                       "stats and checkpoint are not the same model")
            w_max = np.maximum(w_max, w.amax(dim=0).double().numpy())
        with np.errstate(divide="ignore", invalid="ignore"):
            s = act**alpha / w_max ** (1.0 - alpha)
        # Channels never seen (or all-zero weights) keep s = 1; tiny factors would blow up weights.
        s = np.where(np.isfinite(s) & (act > 0) & (w_max > 0), np.maximum(s, 1e-5), 1.0)
        entries.append({
            "site": site_name,
            "norm": norm_key,
            "norm_offset": 1.0 if model_type in NORM_OFFSET_ONE else 0.0,
            "linears": lin_keys,
            "act_absmax": float(act.max()),
            "act_absmax_smoothed": float((act / s).max()),
            "smooth": [float(v) for v in s],
        })
    return {
        "format": FORMAT,
        "version": VERSION,
        "alpha": alpha,
        "model": str(model_dir),
        "model_type": model_type,
        "source": source,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "layers": entries,
    }


class _Entry(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    site: StrictStr
    norm: Annotated[StrictStr, Field(min_length=1)]
    norm_offset: Annotated[float, Field(allow_inf_nan=False)] = 0.0
    linears: Annotated[list[Annotated[StrictStr, Field(min_length=1)]], Field(min_length=1)]
    smooth: Annotated[list[Annotated[float, Field(gt=0, allow_inf_nan=False)]], Field(min_length=1)]


class _Document(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    format: StrictStr
    version: StrictInt
    alpha: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
    layers: list[_Entry]


def check_document(doc: Any, where: str = "smoothing file") -> dict[str, Any]:
    """``doc`` if it is a well-formed smoothing document: every factor finite and > 0 (a factor of 0
    or NaN would write non-finite weights), each tensor named once. Else `SmoothQuantError`."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise SmoothQuantError(f"{where}: not a smoothing file (format {got!r}); write one with "
                               "`vllm-maxact scales FILE.arrow --format smoothquant --model DIR`")
    try:
        form = _Document.model_validate(doc)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise SmoothQuantError(f"{where}: {loc}: {err['msg']}; write the file again with "
                               "`vllm-maxact scales ... --format smoothquant`") from None
    if form.version > VERSION:
        raise SmoothQuantError(f"{where}: version {form.version} is newer than this vllm-maxact reads ({VERSION}); "
                               "upgrade vllm-maxact")
    named: set[str] = set()
    for i, e in enumerate(form.layers):
        for key in (e.norm, *e.linears):
            if key in named:
                raise SmoothQuantError(f"{where}: layers.{i} ({e.site}): tensor {key!r} is named twice")
            named.add(key)
    return doc


def read_document(path: str | Path) -> dict[str, Any]:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise SmoothQuantError(f"{path}: cannot read smoothing factors ({e})") from None
    return check_document(doc, str(path))


def _plan(files: list[Path], doc: dict[str, Any], model_dir: Path) -> dict[str, tuple[str, np.ndarray, float]]:
    """Tensor name -> what to do with it, after checking every named tensor is in the checkpoint
    with a shape the factors fit (nothing is written before this passes)."""
    from safetensors import safe_open

    shapes: dict[str, list[int]] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            for key in h.keys():
                shapes[key] = list(h.get_slice(key).get_shape())
    changes: dict[str, tuple[str, np.ndarray, float]] = {}
    for e in doc["layers"]:
        s = np.asarray(e["smooth"], np.float64)
        todo = [(e["norm"], "norm", float(e.get("norm_offset", 0.0)))] + [(k, "linear", 0.0) for k in e["linears"]]
        for key, what, offset in todo:
            if key not in shapes:
                raise SmoothQuantError(f"tensor {key!r} ({e['site']}) is not in {model_dir}: the smoothing file "
                                       "was made for another checkpoint")
            shape = shapes[key]
            fits = shape == [len(s)] if what == "norm" else (len(shape) == 2 and shape[-1] == len(s))
            if not fits:
                raise SmoothQuantError(f"{e['site']}: {len(s)} factors do not fit tensor {key!r} of shape {shape}: "
                                       "the smoothing file was made for another checkpoint")
            changes[key] = (what, s, offset)
    return changes


def apply(model_dir: str | Path, doc: dict[str, Any], out_dir: str | Path, *, progress: bool = False) -> Path:
    """Write a smoothed copy of the checkpoint: norm weights divided by s, the columns of the
    linear layers that read the norm multiplied by s. Same tensors names, shapes and dtypes;
    every other file copied. Refuses to overwrite the source or a non-empty folder; everything is
    checked before anything is written, and the copy is built in a temporary folder renamed into
    place at the end, so a failure leaves no half-written output."""
    import tempfile

    import torch
    from safetensors.torch import load_file, save_file

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if out_dir.resolve() == model_dir.resolve():
        raise SmoothQuantError("--out must differ from the model folder (the original stays untouched)")
    check_document(doc)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise SmoothQuantError(f"{out_dir} exists and is not an empty folder; pass a new folder for the smoothed copy")
    files = _weight_files(model_dir)
    changes = _plan(files, doc, model_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp."))
    try:
        for f in files:
            tensors = load_file(str(f))
            for key, t in tensors.items():
                if key not in changes:
                    continue
                what, s, offset = changes[key]
                st = torch.as_tensor(s, dtype=torch.float32)
                x = t.float()
                x = (x + offset) / st - offset if what == "norm" else x * st[None, :]
                y = x.to(t.dtype)
                if not torch.isfinite(y).all():
                    raise SmoothQuantError(f"smoothing {key!r} gives values outside {t.dtype}'s range: the factors "
                                           "are too large or too small for this checkpoint (try another --alpha)")
                tensors[key] = y.contiguous()
            save_file(tensors, str(tmp / f.name), metadata={"format": "pt"})
            if progress:
                print(f"smoothed {f.name}")
        for other in model_dir.iterdir():
            if other.is_file() and other.suffix != ".safetensors":
                shutil.copy2(other, tmp / other.name)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp made it 0700; the copy is an ordinary folder
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _umask() -> int:
    from vllm_maxact.export.atomic import umask

    return umask()
