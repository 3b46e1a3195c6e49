"""Reports on statistics tables: terminal tables, PNG plots, one self-contained HTML page, and
side-by-side comparison of models.

Every function takes a table as read from an Arrow file (replay output, snapshot, or
``read_stats``) and reports one *view* of it, chosen by :func:`select_view`: one window, rows merged
over tensor-parallel ranks. Whole-corpus numbers use the rows with ``domain`` null (through
:func:`vllm_maxact.summary.whole`), the per-domain table and plot use the rows with ``domain`` set.

Optional columns are used when present: ``int8_sqnr_db`` (and friends) add an SQNR-vs-absmax scatter
plot and a column in the top-sites table; ``headroom_fp16``/``headroom_fp8`` are shown in the
top-sites table (otherwise fp16 headroom is computed as 65,504 / absmax).

Plots are drawn with matplotlib's object API (``Figure`` + Agg), never ``pyplot``: no global backend
switch, no display needed.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from vllm_maxact import summary
from vllm_maxact.export.arrow import SchemaError, read_table
from vllm_maxact.formats import FP8_E4M3_MAX, FP16_MAX
from vllm_maxact.sites import GLOBAL_KINDS, KIND_ORDER, Kind, Site

#: Columns a file must have to be reported (the others of the schema are optional).
REQUIRED_COLUMNS = (
    "window", "domain", "site", "kind", "layer", "rank", "absmax", "max", "min", "tokens", "nan_count", "inf_count",
)
#: Windows in the order :func:`select_view` prefers them.
WINDOW_PREFERENCE = ("replay", "lifetime", "recent")
#: Kinds recorded once per decoder layer (the others are recorded once per model).
LAYER_KINDS = (Kind.RESIDUAL, Kind.ATTN_OUT, Kind.MLP_OUT, Kind.GATE, Kind.ROUTER)
#: One colour per kind, shared by every plot.
KIND_COLORS = {
    "embedding": "#7f7f7f",
    "residual": "#1f77b4",
    "attn_out": "#ff7f0e",
    "mlp_out": "#2ca02c",
    "gate": "#9467bd",
    "router": "#8c564b",
    "final_norm": "#d62728",
    "attn_in": "#17becf",
    "mlp_in": "#bcbd22",
    "o_in": "#aec7e8",
    "down_in": "#98df8a",
    "k": "#ff9896",
    "v": "#c5b0d5",
}
INT8_SQNR = "int8_sqnr_db"
_GLOBAL = [k.value for k in KIND_ORDER if k in GLOBAL_KINDS]
PLOT_DPI = 110
PLOT_FILES = {
    "layers": "layers.png",
    "domains": "domains.png",
    "top_sites": "top_sites.png",
    "int8_sqnr": "int8_sqnr.png",
    "compare": "compare.png",
}
_CAPTIONS = {
    "layers.png": "Layer-wise max |x| per kind",
    "domains.png": "Global max M per domain",
    "top_sites.png": "Top sites by max |x|",
    "int8_sqnr.png": "INT-8 SQNR vs max |x| per site",
    "compare.png": "Per-kind max |x| per model",
}


class ReportError(ValueError):
    """A file or table that cannot be reported; the message names the file and the fix."""


# ---------------------------------------------------------------------------------------------
# loading and selecting


def load(path: str | os.PathLike) -> pa.Table:
    """Read an Arrow IPC (Feather v2) statistics file, checking it has the columns a report needs."""
    p = Path(path)
    if not p.exists():
        raise ReportError(f"{p}: no such file (pass an Arrow file written by `vllm-maxact replay` or `snapshot`)")
    if p.is_dir():
        raise ReportError(f"{p}: is a directory; pass one .arrow file in it")
    try:
        table = read_table(p)  # validated in full before anything computes on it
    except PermissionError as e:
        raise ReportError(f"{p}: cannot be read ({e.strerror}); check its permissions") from None
    except SchemaError as e:
        raise ReportError(f"{p}: {e}") from None
    except (pa.ArrowException, OSError, ValueError) as e:
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ReportError(
            f"{p}: not an Arrow IPC/Feather file, or a damaged one ({first}); pass a file written by "
            "`vllm-maxact replay` or `vllm-maxact snapshot`"
        ) from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise ReportError(
            f"{p}: missing required columns {', '.join(missing)}; this is not a vllm-maxact statistics file "
            "(or one from an incompatible version): write it again with `vllm-maxact replay`"
        )
    return table


def _check_columns(table: pa.Table) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise ReportError(f"table lacks required columns {', '.join(missing)}")


def select_view(table: pa.Table, window: str | None = None, *, domains: bool = False) -> pa.Table:
    """The rows a report is about.

    - **window**: the one asked for, else ``replay`` if present (a corpus replay), else ``lifetime``
      (a snapshot: everything seen since start), else ``recent``. A window that is not in the table
      is an error naming the windows that are.
    - **ranks**: only rows merged over tensor-parallel ranks (``rank`` null); per-rank rows are
      ignored.
    - **domains**: whole-corpus rows only (``domain`` null) by default; with ``domains=True`` the
      per-domain rows are kept as well (what :func:`vllm_maxact.summary.per_domain` needs).
    - **duplicates**: when several snapshots were concatenated, the latest row (by ``timestamp``)
      of each (site, domain) is kept.

    A view holding several models is an error (report one file per model, or use :func:`compare`).
    Selecting is idempotent: a view passed again comes back unchanged. Schema metadata is kept.
    """
    _check_columns(table)
    present = [w for w in table.column("window").unique().to_pylist() if w is not None]
    if not present:
        raise ReportError("the table has no rows")
    if window is None:
        window = next((w for w in WINDOW_PREFERENCE if w in present), sorted(present)[0])
    elif window not in present:
        raise ReportError(f"window {window!r} is not in the table; it has: {', '.join(sorted(present))}")
    mask = pc.and_(pc.equal(table["window"], window), pc.is_null(table["rank"]))
    if not domains:
        mask = pc.and_(mask, pc.is_null(table["domain"]))
    view = table.filter(mask)
    if view.num_rows == 0:
        raise ReportError(f"window {window!r} has no rows merged over ranks (rank null)")
    if "model" in view.column_names:
        models = sorted({m for m in view.column("model").to_pylist() if m is not None})
        if len(models) > 1:
            raise ReportError(
                f"the table holds {len(models)} models ({', '.join(models)}); report one model per file "
                "or compare them with `vllm-maxact compare`"
            )
    keys = list(zip(view.column("site").to_pylist(), view.column("domain").to_pylist(), strict=True))
    if len(set(keys)) < len(keys):
        ts = view.column("timestamp").to_pylist() if "timestamp" in view.column_names else [None] * len(keys)
        best: dict[tuple, int] = {}
        for i, (k, t) in enumerate(zip(keys, ts, strict=True)):
            j = best.get(k)
            if j is None or (t is not None and (ts[j] is None or t >= ts[j])):
                best[k] = i
        view = view.take(pa.array(sorted(best.values()), pa.int64()))
    return view


def _view(table: pa.Table, window: str | None, domains: bool = False) -> pa.Table:
    return select_view(table, window, domains=domains)


def _first(view: pa.Table, column: str) -> Any:
    if column not in view.column_names:
        return None
    return next((v for v in view.column(column).to_pylist() if v not in (None, "")), None)


def _metadata(table: pa.Table) -> dict[str, str]:
    meta = table.schema.metadata or {}
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in meta.items()}


def info(table: pa.Table, window: str | None = None) -> dict[str, Any]:
    """Facts for headers: model, versions, window, tokens, samples, M and its site, fp16/FP8 fit."""
    view = _view(table, window)
    meta = _metadata(table)
    m, site = summary.global_max(view)
    tokens = meta.get("vllm_maxact.tokens")
    tok = int(tokens) if tokens and tokens.isdigit() else None
    if tok is None:
        col = [t for t in view.column("tokens").to_pylist() if t is not None]
        tok = max(col) if col else None
    ts = _first(view, "timestamp")
    nonfinite = sum((a or 0) + (b or 0) for a, b in zip(view.column("nan_count").to_pylist(),
                                                         view.column("inf_count").to_pylist(), strict=True))
    return {
        "model": _first(view, "model") or "unknown model",
        "architecture": _first(view, "architecture"),
        "vllm_version": _first(view, "vllm_version"),
        "plugin_version": _first(view, "plugin_version"),
        "window": view.column("window")[0].as_py(),
        "timestamp": ts.isoformat(timespec="seconds") if isinstance(ts, dt.datetime) else None,
        "tokens": tok,
        "samples": int(meta["vllm_maxact.samples"]) if meta.get("vllm_maxact.samples", "").isdigit() else None,
        "truncated": int(meta["vllm_maxact.truncated"]) if meta.get("vllm_maxact.truncated", "").isdigit() else None,
        "M": m,
        "site": site,
        "fp16_overflow": m is not None and m > FP16_MAX,
        "fp16_headroom": (FP16_MAX / m) if m else None,
        "fp8_overflow": m is not None and m > FP8_E4M3_MAX,
        "nonfinite": nonfinite,
        "sites": view.num_rows,
    }


# ---------------------------------------------------------------------------------------------
# tables


def kinds_present(table: pa.Table, window: str | None = None) -> list[str]:
    """Kinds with at least one row in the view, in KIND_ORDER."""
    have = set(_view(table, window).column("kind").to_pylist())
    return [k.value for k in KIND_ORDER if k.value in have]


def layer_table(table: pa.Table, window: str | None = None) -> list[dict[str, Any]]:
    """One row per decoder layer, between an ``embedding`` row and a ``final_norm`` row.

    Each row is ``{"row": label, "layer": int | None, <kind>: absmax | None, ...}`` with one key per
    kind present in the view, in KIND_ORDER (``embedding`` and ``final_norm`` are filled only on
    their own rows). Whole-corpus rows of the view chosen by :func:`select_view`.
    """
    view = _view(table, window)
    kinds = kinds_present(view)
    by_layer: dict[int, dict[str, Any]] = {}
    singles: dict[str, float | None] = {}
    for r in view.to_pylist():
        if r["layer"] is None:
            singles[r["kind"]] = r["absmax"]
        else:
            by_layer.setdefault(r["layer"], {})[r["kind"]] = r["absmax"]

    def row(label: str, layer: int | None, values: dict[str, Any]) -> dict[str, Any]:
        return {"row": label, "layer": layer, **{k: values.get(k) for k in kinds}}

    out = []
    if Kind.EMBEDDING.value in singles:
        out.append(row("embedding", None, {"embedding": singles[Kind.EMBEDDING.value]}))
    for layer in sorted(by_layer):
        out.append(row(f"layer {layer}", layer, by_layer[layer]))
    if Kind.FINAL_NORM.value in singles:
        out.append(row("final_norm", None, {"final_norm": singles[Kind.FINAL_NORM.value]}))
    return out


def domain_table(table: pa.Table, window: str | None = None) -> list[dict[str, Any]]:
    """Per domain: M (max over the global kinds), its site, its share of the whole-corpus M, tokens.
    Sorted by M, largest first; empty when the view has no per-domain rows."""
    view = _view(table, window, domains=True)
    whole_m, _ = summary.global_max(view)
    tokens: dict[str, int] = {}
    for r in view.filter(pc.is_valid(view["domain"])).to_pylist():
        if r["tokens"] is not None:
            tokens[r["domain"]] = max(tokens.get(r["domain"], 0), r["tokens"])
    rows = [
        {"domain": d, "M": v, "site": s, "share": (v / whole_m) if whole_m else None, "tokens": tokens.get(d)}
        for d, (v, s) in summary.per_domain(view).items()
    ]
    return sorted(rows, key=lambda r: -r["M"])


def _headroom(r: dict[str, Any], col: str, limit: float) -> float | None:
    if r.get(col) is not None:
        return r[col]
    return limit / r["absmax"] if r.get("absmax") else None


def top_table(table: pa.Table, n: int = 15, window: str | None = None) -> list[dict[str, Any]]:
    """The ``n`` sites with the largest absmax, with fp16/FP8 headroom (from the ``headroom_*``
    columns if present, else computed) and INT-8 SQNR when the column exists."""
    rows = summary.top_sites(_view(table, window), n)
    for r in rows:
        r["headroom_fp16"] = _headroom(r, "headroom_fp16", FP16_MAX)
        r["headroom_fp8"] = _headroom(r, "headroom_fp8", FP8_E4M3_MAX)
    return rows


def fmt(v: float | None) -> str:
    """Numbers as the report prints them: thousands separators, one decimal (3 digits below 1)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if abs(v) >= 1 or v == 0:
        return f"{v:,.1f}"
    return f"{v:.3g}"


