"""Fuzzing the readers with generated inputs (Hypothesis; fast set, a bounded number of cases).

Every reader of outside data gets damaged and random inputs: Arrow statistics files (bytes
flipped, cut or inserted anywhere; tables with any column types and values; any schema version),
corpora (JSONL, a folder of .txt files, Parquet), scales (calibration) files, smoothing files and
worker payloads. What must hold: a clean result or the reader's own error, which the CLI turns
into one line and exit 1; never a traceback, a crash, a failed scrape, a half-written output.

Cases are derandomized (the same ones in every run, so CI is stable); set MAXACT_FUZZ_EXAMPLES
to run more (e.g. 2000, and MAXACT_FUZZ_RANDOM=1 for new ones each run).
"""

from __future__ import annotations

import copy
import datetime as dt
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_export import payload

from vllm_maxact.cli import main
from vllm_maxact.export.arrow import SCHEMA, table_from_payloads

pytestmark = pytest.mark.faults

EXAMPLES = int(os.environ.get("MAXACT_FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=os.environ.get("MAXACT_FUZZ_RANDOM") != "1",
                database=None, suppress_health_check=list(HealthCheck), print_blob=True)

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=8), kids, max_size=5),
    max_leaves=20,
)


def mutate_json(data: st.DataObject, doc: Any, steps: int = 3) -> Any:
    """Up to ``steps`` random edits anywhere in a JSON document: delete a key, replace a value
    with any JSON value (wrong types, NaN, huge numbers), shorten or lengthen a list."""
    doc = copy.deepcopy(doc)

    def walk(x, found: list) -> list:
        if isinstance(x, dict | list):
            found.append(x)
            for v in x.values() if isinstance(x, dict) else x:
                walk(v, found)
        return found

    for _ in range(data.draw(st.integers(1, steps))):
        containers = walk(doc, [])
        if not containers:
            return data.draw(JSON)
        c = data.draw(st.sampled_from(containers))
        keys = list(c.keys()) if isinstance(c, dict) else list(range(len(c)))
        op = data.draw(st.sampled_from(["replace", "delete", "append"] if keys else ["append"]))
        if op == "append":
            if isinstance(c, dict):
                c[data.draw(st.text(max_size=8))] = data.draw(JSON)
            else:
                c.append(data.draw(JSON))
            continue
        k = data.draw(st.sampled_from(keys))
        if op == "delete":
            del c[k]
        else:
            c[k] = data.draw(JSON | st.sampled_from([None, "1.5", float("nan"), float("inf"), -1, 0, 2**64, [], {}]))
    return doc


def no_traceback(r) -> None:
    """A CLI run ended either well or with the one-line error of a click exception."""
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        import traceback

        raise AssertionError("".join(traceback.format_exception(*r.exc_info))[-3000:] + "\n" + r.output[-1000:])
    assert r.exit_code in (0, 1), r.output
    if r.exit_code == 1:
        assert r.output.startswith("Error: ") and "Traceback" not in r.output, r.output


# Arrow statistics files ---------------------------------------------------------------------


def _valid_table() -> pa.Table:
    ps = [payload(r, [1, 5, 3, None], [-2, -1, -3, None]) for r in (0, 1)]
    return table_from_payloads(ps, windows=("lifetime", "recent"), per_rank=True)


_BASE = {}


def _valid_bytes(compression: str) -> bytes:
    if compression not in _BASE:
        buf = io.BytesIO()
        feather.write_feather(_valid_table(), buf, compression=compression)
        _BASE[compression] = buf.getvalue()
    return _BASE[compression]


OUTCOMES: dict[str, int] = {}


def _run_readers(path: Path, out: Path) -> None:
    runner = CliRunner()
    for args in (["report", str(path), "--no-plots", "--out-dir", str(out)], ["scales", str(path)],
                 ["scales", str(path), "--format", "csv"], ["compare", str(path), str(path)]):
        r = runner.invoke(main, args)
        no_traceback(r)
        key = f"{args[0]}:{r.exit_code}"  # how many cases got through (MAXACT_FUZZ_* runs print it)
        OUTCOMES[key] = OUTCOMES.get(key, 0) + 1


