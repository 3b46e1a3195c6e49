"""VARIANT (benchmarks/variants/triton_pair), over the tree's adapters.py (kept by
benchmarks/variants/apply.sh as `_tree_adapters`): the residual site hands over its two
addends (`Sum`); the Triton kernel adds them (no materialised sum). `residual_sum` is patched
into the tree module, whose default probes use it."""

from __future__ import annotations

from typing import Any

import torch
from vllm_maxact._tree_adapters import *  # noqa: F403

from vllm_maxact import _tree_adapters as _tree


class Sum(tuple):
    """Two addends whose sum is the site's value; the Triton hot path adds them in its kernel
    (no materialised sum), the other paths add them first (`value`)."""

    @property
    def value(self) -> torch.Tensor:
        return self[0] + self[1]


def residual_sum(out: Any) -> torch.Tensor | Sum:
    """vLLM decoder layers return ``(hidden_states, residual)`` not yet added."""
    if isinstance(out, tuple | list):
        hidden, residual = out[0], out[1] if len(out) > 1 else None
        return hidden if residual is None else Sum((hidden, residual))
    return out


_tree.residual_sum = residual_sum
