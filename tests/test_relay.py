"""The engine core's relay of Ray workers' statistics (`vllm_maxact.relay`), without vLLM: what
it writes is what the front end's readers accept, when it pulls, and what a failure costs."""

from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import Future

import pytest

from vllm_maxact.export.runtime import read_payloads
from vllm_maxact.relay import Relay, _idle_aware_get


def _payload(tp: int, pp: int, worker_pid: int, tokens: int = 3) -> dict:
    stats = {"max": [1.5], "min": [-2.0], "nan": [0], "inf": [0], "tokens": tokens, "start": 1.0, "end": 2.0}
    return {"version": 1, "model": "m", "pid": worker_pid, "time": 100.0 + tokens, "tp_rank": tp, "pp_rank": pp,
            "tp_size": 2, "pp_size": 1, "sites": ["layers.0.residual"], "lifetime": stats, "recent": stats,
            "window_s": 60, "node": f"node-{tp}"}


class FakeExecutor:
    """collective_rpc as vLLM's executors offer it: blocking, or a future (non_block)."""

    uses_ray = True

    def __init__(self) -> None:
        self.calls: list[tuple[bool, dict]] = []
        self.tokens = 3
        self.fail: Exception | None = None
        self.futures: list[Future] = []

    def replies(self) -> list:
        # Worker pids of another node: not alive here, and not what the readers check.
        return [_payload(0, 0, 999_999_901, self.tokens), _payload(1, 0, 999_999_902, self.tokens), None]

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None, non_block=False):
        assert method == "maxact_payload"
        self.calls.append((non_block, dict(kwargs or {})))
        if self.fail:
            raise self.fail
        if non_block:
            f: Future = Future()
            self.futures.append(f)
            return f
        return self.replies()


@pytest.fixture()
def relay(tmp_path):
    d = tmp_path / "rt"
    d.mkdir(mode=0o700)
    return Relay(FakeExecutor(), d, interval_s=0.0)


def test_relayed_payloads_are_read_as_the_engine_cores(relay):
    relay.pull(collect=False)
    got = read_payloads(relay.dir)
    assert {(p["tp_rank"], p["pp_rank"]) for p in got} == {(0, 0), (1, 0)}
    # Alive is the engine core (this process); the workers' own pids and nodes are kept apart.
    assert all(p["pid"] == os.getpid() for p in got)
    assert {p["worker_pid"] for p in got} == {999_999_901, 999_999_902}
    assert {p["node"] for p in got} == {"node-0", "node-1"}
    assert sorted(f.name for f in relay.dir.iterdir()) == [
        f"worker-tp0-pp0-{os.getpid()}.json", f"worker-tp1-pp0-{os.getpid()}.json"]


def test_busy_pulls_do_not_wait_and_idle_pulls_collect(relay):
    ex = relay.executor
    relay.after_step(model_executed=True)
    assert ex.calls == [(True, {"collect": False})]  # queued behind the steps, no device sync
    relay.after_step(model_executed=True)
    assert len(ex.calls) == 1  # one in flight at a time
    ex.futures[0].set_result(ex.replies())
    relay.after_step(model_executed=True)  # the reply has landed: written, the next one asked
    assert read_payloads(relay.dir) and len(ex.calls) == 2
    ex.tokens = 7
    ex.futures[1].set_result(ex.replies())  # (vLLM's executor drains it when asked for it)
    relay.idle()  # the engine ran out of work: the in-flight reply, then a collecting pull
    assert ex.calls[-1] == (False, {"collect": True})
    assert {p["lifetime"]["tokens"] for p in read_payloads(relay.dir)} == {7}
    n = len(ex.calls)
    relay.idle()  # nothing ran since, and the heartbeat is not due
    assert len(ex.calls) == n


def test_failures_cost_the_relay_only_and_are_counted(relay, caplog):
    relay.executor.fail = RuntimeError("Executor failed.")
    relay.pull(collect=True)
    relay.pull(collect=True)
    assert relay.errors == 2 and relay.error == "RuntimeError: Executor failed."
    assert sum("cannot relay" in r.getMessage() for r in caplog.records) == 1  # logged once
    relay.executor.fail = None
    relay.pull(collect=False)
    assert {p["publish_errors"] for p in read_payloads(relay.dir)} == {2}
    import shutil

    shutil.rmtree(relay.dir)  # the front end exited first: nothing to write, nothing to report
    relay.pull(collect=True)
    assert relay.errors == 2


def test_idle_wait_runs_the_relay_between_heartbeats(relay):
    relay.heartbeat = 0.05
    q: queue.Queue = queue.Queue()
    calls = []
    relay.idle = lambda: calls.append(1)  # type: ignore[method-assign]
    q.get = _idle_aware_get(q.get, relay)
    threading.Timer(0.3, q.put, args=("work",)).start()
    assert q.get() == "work"
    assert len(calls) >= 3  # woke for the relay every heartbeat while waiting
    n = len(calls)
    q.put("now")
    assert q.get(block=False) == "now"  # a non-blocking get is vLLM's own, untouched
    with pytest.raises(queue.Empty):
        q.get(True, 0.01)  # so is a get with a timeout
    assert len(calls) == n
