"""VARIANT (benchmarks/variants/triton_pair), over the tree's recorder.py (kept by
benchmarks/variants/apply.sh as `_tree_recorder`): `Recorder.record` takes `adapters.Sum`
addends, which only the deferred Triton fold passes on as they are (the kernel adds them);
every other path adds them first. `record` and `_raw_fold` are patched into the tree's class."""

from __future__ import annotations

import torch
from vllm_maxact._tree_recorder import *  # noqa: F403

from vllm_maxact import _tree_recorder as _tree
from vllm_maxact import ops, ops_int8


def record(self, slot: int, x: torch.Tensor) -> None:
    g, k = self.where[slot]
    group = self.groups[g]
    if isinstance(x, tuple) and not (self.hot_path == "triton" and g in self._deferred):
        x = x[0] + x[1]  # an adapters.Sum: only the deferred Triton fold takes the addends
    if g in self._deferred:
        self._pending.setdefault(g, []).append((k, ops.row_stats(x) if self.hot_path == "fused" else x))
    elif self.hot_path == "fused":
        ops.record(group.extrema, group.counts, self.n_valid, k, x)
    else:
        self._raw_fold(group, [k], [x])
    if isinstance(x, tuple) and (slot in self.chan_row or self.int8):
        x = x[0] + x[1]
    if slot in self.chan_row:
        (ops.record_channels_cpu if self.cpu_op else ops.record_channels)(
            group.chan, self.n_valid, self.chan_row[slot], x)
    if self.int8:
        (ops_int8.record_int8_cpu if self.cpu_op else ops_int8.record_int8)(
            group.qthr, group.qacc, group.qcnt, group.qhist, self.qmode, self.n_valid, k, x,
            with_hist=self.int8_hist)


def _raw_fold(self, group, slots: list[int], xs: list) -> None:
    if self.hot_path == "cpu_op":
        ops.record_cpu(group.extrema, group.counts, self.n_valid, slots, xs)
        return
    a = [v[0] if isinstance(v, tuple) else v for v in xs]
    b = [v[1] if isinstance(v, tuple) else None for v in xs]
    torch.ops.vllm_maxact.record_triton(group.extrema, group.counts, self.n_valid, slots, a, b)


_tree.Recorder.record = record
_tree.Recorder._raw_fold = _raw_fold
