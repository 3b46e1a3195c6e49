"""The Triton hot path's kernel against a float64 recomputation. Run by tests/test_ops_triton.py
in a process with TRITON_INTERPRET=1 (Triton's interpreter runs the kernel on CPU tensors)."""

import os

import pytest
import torch

assert os.environ.get("TRITON_INTERPRET") == "1", "run through tests/test_ops_triton.py"

from vllm_maxact import ops_triton  # noqa: E402


def _truth(x: torch.Tensor, n: int) -> tuple[float, float, int, int]:
    x2 = x.reshape(-1, x.shape[-1])[:n].double()
    fin = torch.isfinite(x2)
    hi = float(torch.where(fin, x2, float("-inf")).max()) if fin.any() else float("-inf")
    lo = float(torch.where(fin, x2, float("inf")).min()) if fin.any() else float("inf")
    return hi, lo, int(torch.isnan(x2).sum()), int(torch.isinf(x2).sum())


@pytest.mark.parametrize("tokens,valid", [(1, 1), (5, 3), (37, 37), (40, 0), (150, 149)])
def test_one_launch_equals_float64_per_site(tokens, valid):
    """Several sites of different widths, dtypes and strides (the gate half of a merged
    projection is a strided view) in one launch; NaN/Inf counted, never folded; rows at or past
    n_valid ignored (a huge value sits in the last row); untouched slots stay armed; more sites
    than one launch takes are split."""
    g = torch.Generator().manual_seed(tokens)
    merged = torch.randn(tokens, 2 * 1500, generator=g).to(torch.bfloat16)
    xs = [
        (torch.randn(tokens, 2048, generator=g) * 3).to(torch.bfloat16),
        merged[:, :1500],
        torch.randn(tokens, 1100, generator=g, dtype=torch.float32),
        torch.randn(tokens, 64, generator=g).half(),
    ] + [torch.randn(tokens, 96, generator=g) * (k + 1) for k in range(ops_triton.MAX_SITES)]
    xs[0][min(2, tokens - 1), 7] = float("nan")
    xs[0][0, 9] = float("inf")
    xs[2][tokens - 1, 3] = -float("inf")
    xs[1][tokens - 1, 5] = 1e4  # a padding row whenever valid < tokens
    slots = [1, 3, 4, 6] + list(range(7, 7 + ops_triton.MAX_SITES))
    ext = torch.empty(7 + ops_triton.MAX_SITES, 2)
    ext[:, 0], ext[:, 1] = float("-inf"), float("inf")
    cnt = torch.zeros(7 + ops_triton.MAX_SITES, 2, dtype=torch.int64)
    ops_triton.launch(ext, cnt, torch.tensor([valid]), slots, xs)
    for slot, x in zip(slots, xs, strict=True):
        got = (float(ext[slot, 0]), float(ext[slot, 1]), int(cnt[slot, 0]), int(cnt[slot, 1]))
        assert got == _truth(x, valid), slot
    for slot in (0, 2, 5):
        assert float(ext[slot, 0]) == float("-inf") and int(cnt[slot].sum()) == 0