@FUZZ
@given(data=st.data(), compression=st.sampled_from(["zstd", "uncompressed"]))
def test_damaged_arrow_files(data, compression):
    raw = bytearray(_valid_bytes(compression))
    for _ in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.sampled_from(["flip", "flip", "flip", "cut", "insert"]))
        i = data.draw(st.integers(0, len(raw) - 1))
        if op == "flip":
            raw[i] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del raw[i:i + data.draw(st.integers(1, 64))]
        else:
            raw[i:i] = data.draw(st.binary(min_size=1, max_size=16))
        if not raw:
            break
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.arrow"
        path.write_bytes(bytes(raw))
        _run_readers(path, Path(d) / "rep")


_TYPES = [pa.string(), pa.large_string(), pa.int8(), pa.int32(), pa.int64(), pa.uint64(), pa.float16(),
          pa.float32(), pa.float64(), pa.bool_(), pa.null(), pa.timestamp("ms"), pa.timestamp("us", tz="UTC"),
          pa.list_(pa.float32()), pa.list_(pa.string()), pa.binary()]
_SITES = ["embedding", "final_norm", "layers.0.residual", "layers.1.attn_out", "layers.0.gate", "layers.3.attn_in",
          "bogus", "layers.x.residual", "", "layers.-1.mlp_out"]


def _values(data, typ: pa.DataType, n: int, name: str) -> pa.Array:
    if pa.types.is_null(typ):
        return pa.nulls(n)
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        pool = {"window": ["replay", "lifetime", "recent", "", "x"], "site": _SITES,
                "kind": ["residual", "attn_out", "gate", "embedding", "attn_in", "bogus"],
                "domain": ["code", "web", None]}.get(name)
        elem = st.sampled_from(pool) if pool else st.text(max_size=6)
        return pa.array(data.draw(st.lists(st.none() | elem, min_size=n, max_size=n)), typ)
    if pa.types.is_integer(typ):
        lo, hi = (0, 2**64 - 1) if pa.types.is_unsigned_integer(typ) else (-(2 ** (typ.bit_width - 1)),
                                                                          2 ** (typ.bit_width - 1) - 1)
        return pa.array(data.draw(st.lists(st.none() | st.integers(lo, hi), min_size=n, max_size=n)), typ)
    if pa.types.is_floating(typ):
        vals = data.draw(st.lists(st.none() | st.floats(width=16 if typ == pa.float16() else 32 if
                                                        typ == pa.float32() else 64), min_size=n, max_size=n))
        return pa.array([None if v is None else np.float16(v) if typ == pa.float16() else v for v in vals], typ)
    if pa.types.is_boolean(typ):
        return pa.array(data.draw(st.lists(st.none() | st.booleans(), min_size=n, max_size=n)), typ)
    if pa.types.is_timestamp(typ):
        t = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc if typ.tz else None)
        return pa.array([t] * n, typ)
    if pa.types.is_list(typ):
        inner = st.floats(width=32) if pa.types.is_floating(typ.value_type) else st.text(max_size=3)
        return pa.array(data.draw(st.lists(st.none() | st.lists(inner, max_size=4), min_size=n, max_size=n)), typ)
    return pa.array(data.draw(st.lists(st.binary(max_size=4), min_size=n, max_size=n)), typ)


_GOOD_SITES = ["embedding", "final_norm", "layers.0.residual", "layers.1.attn_out", "layers.0.gate", "layers.2.mlp_out",
               "layers.1.router", "layers.3.attn_in", "layers.0.mlp_in", "layers.10.residual"]
_NUM = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([0.0, -0.0, 1e-300, 65504.0, 65505.0, 448.0,
                                                                            1e308, -1e308, 5e-324])


