"""vLLM's compile cache must not let an artifact traced without our hooks load with them.

vLLM keys its AOT/Inductor cache on its config, not on plugin code: the plugin mixes its version
and site selection into that key. Three starts share one cache root: plugin off (populates the
cache with an uninstrumented graph), plugin on (must not load it: records), plugin on again
(reuses the instrumented artifacts: still records the same values).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
PROBE = Path(__file__).parent / "scripts" / "engine_probe.py"


def probe(model: str, tmp: Path, name: str, **env: str) -> tuple[dict, str]:
    out = tmp / f"{name}.json"
    proc = subprocess.run(
        [sys.executable, str(PROBE), model, str(out)],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text()), proc.stdout + proc.stderr


def aot_dirs(root: Path) -> set[str]:
    base = root / "torch_compile_cache" / "torch_aot_compile"
    return {p.name for p in base.iterdir()} if base.exists() else set()


def test_cache_key_separates_instrumented_graphs(tiny_factory, tmp_path):
    model = tiny_factory("llama")
    cache = tmp_path / "vllm-cache"
    env = {"VLLM_CACHE_ROOT": str(cache)}
    off, _ = probe(model, tmp_path, "off", VLLM_MAXACT_ENABLE="0", **env)
    assert not off["recording"] and "VLLM_MAXACT_ENABLE=0" in off["error"]
    dirs_off = aot_dirs(cache)
    assert dirs_off, "vLLM wrote no AOT compile cache; the test would prove nothing"

    on, _ = probe(model, tmp_path, "on", VLLM_MAXACT_ENABLE="1", **env)
    assert on["recording"] and on["tokens"] == 297
    dirs_on = aot_dirs(cache) - dirs_off
    assert dirs_on, "the instrumented engine reused the uninstrumented cache entry"

    again, log = probe(model, tmp_path, "again", VLLM_MAXACT_ENABLE="1", **env)
    assert aot_dirs(cache) == dirs_off | dirs_on  # same key: the cache entry is reused
    assert again["recording"] and again["sites"] == on["sites"]