def level(v: float | None) -> str:
    """``"fp16"`` above 65,504, ``"fp8"`` above 448 (FP8 E4M3), else ``""``: the highlight."""
    if v is None:
        return ""
    if v > FP16_MAX:
        return "fp16"
    if v > FP8_E4M3_MAX:
        return "fp8"
    return ""


# ---------------------------------------------------------------------------------------------
# terminal


def _rich_value(v: float | None) -> str:
    lv = level(v)
    s = fmt(v)
    return f"[bold red]{s}[/bold red]" if lv == "fp16" else f"[yellow]{s}[/yellow]" if lv == "fp8" else s


def print_report(table: pa.Table, console=None, window: str | None = None) -> None:
    """Header, maxima per kind and top sites (via :func:`summary.render`), then the layer-wise
    table (layers x kinds; red above fp16's 65,504, yellow above FP8 E4M3's 448) and the per-domain
    table."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    view = _view(table, window)
    i = info(table, window)
    extra: dict[str, Any] = {"model": i["model"]}
    if i["architecture"]:
        extra["architecture"] = i["architecture"]
    extra["versions"] = f"vllm-maxact {i['plugin_version'] or '?'}, vLLM {i['vllm_version'] or '?'}"
    extra["window"] = i["window"] + (f" (at {i['timestamp']})" if i["timestamp"] else "")
    if i["samples"] is not None:
        extra["samples"] = f"{i['samples']:,}" + (f" ({i['truncated']} truncated)" if i["truncated"] else "")
    if i["tokens"] is not None:
        extra["tokens"] = f"{i['tokens']:,}"
    if i["nonfinite"]:
        extra["non-finite values"] = f"[red]{i['nonfinite']:,} NaN/Inf[/red]"
    summary.render(view, title=f"{i['model']}: activation ranges ({i['window']})", extra=extra, console=console)

    kinds = kinds_present(view)
    lt = Table(title="max |x| per layer and kind  ([yellow]> 448 FP8 E4M3[/yellow], [bold red]> 65,504 fp16[/bold red])")
    lt.add_column("row")
    for k in kinds:
        lt.add_column(k, justify="right")
    for r in layer_table(view):
        lt.add_row(r["row"], *(_rich_value(r[k]) for k in kinds))
    console.print(lt)

    dom = domain_table(table, window)
    if dom:
        dt_ = Table(title="global max M per domain")
        for col in ("domain", "M", "site", "of whole M", "tokens"):
            dt_.add_column(col, justify="right" if col in ("M", "of whole M", "tokens") else "left")
        for r in dom:
            dt_.add_row(r["domain"], _rich_value(r["M"]), r["site"],
                        f"{r['share']:.0%}" if r["share"] is not None else "",
                        f"{r['tokens']:,}" if r["tokens"] is not None else "")
        console.print(dt_)


# ---------------------------------------------------------------------------------------------
# plots


def _mpl_text(s: Any) -> str:
    """Text for matplotlib: ``$`` would start mathtext."""
    return str(s).replace("$", r"\$")


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=PLOT_DPI)
    return fig, fig.subplots()


def _short(model: str, n: int = 48) -> str:
    return model if len(model) <= n else "…" + model[-(n - 1):]


def _style(ax, title: str, subtitle: str = "") -> None:
    ax.figure.suptitle(_mpl_text(title), fontsize=13.5, fontweight="bold", x=0.01, ha="left")
    if subtitle:
        ax.set_title(_mpl_text(subtitle), fontsize=10.5, loc="left", color="#333")
    ax.tick_params(labelsize=10)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _reference_lines(ax, horizontal: bool) -> None:
    """Dashed lines at fp16's and FP8 E4M3's largest finite values. Horizontal lines are labelled in
    the right margin; vertical ones at the top of the axes (bar plots leave an empty band there)."""
    from matplotlib.transforms import blended_transform_factory

    box = {"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.65}
    for value, label, color in ((FP16_MAX, "fp16 max 65,504", "#c0392b"), (FP8_E4M3_MAX, "FP8 E4M3 max 448", "#b9770e")):
        if horizontal:  # labelled in the right margin, where no data is
            ax.axhline(value, color=color, linestyle="--", linewidth=1.3, zorder=1)
            tr = blended_transform_factory(ax.transAxes, ax.transData)
            ax.text(1.008, value, label.replace(" max ", " max\n"), transform=tr, ha="left", va="center",
                    fontsize=9.5, color=color, fontweight="bold", clip_on=False)
        else:
            ax.axvline(value, color=color, linestyle="--", linewidth=1.3, zorder=1)
            tr = blended_transform_factory(ax.transData, ax.transAxes)
            ax.text(value * 1.1, 0.99, label, transform=tr, ha="left", va="top", fontsize=9.5, color=color,
                    fontweight="bold", bbox=box, zorder=6)


def _log_limits(values: Sequence[float], include: Sequence[float] = (FP8_E4M3_MAX, FP16_MAX),
                pad: float = 2.5) -> tuple[float, float]:
    """Log-axis limits around the positive ``values`` and the ``include`` lines; the lower limit is
    a power of ten (bars start there)."""
    pos = [v for v in values if v and v > 0] + list(include)
    lo, hi = min(pos), max(pos)
    return 10 ** math.floor(math.log10(lo / 1.5)), hi * pad


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=PLOT_DPI, facecolor="white")
    return path


def plot_layers(table: pa.Table, path: Path, window: str | None = None) -> Path:
    """Layer-wise absmax per kind, log y, fp16 and FP8 E4M3 reference lines; M annotated."""
    i = info(table, window)
    rows = layer_table(table, window)
    layers = [r["layer"] for r in rows if r["layer"] is not None]
    n = (max(layers) + 1) if layers else 0
    fig, ax = _figure(11, 6.0)
    values: list[float] = []
    for k in LAYER_KINDS:
        pts = [(r["layer"], r.get(k.value)) for r in rows if r["layer"] is not None and (r.get(k.value) or 0) > 0]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, marker="o", markersize=3.5, linewidth=1.8, color=KIND_COLORS[k.value], label=k.value)
            values += ys
    for r in rows:
        for k, x in (("embedding", -2), ("final_norm", n + 1)):
            if r["row"] == k and (r.get(k) or 0) > 0:
                ax.scatter([x], [r[k]], s=70, marker="D", color=KIND_COLORS[k], zorder=5, label=k)
                values.append(r[k])
    lo, hi = _log_limits(values)
    ax.set_yscale("log")
    ax.set_ylim(lo, hi)
    _reference_lines(ax, horizontal=True)
    if i["M"] and i["site"]:
        s = Site.parse(i["site"])
        x = -2 if s.kind == Kind.EMBEDDING else n + 1 if s.kind == Kind.FINAL_NORM else s.layer
        ax.scatter([x], [i["M"]], s=260, facecolors="none", edgecolors="black", linewidths=1.6, zorder=6,
                   label="global max M")
    step = 1 if n <= 32 else 2 if n <= 64 else 4
    # embedding and final_norm sit one slot apart from the layers, so their labels do not run together
    ax.set_xticks([-2, *range(0, n, step), n + 1])
    ax.set_xticklabels(["emb", *(str(t) for t in range(0, n, step)), "final\nnorm"], fontsize=9)
    ax.set_xlim(-2.8, n + 1.8)
    ax.set_xlabel("layer", fontsize=11)
    ax.set_ylabel("max |x|  (log scale)", fontsize=11)
    m = f"global max M = {i['M']:,.1f} at {i['site']} (circled)" if i["M"] else "no finite values"
    _style(ax, f"{_short(i['model'])}: max |x| per layer and kind ({i['window']})", m)
    ncol = max(1, len(ax.get_legend_handles_labels()[0]))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=ncol, fontsize=10, frameon=False,
              handletextpad=0.4, columnspacing=1.4)
    return _save(fig, path)


def plot_domains(table: pa.Table, path: Path, window: str | None = None) -> Path | None:
    """Horizontal bars of M per domain (log x), each annotated with the site that carries it."""
    rows = domain_table(table, window)
    if not rows:
        return None
    i = info(table, window)
    rows = rows[::-1]  # largest on top
    fig, ax = _figure(9, 2.2 + 0.42 * len(rows))
    vals = [r["M"] for r in rows]
    lo, _ = _log_limits(vals)
    hi = max(max(vals) * 40, FP16_MAX * 2)  # room for the annotations
    colors = [KIND_COLORS.get(Site.parse(r["site"]).kind.value, "#333") for r in rows]
    ax.barh([_mpl_text(r["domain"]) for r in rows], [v - lo for v in vals], left=lo, color=colors, height=0.65,
            zorder=2)
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(-0.6, len(rows) - 0.4 + 0.5)  # an empty band on top for the reference labels
    for y, r in enumerate(rows):
        ax.text(r["M"] * 1.15, y, _mpl_text(f"{r['M']:,.0f}  {r['site']}"), va="center", fontsize=9.5,
                bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8}, zorder=5)
    if i["M"]:
        ax.axvline(i["M"], color="#333", linestyle=":", linewidth=1.3, zorder=1)
    _reference_lines(ax, horizontal=False)
    _kind_legend(ax, {Site.parse(r["site"]).kind.value for r in rows},
                 extra=[("whole-corpus M", ":")] if i["M"] else [])
    ax.set_xlabel(f"M = max |x| over {', '.join(_GLOBAL)}  (log scale)", fontsize=10)
    ax.tick_params(axis="y", labelsize=10.5)
    _style(ax, f"{_short(i['model'])}: global max M per domain",
           f"whole corpus: M = {i['M']:,.1f} at {i['site']}" if i["M"] else "")
    return _save(fig, path)


def _kind_legend(ax, kinds: set[str], extra: Sequence[tuple[str, str]] = ()) -> None:
    """A legend of kinds (and ``extra`` (label, linestyle) lines) below the axes."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Patch(color=KIND_COLORS[k.value], label=k.value) for k in KIND_ORDER if k.value in kinds]
    handles += [Line2D([], [], color="#333", linestyle=ls, label=label) for label, ls in extra]
    if handles:
        # just under the x label: ~0.6 inch below the axes, whose height is the figure's less ~1.5 inch
        below = 0.62 / max(ax.figure.get_figheight() - 1.5, 1.0)
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -below),
                  ncol=len(handles), fontsize=9.5, frameon=False)