@st.composite
def _row(draw):
    """One row as our writers make it, or, with a small chance per field, not quite."""
    from vllm_maxact.sites import Site

    def off() -> bool:
        return draw(st.integers(0, 250)) == 0

    name = draw(st.sampled_from(_GOOD_SITES)) if not off() else draw(st.sampled_from(_SITES + [None]))
    try:
        site = Site.parse(name)
        kind, layer = site.kind.value, site.layer
    except Exception:  # noqa: BLE001
        kind, layer = "residual", 0
    mx, mn = sorted([draw(_NUM), draw(_NUM)], reverse=True)
    absmax = max(abs(mx), abs(mn))
    if draw(st.integers(0, 8)) == 0:
        mx = mn = absmax = None  # nothing observed at this site
    row = {
        "timestamp": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
        "model": draw(st.sampled_from(["m", "other", None, ""])),
        "window": draw(st.sampled_from(["replay", "lifetime", "recent"] + (["x", None] if off() else []))),
        "domain": draw(st.sampled_from([None, None, "code", "web", ""])),
        "site": name, "kind": kind if not off() else "gate", "layer": layer if not off() else 7,
        "rank": draw(st.sampled_from([None, None, 0, 1] + ([-1] if off() else []))),
        "absmax": absmax if not off() else draw(_NUM), "max": mx, "min": mn,
        "tokens": draw(st.integers(0, 2**62)) if not off() else draw(st.sampled_from([None, -1])),
        "nan_count": draw(st.integers(0, 10)), "inf_count": draw(st.integers(0, 10)),
        "channel_absmax": (draw(st.lists(st.none() | st.floats(0, 3.0000000054977558e+38, width=32), max_size=6))
                           if kind in ("attn_in", "mlp_in") else None),
    }
    return row


@FUZZ
@given(data=st.data())
def test_arrow_files_with_any_values_columns_and_versions(data):
    """Tables built from scratch: rows as our writers make them with extreme values (0, 1e308,
    fp16's limit, subnormals, nothing observed, several models, windows, domains, ranks) and now
    and then a broken field; sometimes a column of another type or missing, an INT-8 figure
    column (NaN, inf), any schema version in the metadata."""
    rows = data.draw(st.lists(_row(), max_size=12))
    t = pa.Table.from_pylist(rows, schema=SCHEMA)
    for extra in data.draw(st.lists(st.sampled_from(["int8_sqnr_db", "int8_threshold", "int8_p999_threshold",
                                                     "headroom_fp16", "int8_clip_rate"]), max_size=3, unique=True)):
        vals = data.draw(st.lists(st.none() | st.floats(), min_size=len(t), max_size=len(t)))
        t = t.append_column(extra, pa.array(vals, pa.float64()))
    if data.draw(st.integers(0, 9)) == 0:
        name = data.draw(st.sampled_from(SCHEMA.names))
        i = t.schema.get_field_index(name)
        if data.draw(st.booleans()):
            t = t.remove_column(i)
        else:
            typ = data.draw(st.sampled_from(_TYPES))
            if not pa.types.is_timestamp(typ) or name.startswith(("timestamp", "window_")):
                t = t.set_column(i, name, _values(data, typ, len(t), name))
    meta = data.draw(st.sampled_from([b"2"] * 6 + [b"1", None, b"3", b"x", b"-4"]))
    t = t.replace_schema_metadata(None if meta is None else {b"vllm_maxact.schema_version": meta})
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.arrow"
        feather.write_feather(t, path)
        _run_readers(path, Path(d) / "rep")


# Corpora ------------------------------------------------------------------------------------

_LINE = st.one_of(
    st.builds(json.dumps, st.fixed_dictionaries({"text": st.text(max_size=40)},
                                               optional={"domain": JSON, "id": JSON})),
    st.builds(json.dumps, JSON),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
)


