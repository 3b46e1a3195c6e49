"""Methods added to vLLM's worker class, called through ``collective_rpc``.

They run in the worker's own thread between steps, so reading the device buffers is ordered
after every forward that was queued before the call.
"""

from __future__ import annotations

from typing import Any

RPC_METHODS = ("maxact_collect", "maxact_payload", "maxact_reset", "maxact_int8", "maxact_int8_hist")


def _require(token, what: str) -> None:
    from vllm_maxact.auth import require

    require(token, what)


def _recorder(worker):
    runner = getattr(worker, "model_runner", None)
    return getattr(runner, "_maxact_recorder", None), runner


def maxact_collect(self, reset: bool = False, token: str | None = None) -> dict[str, Any] | None:
    """This rank's statistics as a plain dict (see `recorder.payload`); optionally reset them
    (which needs the token: `vllm_maxact.auth`)."""
    from vllm_maxact.publish import payload
    from vllm_maxact.stats import to_wire

    if reset:
        _require(token, "maxact_collect(reset=True)")

    rec, runner = _recorder(self)
    if rec is None:
        return None
    pub = getattr(runner, "_maxact_publisher", None)
    if pub is not None:
        with pub.lock:
            window = rec.take_span()
    else:
        window = rec.take_span()
    out = payload(rec, runner.vllm_config)
    # Everything recorded since the previous call (whatever the periodic publisher collected
    # meanwhile included): replay reads per-domain spans this way.
    out["window"] = to_wire(window)
    if reset:
        rec.reset()
    return out


def maxact_payload(self, collect: bool = False) -> dict[str, Any] | None:
    """What this rank's publisher would write to the runtime dir, for an engine core that relays
    it (`vllm_maxact.relay`: workers without the front end's disk, i.e. on Ray). Reads only the
    host copy the publisher keeps, unless ``collect`` (an idle engine) folds the device's recent
    steps in first. Takes nothing away from `maxact_collect`'s spans."""
    from vllm_maxact.publish import payload

    rec, runner = _recorder(self)
    if rec is None:
        return None
    pub = getattr(runner, "_maxact_publisher", None)
    if pub is None:
        return payload(rec, runner.vllm_config)
    with pub.lock:
        if collect and (pub.dirty or rec.in_flight):
            pub.publish()
        out = payload(rec, runner.vllm_config)
    out["publish_errors"] = pub.errors
    return out


def maxact_reset(self, token: str | None = None) -> bool:
    rec, _ = _recorder(self)
    if rec is None:  # nothing recorded here: nothing to change, and the caller learns so
        return False
    _require(token, "maxact_reset")
    rec.collect()
    rec.reset()
    return True


def maxact_int8(self, mode: int, thresholds: dict | None = None, clear_hist: bool = False,
                token: str | None = None) -> bool:
    """Switch the INT-8 check phase (0 off, 1 calibrate, 2 evaluate) and set thresholds
    (site name -> [max threshold, p99.9 threshold]; sites not named get 0 = not evaluated)."""
    _require(token, "maxact_int8")
    rec, runner = _recorder(self)
    if rec is None or not rec.int8:
        return False
    if thresholds is not None:
        thresholds = [list(thresholds.get(s.name, (0.0, 0.0))) for s in rec.sites]
    pub = getattr(runner, "_maxact_publisher", None)
    if pub is not None:
        with pub.lock:
            rec.collect()
            rec.set_int8(mode, thresholds, clear_hist)
    else:
        rec.collect()
        rec.set_int8(mode, thresholds, clear_hist)
    return True


def maxact_int8_hist(self) -> dict | None:
    """The calibration histogram of |x| per site (counts), for percentile thresholds."""
    rec, _ = _recorder(self)
    if rec is None or not rec.int8:
        return None
    from vllm_maxact.publish import rank_info

    return {"sites": [s.name for s in rec.sites], "hist": rec.qhist.cpu().tolist(), **rank_info()}
