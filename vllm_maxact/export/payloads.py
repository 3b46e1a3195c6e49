"""The workers' payloads as read by the front end: checked before anything merges them.

A payload is the JSON a worker publishes (`vllm_maxact.publish.payload`). The reader trusts
nothing in it: a payload with the wrong shape (a per-site list of another length than the
sites, a string where a number belongs, a missing window, a non-finite value, an unknown site)
is refused here with a message naming the field, so one bad file costs its own series and never
a scrape, a snapshot or the thread that writes them.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, StrictInt, StrictStr, ValidationError

from vllm_maxact.sites import Site
from vllm_maxact.stats import WIRE_VERSION, Count, Finite, StatsForm, Timestamp, _Strict


class PayloadError(ValueError):
    """A payload that cannot be exported; the message names the field."""


class Int8Sums(_Strict):
    acc: list[list[list[float]]]  # float32 squares of huge values overflow: inf is a valid sum here
    cnt: list[list[list[Count]]]


class Int8Form(_Strict):
    thresholds: list[list[Annotated[Finite, Field(ge=0)]]]
    recent: Int8Sums
    lifetime: Int8Sums | None = None
    window: Int8Sums | None = None


class PayloadForm(_Strict):
    model: Annotated[StrictStr, Field(min_length=1)]
    pid: Annotated[StrictInt, Field(gt=0)]
    time: Timestamp
    sites: Annotated[list[StrictStr], Field(min_length=1)]
    lifetime: StatsForm
    recent: StatsForm
    tp_rank: Count = 0
    pp_rank: Count = 0
    tp_size: Annotated[StrictInt, Field(ge=1)] = 1
    pp_size: Annotated[StrictInt, Field(ge=1)] = 1
    window_s: Annotated[Finite, Field(ge=0)] = 0
    publish_errors: Count = 0
    int8: Int8Form | None = None
    # identity (labels and Arrow string columns)
    version: StrictInt | None = None
    architecture: StrictStr | None = None
    adapter: StrictStr | None = None
    vllm_version: StrictStr | None = None
    plugin_version: StrictStr | None = None
    hot_path: StrictStr | None = None
    in_kernel_sites: list[StrictStr] = Field(default_factory=list)


def _shape(name: str, nested: list, shape: tuple[int, ...]) -> None:
    """``nested`` is a list of lists with exactly ``shape``."""
    def walk(x, depth: int) -> bool:
        if depth == len(shape):
            return True
        return isinstance(x, list) and len(x) == shape[depth] and all(walk(v, depth + 1) for v in x)

    if not walk(nested, 0):
        raise PayloadError(f"{name}: expected a {' x '.join(map(str, shape))} array")


def validate_payload(obj: Any) -> dict[str, Any]:
    """The payload with its numbers normalized (ints where floats belong become floats), if it is
    well formed; else `PayloadError` naming what is wrong."""
    if not isinstance(obj, dict):
        raise PayloadError(f"expected a JSON object, got {type(obj).__name__}")
    try:
        form = PayloadForm.model_validate(obj)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "payload"
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise PayloadError(f"{where}: {err['msg']}{more}") from None
    if form.version is not None and form.version > WIRE_VERSION:
        raise PayloadError(f"version: {form.version} is newer than this reader's {WIRE_VERSION} (a newer vllm-maxact "
                           "in the workers than in the front end: install the same version in both)")
    n = len(form.sites)
    if len(set(form.sites)) != n:
        raise PayloadError("sites: a site is listed twice")
    for name in form.sites:
        try:
            Site.parse(name)
        except (ValueError, KeyError):
            raise PayloadError(f"sites: unknown site name {name[:80]!r}") from None
    if form.tp_rank >= form.tp_size or form.pp_rank >= form.pp_size:
        raise PayloadError(f"rank tp{form.tp_rank}/pp{form.pp_rank} outside tp_size {form.tp_size} / "
                           f"pp_size {form.pp_size}")
    for window in ("lifetime", "recent"):
        st: StatsForm = getattr(form, window)
        for key in ("max", "min", "nan", "inf"):
            got = len(getattr(st, key))
            if got != n:
                raise PayloadError(f"{window}.{key}: {got} values for {n} sites")
        for i, (mx, mn) in enumerate(zip(st.max, st.min, strict=True)):
            if (mx is None) != (mn is None) or (mx is not None and mx < mn):
                raise PayloadError(f"{window}: max {mx} and min {mn} of site {form.sites[i]} do not fit")
        for key in st.channels:
            if not key.isdigit() or int(key) >= n:
                raise PayloadError(f"{window}.channels: {key[:20]!r} is not a site index below {n}")
    if form.int8 is not None:
        _shape("int8.thresholds", obj["int8"]["thresholds"], (n, 2))
        for part in ("recent", "lifetime", "window"):
            sums = obj["int8"].get(part)
            if sums is None:
                continue
            _shape(f"int8.{part}.acc", sums["acc"], (n, 2, 4))
            _shape(f"int8.{part}.cnt", sums["cnt"], (n, 2, 2))
    return form.model_dump(exclude_unset=True)


def shape(p: dict[str, Any]) -> tuple:
    """What ranks of one stage must share to be merged: the sites and each channel site's width."""
    return (tuple(p["sites"]),
            *(tuple(sorted((k, len(v)) for k, v in p[w].get("channels", {}).items())) for w in ("lifetime", "recent")))


def slot(p: dict[str, Any]) -> tuple[str, int, int]:
    """What one payload stands for: a model's pipeline stage's tensor-parallel rank."""
    return p["model"], p.get("pp_rank", 0), p.get("tp_rank", 0)
