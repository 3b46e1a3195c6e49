"""Corpus readers and the length-bucket plan for the replay pipeline.

Why this module exists: a replay run is only as trustworthy as its input. Bad input lines must never
vanish silently (a silently shorter corpus changes the maxima we report), and every error has to say
which file and which line to fix. The same deterministic subsample and bucket plan must come out for
the same seed, so that two runs over the same corpus are comparable.

Specs understood by :func:`load_corpus` / :func:`read_corpus`:

- ``builtin``: the corpus shipped with the package (``vllm_maxact/data/builtin.jsonl``).
- ``path/to/file.jsonl``: one JSON object per line; ``text`` (string) required, ``domain`` and ``id``
  optional (default id ``line-<n>``). Blank lines are skipped.
- ``path/to/file.parquet``: columns ``text`` (required), ``domain`` and ``id`` (optional; default id
  ``row-<n>``). Needs ``pyarrow``.
- ``path/to/dir``: every ``*.txt`` file directly inside is one sample; id = file name, domain = None.
- ``hf:NAME[:SPLIT]``: a Hugging Face dataset via ``datasets`` (split defaults to ``train``; slicing
  such as ``hf:org/name:train[:1000]`` is passed through). Text column ``text``, else the first string
  column; domain from ``domain``, ``source`` or ``category`` if present.

Bad records: by default every bad line is collected and one :class:`CorpusError` lists them (first
:data:`MAX_LISTED_PROBLEMS`, with the total count). With ``skip_bad=True`` they are skipped instead and
returned as :class:`Problem` records (``read_corpus``) or attached as ``Corpus.problems`` (``load_corpus``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger(__name__)

#: The study's length protocol: percent of samples truncated to at most N tokens.
STUDY_BUCKETS = "256:1,512:1,1024:2,2048:3,4096:93"
#: Spec naming the corpus shipped with the package.
BUILTIN = "builtin"
#: How many bad lines an error message lists before summarising the rest.
MAX_LISTED_PROBLEMS = 10
#: Columns searched (in order) for a domain label in Hugging Face datasets.
HF_DOMAIN_COLUMNS = ("domain", "source", "category")
SUPPORTED = "'builtin', a .jsonl file, a .parquet file, a directory of .txt files, or 'hf:NAME[:SPLIT]'"

_JSON_TYPE = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


class CorpusError(ValueError):
    """The corpus cannot be used as given; the message says what to fix and where."""


@dataclass(frozen=True)
class Sample:
    """One replay input. ``max_tokens`` is the bucket target (None: use the whole text)."""

    id: str
    text: str
    domain: str | None = None
    max_tokens: int | None = None


@dataclass(frozen=True)
class Problem:
    """A record that could not be used. ``line`` is 1-based (a row for parquet/hf; None: whole file)."""

    source: str
    line: int | None
    reason: str
    unit: str = "line"

    def __str__(self) -> str:
        where = f"{self.unit} {self.line}: " if self.line is not None else ""
        return f"{self.source}: {where}{self.reason}"


class Corpus(list[Sample]):
    """The loaded samples (a plain list) plus provenance.

    ``source``: the spec it came from; ``available``: valid samples before subsampling (compare with
    ``len()`` to see whether a requested ``samples=N`` was capped); ``problems``: records skipped
    because of ``skip_bad=True`` (always empty otherwise, since bad records raise).
    """

    def __init__(
        self,
        samples: Iterable[Sample] = (),
        *,
        source: str = "",
        available: int | None = None,
        problems: Iterable[Problem] = (),
    ) -> None:
        super().__init__(samples)
        self.source = source
        self.available = len(self) if available is None else available
        self.problems: tuple[Problem, ...] = tuple(problems)


class Bucket(NamedTuple):
    """Truncate ``percent`` % of samples to at most ``max_tokens`` tokens."""

    max_tokens: int
    percent: float


BucketSpec = str | Sequence[tuple[int, float]]


# ----------------------------------------------------------------------------- public API


def load_corpus(
    spec: str | os.PathLike[str],
    *,
    samples: int | None = None,
    seed: int = 0,
    buckets: BucketSpec | None = None,
    skip_bad: bool = False,
) -> Corpus:
    """Read a corpus, optionally subsample it and assign per-sample token targets.

    ``samples=N`` keeps a deterministic random subset of N (``random.Random(seed)``), in corpus order;
    if fewer are available all are returned (``len(result) < N``, ``result.available`` tells why).
    ``buckets`` (e.g. :data:`STUDY_BUCKETS`) sets each sample's ``max_tokens`` via :func:`bucket_plan`
    with the same seed. ``skip_bad=True`` skips bad records and lists them in ``result.problems``.
    Raises :class:`CorpusError` on any unusable input.
    """
    plan_buckets = parse_buckets(buckets) if buckets is not None else None  # fail fast, before I/O
    found, problems = read_corpus(spec, skip_bad=skip_bad)
    if problems:
        log.warning(
            "%s: skipped %d bad record(s); first: %s", spec, len(problems), "; ".join(map(str, problems[:3]))
        )
    chosen = subsample(found, samples, seed)
    if plan_buckets is not None:
        targets = bucket_plan(len(chosen), plan_buckets, seed)
        chosen = [replace(s, max_tokens=t) for s, t in zip(chosen, targets, strict=True)]
    return Corpus(chosen, source=os.fspath(spec), available=len(found), problems=problems)


def read_corpus(
    spec: str | os.PathLike[str], *, skip_bad: bool = False
) -> tuple[list[Sample], list[Problem]]:
    """Read every sample of ``spec``; returns ``(samples, problems)``.

    Without ``skip_bad`` any problem raises a :class:`CorpusError` listing the bad lines, so the
    returned problem list is empty. With it, bad records are skipped and returned. An empty result is
    always an error.
    """
    text_spec = os.fspath(spec)
    found, problems = _dispatch(text_spec)
    if problems and not skip_bad:
        raise CorpusError(_problem_message(text_spec, problems, len(found) + len(problems)))
    if not found:
        detail = f" ({len(problems)} bad record(s) skipped: {problems[0]})" if problems else ""
        raise CorpusError(f"corpus {text_spec!r} contains no samples{detail}")
    return found, problems


def subsample(samples: Sequence[Sample], n: int | None, seed: int = 0) -> list[Sample]:
    """A deterministic subset of ``n`` samples in their original order (all of them if n >= len)."""
    if n is None:
        return list(samples)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise CorpusError(f"samples must be a positive integer, got {n!r}")
    if n >= len(samples):
        return list(samples)
    keep = sorted(random.Random(seed).sample(range(len(samples)), n))
    return [samples[i] for i in keep]


def stratified(samples: Sequence[Sample], per_domain: int, seed: int = 0) -> list[Sample]:
    """``per_domain`` samples of every domain (all of a smaller one), a deterministic random
    choice per domain (``random.Random(seed)``, domains in name order), in corpus order."""
    if isinstance(per_domain, bool) or not isinstance(per_domain, int) or per_domain < 1:
        raise CorpusError(f"per_domain must be a positive integer, got {per_domain!r}")
    by_domain: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_domain.setdefault(s.domain or "", []).append(i)
    rng = random.Random(seed)
    keep: list[int] = []
    for _, idx in sorted(by_domain.items()):
        keep += idx if len(idx) <= per_domain else rng.sample(idx, per_domain)
    return [samples[i] for i in sorted(keep)]


def domain_counts(samples: Iterable[Sample]) -> dict[str | None, int]:
    """Samples per domain, most common first (for run summaries)."""
    return dict(Counter(s.domain for s in samples).most_common())


# ----------------------------------------------------------------------------- length buckets


def parse_buckets(spec: BucketSpec) -> list[Bucket]:
    """Parse ``"256:1,512:1,...,4096:93"`` (or a list of pairs) into validated buckets.

    Each item is ``MAX_TOKENS:PERCENT`` (a trailing ``%`` is allowed); max tokens must be positive and
    strictly increasing, percents non-negative and summing to 100. Errors name the offending item.
    """
    if isinstance(spec, str):
        if not spec.strip():
            raise CorpusError(f"empty bucket spec; expected e.g. {STUDY_BUCKETS!r}")
        raw = [item.strip() for item in spec.split(",")]
    else:
        raw = []
        for pair in spec:
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise CorpusError(f"bucket item {pair!r}: expected a (max_tokens, percent) pair")
            raw.append(f"{pair[0]}:{pair[1]}")
        if not raw:
            raise CorpusError(f"empty bucket spec; expected e.g. {STUDY_BUCKETS!r}")
    out: list[Bucket] = []
    for pos, item in enumerate(raw, 1):
        out.append(_parse_bucket_item(item, pos, out[-1] if out else None))
    total = math.fsum(b.percent for b in out)
    if abs(total - 100.0) > 1e-6:
        raise CorpusError(f"bucket percentages sum to {total:g}, not 100, in {_show(spec)}")
    return out


def bucket_counts(n_samples: int, buckets: BucketSpec) -> list[int]:
    """Samples per bucket for ``n_samples``: largest-remainder rounding, so counts sum to n exactly.

    Ties in the remainder go to the bucket with the larger percent, then the later bucket.
    """
    parsed = parse_buckets(buckets)
    if n_samples < 0:
        raise CorpusError(f"n_samples must be >= 0, got {n_samples}")
    shares = [Fraction(str(b.percent)) for b in parsed]
    total = sum(shares)
    exact = [n_samples * s / total for s in shares]
    counts = [math.floor(e) for e in exact]
    order = sorted(range(len(parsed)), key=lambda i: (-(exact[i] - counts[i]), -shares[i], -i))
    for i in order[: n_samples - sum(counts)]:
        counts[i] += 1
    return counts


def bucket_plan(n_samples: int, buckets: BucketSpec, seed: int = 0) -> list[int]:
    """Per-sample max token targets whose distribution matches the bucket percentages.

    The targets are shuffled with ``random.Random(seed)``, so which sample gets which bucket is random
    but reproducible. The replay truncates each sample's token ids to its target (shorter samples are
    used whole).
    """
    parsed = parse_buckets(buckets)
    targets = [
        b.max_tokens for b, c in zip(parsed, bucket_counts(n_samples, parsed), strict=True) for _ in range(c)
    ]
    random.Random(seed).shuffle(targets)
    return targets


def _show(spec: BucketSpec) -> str:
    return repr(spec) if isinstance(spec, str) else repr(",".join(f"{a}:{b}" for a, b in spec))


def _parse_bucket_item(item: str, pos: int, prev: Bucket | None) -> Bucket:
    label = f"bucket item {item!r} (#{pos})"
    if not item:
        raise CorpusError(f"bucket item #{pos} is empty; expected MAX_TOKENS:PERCENT such as '4096:93'")
    tok, sep, pct = item.partition(":")
    if not sep:
        raise CorpusError(f"{label}: expected MAX_TOKENS:PERCENT such as '4096:93'")
    try:
        max_tokens = int(tok.strip())
    except ValueError:
        raise CorpusError(f"{label}: max tokens {tok.strip()!r} is not an integer") from None
    if max_tokens < 1:
        raise CorpusError(f"{label}: max tokens must be >= 1")
    pct_text = pct.strip().removesuffix("%").strip()
    try:
        percent = float(pct_text)
    except ValueError:
        raise CorpusError(f"{label}: percent {pct_text!r} is not a number") from None
    if not math.isfinite(percent) or percent < 0:
        raise CorpusError(f"{label}: percent must be a finite number >= 0")
    if prev is not None and max_tokens <= prev.max_tokens:
        raise CorpusError(f"{label}: max tokens must increase (previous bucket is {prev.max_tokens})")
    return Bucket(max_tokens, percent)


# ----------------------------------------------------------------------------- readers


def _dispatch(spec: str) -> tuple[list[Sample], list[Problem]]:
    if spec == BUILTIN:
        return _read_builtin()
    if spec.startswith("hf:"):
        return _read_hf(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _read_txt_dir(path)
    if not path.exists():
        raise CorpusError(f"corpus not found: {path} (a corpus is {SUPPORTED})")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path, str(path))
    if suffix == ".parquet":
        return _read_parquet(path)
    raise CorpusError(
        f"unsupported corpus file {path} (extension {suffix or 'none'!r}); a corpus is {SUPPORTED}"
    )


def _read_builtin() -> tuple[list[Sample], list[Problem]]:
    """The packaged corpus, found through importlib.resources so zipped installs work too."""
    try:
        ref = resources.files(__package__ or "vllm_maxact").joinpath("data").joinpath("builtin.jsonl")
    except (ModuleNotFoundError, TypeError):  # e.g. imported as a loose file, not as a package module
        ref = Path(__file__).with_name("data") / "builtin.jsonl"  # type: ignore[assignment]
    if not ref.is_file():
        raise CorpusError(
            f"the built-in corpus is missing from the installed package ({ref}); reinstall vllm_maxact or "
            "regenerate it with: python -m vllm_maxact.data.generate_builtin"
        )
    with resources.as_file(ref) as path:
        return _read_jsonl(Path(path), BUILTIN)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CorpusError(f"cannot read corpus file {path}: {exc.strerror or exc}") from None


def _read_jsonl(path: Path, label: str) -> tuple[list[Sample], list[Problem]]:
    """One JSON object per line; every bad line becomes a Problem with its 1-based line number."""
    found: list[Sample] = []
    problems: list[Problem] = []
    first_seen: dict[str, int] = {}
    for lineno, raw in enumerate(_read_bytes(path).split(b"\n"), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(Problem(label, lineno, f"not valid UTF-8 (byte {exc.start + 1})"))
            continue
        if lineno == 1:
            line = line.removeprefix("\ufeff")
        if not line.strip():
            continue
        sample, reason = _record_to_sample(line, lineno)
        if sample is None:
            problems.append(Problem(label, lineno, reason))
            continue
        if sample.id in first_seen:
            problems.append(
                Problem(label, lineno, f"duplicate id {sample.id!r} (first on line {first_seen[sample.id]})")
            )
            continue
        first_seen[sample.id] = lineno
        found.append(sample)
    return found, problems


def _record_to_sample(line: str, lineno: int) -> tuple[Sample | None, str]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, f"malformed JSON at column {exc.colno}: {exc.msg}"
    if not isinstance(obj, dict):
        return None, f"not a JSON object (got {_json_type(obj)})"
    if "text" not in obj:
        return None, 'missing field "text"'
    text = obj["text"]
    if not isinstance(text, str):
        return None, f'field "text" must be a string, got {_json_type(text)}'
    if not text.strip():
        return None, 'field "text" is empty'
    domain = obj.get("domain")
    if domain is not None and not isinstance(domain, str):
        return None, f'field "domain" must be a string or null, got {_json_type(domain)}'
    sid = obj.get("id")
    if sid is None:
        sid = f"line-{lineno}"
    elif (
        isinstance(sid, bool) or not isinstance(sid, (str, int)) or (isinstance(sid, str) and not sid.strip())
    ):
        return None, f'field "id" must be a non-empty string or an integer, got {_json_type(sid)} {sid!r}'
    return Sample(id=str(sid), text=text, domain=domain or None), ""


def _json_type(value: object) -> str:
    return "null" if value is None else _JSON_TYPE.get(type(value), type(value).__name__)


def _read_parquet(path: Path) -> tuple[list[Sample], list[Problem]]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise CorpusError(f"reading {path} needs pyarrow: pip install pyarrow") from None
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException, ValueError) as exc:  # a damaged file: also UnicodeDecodeError
        raise CorpusError(f"cannot read parquet file {path}: {exc}") from None
    names = list(schema.names)
    if "text" not in names:
        raise CorpusError(f"parquet file {path} has no 'text' column (columns: {', '.join(names) or 'none'})")
    if not (
        pa.types.is_string(schema.field("text").type) or pa.types.is_large_string(schema.field("text").type)
    ):
        raise CorpusError(
            f"parquet file {path}: column 'text' must hold strings, found {schema.field('text').type}"
        )
    cols = [c for c in ("text", "domain", "id") if c in names]
    try:
        table = pq.read_table(path, columns=cols)
        table.validate(full=True)  # damaged pages: an error here, not garbage (or a crash) later
        data = {c: table.column(c).to_pylist() for c in cols}
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise CorpusError(f"cannot read parquet file {path}: {exc}") from None
    return _rows_to_samples(str(path), data["text"], data.get("domain"), data.get("id"))


def _rows_to_samples(
    label: str, texts: Sequence[object], domains: Sequence[object] | None, ids: Sequence[object] | None
) -> tuple[list[Sample], list[Problem]]:
    """Column data (parquet, hf) -> samples; rows are numbered from 1 in messages."""
    found: list[Sample] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for i, text in enumerate(texts):
        row = i + 1
        if not isinstance(text, str) or not text.strip():
            problems.append(Problem(label, row, "text is null" if text is None else "text is empty", "row"))
            continue
        domain = domains[i] if domains is not None else None
        raw_id = ids[i] if ids is not None else None
        sid = f"row-{row}" if raw_id is None else str(raw_id)
        if sid in seen:
            problems.append(Problem(label, row, f"duplicate id {sid!r}", "row"))
            continue
        seen.add(sid)
        found.append(Sample(id=sid, text=text, domain=str(domain) if domain not in (None, "") else None))
    return found, problems


def _read_txt_dir(path: Path) -> tuple[list[Sample], list[Problem]]:
    """Each ``*.txt`` directly in ``path`` is one sample (sorted by name, so the order is stable)."""
    try:
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".txt")
    except OSError as exc:
        raise CorpusError(f"cannot list corpus directory {path}: {exc.strerror or exc}") from None
    if not files:
        raise CorpusError(f"corpus directory {path} contains no .txt files")
    found: list[Sample] = []
    problems: list[Problem] = []
    for f in files:
        try:
            text = _read_bytes(f).decode("utf-8").removeprefix("\ufeff")
        except UnicodeDecodeError as exc:
            problems.append(Problem(str(f), None, f"not valid UTF-8 (byte {exc.start + 1})", "file"))
            continue
        if not text.strip():
            problems.append(Problem(str(f), None, "file is empty", "file"))
            continue
        found.append(Sample(id=f.name, text=text, domain=None))
    return found, problems


def _read_hf(spec: str) -> tuple[list[Sample], list[Problem]]:
    name, _, split = spec.removeprefix("hf:").partition(":")
    split = split or "train"
    if not name:
        raise CorpusError(f"{spec!r}: expected hf:NAME[:SPLIT], e.g. hf:org/dataset:validation")
    try:
        import datasets
    except ImportError:
        raise CorpusError(
            f"{spec}: loading Hugging Face datasets needs the 'datasets' library: pip install datasets"
        ) from None
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as exc:  # network, auth, missing split, bad name: all end here
        raise CorpusError(
            f"{spec}: could not load dataset {name!r} split {split!r} ({type(exc).__name__}: {exc}); "
            "check the name and split, and network access (or HF_HUB_OFFLINE=1 with a populated cache)"
        ) from exc
    columns = list(ds.column_names)
    features = getattr(ds, "features", None) or {}

    def is_string(col: str) -> bool:
        return getattr(features.get(col), "dtype", None) in ("string", "large_string")

    text_col = "text" if "text" in columns else next((c for c in columns if is_string(c)), None)
    if text_col is None:
        raise CorpusError(
            f"{spec}: no text column (looked for 'text', then any string column; columns: {columns})"
        )
    domain_col = next((c for c in HF_DOMAIN_COLUMNS if c in columns and c != text_col), None)
    id_col = "id" if "id" in columns and text_col != "id" else None
    return _rows_to_samples(
        spec, ds[text_col], ds[domain_col] if domain_col else None, ds[id_col] if id_col else None
    )


def _problem_message(spec: str, problems: Sequence[Problem], total: int) -> str:
    unit = problems[0].unit
    n = len(problems)
    lines = [f"corpus {spec}: {n} bad {unit}{'s' if n != 1 else ''} (of {total} read):"]
    for p in problems[:MAX_LISTED_PROBLEMS]:
        where = f"{p.unit} {p.line}" if p.line is not None else p.source
        lines.append(f"  {where}: {p.reason}")
    if n > MAX_LISTED_PROBLEMS:
        lines.append(f"  ... and {n - MAX_LISTED_PROBLEMS} more ({n} in total)")
    lines.append(
        "Fix them, or load with skip_bad=True to skip bad records (they are then reported, not lost)."
    )
    return "\n".join(lines)
