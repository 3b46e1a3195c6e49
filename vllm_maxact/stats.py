"""Statistics: the host type, its wire form, and every rule that merges them, each written once.

A span's statistics per site: largest and smallest finite value, NaN and Inf counts, tokens, and
for channel sites the per-channel max |x|. They are merged four ways:

- **over time** (consecutive spans of one engine) and **over data-parallel shards** (engines that
  saw disjoint samples): `union` / `Stats.merge`; extrema of extrema, counts and tokens add up
  (`merge_shard_payloads` / `merge_shard_hists`: whole worker replies of several engines, per
  stage and rank, INT-8 sums and calibration histograms added);
- **over tensor-parallel ranks** (one forward seen by every rank): `merge_ranks` and
  `merge_rank_arrays`; replicated sites saw the same values (counts: one rank's), sharded sites
  (`is_sharded`: the gate, whose columns are split over ranks) saw disjoint parts (counts add);
  tokens are one rank's;
- **over pipeline stages** (disjoint layers): `group_stages` then `concat_stages`.

The wire form (`to_wire`, validated on read by `StatsForm` inside a worker payload, version
`WIRE_VERSION`) is plain JSON: None where nothing finite was seen.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from vllm_maxact.sites import Kind, Site

#: The version of the worker payload and of the statistics in it (`vllm_maxact.publish.payload`).
WIRE_VERSION = 1


@dataclass
class Stats:
    """Statistics of a set of sites over some span of tokens (host side, numpy)."""

    sites: list[Site]
    max: np.ndarray  # float64 [S], -inf where nothing finite was seen
    min: np.ndarray  # float64 [S], +inf where nothing finite was seen
    nan: np.ndarray  # int64 [S]
    inf: np.ndarray  # int64 [S]
    tokens: int = 0
    start: float = field(default_factory=time.time)
    end: float = field(default_factory=time.time)
    #: channel sites only (slot -> float64 [H]): per-channel max |x|
    chan: dict[int, np.ndarray] = field(default_factory=dict)

    @classmethod
    def empty(cls, sites: list[Site], start: float | None = None) -> Stats:
        n = len(sites)
        now = time.time() if start is None else start
        return cls(
            list(sites),
            np.full(n, -np.inf),
            np.full(n, np.inf),
            np.zeros(n, np.int64),
            np.zeros(n, np.int64),
            0,
            now,
            now,
        )

    @property
    def absmax(self) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            a = np.maximum(np.abs(self.max), np.abs(self.min))
        a[~(np.isfinite(self.max) & np.isfinite(self.min))] = np.nan
        return a

    def merge(self, other: Stats) -> Stats:
        """Elementwise union of two spans of the same sites."""
        assert self.sites == other.sites
        chan = dict(self.chan)
        for sl, v in other.chan.items():
            chan[sl] = np.maximum(chan[sl], v) if sl in chan else v.copy()
        return Stats(
            self.sites,
            np.maximum(self.max, other.max),
            np.minimum(self.min, other.min),
            self.nan + other.nan,
            self.inf + other.inf,
            self.tokens + other.tokens,
            min(self.start, other.start),
            max(self.end, other.end),
            chan,
        )


def _floats(a: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in a]


def to_wire(s: Stats) -> dict[str, Any]:
    """The JSON form of a span (what `StatsForm` validates on read): None where nothing finite was seen."""
    return {
        "max": _floats(s.max),
        "min": _floats(s.min),
        "nan": [int(v) for v in s.nan],
        "inf": [int(v) for v in s.inf],
        "tokens": int(s.tokens),
        "start": s.start,
        "end": s.end,
        # channel sites only: site index -> per-channel max |x|
        **({"channels": {str(i): _floats(v) for i, v in sorted(s.chan.items())}} if s.chan else {}),
    }


# --- the typed wire form -------------------------------------------------------------------------
Finite = Annotated[float, Field(allow_inf_nan=False)]  # strict: ints are accepted, strings and bools not
Count = Annotated[StrictInt, Field(ge=0, lt=2**63)]  # what an int64 column holds
#: Seconds since the epoch that a datetime (and a timestamp column) can hold: up to the year 9999.
Timestamp = Annotated[float, Field(ge=0, le=253402300799, allow_inf_nan=False)]
#: Per-channel maxima come from float32 buffers (and go to a float32 list column).
ChannelMax = Annotated[float, Field(ge=0, le=3.4028234663852886e38, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class StatsForm(_Strict):
    max: list[Finite | None]
    min: list[Finite | None]
    nan: list[Count]
    inf: list[Count]
    tokens: Count
    start: Timestamp
    end: Timestamp
    channels: dict[StrictStr, list[ChannelMax | None]] = Field(default_factory=dict)


# --- merges ------------------------------------------------------------------------------------
def is_sharded(name: str | Site) -> bool:
    """Whether tensor-parallel ranks see disjoint parts of the site (the gate: columns of the
    column-parallel gate_up projection) rather than the same tensor."""
    site = name if isinstance(name, Site) else Site.parse(name)
    return site.kind == Kind.GATE


def _pick(f, x, y):
    return y if x is None else x if y is None else f(x, y)


def union(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two spans of the same sites over different tokens (consecutive windows, or data-parallel
    shards): extrema of extrema; NaN / Inf counts and tokens add up; per-channel maxima too."""
    out = {
        "max": [_pick(max, x, y) for x, y in zip(a["max"], b["max"], strict=True)],
        "min": [_pick(min, x, y) for x, y in zip(a["min"], b["min"], strict=True)],
        "nan": [x + y for x, y in zip(a["nan"], b["nan"], strict=True)],
        "inf": [x + y for x, y in zip(a["inf"], b["inf"], strict=True)],
        "tokens": a["tokens"] + b["tokens"],
        "start": min(a["start"], b["start"]),
        "end": max(a["end"], b["end"]),
    }
    chans = _max_channels([a.get("channels", {}), b.get("channels", {})])
    if chans:
        out["channels"] = chans
    return out


