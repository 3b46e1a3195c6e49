"""Corpus layer: built-in corpus shape, readers, error messages, subsampling and length buckets.

Fast and dependency-light (no vLLM, no torch); parquet tests skip if pyarrow is missing.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from collections import Counter
from pathlib import Path

import pytest

from vllm_maxact import corpus as C
from vllm_maxact.corpus import (
    STUDY_BUCKETS,
    Bucket,
    CorpusError,
    Sample,
    bucket_counts,
    bucket_plan,
    load_corpus,
    parse_buckets,
    read_corpus,
)

DOMAINS = {"math", "code", "web", "knowledge", "chinese", "other_scripts", "dialogue", "structured"}
SCRIPTS = {  # non-Latin scripts the other_scripts domain must cover (at least 5 of them)
    "cyrillic": (0x0400, 0x04FF),
    "greek": (0x0370, 0x03FF),
    "arabic": (0x0600, 0x06FF),
    "hebrew": (0x0590, 0x05FF),
    "devanagari": (0x0900, 0x097F),
    "thai": (0x0E00, 0x0E7F),
    "kana": (0x3040, 0x30FF),
    "hangul": (0xAC00, 0xD7AF),
}


def scripts_in(text: str) -> set[str]:
    return {name for ch in text for name, (lo, hi) in SCRIPTS.items() if lo <= ord(ch) <= hi}


@pytest.fixture(scope="module")
def builtin() -> C.Corpus:
    return load_corpus("builtin")


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- built-in corpus


def test_builtin_shape(builtin: C.Corpus) -> None:
    assert len(builtin) >= 400
    counts = Counter(s.domain for s in builtin)
    assert set(counts) == DOMAINS
    assert min(counts.values()) >= 20, counts
    ids = [s.id for s in builtin]
    assert len(set(ids)) == len(ids)
    assert all(s.id.startswith(f"{s.domain}-") for s in builtin)
    assert all(s.text.strip() for s in builtin)
    assert len({s.text for s in builtin}) == len(builtin), "texts should not repeat"


def test_builtin_domain_weights_roughly_match_study(builtin: C.Corpus) -> None:
    counts = Counter(s.domain for s in builtin)
    study = {
        "math": 17,
        "code": 17,
        "web": 17,
        "knowledge": 17,
        "chinese": 8,
        "other_scripts": 6,
        "dialogue": 9,
        "structured": 9,
    }
    for domain, pct in study.items():
        assert abs(100 * counts[domain] / len(builtin) - pct) < 1.5, (domain, counts[domain])


def test_builtin_lengths_vary(builtin: C.Corpus) -> None:
    lengths = sorted(len(s.text) for s in builtin)
    assert lengths[0] < 400  # a few ~50-token samples
    assert lengths[-1] > 10_000  # and some ~3000-token ones
    path = Path(C.__file__).with_name("data") / "builtin.jsonl"
    assert path.stat().st_size < 4_000_000


def test_builtin_chinese_has_cjk(builtin: C.Corpus) -> None:
    zh = [s for s in builtin if s.domain == "chinese"]
    for s in zh:
        cjk = sum(1 for ch in s.text if 0x4E00 <= ord(ch) <= 0x9FFF)
        assert cjk >= 20 and cjk > 0.5 * len(s.text.replace(" ", "").replace("\n", "")), s.id


def test_builtin_other_scripts_cover_five_scripts(builtin: C.Corpus) -> None:
    samples = [s for s in builtin if s.domain == "other_scripts"]
    seen: set[str] = set()
    for s in samples:
        found = scripts_in(s.text)
        assert found, f"{s.id} has no non-Latin script"
        seen |= found
    assert len(seen) >= 5, seen


def test_builtin_file_matches_generator() -> None:
    """The packaged file is what the generator writes (edit the generator, then regenerate)."""
    import generate_builtin as G

    path = Path(C.__file__).with_name("data") / "builtin.jsonl"
    expected = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in G.generate())
    assert path.read_text(encoding="utf-8") == expected


# ----------------------------------------------------------------------------- JSONL errors


def test_jsonl_errors_name_every_bad_line(tmp_path: Path) -> None:
    f = write(
        tmp_path / "c.jsonl",
        [
            json.dumps({"text": "good one", "domain": "web"}),  # line 1
            '{"text": "broken',  # line 2: malformed
            json.dumps({"domain": "web"}),  # line 3: no text
            "",  # line 4: blank, skipped silently
            json.dumps(["not", "an", "object"]),  # line 5: not an object
            json.dumps({"text": "another good one"}),  # line 6
        ],
    )
    with pytest.raises(CorpusError) as err:
        load_corpus(f)
    msg = str(err.value)
    assert str(f) in msg
    assert "3 bad lines" in msg
    assert "line 2: malformed JSON" in msg
    assert 'line 3: missing field "text"' in msg
    assert "line 5: not a JSON object (got array)" in msg
    assert "line 4" not in msg and "line 1:" not in msg and "line 6" not in msg
    assert "skip_bad=True" in msg


def test_jsonl_wrong_types(tmp_path: Path) -> None:
    f = write(
        tmp_path / "c.jsonl",
        [
            json.dumps({"text": 5}),
            json.dumps({"text": "   "}),
            json.dumps({"text": "ok", "domain": 3}),
            json.dumps({"text": "ok", "id": "a"}),
            json.dumps({"text": "ok again", "id": "a"}),
        ],
    )
    samples, problems = read_corpus(f, skip_bad=True)
    assert [s.id for s in samples] == ["a"]
    reasons = {p.line: p.reason for p in problems}
    assert "must be a string, got number" in reasons[1]
    assert "empty" in reasons[2]
    assert '"domain"' in reasons[3]
    assert "duplicate id 'a' (first on line 4)" in reasons[5]


def test_skip_bad_keeps_good_lines_and_reports_problems(tmp_path: Path) -> None:
    f = write(
        tmp_path / "c.jsonl",
        [
            json.dumps({"text": "alpha", "domain": "web", "id": "x1"}),
            "{nope",
            json.dumps({"text": "beta"}),
            "42",
        ],
    )
    samples, problems = read_corpus(f, skip_bad=True)
    assert samples == [Sample("x1", "alpha", "web"), Sample("line-3", "beta", None)]
    assert [(p.line, p.source) for p in problems] == [(2, str(f)), (4, str(f))]
    assert "not a JSON object (got number)" in str(problems[1])

    loaded = load_corpus(f, skip_bad=True)
    assert list(loaded) == samples
    assert [p.line for p in loaded.problems] == [2, 4]
    assert loaded.available == 2


def test_error_lists_first_ten_and_counts_the_rest(tmp_path: Path) -> None:
    f = write(tmp_path / "c.jsonl", [json.dumps({"text": "fine"})] + ["{bad"] * 25)
    msg = str(pytest.raises(CorpusError, read_corpus, f).value)
    assert "25 bad lines" in msg
    assert "line 11: malformed" in msg and "line 12:" not in msg
    assert "and 15 more (25 in total)" in msg


def test_all_bad_with_skip_bad_is_still_an_error(tmp_path: Path) -> None:
    f = write(tmp_path / "c.jsonl", ["{bad", "[]"])
    with pytest.raises(CorpusError, match="no samples"):
        read_corpus(f, skip_bad=True)


@pytest.mark.parametrize("content", ["", "\n\n   \n"])
def test_empty_file_is_an_error(tmp_path: Path, content: str) -> None:
    f = tmp_path / "empty.jsonl"
    f.write_text(content, encoding="utf-8")
    with pytest.raises(CorpusError, match="no samples"):
        load_corpus(f)


def test_missing_file_names_path(tmp_path: Path) -> None:
    f = tmp_path / "nope" / "missing.jsonl"
    with pytest.raises(CorpusError) as err:
        load_corpus(str(f))
    assert str(f) in str(err.value) and "not found" in str(err.value)


def test_unsupported_extension_lists_supported(tmp_path: Path) -> None:
    f = tmp_path / "data.csv"
    f.write_text("text\nhello\n", encoding="utf-8")
    msg = str(pytest.raises(CorpusError, load_corpus, f).value)
    assert str(f) in msg
    for what in (".jsonl", ".parquet", ".txt", "hf:NAME", "builtin"):
        assert what in msg


def test_invalid_utf8_line_is_reported(tmp_path: Path) -> None:
    f = tmp_path / "c.jsonl"
    f.write_bytes(b'{"text": "ok"}\n{"text": "\xff\xfe"}\n')
    msg = str(pytest.raises(CorpusError, load_corpus, f).value)
    assert "line 2: not valid UTF-8" in msg


# ----------------------------------------------------------------------------- other formats


def test_directory_of_txt(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("second file", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first file", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    corpus = load_corpus(tmp_path, skip_bad=True)
    assert [(s.id, s.text, s.domain) for s in corpus] == [
        ("a.txt", "first file", None),
        ("b.txt", "second file", None),
    ]
    assert len(corpus.problems) == 1 and "empty.txt" in str(corpus.problems[0])
    with pytest.raises(CorpusError, match="empty.txt"):
        load_corpus(tmp_path)


def test_directory_without_txt(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="no .txt files"):
        load_corpus(tmp_path)


def test_parquet_round_trip(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    f = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": ["one", "two", None], "domain": ["web", None, "code"]}), f)
    samples, problems = read_corpus(f, skip_bad=True)
    assert samples == [Sample("row-1", "one", "web"), Sample("row-2", "two", None)]
    assert [(p.line, p.unit, p.reason) for p in problems] == [(3, "row", "text is null")]
    with pytest.raises(CorpusError, match="row 3: text is null"):
        read_corpus(f)

    g = tmp_path / "no_domain.parquet"
    pq.write_table(pa.table({"text": ["a", "b"]}), g)
    assert [s.domain for s in load_corpus(g)] == [None, None]

    h = tmp_path / "no_text.parquet"
    pq.write_table(pa.table({"body": ["a"]}), h)
    with pytest.raises(CorpusError, match="no 'text' column .*body"):
        load_corpus(h)


def test_hf_without_datasets_says_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(CorpusError, match="pip install datasets"):
        load_corpus("hf:some/corpus")


def test_hf_columns_and_load_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    class Value:
        def __init__(self, dtype: str) -> None:
            self.dtype = dtype

    class FakeDataset:
        column_names = ["n", "body", "source"]
        features = {"n": Value("int64"), "body": Value("string"), "source": Value("string")}
        _data = {"n": [1, 2], "body": ["hello", "world"], "source": ["web", "code"]}

        def __getitem__(self, col: str) -> list[object]:
            return self._data[col]

    calls: list[tuple[str, str]] = []

    def load_dataset(name: str, split: str) -> FakeDataset:
        calls.append((name, split))
        if name == "broken":
            raise ConnectionError("no network")
        return FakeDataset()

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    got = load_corpus("hf:org/thing:validation[:10]")
    assert calls == [("org/thing", "validation[:10]")]
    assert [(s.id, s.text, s.domain) for s in got] == [("row-1", "hello", "web"), ("row-2", "world", "code")]
    load_corpus("hf:org/thing")
    assert calls[-1] == ("org/thing", "train")
    with pytest.raises(CorpusError, match="could not load dataset 'broken'.*network"):
        load_corpus("hf:broken")


# ----------------------------------------------------------------------------- subsampling


def test_subsample_is_deterministic(builtin: C.Corpus) -> None:
    a = load_corpus("builtin", samples=40, seed=1)
    b = load_corpus("builtin", samples=40, seed=1)
    c = load_corpus("builtin", samples=40, seed=2)
    assert [s.id for s in a] == [s.id for s in b]
    assert [s.id for s in a] != [s.id for s in c]
    assert len(a) == 40 and a.available == len(builtin)
    order = {s.id: i for i, s in enumerate(builtin)}
    assert [order[s.id] for s in a] == sorted(order[s.id] for s in a)  # corpus order is kept


def test_subsample_more_than_available_returns_all(tmp_path: Path) -> None:
    f = write(tmp_path / "c.jsonl", [json.dumps({"text": t}) for t in ("a", "b", "c")])
    got = load_corpus(f, samples=10)
    assert len(got) == 3 and got.available == 3
    with pytest.raises(CorpusError, match="positive"):
        load_corpus(f, samples=0)


def test_sample_is_frozen() -> None:
    s = Sample("id", "text")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.text = "other"  # type: ignore[misc]


# ----------------------------------------------------------------------------- buckets


def test_parse_study_buckets() -> None:
    assert parse_buckets(STUDY_BUCKETS) == [(256, 1.0), (512, 1.0), (1024, 2.0), (2048, 3.0), (4096, 93.0)]
    assert parse_buckets([(128, 50), (256, 50)]) == [Bucket(128, 50.0), Bucket(256, 50.0)]
    assert parse_buckets(" 100 : 25% , 200:75 ") == [Bucket(100, 25.0), Bucket(200, 75.0)]


def test_bucket_plan_matches_study_percentages_exactly() -> None:
    plan = bucket_plan(5000, STUDY_BUCKETS, seed=0)
    assert len(plan) == 5000
    counts = Counter(plan)
    assert [counts[t] for t in (256, 512, 1024, 2048, 4096)] == [50, 50, 100, 150, 4650]
    assert bucket_counts(5000, STUDY_BUCKETS) == [50, 50, 100, 150, 4650]
    assert bucket_plan(5000, STUDY_BUCKETS, seed=0) == plan
    assert bucket_plan(5000, STUDY_BUCKETS, seed=1) != plan


@pytest.mark.parametrize("n", [0, 1, 7, 99, 101, 520, 1234])
def test_bucket_counts_sum_to_n(n: int) -> None:
    counts = bucket_counts(n, STUDY_BUCKETS)
    assert sum(counts) == n
    for c, (_, pct) in zip(counts, parse_buckets(STUDY_BUCKETS), strict=True):
        assert abs(c - n * pct / 100) < 1  # largest remainder: never off by a whole sample


def test_load_corpus_assigns_bucket_targets(builtin: C.Corpus) -> None:
    got = load_corpus("builtin", samples=200, seed=3, buckets=STUDY_BUCKETS)
    counts = Counter(s.max_tokens for s in got)
    assert counts == Counter({4096: 186, 2048: 6, 1024: 4, 512: 2, 256: 2})
    assert all(s.max_tokens is None for s in builtin)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("256:1,abc:2,4096:97", "'abc:2'"),
        ("256:1,512,4096:99", "'512'"),
        ("256:1,512:x,4096:99", "'512:x'"),
        ("256:1,512:-1,4096:100", "'512:-1'"),
        ("0:50,4096:50", "'0:50'"),
        ("512:50,256:50", "'256:50'"),
        ("256:1,,4096:99", "#2"),
        ("256:10,4096:80", "sum to 90"),
        ("", "empty"),
    ],
)
def test_invalid_bucket_spec_names_the_item(spec: str, needle: str) -> None:
    with pytest.raises(CorpusError) as err:
        parse_buckets(spec)
    assert needle in str(err.value)


def test_invalid_buckets_fail_before_reading(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="'x:1'"):
        load_corpus(tmp_path / "missing.jsonl", buckets="x:1")
