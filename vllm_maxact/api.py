"""Python API for a running `vllm.LLM`: read statistics as a pyarrow Table, reset them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from vllm_maxact.export.arrow import table_from_payloads


def collect(llm: Any, *, reset: bool = False) -> list[dict[str, Any]]:
    """Per-rank payloads from every worker of ``llm`` (a `vllm.LLM`)."""
    payloads = llm.collective_rpc("maxact_collect", kwargs={"reset": reset})
    payloads = [p for p in payloads if p]
    if not payloads:
        raise RuntimeError(
            "vllm-maxact is not recording in this engine: the plugin is disabled "
            "(VLLM_MAXACT_ENABLE=0), not installed in this environment, or the architecture has no "
            "adapter (see the vLLM log for a 'vllm-maxact' warning)."
        )
    return payloads


def read_stats(
    llm: Any, *, reset: bool = False, windows: Sequence[str] = ("lifetime",), per_rank: bool = False
) -> pa.Table:
    """Current statistics of every site, one row per site (merged over TP ranks)."""
    return table_from_payloads(collect(llm, reset=reset), windows=windows, per_rank=per_rank)


def reset_stats(llm: Any) -> None:
    """Forget everything recorded so far (device buffers, lifetime and windows)."""
    llm.collective_rpc("maxact_reset")
