"""Python API for a running `vllm.LLM`: read statistics as a pyarrow Table, reset them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from vllm_maxact.auth import caller_token
from vllm_maxact.export.arrow import table_from_payloads


def collect(llm: Any, *, reset: bool = False) -> list[dict[str, Any]]:
    """Per-rank payloads from every worker of ``llm`` (a `vllm.LLM`)."""
    try:
        kwargs = {"reset": True, "token": caller_token()} if reset else {}
        payloads = llm.collective_rpc("maxact_collect", kwargs=kwargs)
    except Exception as e:  # the workers lack our methods: the plugin never loaded there
        if "maxact_collect" not in str(e) or "refused" in str(e):
            raise
        payloads = []
    payloads = [p for p in payloads if p]
    if not payloads:
        raise RuntimeError(NOT_RECORDING)
    return payloads


NOT_RECORDING = (
    "vllm-maxact is not recording in this engine: the plugin is disabled "
    "(VLLM_MAXACT_ENABLE=0), not installed in this environment, or the architecture has no "
    "adapter (see the vLLM log for a 'vllm-maxact' warning)."
)


def read_stats(
    llm: Any, *, reset: bool = False, windows: Sequence[str] = ("lifetime",), per_rank: bool = False
) -> pa.Table:
    """Current statistics of every site, one row per site (merged over TP ranks)."""
    return table_from_payloads(collect(llm, reset=reset), windows=windows, per_rank=per_rank)


def reset_stats(llm: Any) -> None:
    """Forget everything recorded so far (device buffers, lifetime and windows)."""
    try:
        done = llm.collective_rpc("maxact_reset", kwargs={"token": caller_token()})
    except Exception as e:  # the workers lack our methods: the plugin never loaded there
        if "maxact_reset" not in str(e) or "refused" in str(e):
            raise
        done = []
    if not any(done):
        raise RuntimeError(NOT_RECORDING)


def read_instance(
    runtime_dir: str | None = None, *, pid: int | None = None, windows: Sequence[str] = ("lifetime",),
    per_rank: bool = False,
) -> pa.Table:
    """Statistics of a running `vllm serve` (or any other process tree) on this machine, from the
    payloads its workers publish. Give the runtime dir, or the server's pid, or nothing (newest)."""
    from pathlib import Path

    from vllm_maxact.export.runtime import check_private, discover, read_payloads

    if runtime_dir is None:
        found = discover(pid)
        if not found:
            who = f"pid {pid}" if pid else "any process"
            raise RuntimeError(f"no running vLLM instance with vllm-maxact found for {who}")
        runtime_dir = str(found[0])
    else:
        check_private(Path(runtime_dir))  # RuntimeDirError: another user's, or writable by others
    payloads = read_payloads(Path(runtime_dir))
    if not payloads:
        raise RuntimeError(f"{runtime_dir}: no live worker has published statistics")
    return table_from_payloads(payloads, windows=windows, per_rank=per_rank)


def snapshot(llm: Any, directory: str, *, retain: int | None = None) -> list[str]:
    """Write an Arrow snapshot of ``llm`` now (same schema as the periodic ones)."""
    from pathlib import Path

    from vllm_maxact.export.snapshot import write_snapshots

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    return [str(p) for p in write_snapshots(d, collect(llm), retain)]
