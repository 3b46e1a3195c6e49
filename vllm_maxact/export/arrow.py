"""Arrow tables and snapshot files: the versioned, documented schema.

One row per (window, domain, site, rank). ``rank`` is null on rows merged across tensor-parallel
ranks (the default view); per-rank rows are kept when asked for. Merging is by max/min: every
site except ``gate`` is replicated across TP ranks after vLLM's all-reduce, and the gate is
sharded by columns, so the max over shards is the max of the whole tensor.
"""

from __future__ import annotations

import datetime as dt
import errno
import math
import os
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.feather as feather

from vllm_maxact.export.atomic import fsync_dir, temp_for
from vllm_maxact.sites import Site
from vllm_maxact.stats import group_stages, merge_ranks

SCHEMA_VERSION = "2"  # 2: channel_absmax
_TS = pa.timestamp("us", tz="UTC")

SCHEMA = pa.schema(
    [
        pa.field("timestamp", _TS, nullable=False),
        pa.field("model", pa.string()),
        pa.field("architecture", pa.string()),
        pa.field("vllm_version", pa.string()),
        pa.field("plugin_version", pa.string()),
        pa.field("window", pa.string(), nullable=False),  # lifetime | recent | replay
        pa.field("window_start", _TS),
        pa.field("window_end", _TS),
        pa.field("domain", pa.string()),  # replay: per-domain rows; null = whole corpus/traffic
        pa.field("site", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("layer", pa.int32()),
        pa.field("rank", pa.int32()),  # TP rank; null = merged over ranks
        pa.field("absmax", pa.float64()),
        pa.field("max", pa.float64()),
        pa.field("min", pa.float64()),
        pa.field("tokens", pa.int64()),
        pa.field("nan_count", pa.int64()),
        pa.field("inf_count", pa.int64()),
        # attn_in / mlp_in sites only: max |x| per input channel (SmoothQuant's statistic)
        pa.field("channel_absmax", pa.list_(pa.float32())),
    ],
    metadata={"vllm_maxact.schema_version": SCHEMA_VERSION},
)


def _ts(t: float | None) -> dt.datetime | None:
    return None if t is None else dt.datetime.fromtimestamp(t, tz=dt.timezone.utc)


def _absmax(mx: float | None, mn: float | None) -> float | None:
    if mx is None or mn is None:
        return None
    return max(abs(mx), abs(mn))


def rows_from_stats(
    meta: dict[str, Any], sites: Sequence[str], stats: dict[str, Any], *, window: str,
    rank: int | None, domain: str | None = None, timestamp: float | None = None,
) -> list[dict[str, Any]]:
    common = {  # the same in every row
        "timestamp": _ts(timestamp or meta.get("time") or time.time()),
        "model": meta.get("model"),
        "architecture": meta.get("architecture"),
        "vllm_version": meta.get("vllm_version"),
        "plugin_version": meta.get("plugin_version"),
        "window": window,
        "window_start": _ts(stats.get("start")),
        "window_end": _ts(stats.get("end")),
        "domain": domain,
        "rank": rank,
        "tokens": stats["tokens"],
    }
    channels = stats.get("channels", {})
    rows = []
    for i, name in enumerate(sites):
        site = Site.parse(name)
        mx, mn = stats["max"][i], stats["min"][i]
        rows.append(
            {
                **common,
                "site": name,
                "kind": site.kind.value,
                "layer": site.layer,
                "absmax": _absmax(mx, mn),
                "max": mx,
                "min": mn,
                "nan_count": stats["nan"][i],
                "inf_count": stats["inf"][i],
                "channel_absmax": channels.get(str(i)),
            }
        )
    return rows


def table_from_payloads(
    payloads: Iterable[dict[str, Any] | None], *, windows: Sequence[str] = ("lifetime",),
    per_rank: bool = False,
) -> pa.Table:
    """Rows for each window, merged over TP ranks (and per rank if ``per_rank``)."""
    payloads = [p for p in payloads if p]
    if not payloads:
        return SCHEMA.empty_table()
    rows: list[dict[str, Any]] = []
    # Pipeline stages hold disjoint layers: group by stage, merge TP replicas within it.
    for window in windows:
        for group in group_stages(payloads):
            sites = group[0]["sites"]
            meta = group[0]
            merged = merge_ranks([g[window] for g in group], sites)
            rows += rows_from_stats(meta, sites, merged, window=window, rank=None)
            if per_rank:
                for g in group:
                    rows += rows_from_stats(g, sites, g[window], window=window, rank=g.get("tp_rank", 0))
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def write_table(table: pa.Table, path: str | os.PathLike) -> Path:
    """Write an Arrow IPC (Feather v2) file atomically.

    The data goes to an unnamed file in the target directory (Linux ``O_TMPFILE``), is fsynced,
    and only then gets a name: the target's own where none exists yet (snapshots: one link, so
    a process killed at any point leaves nothing behind), else a random temporary one renamed
    over the target (a kill between the two leaves a ``.NAME.tmp.*`` file, which the snapshot
    writer removes when it starts). A reader sees the old file or the new one, never a part.
    Elsewhere an exclusively created temp file + fsync + rename is used; no temporary name is
    ever one that could have been planted, and none is left behind by a failure.
    """
    path = Path(path)
    directory = path.resolve().parent
    path = directory / path.name
    tmp: Path | None = None
    fd = None
    if hasattr(os, "O_TMPFILE"):
        try:
            fd = os.open(directory, os.O_TMPFILE | os.O_WRONLY, 0o644)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise  # a real failure (no space, read-only, no permission), not a missing feature
            fd = None  # filesystem without O_TMPFILE support
    try:
        if fd is not None:
            with os.fdopen(fd, "wb", closefd=True) as f:
                feather.write_feather(table, f, compression="zstd")
                f.flush()
                os.fsync(f.fileno())
                # linkat(AT_SYMLINK_FOLLOW) gives the unnamed file a name; passing a dir fd makes
                # CPython call linkat instead of link (which would not follow /proc's link).
                src = f"/proc/self/fd/{f.fileno()}"
                dfd = os.open(directory, os.O_RDONLY)
                try:
                    try:
                        os.link(src, path, src_dir_fd=dfd, follow_symlinks=True)
                    except FileExistsError:  # replacing a file: a random new name, then rename over it
                        for _ in range(16):
                            tmp = directory / f".{path.name}.tmp.{secrets.token_hex(8)}"
                            try:
                                os.link(src, tmp, src_dir_fd=dfd, follow_symlinks=True)
                                break
                            except FileExistsError:
                                tmp = None
                        if tmp is None:
                            raise
                finally:
                    os.close(dfd)
        else:
            tfd, tmp = temp_for(path)
            with os.fdopen(tfd, "wb") as f:
                os.fchmod(f.fileno(), 0o644)
                feather.write_feather(table, f, compression="zstd")
                f.flush()
                os.fsync(f.fileno())
        if tmp is not None:
            os.replace(tmp, path)
            tmp = None
        fsync_dir(directory)  # make the new name itself durable
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise
    return path


class SchemaError(ValueError):
    """A statistics table this version cannot read as ours; the message names the column."""


def read_table(path: str | os.PathLike, *, check: bool = True) -> pa.Table:
    """Read an Arrow IPC (Feather v2) statistics file. With ``check`` (the default) the whole
    file is validated before anything computes on it (`conform`): a damaged file (flipped bytes
    in its body give offsets past the data, invalid UTF-8, ...) raises instead of crashing the
    compute kernels, and a file from a newer schema or with other column types raises
    `SchemaError`."""
    table = feather.read_table(path)
    return conform(table) if check else table


#: Columns of replay files beyond SCHEMA (format headroom, INT-8 figures): all float64.
_FLOAT_PREFIXES = ("headroom_", "int8_")


def _family(t: pa.DataType) -> str:
    if pa.types.is_null(t):
        return "null"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or getattr(pa.types, "is_string_view", bool)(t):
        return "string"
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_timestamp(t):
        return "timestamp"
    if (pa.types.is_list(t) or pa.types.is_large_list(t)) and _family(t.value_type) in ("float", "integer", "null"):
        return "float list"
    return str(t)


_ACCEPTS = {"string": {"string"}, "integer": {"integer"}, "float": {"float", "integer"},
            "timestamp": {"timestamp"}, "float list": {"float list"}}


def conform(table: pa.Table) -> pa.Table:
    """``table`` validated in full, its schema version checked, and every known column cast to
    the type of this schema (a wider integer, float32, large_string, another timestamp unit: cast;
    anything else: `SchemaError` naming the column)."""
    try:
        table.validate(full=True)
    except (pa.ArrowException, ValueError) as e:
        raise SchemaError(f"the file is damaged ({str(e).splitlines()[0][:200]}); write it again "
                          "(`vllm-maxact replay` or `snapshot`)") from None
    meta = table.schema.metadata or {}
    raw = meta.get(b"vllm_maxact.schema_version")
    if raw is not None:
        try:
            version = int(raw.decode())
        except (UnicodeDecodeError, ValueError):
            raise SchemaError(f"schema version {raw[:20]!r} is not a number: not a vllm-maxact file") from None
        if version > int(SCHEMA_VERSION):
            raise SchemaError(f"written with schema version {version}, newer than this vllm-maxact reads "
                              f"(up to {SCHEMA_VERSION}): upgrade vllm-maxact (pip install -U vllm-maxact)")
        if version < 1:
            raise SchemaError(f"schema version {version} does not exist: not a vllm-maxact file")
    want = {f.name: f.type for f in SCHEMA}
    for i, name in enumerate(table.column_names):
        target = want.get(name) or (pa.float64() if name.startswith(_FLOAT_PREFIXES) else None)
        got = table.schema.field(i).type
        if target is None or got == target:
            continue
        fam, want_fam = _family(got), _family(target)
        if fam != "null" and fam not in _ACCEPTS[want_fam]:
            raise SchemaError(f"column {name!r} holds {got}, expected {target} ({want_fam}): "
                              "not a vllm-maxact statistics file, or a damaged one")
        try:
            table = table.set_column(i, pa.field(name, target), table.column(i).cast(target))
        except (pa.ArrowException, ValueError) as e:
            raise SchemaError(f"column {name!r}: cannot read {got} as {target} ({e})") from None
    _check_rows(table)
    return table


def _check_rows(table: pa.Table) -> None:
    """What every row our writers produce satisfies (for the columns present): a known site whose
    kind and layer match it; max, min and absmax all null (nothing observed) or all finite, with
    min <= max and absmax = max(|max|, |min|); counts present and >= 0; channel maxima finite and
    >= 0. A row that breaks one is damage (or another tool's file), named here, not a crash later."""
    cols = {c: table.column(c).to_pylist() for c in ("window", "site", "kind", "layer", "rank", "absmax", "max",
                                                      "min", "tokens", "nan_count", "inf_count", "channel_absmax")
            if c in table.column_names}
    known: dict[str, Site | None] = {}
    for i in range(table.num_rows):
        def bad(what: str, i: int = i) -> SchemaError:
            site = cols["site"][i] if "site" in cols else None
            return SchemaError(f"row {i}{f' ({site})' if isinstance(site, str) else ''}: {what}; the file is "
                               "damaged or not written by vllm-maxact")

        if "window" in cols and cols["window"][i] is None:
            raise bad("window is null")
        if "site" in cols:
            name = cols["site"][i]
            if name not in known:
                try:
                    known[name] = Site.parse(name) if name is not None else None
                except (ValueError, KeyError, TypeError, AttributeError):
                    known[name] = None
            site = known[name]
            if site is None:
                raise bad(f"site {str(name)[:60]!r} is not a site name")
            if "kind" in cols and cols["kind"][i] != site.kind.value:
                raise bad(f"kind {cols['kind'][i]!r} is not the site's kind")
            if "layer" in cols and cols["layer"][i] != site.layer:
                raise bad(f"layer {cols['layer'][i]!r} is not the site's layer")
        if "rank" in cols and cols["rank"][i] is not None and cols["rank"][i] < 0:
            raise bad("rank is negative")
        ext = [cols[c][i] for c in ("absmax", "max", "min") if c in cols]
        if any(v is None for v in ext) and any(v is not None for v in ext):
            raise bad("absmax, max and min must all be set or all be null")
        if any(v is not None and not math.isfinite(v) for v in ext):
            raise bad("a maximum is not finite (NaN and Inf are counted, never recorded as maxima)")
        if len(ext) == 3 and ext[0] is not None:
            absmax, mx, mn = ext
            if mn > mx or absmax < 0 or not math.isclose(absmax, max(abs(mx), abs(mn)), rel_tol=1e-6, abs_tol=1e-30):
                raise bad(f"absmax {absmax}, max {mx} and min {mn} do not fit together")
        for c in ("tokens", "nan_count", "inf_count"):
            if c in cols and (cols[c][i] is None or cols[c][i] < 0):
                raise bad(f"{c} is {cols[c][i]} (a count >= 0)")
        chans = cols.get("channel_absmax", [None] * (i + 1))[i]
        if chans is not None and any(v is not None and not (math.isfinite(v) and v >= 0) for v in chans):
            raise bad("a channel maximum is negative or not finite")


SNAPSHOT_NAME = re.compile(r"^maxact-(?P<model>.+)-(?P<stamp>\d{8}T\d{6}\d*Z)\.arrow$")


def safe_name(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("_")[-80:] or "model"