def plot_top_sites(table: pa.Table, path: Path, window: str | None = None, n: int = 15) -> Path | None:
    """Horizontal bars of the ``n`` largest sites (log x), coloured by kind."""
    rows = top_table(table, n, window)
    if not rows:
        return None
    i = info(table, window)
    rows = rows[::-1]
    fig, ax = _figure(9, 2.0 + 0.36 * len(rows))
    vals = [r["absmax"] for r in rows]
    lo, _ = _log_limits(vals)
    hi = max(max(vals) * 8, FP16_MAX * 2)
    ax.barh([r["site"] for r in rows], [v - lo for v in vals], left=lo, height=0.65, zorder=2,
            color=[KIND_COLORS.get(r["kind"], "#333") for r in rows])
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(-0.6, len(rows) - 0.4 + 0.6)  # an empty band on top for the reference labels
    for y, v in enumerate(vals):
        ax.text(v * 1.15, y, f"{v:,.1f}", va="center", fontsize=9.5,
                bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8}, zorder=5)
    _reference_lines(ax, horizontal=False)
    _kind_legend(ax, {r["kind"] for r in rows})
    ax.set_xlabel("max |x|  (log scale)", fontsize=11)
    ax.tick_params(axis="y", labelsize=10)
    _style(ax, f"{_short(i['model'])}: top {len(rows)} sites by max |x|")
    return _save(fig, path)


