#!/usr/bin/env python3
"""Which kernels did Inductor generate? Reads the output code in vLLM's compile cache.

    python benchmarks/inductor_kernels.py CACHE_ROOT... > kernels.json

For every Inductor output-code module (a ``*.py`` with ``def call(``) under the given roots
(``VLLM_CACHE_ROOT`` of a run, or any folder above it), lists the kernels its ``call`` launches
in order: Triton kernels by name (``triton_red_fused_..._amax_...``: a reduction that Inductor
fused from the ops named), library calls (``extern_kernels.mm`` ...) and custom ops. A recording
site that fused into an existing kernel shows up as that kernel's name gaining ``amax``/``isnan``
rather than as a new launch.

Caveat (vLLM 0.26 on the H200): vLLM's AOT compile cache keeps the model's compiled pieces in
a binary format, so under a ``VLLM_CACHE_ROOT`` this finds only small side graphs (sampler).
Point it at a plain ``TORCHINDUCTOR_CACHE_DIR`` instead (e.g. the micro-benchmark's).
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

LAUNCH = re.compile(
    r"^\s+(?:(triton_\w+)\.run\(|(cpp_fused_\w+)\(|(extern_kernels\.\w+)\(|(torch\.ops\.[\w.]+)\()"
)


def call_launches(text: str) -> list[str]:
    out, inside = [], False
    for line in text.splitlines():
        if re.match(r"\s*def call\(", line):
            inside = True
            continue
        if inside and re.match(r"\S", line) and not line.startswith("#"):
            break  # dedented: end of call (module level)
        if inside and re.match(r"\s{0,4}def ", line) and "def call" not in line:
            break
        if inside:
            m = LAUNCH.match(line)
            if m:
                out.append(next(g for g in m.groups() if g))
    return out


def summarize(root: Path) -> dict:
    files = {}
    for p in sorted(root.rglob("*.py")):
        try:
            text = p.read_text(errors="replace")
        except OSError:
            continue
        if "def call(" not in text or "async_compile" not in text:
            continue
        launches = call_launches(text)
        if not launches:
            continue
        triton = [k for k in launches if k.startswith(("triton_", "cpp_fused_"))]
        files[str(p.relative_to(root))] = {
            "launches": len(launches),
            "triton": len(triton),
            "extern": len(launches) - len(triton),
            "recording_kernels": sum(1 for k in triton if "amax" in k or "isnan" in k or "isinf" in k),
            "kinds": dict(Counter(k.split("_")[1] for k in triton)),  # poi / red / per (cpp: fused)
            "order": launches,
        }
    return files


def main() -> None:
    out = {}
    for arg in sys.argv[1:]:
        root = Path(arg)
        if root.exists():
            out[str(root)] = summarize(root)
    json.dump(out, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
