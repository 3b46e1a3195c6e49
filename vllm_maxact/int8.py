"""INT-8 reconstruction check: thresholds from calibration, figures from device accumulators,
and static scale export.

Per site and threshold t (per-tensor symmetric, qmax 127, scale = t / 127, round half to even,
clamp): with err = x - dequant(quant(x)) summed over every element of the evaluation split,
  MAE = sum|err| / n        RMSE = sqrt(sum err^2 / n)
  rel_MAE = sum|err| / sum|x|   rel_RMSE = sqrt(sum err^2 / sum x^2)
  SQNR = 10 log10(sum x^2 / sum err^2) dB     clip rate = #(|x| > t) / n
Two thresholds, as in the study: the calibration max |x| (column 0) and the calibration
99.9th percentile of |x| (column 1), estimated from a log2 histogram with 32 bins per octave
and linear interpolation inside the bin.
"""

from __future__ import annotations

import math
from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from vllm_maxact.formats import BF16_MAX, FP8_E4M3_MAX, FP16_MAX
from vllm_maxact.ops_int8 import BINS_PER_OCTAVE, HIST_BINS, HIST_MIN_EXP

THRESHOLDS = ("max", "p999")


def bin_edges() -> np.ndarray:
    """Lower and upper edge of every histogram bin ([HIST_BINS, 2]); bin 0 is exactly zero."""
    k = np.arange(HIST_BINS - 1, dtype=np.float64)
    lo = 2.0 ** (HIST_MIN_EXP + k / BINS_PER_OCTAVE)
    hi = 2.0 ** (HIST_MIN_EXP + (k + 1) / BINS_PER_OCTAVE)
    return np.concatenate([[[0.0, 0.0]], np.stack([lo, hi], 1)])


def percentile_from_hist(hist: np.ndarray, q: float = 99.9) -> float | None:
    """The q-th percentile of |x| from a histogram of counts (None when empty)."""
    total = int(hist.sum())
    if total == 0:
        return None
    # NumPy's definition: position r = q (n - 1) among the sorted values (zero-based); the bin
    # holding value number floor(r) is found exactly, the position inside it is interpolated.
    r = q / 100.0 * (total - 1)
    cum = np.cumsum(hist)
    i = int(np.searchsorted(cum, np.floor(r), side="right"))
    i = min(i, len(hist) - 1)
    if i == 0:
        return 0.0
    before = cum[i - 1]
    lo, hi = bin_edges()[i]
    frac = (r - before + 0.5) / hist[i] if hist[i] else 1.0
    return float(lo + (hi - lo) * min(max(frac, 0.0), 1.0))


def figures(acc: np.ndarray, cnt: np.ndarray) -> dict[str, np.ndarray]:
    """acc [..., 4] = (sum x^2, sum|x|, sum err^2, sum|err|); cnt [..., 2] = (clipped, n)."""
    acc = np.asarray(acc, dtype=np.float64)
    cnt = np.asarray(cnt, dtype=np.float64)
    x2, ax, e2, ae = (acc[..., i] for i in range(4))
    clip, n = cnt[..., 0], cnt[..., 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = {
            "mae": ae / n,
            "rmse": np.sqrt(e2 / n),
            "rel_mae": ae / ax,
            "rel_rmse": np.sqrt(e2 / x2),
            "sqnr_db": 10.0 * np.log10(x2 / e2),
            "clip_rate": clip / n,
        }
    # Nothing evaluated is "no figure", not 0 or inf (works for scalars and arrays alike).
    return {k: np.where(n == 0, np.nan, v) for k, v in out.items()}


def headroom(absmax: float | None) -> dict[str, float | None]:
    """How many times the largest |x| fits in each format's range (< 1: overflows)."""
    if absmax is None or absmax == 0 or not math.isfinite(absmax):
        return {"headroom_fp16": None, "headroom_bf16": None, "headroom_fp8": None}
    return {
        "headroom_fp16": FP16_MAX / absmax,
        "headroom_bf16": BF16_MAX / absmax,
        "headroom_fp8": FP8_E4M3_MAX / absmax,
    }


_Threshold = Annotated[float | None, Field(ge=0, allow_inf_nan=False)]


class _SiteScales(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    threshold_max: _Threshold = None
    threshold_p999: _Threshold = None


class _Scales(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    format: StrictStr
    sites: dict[StrictStr, _SiteScales]


def read_scales(path) -> dict[str, dict]:
    """Site -> {threshold_max, threshold_p999, ...} from a `vllm-maxact scales` JSON file.
    ValueError naming the file and the field for anything else (thresholds must be finite and
    >= 0, or null)."""
    import json
    from pathlib import Path

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"calibration file {path}: cannot read it as JSON ({e})") from e
    if not isinstance(data, dict) or data.get("format") != SCALES_FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"calibration file {path}: not a vllm-maxact scales file (format {got!r})")
    try:
        _Scales.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ValueError(f"calibration file {path}: {loc}: {err['msg']}; write it again with "
                         "`vllm-maxact scales`") from None
    return data["sites"]


SCALES_FORMAT = "vllm-maxact-scales"


def deployed_threshold(path) -> str:
    """Which threshold a scales file's scales were chosen with (``max`` unless it says ``p999``)."""
    import json
    from pathlib import Path

    try:
        q = json.loads(Path(path).read_text()).get("quantization") or {}
    except (OSError, ValueError, AttributeError):
        return "max"
    return "p999" if isinstance(q, dict) and q.get("threshold") == "p999" else "max"


def scales_document(table, *, threshold: str = "max", source: str | None = None) -> dict:
    """Static per-site activation scales from a replay (or snapshot) table.

    Every site gets ``threshold_max`` (the recorded max |x|; with --int8-check, the calibration
    max), ``threshold_p999`` (with --int8-check), ``int8_scale`` = chosen threshold / 127 and
    ``fp8_e4m3_scale`` = absmax / 448 (the scale that maps the range onto E4M3 without clipping).
    """
    import datetime as dt

    from vllm_maxact.report import select_view

    if threshold not in THRESHOLDS:
        raise ValueError(f"threshold must be one of {THRESHOLDS}, not {threshold!r}")
    view = select_view(table)
    rows = view.to_pylist()
    has_p999 = "int8_p999_threshold" in view.column_names
    if threshold == "p999" and not has_p999:
        raise ValueError("p99.9 thresholds need a replay with --int8-check")
    sites = {}
    for r in rows:
        if r["absmax"] is None:
            continue
        t_max = r.get("int8_threshold") or r["absmax"]
        t_p = r.get("int8_p999_threshold") if has_p999 else None
        chosen = t_p if threshold == "p999" else t_max
        sites[r["site"]] = {
            "kind": r["kind"], "layer": r["layer"], "absmax": r["absmax"],
            "threshold_max": t_max, "threshold_p999": t_p,
            "int8_scale": chosen / 127.0 if chosen else None,
            "fp8_e4m3_scale": r["absmax"] / FP8_E4M3_MAX,
            "int8_sqnr_db": r.get("int8_p999_sqnr_db" if threshold == "p999" else "int8_sqnr_db"),
        }
    first = rows[0] if rows else {}
    return {
        "format": SCALES_FORMAT,
        "version": 1,
        "model": first.get("model"),
        "source": source,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "quantization": {"dtype": "int8", "qmax": 127, "symmetric": True, "granularity": "per-tensor",
                         "threshold": threshold, "rounding": "half-to-even"},
        "sites": sites,
    }