@FUZZ
@given(lines=st.lists(_LINE, max_size=8), raw=st.binary(max_size=64), skip_bad=st.booleans(),
       samples=st.none() | st.integers(-2, 5))
def test_jsonl_corpora(lines, raw, skip_bad, samples):
    from vllm_maxact.corpus import CorpusError, load_corpus

    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "c.jsonl"
        f.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass") + raw)
        try:
            got = load_corpus(f, skip_bad=skip_bad, samples=samples)
        except CorpusError:
            return
        assert all(isinstance(s.text, str) and s.text for s in got)


@FUZZ
@given(files=st.lists(st.tuples(st.sampled_from(["a.txt", "b.TXT", "c.md", "sub/d.txt"]), st.binary(max_size=64)),
                      max_size=4))
def test_txt_folder_corpora(files):
    from vllm_maxact.corpus import CorpusError, load_corpus

    with tempfile.TemporaryDirectory() as d:
        for name, body in files:
            p = Path(d) / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(body)
        try:
            got = load_corpus(d)
        except CorpusError:
            return
        assert all(isinstance(s.text, str) for s in got)


@FUZZ
@given(data=st.data())
def test_parquet_corpora(data):
    from vllm_maxact.corpus import CorpusError, load_corpus

    n = data.draw(st.integers(0, 5))
    cols = {name: _values(data, data.draw(st.sampled_from([pa.string(), pa.int64(), pa.float64(), pa.null(),
                                                           pa.list_(pa.string()), pa.large_string()])), n, name)
            for name in ("text", "domain", "id") if data.draw(st.integers(0, 4))}
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "c.parquet"
        pq.write_table(pa.table(cols) if cols else pa.table({"other": pa.nulls(n)}), f)
        if data.draw(st.booleans()):
            raw = bytearray(f.read_bytes())
            raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
            f.write_bytes(bytes(raw))
        try:
            got = load_corpus(f, skip_bad=data.draw(st.booleans()))
        except CorpusError:
            return
        assert all(isinstance(s.text, str) and s.text for s in got)


# Scales (calibration) files -----------------------------------------------------------------

_SCALES = {"format": "vllm-maxact-scales", "version": 1, "model": "m",
           "sites": {"layers.0.residual": {"kind": "residual", "layer": 0, "absmax": 17.0, "threshold_max": 17.0,
                                           "threshold_p999": 2.5, "int8_scale": 0.13},
                     "embedding": {"kind": "embedding", "layer": None, "absmax": 1.0, "threshold_max": 1.0,
                                   "threshold_p999": None}}}


@FUZZ
@given(data=st.data())
def test_scales_files_as_calibration(data):
    """What a server does with VLLM_MAXACT_CALIBRATION: read it, set the thresholds of a
    recorder. Either that works with finite thresholds >= 0, or a ValueError names the file."""
    import torch

    from vllm_maxact.instrument import load_calibration
    from vllm_maxact.int8 import read_scales
    from vllm_maxact.recorder import Recorder
    from vllm_maxact.sites import Site

    doc = mutate_json(data, _SCALES) if data.draw(st.integers(0, 5)) else data.draw(JSON)
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "scales.json"
        f.write_text(json.dumps(doc))
        try:
            read_scales(f)
        except ValueError as e:
            assert str(f) in str(e)
            return
        rec = Recorder([Site.parse("embedding"), Site.parse("layers.0.residual")], device=torch.device("cpu"),
                       int8=True, hot_path="cpu_op")
        load_calibration(rec, f)
        assert np.isfinite(rec.qthr_host).all() and (rec.qthr_host >= 0).all()


