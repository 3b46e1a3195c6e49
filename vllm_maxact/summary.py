"""Text summaries of a statistics table (terminal output of replay and report)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from vllm_maxact.int8 import BF16_MAX, FP8_E4M3_MAX, FP16_MAX  # noqa: F401  (one definition of the limits)
from vllm_maxact.sites import GLOBAL_KINDS, KIND_ORDER


def whole(table: pa.Table) -> pa.Table:
    """Rows for the whole corpus/traffic: merged over ranks, not per domain."""
    mask = pc.and_(pc.is_null(table["domain"]), pc.is_null(table["rank"]))
    return table.filter(mask)


def global_max(table: pa.Table) -> tuple[float | None, str | None]:
    """The study's M: max |x| over embedding, residual, attn_out, mlp_out and final_norm."""
    best: tuple[float | None, str | None] = (None, None)
    for r in whole(table).to_pylist():
        if r["kind"] in {k.value for k in GLOBAL_KINDS} and r["absmax"] is not None:
            if best[0] is None or r["absmax"] > best[0]:
                best = (r["absmax"], r["site"])
    return best


def per_kind(table: pa.Table) -> list[dict[str, Any]]:
    rows = whole(table).to_pylist()
    out = []
    for kind in KIND_ORDER:
        ks = [r for r in rows if r["kind"] == kind.value and r["absmax"] is not None]
        if not ks:
            continue
        top = max(ks, key=lambda r: r["absmax"])
        out.append({"kind": kind.value, "absmax": top["absmax"], "site": top["site"], "sites": len(ks),
                    "nonfinite": sum(r["nan_count"] + r["inf_count"] for r in ks)})
    return out


def top_sites(table: pa.Table, n: int = 10) -> list[dict[str, Any]]:
    rows = [r for r in whole(table).to_pylist() if r["absmax"] is not None]
    return sorted(rows, key=lambda r: -r["absmax"])[:n]


def per_domain(table: pa.Table) -> dict[str, tuple[float, str]]:
    out: dict[str, tuple[float, str]] = {}
    gk = {k.value for k in GLOBAL_KINDS}
    for r in table.filter(pc.is_valid(table["domain"])).to_pylist():
        if r["kind"] in gk and r["absmax"] is not None and r["rank"] is None:
            if r["domain"] not in out or r["absmax"] > out[r["domain"]][0]:
                out[r["domain"]] = (r["absmax"], r["site"])
    return out


def _fp16_fits(m: float) -> str:
    # an all-zero model (every site 0) fits with unbounded headroom
    return f"fits fp16 ({FP16_MAX / m:,.1f}x headroom)" if m > 0 else "fits fp16 (every value 0)"