def plot_int8(table: pa.Table, path: Path, window: str | None = None) -> Path | None:
    """SQNR of per-tensor INT-8 quantization vs absmax per site (log x), coloured by kind; only when
    the table has an ``int8_sqnr_db`` column."""
    if INT8_SQNR not in table.column_names:
        return None
    view = _view(table, window)
    rows = [r for r in view.to_pylist() if r.get(INT8_SQNR) is not None and (r["absmax"] or 0) > 0
            and math.isfinite(r[INT8_SQNR])]
    if not rows:
        return None
    i = info(table, window)
    fig, ax = _figure(9, 5.4)
    for k in KIND_ORDER:
        pts = [(r["absmax"], r[INT8_SQNR]) for r in rows if r["kind"] == k.value]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.scatter(xs, ys, s=34, alpha=0.85, color=KIND_COLORS[k.value], label=k.value, edgecolors="white",
                       linewidths=0.5, zorder=3)
    ax.set_xscale("log")
    xs_all = [r["absmax"] for r in rows]
    ax.set_xlim(min(xs_all) / 1.6, max(xs_all) * 1.6)
    worst = min(rows, key=lambda r: r[INT8_SQNR])
    ax.annotate(f"worst: {worst['site']}\n{worst[INT8_SQNR]:.1f} dB", xy=(worst["absmax"], worst[INT8_SQNR]),
                xytext=(-150, 8), textcoords="offset points", ha="left", va="bottom", fontsize=9.5,
                arrowprops={"arrowstyle": "->", "color": "#444"},
                bbox={"boxstyle": "round,pad=0.3", "fc": "white", "ec": "#999", "alpha": 0.9})
    ax.set_xlabel("max |x|  (log scale)", fontsize=11)
    ax.set_ylabel("INT-8 SQNR (dB, higher is better)", fontsize=11)
    ax.legend(fontsize=9.5, loc="best", framealpha=0.9)
    _style(ax, f"{_short(i['model'])}: INT-8 SQNR vs max |x| per site")
    return _save(fig, path)


