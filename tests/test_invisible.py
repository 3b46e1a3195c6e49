"""With the plugin on, vLLM serves bit for bit what it serves with the plugin off.

Each engine runs in a fresh process (tests/scripts/served_outputs.py), so the switch
(``VLLM_MAXACT_ENABLE``) and the compile cache cannot leak between the two. The engine core runs
in that process (``--inproc``): with vLLM's default engine-core process, the offline client hands
the prompts over one by one while the core already steps, so under load (two tests at once on a
2-core CI machine) the first steps hold fewer prompts and plain vLLM itself served different
decode logprobs from one run to the next; in process, every prompt is queued before the first
step and plain repeats itself bit for bit (asserted below). Compared: every
prompt logprob (``prompt_logprobs=1``), every sampled token and its logprob, greedy, for the
prompts batched (first run after start-up and a later one) and alone. The instrumented engine
must also have recorded (a recorder that records nothing is trivially invisible), and the plain
one must answer `read_stats` with the clear "not recording" error, not a failed worker call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "scripts" / "served_outputs.py"
sys.path.insert(0, str(SCRIPT.parent))

from served_outputs import compare  # noqa: E402

_PLAIN: dict[tuple, dict] = {}


def serve(model: str, out: Path, *, plugin: bool, eager: bool = False, hot_path: str | None = None,
          extra: tuple[str, ...] = (), kinds: str | None = None) -> dict:
    env = {**os.environ, "VLLM_MAXACT_ENABLE": "1" if plugin else "0"}
    if kinds:
        env["VLLM_MAXACT_KINDS"] = kinds
    env.pop("VLLM_MAXACT_HOT_PATH", None)
    # Publish often: collecting and publishing between steps must not move a bit either.
    env["VLLM_MAXACT_PUBLISH_INTERVAL_S"] = "0.1"
    if hot_path:
        env["VLLM_MAXACT_HOT_PATH"] = hot_path
    if hot_path == "triton":
        env["TRITON_INTERPRET"] = "1"  # the GPU default's kernel, run by Triton's interpreter
    cmd = [sys.executable, str(SCRIPT), "--model", model, "--out", str(out), "--dtype", "bfloat16",
           "--max-num-batched-tokens", "512", "--max-model-len", "1024", "--stats", "--inproc", *extra]
    if eager:
        cmd.append("--eager")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    log = res.stdout[-3000:] + res.stderr[-4000:]
    assert res.returncode == 0, log
    # A read on an engine that does not record is answered by our worker methods, not a failed RPC.
    assert "has no attribute 'maxact" not in res.stderr, log
    return json.loads(out.read_text())


def check(plain: dict, inst: dict) -> None:
    assert "error" not in inst["stats"], inst["stats"]
    tokens = {v[2] for v in inst["stats"].values()}
    assert len(tokens) == 1 and tokens.pop() > 0, "the instrumented engine recorded nothing"
    assert "not recording" in plain["stats"]["error"]
    for i, (a, b) in enumerate(zip(plain["runs"] + [plain["solo"]], inst["runs"] + [inst["solo"]], strict=True)):
        cmp = compare(a, b)
        assert cmp["bitwise"], (i, cmp)
    # The plain engine repeats itself (what the comparison above relies on).
    assert compare(plain["runs"][0], plain["runs"][-1])["bitwise"]


def plain_outputs(key: tuple, model: str, tmp: Path, **kw) -> dict:
    if key not in _PLAIN:
        _PLAIN[key] = serve(model, tmp / "plain.json", plugin=False, **kw)
    return _PLAIN[key]


@pytest.mark.parametrize("case", ["cpu_op", "cpu_op-eager", "triton", "cpu_op-all"])
def test_tiny_llama_serves_the_same_bits_instrumented(case, tiny_factory, tmp_path):
    """The CPU default (``cpu_op``) compiled and eager (``enforce_eager``: vLLM's in-place fused
    add + RMSNorm really runs, so sites are folded before it), and the GPU default's Triton
    kernel, run by Triton's interpreter inside the compiled CPU engine. ``all``: every opt-in
    kind as well (the four linear inputs with their channels, the keys and values the attention
    writes to its cache)."""
    from vllm_maxact.sites import KIND_ORDER

    model = tiny_factory("llama")
    hot, _, mode = case.partition("-")
    eager = mode == "eager"
    kinds = ",".join(k.value for k in KIND_ORDER) if mode == "all" else None
    extra = ("--prompts", "10", "--max-len", "300", "--token-range", "3", "49000", "--out-tokens", "12")
    plain = plain_outputs(("llama", eager), model, tmp_path, eager=eager, extra=extra)
    inst = serve(model, tmp_path / "inst.json", plugin=True, eager=eager, hot_path=hot, extra=extra, kinds=kinds)
    check(plain, inst)
    if kinds:
        assert {n.rsplit(".", 1)[-1] for n in inst["stats"]} >= {"o_in", "down_in", "k", "v"}


def test_smollm2_serves_the_same_bits_instrumented(smollm2_dir, domain_texts, tmp_path):
    """The bundled real model on held-out text of every domain, the CPU default hot path."""
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps([t[:700] for _, t in domain_texts[::2]] + [t[:300] for _, t in domain_texts[1::2]]))
    extra = ("--texts", str(texts), "--prompts", "12", "--out-tokens", "16", "--solo", "2")
    plain = plain_outputs(("smollm2", False), smollm2_dir, tmp_path, extra=extra)
    inst = serve(smollm2_dir, tmp_path / "inst.json", plugin=True, extra=extra)
    check(plain, inst)


def test_the_switch_is_read_per_engine_in_one_process(tiny_factory, tmp_path):
    """``VLLM_MAXACT_ENABLE=0`` set before an engine is built applies to that engine even after an
    instrumented one in the same process (engine core in process): it records nothing, and
    `read_stats` / `reset_stats` on it raise the clear error, not a failed worker call."""
    out = tmp_path / "switch.json"
    res = subprocess.run([sys.executable, str(SCRIPT.parent / "switch_probe.py"), tiny_factory("llama"), str(out)],
                         env=dict(os.environ), capture_output=True, text=True, timeout=900)
    log = res.stdout[-3000:] + res.stderr[-4000:]
    assert res.returncode == 0, log
    assert "has no attribute 'maxact" not in res.stderr, log
    got = json.loads(out.read_text())
    assert got["on"] == {"tokens": 69, "reset": "ok"}
    assert "not recording" in got["off"]["read_error"] and "not recording" in got["off"]["reset_error"]