def _max_channels(parts: Sequence[dict[str, list]]) -> dict[str, list]:
    chans: dict[str, list] = {}
    for part in parts:
        for key, v in part.items():
            chans[key] = v if key not in chans else [_pick(max, x, y) for x, y in zip(chans[key], v, strict=True)]
    return chans


def merge_ranks(stats: Sequence[dict[str, Any]], sites: Sequence[str]) -> dict[str, Any]:
    """One span seen by the tensor-parallel ranks of one stage (wire form, the same sites)."""

    def ext(f, vals):
        vals = [v for v in vals if v is not None]
        return f(vals) if vals else None

    out: dict[str, Any] = {"max": [], "min": [], "nan": [], "inf": []}
    for i, name in enumerate(sites):
        sharded = is_sharded(name)
        out["max"].append(ext(max, (s["max"][i] for s in stats)))
        out["min"].append(ext(min, (s["min"][i] for s in stats)))
        for key in ("nan", "inf"):
            vals = [s[key][i] for s in stats]
            out[key].append(sum(vals) if sharded else max(vals))
    # inputs of column-parallel layers (the channel sites) are replicated: max over ranks
    chans = _max_channels([s.get("channels", {}) for s in stats])
    if chans:
        out["channels"] = chans
    out["tokens"] = max(s["tokens"] for s in stats)
    out["start"] = min(s["start"] for s in stats)
    out["end"] = max(s["end"] for s in stats)
    return out


