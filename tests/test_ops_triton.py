"""The Triton hot path (the GPU default) on this CPU, through Triton's interpreter.

TRITON_INTERPRET=1 must be set before Triton compiles anything and must not reach other
tests' vLLM engines, so the checks run in a child pytest: the kernel against float64
(tests/triton_interp_checks.py) and the recorder tests of tests/test_ops.py with the 'triton'
hot path (eager, and compiled by Inductor with the kernel as an opaque op).
"""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_triton_hot_path_under_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
           "tests/triton_interp_checks.py", "tests/test_ops.py", "-k", "triton or one_launch or in_kernel"]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    tail = res.stdout[-3000:] + res.stderr[-2000:]
    assert res.returncode == 0, tail
    passed = int(re.search(r"(\d+) passed", res.stdout).group(1))
    # 5 + 2 one-launch cases, 2 x 20 in-kernel cases (GPU and interpreter forms), 11 more of
    # the norm with its next row loaded ahead, 11 of the norm read in column chunks, 9 of
    # SiLU-and-mul one tile per program, and the recorder tests of test_ops.py that run
    # "triton" (9): 87 in all.
    assert passed >= 87, tail