def render(table: pa.Table, *, title: str = "", extra: dict[str, Any] | None = None, console=None, top: int = 10,
           compact: bool = False) -> None:
    """Print the summary: global max and its site, per-kind maxima, the ``top`` sites, format
    flags, and the global max per domain. ``compact``: tables without borders (fewer lines)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    m, site = global_max(table)
    if m is None:
        console.print("[yellow]no finite values were recorded[/yellow]")
        return
    style = {"box": box.SIMPLE_HEAD, "show_edge": False, "title_justify": "left"} if compact else {}
    if compact:
        head = Table.grid(padding=(0, 2))
        head.add_column(style="bold")
        head.add_column(overflow="fold")
        console.print(f"[bold]{title or 'activation ranges'}[/bold]")
        fp16 = "[red]overflows fp16 (65,504)[/red]" if m > FP16_MAX else _fp16_fits(m)
        fp8 = "[red]exceeds FP8 E4M3 (448): needs per-tensor scaling[/red]" if m > FP8_E4M3_MAX else "fits FP8 E4M3 (448)"
        head.add_row("global max |x| (M)", f"[bold]{m:,.1f}[/bold] at [bold]{site}[/bold]; {fp16}; {fp8}")
        for k, v in (extra or {}).items():
            head.add_row(k, str(v))
    else:
        head = Table(title=title or "activation ranges", show_header=False)
        head.add_row("global max |x| (M)", f"{m:,.1f}", f"at {site}")
        flag = "[red]OVERFLOWS fp16 (65,504)[/red]" if m > FP16_MAX else _fp16_fits(m)
        head.add_row("fp16", flag, "")
        fp8 = "[red]exceeds FP8 E4M3 (448)[/red]" if m > FP8_E4M3_MAX else "fits FP8 E4M3 (448)"
        head.add_row("fp8 e4m3", fp8, "needs per-tensor scaling" if m > FP8_E4M3_MAX else "")
        for k, v in (extra or {}).items():
            head.add_row(k, str(v), "")
    console.print(head)
    kinds = Table(title="maxima per kind", **style)
    for col in ("kind", "absmax", "site", "sites", "non-finite"):
        kinds.add_column(col, justify="right" if col in ("absmax", "sites", "non-finite") else "left")
    for r in per_kind(table):
        kinds.add_row(r["kind"], f"{r['absmax']:,.2f}", r["site"], str(r["sites"]), str(r["nonfinite"]))
    console.print(kinds)
    if top:
        tops = Table(title="top sites", **style)
        for col in ("site", "absmax", "max", "min"):
            tops.add_column(col, justify="left" if col == "site" else "right")
        for r in top_sites(table, top):
            tops.add_row(r["site"], f"{r['absmax']:,.2f}", f"{r['max']:,.2f}", f"{r['min']:,.2f}")
        console.print(tops)
    dom = per_domain(table)
    if dom:
        d = Table(title="global max per domain", **style)
        d.add_column("domain")
        d.add_column("M", justify="right")
        d.add_column("site")
        for name, (v, s) in sorted(dom.items(), key=lambda kv: -kv[1][0]):
            d.add_row(name, f"{v:,.1f}", s)
        console.print(d)


def render_next_steps(steps: list[tuple[str, str]], *, console=None) -> None:
    """The commands to go on with, one a line, each with its purpose as a shell comment (pasteable
    whole); long lines are left to the terminal to wrap, never broken."""
    from rich.console import Console
    from rich.markup import escape

    console = console or Console()
    console.print("[bold]Next:[/bold]")
    width = min(max(len(c) for c, _ in steps), 60)
    for command, what in steps:
        note = f"  [dim]# {escape(what)}[/dim]" if what else ""
        console.print(f"  {escape(command.ljust(width) if note else command)}{note}", soft_wrap=True, highlight=False)


def int8_rows(table: pa.Table) -> list[dict[str, Any]]:
    if "int8_sqnr_db" not in table.column_names:
        return []
    return [r for r in whole(table).to_pylist() if r.get("int8_sqnr_db") is not None and r["absmax"]]


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Rank correlation (no ties handling needed for a summary figure)."""
    import numpy as np

    if len(xs) < 3:
        return None
    rx, ry = np.argsort(np.argsort(xs)), np.argsort(np.argsort(ys))
    return float(np.corrcoef(rx, ry)[0, 1])


def render_int8(table: pa.Table, *, console=None) -> None:
    """INT-8 per kind (worst site), the worst sites, and how SQNR co-varies with absmax."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    rows = int8_rows(table)
    if not rows:
        console.print("[yellow]no INT-8 figures in this table[/yellow]")
        return
    t = Table(title="INT-8 per-tensor symmetric, worst site per kind (threshold: calib max | calib p99.9)")
    for col in ("kind", "site", "absmax", "SQNR dB", "rel RMSE", "clip", "SQNR dB p99.9", "clip p99.9"):
        t.add_column(col, justify="left" if col in ("kind", "site") else "right")
    for kind in KIND_ORDER:
        ks = [r for r in rows if r["kind"] == kind.value]
        if not ks:
            continue
        w = min(ks, key=lambda r: r["int8_sqnr_db"])
        p = w.get("int8_p999_sqnr_db")
        t.add_row(kind.value, w["site"], f"{w['absmax']:,.1f}", f"{w['int8_sqnr_db']:.1f}",
                  f"{w['int8_rel_rmse']:.3g}", f"{w['int8_clip_rate']:.2g}",
                  "-" if p is None else f"{p:.1f}", f"{w.get('int8_p999_clip_rate') or 0:.2g}")
    console.print(t)
    import math

    rho = spearman([math.log10(r["absmax"]) for r in rows], [r["int8_sqnr_db"] for r in rows])
    if rho is not None:
        console.print(f"SQNR vs absmax across {len(rows)} sites: Spearman rho = {rho:+.2f} "
                      "(negative: larger ranges quantize worse with a max-based scale)")
