"""The Triton hot path (the GPU default) on this CPU, through Triton's interpreter.

TRITON_INTERPRET=1 must be set before Triton compiles anything and must not reach other
tests' vLLM engines, so the checks run in child pytest processes: the kernel against float64
(tests/triton_interp_checks.py) and the recorder tests of tests/test_ops.py with the 'triton'
hot path (eager, and compiled by Inductor with the kernel as an opaque op). Two children (the
norm cases; the rest), so the two pytest-xdist workers share the ~8 minutes.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SELECT = "triton or one_launch or in_kernel"

#: part -> (-k expression, cases that must pass). The norm: 2 dtypes x 5 shapes x 3 forms (GPU,
#: interpreter, next row loaded ahead) of the fused add + RMSNorm, and 3 of the norm without
#: residual or weight. The rest: 5 + 2 one-launch cases, SiLU-and-mul and the fold cases in 2
#: forms (GPU, interpreter): 18, and test_ops.py's recorder tests that run "triton" (9 of 10;
#: one needs a GPU).
PARTS = {
    "norm": (f"rms_norm and ({SELECT})", 33),
    "rest": (f"not rms_norm and ({SELECT})", 34),
}


@pytest.mark.parametrize("part", PARTS)
def test_triton_hot_path_under_the_interpreter(part):
    expr, want = PARTS[part]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
           "tests/triton_interp_checks.py", "tests/test_ops.py", "-k", expr]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    tail = res.stdout[-3000:] + res.stderr[-2000:]
    assert res.returncode == 0, tail
    passed = int(re.search(r"(\d+) passed", res.stdout).group(1))
    assert passed >= want, tail