def write_plots(table: pa.Table, out_dir: str | os.PathLike, window: str | None = None) -> list[Path]:
    """Write the report's PNGs into ``out_dir`` (created): ``layers.png``, ``domains.png`` (when
    there are per-domain rows), ``top_sites.png``, ``int8_sqnr.png`` (when INT-8 columns exist).
    Returns the paths written: none when no finite value was recorded."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if _view(table, window).column("absmax").null_count == _view(table, window).num_rows:
        return []
    written = [
        plot_layers(table, out / PLOT_FILES["layers"], window),
        plot_domains(table, out / PLOT_FILES["domains"], window),
        plot_top_sites(table, out / PLOT_FILES["top_sites"], window),
        plot_int8(table, out / PLOT_FILES["int8_sqnr"], window),
    ]
    return [p for p in written if p is not None]


# ---------------------------------------------------------------------------------------------
# HTML

_CSS = """
* { box-sizing: border-box; }
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Helvetica, Arial, sans-serif;
       margin: 0; background: #f4f5f7; color: #1d2129; font-size: 15px; line-height: 1.45; }
main { max-width: 1280px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 26px; margin: 4px 0 2px; }
h1 small { font-weight: normal; color: #5f6773; font-size: 16px; }
h2 { font-size: 19px; margin: 30px 0 10px; border-bottom: 2px solid #dde1e6; padding-bottom: 4px; }
.sub { color: #5f6773; margin: 0 0 16px; }
.summary { display: grid; grid-template-columns: repeat(auto-fit, minmax(190px, 1fr)); gap: 12px; }
.card { background: #fff; border: 1px solid #dde1e6; border-radius: 8px; padding: 12px 14px; }
.card .k { color: #5f6773; font-size: 12.5px; text-transform: uppercase; letter-spacing: .04em; }
.card .v { font-size: 21px; font-weight: 600; margin-top: 2px; word-break: break-word; }
.card .d { color: #5f6773; font-size: 13px; word-break: break-word; }
.card.bad { border-color: #e6a5a5; background: #fdf0f0; } .card.bad .v { color: #b3261e; }
.card.warn { border-color: #ecd28c; background: #fffaeb; } .card.warn .v { color: #8a6100; }
.card.ok .v { color: #1e7b34; }
figure { margin: 0; background: #fff; border: 1px solid #dde1e6; border-radius: 8px; padding: 10px;
         max-width: 100%; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { color: #5f6773; font-size: 13px; margin-top: 4px; }
.plots { display: flex; flex-wrap: wrap; gap: 14px; align-items: flex-start; }
table { border-collapse: collapse; background: #fff; border: 1px solid #dde1e6; font-size: 13.5px; }
th, td { padding: 4px 10px; border-bottom: 1px solid #eceef1; }
th { background: #eef0f3; text-align: left; position: sticky; top: 0; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
tr:hover td { background: #f7f9fc; }
td.fp16 { background: #f9d6d5; color: #8e1b14; font-weight: 600; }
td.fp8 { background: #fff0c2; color: #6b4d00; }
.legend span { display: inline-block; padding: 1px 8px; border-radius: 4px; margin-right: 8px; font-size: 13px; }
.legend .fp16 { background: #f9d6d5; color: #8e1b14; } .legend .fp8 { background: #fff0c2; color: #6b4d00; }
.tables { display: grid; grid-template-columns: max-content minmax(0, 1fr); gap: 32px; align-items: start; }
.tables > div:last-child table { width: 100%; }
@media (max-width: 1000px) { .tables { grid-template-columns: 1fr; } }
code { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12.5px; }
footer { color: #8a919c; font-size: 12px; margin-top: 36px; }
"""


def _e(s: Any) -> str:
    return html.escape("" if s is None else str(s), quote=True)


def _td(v: float | None) -> str:
    lv = level(v)
    return f'<td class="n {lv}">{_e(fmt(v))}</td>' if lv else f'<td class="n">{_e(fmt(v))}</td>'


def _pct(v: float | None) -> str:
    return "" if v is None else f"{v:.0%}"


def _int(v: int | None) -> str:
    return "" if v is None else f"{v:,}"


def _times(v: float | None) -> str:
    return "" if v is None else f"{v:,.2f}x"


def _db(v: float | None) -> str:
    return "" if v is None else f"{v:.1f}"


def _card(key: str, value: str, detail: str = "", cls: str = "") -> str:
    return (f'<div class="card {cls}"><div class="k">{_e(key)}</div><div class="v">{_e(value)}</div>'
            f'<div class="d">{_e(detail)}</div></div>')


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    name = Path(path).name
    cap = _CAPTIONS.get(name, Path(path).stem)
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{_e(cap)}">'
            f"<figcaption>{_e(cap)}</figcaption></figure>")


def write_html(table: pa.Table, out_path: str | os.PathLike, pngs: Sequence[str | os.PathLike] = (),
               window: str | None = None, source: str | os.PathLike | None = None) -> Path:
    """One self-contained page: inline CSS, the PNGs as base64 data URIs, no external resources.
    Summary cards (M, its site, fp16/FP8 fit, tokens, samples), the plots, the layer-wise table
    (same highlighting as the terminal), per-domain table, top sites. Every string is escaped."""
    i = info(table, window)
    kinds = kinds_present(table, window)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    m = i["M"]
    cards = []
    if m is None:
        cards.append(_card("global max |x| (M)", "none", "no finite values were recorded", "warn"))
    else:
        cards.append(_card("global max |x| (M)", f"{m:,.1f}", f"at {i['site']}",
                           "bad" if i["fp16_overflow"] else "warn" if i["fp8_overflow"] else "ok"))
        if i["fp16_overflow"]:
            cards.append(_card("fp16", "overflows", f"M is {m / FP16_MAX:,.2f}x fp16's 65,504", "bad"))
        else:
            head = i["fp16_headroom"]  # None when every value is 0
            cards.append(_card("fp16 headroom", f"{head:,.1f}x" if head is not None else "unbounded", "65,504 / M", "ok"))
        cards.append(_card("FP8 E4M3", "exceeds 448" if i["fp8_overflow"] else "fits 448",
                           "needs per-tensor scaling" if i["fp8_overflow"] else "", "warn" if i["fp8_overflow"] else "ok"))
    if i["tokens"] is not None:
        cards.append(_card("tokens", f"{i['tokens']:,}", f"window: {i['window']}"))
    if i["samples"] is not None:
        cards.append(_card("samples", f"{i['samples']:,}",
                           f"{i['truncated']:,} truncated" if i["truncated"] is not None else ""))
    if i["nonfinite"]:
        cards.append(_card("non-finite", f"{i['nonfinite']:,}", "NaN/Inf values counted", "bad"))

    sub = [f"window {i['window']}"]
    if i["architecture"]:
        sub.append(i["architecture"])
    sub.append(f"vllm-maxact {i['plugin_version'] or '?'}, vLLM {i['vllm_version'] or '?'}")
    if i["timestamp"]:
        sub.append(i["timestamp"])

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(i['model'])}: vllm-maxact report</title>",
        f"<style>{_CSS}</style></head><body><main>",
        f"<h1>{_e(i['model'])} <small>activation ranges</small></h1>",
        f'<p class="sub">{" &middot; ".join(_e(s) for s in sub)}</p>',
        f'<section class="summary">{"".join(cards)}</section>',
    ]
    if pngs:
        parts.append("<h2>Plots</h2>")
        parts.append(f'<section class="plots">{"".join(_img(Path(p)) for p in pngs)}</section>')

    parts.append('<div class="tables"><div>')
    parts.append("<h2>Max |x| per layer and kind</h2>")
    parts.append('<p class="legend"><span class="fp8">&gt; 448 (FP8 E4M3)</span>'
                 '<span class="fp16">&gt; 65,504 (fp16)</span></p>')
    head = "".join(f'<th class="n">{_e(k)}</th>' for k in kinds)
    body = "".join(f"<tr><td>{_e(r['row'])}</td>{''.join(_td(r[k]) for k in kinds)}</tr>"
                   for r in layer_table(table, window))
    parts.append(f'<table id="layers"><thead><tr><th>row</th>{head}</tr></thead><tbody>{body}</tbody></table>')
    parts.append("</div><div>")
    dom = domain_table(table, window)
    if dom:
        rows = "".join(
            f"<tr><td>{_e(r['domain'])}</td>{_td(r['M'])}<td><code>{_e(r['site'])}</code></td>"
            f'<td class="n">{_e(_pct(r["share"]))}</td><td class="n">{_e(_int(r["tokens"]))}</td></tr>'
            for r in dom)
        parts.append('<h2>Global max M per domain</h2><table id="domains"><thead><tr><th>domain</th>'
                     '<th class="n">M</th><th>site</th><th class="n">of whole M</th><th class="n">tokens</th>'
                     f"</tr></thead><tbody>{rows}</tbody></table>")
    top = top_table(table, 15, window)
    has_sqnr = any(r.get(INT8_SQNR) is not None for r in top)
    rows = "".join(
        f"<tr><td><code>{_e(r['site'])}</code></td>{_td(r['absmax'])}"
        f'<td class="n">{_e(fmt(r["max"]))}</td><td class="n">{_e(fmt(r["min"]))}</td>'
        f'<td class="n{" fp16" if (r["headroom_fp16"] or 2) < 1 else ""}">{_e(_times(r["headroom_fp16"]))}</td>'
        + (f'<td class="n">{_e(_db(r.get(INT8_SQNR)))}</td>' if has_sqnr else "")
        + "</tr>"
        for r in top)
    sqnr_head = '<th class="n" title="per-tensor INT-8 SQNR">SQNR dB</th>' if has_sqnr else ""
    parts.append('<h2>Top sites</h2><table id="top"><thead><tr><th>site</th><th class="n">max |x|</th>'
                 '<th class="n">max</th><th class="n">min</th><th class="n">fp16 headroom</th>'
                 f"{sqnr_head}</tr></thead><tbody>{rows}</tbody></table>")
    parts.append("</div></div>")
    src = f" from {_e(source)}" if source else ""
    parts.append(f"<footer>Generated by vllm-maxact{src} on "
                 f"{_e(dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds'))}. "
                 f"M is the max |x| over {_e(', '.join(_GLOBAL))} sites (gates and routers excluded).</footer>")
    parts.append("</main></body></html>")
    out.write_text("\n".join(parts), encoding="utf-8")
    return out


# ---------------------------------------------------------------------------------------------
# comparison


def compare(tables: Sequence[tuple[str, pa.Table]], window: str | None = None) -> list[dict[str, Any]]:
    """One row per (label, table): ``label``, ``model``, ``M``, ``site``, ``ratio`` (M / the first
    model's M), ``fp16_overflow``, ``kinds`` ({kind: absmax}) and ``kind_ratios`` ({kind: absmax /
    the first model's absmax of that kind}); the first table is the baseline."""
    rows: list[dict[str, Any]] = []
    for label, table in tables:
        view = _view(table, window)
        i = info(view)
        rows.append({
            "label": label,
            "model": i["model"],
            "window": i["window"],
            "M": i["M"],
            "site": i["site"],
            "fp16_overflow": i["fp16_overflow"],
            "kinds": {r["kind"]: r["absmax"] for r in summary.per_kind(view)},
        })
    if not rows:
        return rows
    base = rows[0]
    for r in rows:
        r["ratio"] = (r["M"] / base["M"]) if r["M"] is not None and base["M"] else None
        r["kind_ratios"] = {k: (v / base["kinds"][k]) if base["kinds"].get(k) else None for k, v in r["kinds"].items()}
    return rows


def _compare_kinds(rows: Sequence[dict[str, Any]]) -> list[str]:
    have = {k for r in rows for k in r["kinds"]}
    return [k.value for k in KIND_ORDER if k.value in have]


def print_compare(rows: Sequence[dict[str, Any]], console=None) -> None:
    """Models side by side: M and its site, ratio to the baseline (first), fp16 flag, and a per-kind
    table of maxima with ratios."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if not rows:
        console.print("[yellow]nothing to compare[/yellow]")
        return
    show_model = any(r["label"] != r["model"] for r in rows)
    windows = {r["window"] for r in rows}
    if show_model or len(windows) > 1:
        m = Table(title="models")
        for col in ("label", "model", "window"):
            m.add_column(col, overflow="fold")
        for r in rows:
            m.add_row(r["label"], r["model"], r["window"])
        console.print(m)
    title = f"global max M (baseline: {rows[0]['label']}" + (f", window {next(iter(windows))})" if len(windows) == 1 else ")")
    t = Table(title=title)
    for col in ("label", "M", "site", "vs base", "fp16"):
        t.add_column(col, justify="right" if col in ("M", "vs base") else "left", no_wrap=col != "label",
                     overflow="fold")
    for r in rows:
        t.add_row(r["label"], _rich_value(r["M"]), r["site"] or "",
                  f"{r['ratio']:,.2f}x" if r["ratio"] is not None else "",
                  "[bold red]overflows[/bold red]" if r["fp16_overflow"] else "fits")
    console.print(t)
    kinds = _compare_kinds(rows)
    k = Table(title="max |x| per kind (ratio to baseline)")
    k.add_column("kind", no_wrap=True)
    for r in rows:
        k.add_column(r["label"], justify="right", overflow="fold")
    for kind in kinds:
        cells = []
        for j, r in enumerate(rows):
            v = r["kinds"].get(kind)
            ratio = r["kind_ratios"].get(kind)
            cell = _rich_value(v)
            if j and ratio is not None:
                cell += f" [dim]({ratio:,.2f}x)[/dim]"
            cells.append(cell)
        k.add_row(kind, *cells)
    console.print(k)


def plot_compare(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Grouped bars: per-kind max |x| per model, log y, fp16 and FP8 E4M3 reference lines."""
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kinds = _compare_kinds(rows)
    fig, ax = _figure(max(8.0, 1.3 * len(kinds) * max(1, len(rows)) / 2 + 3), 5.4)
    x = np.arange(len(kinds))
    width = 0.8 / max(1, len(rows))
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
    vals = [v for r in rows for v in r["kinds"].values() if v]
    lo, hi = _log_limits(vals)
    for j, r in enumerate(rows):
        ys = [r["kinds"].get(k) or 0 for k in kinds]
        heights = [y - lo if y > lo else 0 for y in ys]
        ax.bar(x + (j - (len(rows) - 1) / 2) * width, heights, width * 0.92, bottom=lo,
               color=palette[j % len(palette)], label=_mpl_text(f"{r['label']} (M {fmt(r['M'])})"), zorder=2)
    ax.set_yscale("log")
    ax.set_ylim(lo, hi)
    ax.set_xticks(x)
    ax.set_xticklabels(kinds, fontsize=10.5)
    ax.set_ylabel("max |x|  (log scale)", fontsize=11)
    _reference_lines(ax, horizontal=True)
    ax.legend(fontsize=10, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=min(len(rows), 4), frameon=False)
    title = "max |x| per kind: " + " vs ".join(r["label"] for r in rows)
    _style(ax, title if len(title) <= 100 else f"max |x| per kind, {len(rows)} models")
    return _save(fig, path)