# Smoothing files ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A two-tensor checkpoint (a norm and a linear layer reading it), enough for `apply`."""
    import torch
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("ckpt")
    save_file({"model.layers.0.input_layernorm.weight": torch.ones(8, dtype=torch.bfloat16),
               "model.layers.0.self_attn.q_proj.weight": torch.randn(4, 8).to(torch.bfloat16)},
              str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    doc = {"format": "vllm-maxact-smoothquant", "version": 1, "alpha": 0.5, "model": str(d), "model_type": "llama",
           "layers": [{"site": "layers.0.attn_in", "norm": "model.layers.0.input_layernorm.weight", "norm_offset": 0.0,
                       "linears": ["model.layers.0.self_attn.q_proj.weight"], "act_absmax": 3.0,
                       "act_absmax_smoothed": 1.0, "smooth": [1.0, 2.0, 0.5, 3.0, 1.0, 1.0, 0.25, 8.0]}]}
    return d, doc


@FUZZ
@given(data=st.data())
def test_smoothing_files(tiny_checkpoint, data):
    """`smooth` with a damaged smoothing file: a complete, finite checkpoint or a one-line error
    and no output folder (nor a temporary one) at all."""
    from safetensors.torch import load_file

    src, good = tiny_checkpoint
    doc = mutate_json(data, good) if data.draw(st.integers(0, 5)) else data.draw(JSON)
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "smooth.json"
        f.write_text(json.dumps(doc))
        out = Path(d) / "out"
        r = CliRunner().invoke(main, ["smooth", str(src), str(f), "--out", str(out)])
        no_traceback(r)
        if r.exit_code == 0:
            tensors = load_file(str(out / "model.safetensors"))
            assert all(bool(t.float().isfinite().all()) for t in tensors.values())
            assert (out / "config.json").is_file()
        else:
            assert not out.exists()
        assert sorted(p.name for p in Path(d).iterdir()) == sorted(["smooth.json"] + (["out"] if out.exists() else []))


# Worker payloads ----------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_worker_payloads(data):
    """Damaged payloads next to a good one: the scrape and the snapshot table never fail and
    always hold the good model; a damaged payload either validates (and exports) or is counted."""
    from prometheus_client import CollectorRegistry, generate_latest

    from vllm_maxact.export.prometheus import MaxActCollector
    from vllm_maxact.export.runtime import read_payloads
    from vllm_maxact.export.snapshot import STATUS, snapshot_table

    good = {**payload(0, [1, 5, 3, None], [-2, -1, -3, None]), "model": "good", "tp_size": 1}
    bad = mutate_json(data, {**payload(0, [1, 5, 3, None], [-2, -1, -3, None]), "model": "bad", "tp_size": 2,
                             "pid": os.getppid()}, steps=4)
    with tempfile.TemporaryDirectory() as d:
        run = Path(d)
        (run / f"worker-tp0-pp0-{os.getpid()}.json").write_text(json.dumps(good))
        (run / f"worker-tp0-pp0-{os.getppid()}.json").write_text(json.dumps(bad))
        if data.draw(st.booleans()):
            second = mutate_json(data, {**good, "model": "bad", "tp_rank": 1, "tp_size": 2, "pid": os.getppid()})
            (run / f"worker-tp1-pp0-{os.getppid()}.json").write_text(json.dumps(second))
        reg = CollectorRegistry(auto_describe=False)
        reg.register(MaxActCollector(run, STATUS))
        text = generate_latest(reg).decode()
        assert 'vllm_maxact_absmax{kind="residual",layer="0",model_name="good"} 5.0' in text
        assert "vllm_maxact_scrape_errors_total 0.0" in text or "scrape_errors_total" in text
        table = snapshot_table(read_payloads(run))
        assert "good" in table.column("model").to_pylist()
        for v in table.column("absmax").to_pylist():
            assert v is None or math.isfinite(v)


def test_fuzz_cases_are_bounded_and_reproducible():
    """The fuzz pass stays in the fast set: a fixed number of derandomized cases per reader."""
    assert FUZZ.max_examples == EXAMPLES and (FUZZ.derandomize or os.environ.get("MAXACT_FUZZ_RANDOM") == "1")