def merge_rank_arrays(per_rank: Sequence[tuple[Sequence[str], np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-site sums (INT-8 accumulators, histograms) of the ranks of every stage, by site name:
    added over the ranks for sharded sites, one rank's copy for replicated ones."""
    out: dict[str, np.ndarray] = {}
    for sites, arr in per_rank:
        for i, name in enumerate(sites):
            if name not in out:
                out[name] = np.array(arr[i], copy=True)
            elif is_sharded(name):
                out[name] = out[name] + arr[i]
    return out


def group_stages(payloads: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Payloads grouped by pipeline stage, in stage order (each group: that stage's TP ranks)."""
    stages: dict[int, list[dict[str, Any]]] = {}
    for p in payloads:
        stages.setdefault(p.get("pp_rank", 0), []).append(p)
    return [stages[k] for k in sorted(stages)]


def concat_stages(payloads: Sequence[dict[str, Any]], window: str) -> tuple[list[str], dict[str, Any]]:
    """One window of a whole model: merged over each stage's ranks, stages concatenated in order.
    Returns (sites, wire stats over them)."""
    sites: list[str] = []
    out: dict[str, Any] = {"max": [], "min": [], "nan": [], "inf": [], "tokens": 0}
    chans: dict[str, list] = {}
    for stage in group_stages(payloads):
        m = merge_ranks([p[window] for p in stage], stage[0]["sites"])
        for key, v in m.get("channels", {}).items():
            chans[str(int(key) + len(sites))] = v
        sites += stage[0]["sites"]
        for k in ("max", "min", "nan", "inf"):
            out[k] += m[k]
        out["tokens"] = max(out["tokens"], m["tokens"])
        out["start"] = min(out.get("start", m["start"]), m["start"])
        out["end"] = max(out.get("end", m["end"]), m["end"])
    if chans:
        out["channels"] = chans
    return sites, out


def split_stages(sites_per_stage: Sequence[Sequence[str]], stats: dict[str, Any]) -> list[dict[str, Any]]:
    """The inverse of `concat_stages`: the model-wide wire stats cut back into each stage's part."""
    parts, offset = [], 0
    for sites in sites_per_stage:
        n = len(sites)
        part = {k: (v[offset : offset + n] if isinstance(v, list) else v) for k, v in stats.items() if k != "channels"}
        ch = {str(int(k) - offset): v for k, v in stats.get("channels", {}).items() if offset <= int(k) < offset + n}
        if ch:
            part["channels"] = ch
        parts.append(part)
        offset += n
    return parts


# --- data-parallel shards: whole worker replies of several engines -----------------------------
class ShardMismatch(ValueError):
    """Engines whose workers describe different sites cannot be merged."""


def merge_shards(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One window of the same sites seen by disjoint token sets (data-parallel shards): `union`."""
    return functools.reduce(union, parts)


def _sum_nested(parts: Sequence[Any]) -> list:
    return np.sum([np.asarray(p) for p in parts], axis=0).tolist()


def _merge_int8_shards(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"thresholds": parts[0]["thresholds"]}
    for window in ("lifetime", "recent", "window"):
        got = [p.get(window) for p in parts]
        if all(g is not None for g in got):
            out[window] = {"acc": _sum_nested([g["acc"] for g in got]), "cnt": _sum_nested([g["cnt"] for g in got])}
    return out


def merge_shard_payloads(per_engine: Sequence[Sequence[dict[str, Any] | None]]) -> list[dict[str, Any]]:
    """Each engine's ``maxact_collect`` replies (one per worker) -> one reply per (stage, rank),
    as if one engine had computed all the shards' tokens."""
    slots: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for replies in per_engine:
        for p in replies:
            if p:
                slots.setdefault((p.get("pp_rank", 0), p.get("tp_rank", 0)), []).append(p)
    merged = []
    for key in sorted(slots):
        parts = slots[key]
        if len(parts) != len(per_engine):
            raise ShardMismatch(f"stage {key[0]} rank {key[1]}: {len(parts)} of {len(per_engine)} engines replied")
        if any(p["sites"] != parts[0]["sites"] for p in parts):
            raise ShardMismatch(f"stage {key[0]} rank {key[1]}: the engines record different sites")
        out = dict(parts[0])
        for window in ("lifetime", "recent", "window"):
            if all(window in p for p in parts):
                out[window] = merge_shards([p[window] for p in parts])
        if all(p.get("int8") for p in parts):
            out["int8"] = _merge_int8_shards([p["int8"] for p in parts])
        out["engines"] = len(parts)
        merged.append(out)
    return merged


def merge_shard_hists(per_engine: Sequence[Sequence[dict[str, Any] | None]]) -> list[dict[str, Any] | None]:
    """``maxact_int8_hist`` replies: counts summed per (stage, rank)."""
    slots: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for replies in per_engine:
        for h in replies:
            if h:
                slots.setdefault((h.get("pp_rank", 0), h.get("tp_rank", 0)), []).append(h)
    return [{**parts[0], "hist": _sum_nested([h["hist"] for h in parts])} for _, parts in sorted(slots.items())]
