"""Interpreter check of the triton_pair variant, on a copy of the package with the variant put
over it, first on PYTHONPATH:

    mkdir -p /tmp/var && cp -r vllm_maxact /tmp/var/ && cp -r plugins /tmp/var/vllm_maxact/plugins
    bash benchmarks/variants/apply.sh /tmp/var/vllm_maxact triton_pair
    TRITON_INTERPRET=1 PYTHONPATH=/tmp/var python -m pytest benchmarks/variant_checks/triton_pair_check.py
"""
import os

import torch

from vllm_maxact import ops_triton

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1 (see the docstring)"


def test_pair_sum_is_rounded_like_the_model():
    g = torch.Generator().manual_seed(0)
    for T, n in ((1, 1), (9, 7), (70, 70)):
        # Integers: every sum is exact in bf16, so the check does not depend on the rounding of
        # ties (Triton's interpreter truncates fp32 -> bf16; GPUs round to nearest even).
        a = torch.randint(-120, 120, (T, 300), generator=g).bfloat16()
        b = torch.randint(-120, 120, (T, 300), generator=g).bfloat16()
        a[T - 1, 0], b[T - 1, 0] = 4096, 0  # exact; in a padding row when n < T
        ext = torch.empty(2, 2)
        ext[:, 0], ext[:, 1] = float("-inf"), float("inf")
        cnt = torch.zeros(2, 2, dtype=torch.int64)
        ops_triton.launch(ext, cnt, torch.tensor([n]), [0, 1], [a, a], [b, None])
        s = (a + b)[:n].float()
        assert float(ext[0, 0]) == float(s.max()) and float(ext[0, 1]) == float(s.min())
        assert float(ext[1, 0]) == float(a[:n].float().max())
