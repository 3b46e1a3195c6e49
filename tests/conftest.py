"""Shared fixtures: real models, tiny random-weight models, engines shared per session."""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

import pytest

# Small, fixed KV cache: vLLM's CPU backend otherwise reserves a fraction of the NUMA node and
# refuses to start when other processes hold memory.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_MAXACT_PUBLISH_INTERVAL_S", "0.5")
#: Under pytest-xdist (pyproject's addopts: two workers) each worker's vLLM engines compute on a
#: CPU of their own, and its own torch (transformers references) on one thread, so two engines
#: at once do not fight over one core while the other idles. A bind list set by the caller wins.
_XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if _XDIST_WORKER.startswith("gw") and hasattr(os, "sched_getaffinity"):
    _cpus = sorted(os.sched_getaffinity(0))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", str(_cpus[int(_XDIST_WORKER[2:]) % len(_cpus)]))
    import torch

    torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))

#: Opt-in (``MAXACT_TEST_TORCHVISION_STUB=1``): where torchvision is absent, put the import stub
#: in tests/stubs first on the path of this process and of every process it starts (vLLM's
#: engine, workers and model-registry subprocess), so the families whose vLLM model modules
#: import it (test_engine_families_more.NEEDS_TORCHVISION) are served text-only on a CPU machine.
TORCHVISION_STUB_ENV = "MAXACT_TEST_TORCHVISION_STUB"
if os.environ.get(TORCHVISION_STUB_ENV) == "1":
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        _stubs = str(Path(__file__).parent / "stubs")
        sys.path.insert(0, _stubs)
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_stubs, os.environ.get("PYTHONPATH")) if p)


#: The longest test files first (measured on a 2-core AVX2 machine: the serving module's server,
#: the interpreter runs, the real models, the compile-cache probes, the in-kernel families), so
#: the two pytest-xdist workers end together instead of one running a long test alone at the end.
LONG_FIRST = ("test_serve_e2e.py", "test_ray.py", "test_serve_quantized.py", "test_ops_triton.py", "test_engine_real.py",
              "test_replay_engine.py", "test_replay_default.py", "test_int8_engine.py", "test_compile_cache.py",
              "test_engine_families.py", "test_faults.py", "test_data_parallel.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept


@pytest.fixture(autouse=True)
def _restore_maxact_environment():
    """The CLI sets VLLM_MAXACT_* for the engine it starts, in the calling process (here: the
    test process); no test may leak such settings into the engines of later tests."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("VLLM_MAXACT_")}
    yield
    for k in [k for k in os.environ if k.startswith("VLLM_MAXACT_") and k not in saved]:
        del os.environ[k]
    os.environ.update(saved)


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    from vllm_maxact.models import resolve_model

    return resolve_model("smollm2-135m", progress=False)


@pytest.fixture(scope="session")
def gemma_dir() -> str:
    from vllm_maxact.models import resolve_model

    return resolve_model("gemma3-270m", progress=False)


#: A folder with SmolLM2's tokenizer files (tokenizer.json, tokenizer_config.json, ...) for the
#: tiny models, instead of the bundled SmolLM2 model (which the `smollm2_dir` fixture converts,
#: from a download if it is not installed): for machines without it, e.g. a GPU machine
#: without network (benchmarks/gpu_families.sh). Outside the plugin's VLLM_MAXACT_ namespace.
TOKENIZER_DIR_ENV = "MAXACT_TEST_TOKENIZER_DIR"
#: JSON object of extra vLLM engine arguments for every engine `build_llm` starts (a test's own
#: arguments win), e.g. '{"gpu_memory_utilization": 0.15}' on a shared GPU.
ENGINE_ARGS_ENV = "MAXACT_TEST_ENGINE_ARGS"


@pytest.fixture(scope="session")
def tokenizer_dir(request) -> str:
    """The tiny models' tokenizer: $MAXACT_TEST_TOKENIZER_DIR if set, else SmolLM2's folder."""
    override = os.environ.get(TOKENIZER_DIR_ENV)
    if override:
        if not (Path(override) / "tokenizer.json").is_file():
            raise FileNotFoundError(f"${TOKENIZER_DIR_ENV}={override} has no tokenizer.json")
        return override
    return request.getfixturevalue("smollm2_dir")


@pytest.fixture(scope="session")
def tiny_factory(tmp_path_factory, tokenizer_dir):
    """Tiny random-weight models (no downloads), with SmolLM2's tokenizer so text works."""
    from tiny_models import make_tiny

    made: dict[str, str] = {}

    def get(arch: str) -> str:
        if arch not in made:
            out = tmp_path_factory.mktemp(f"tiny-{arch}")
            made[arch] = str(make_tiny(arch, out, tokenizer_dir=tokenizer_dir))
        return made[arch]

    return get


@pytest.fixture(scope="session")
def domain_texts() -> list[tuple[str, str]]:
    """A multi-domain prompt set: two samples of each built-in domain, first ~1,500 characters."""
    from vllm_maxact.corpus import load_corpus

    by_domain: dict[str, list[str]] = {}
    for s in load_corpus("builtin"):
        if len(by_domain.setdefault(s.domain, [])) < 2:
            by_domain[s.domain].append(s.text[:1500])
    return [(d, t) for d, texts in sorted(by_domain.items()) for t in texts]


@pytest.fixture(scope="session")
def smollm2_calibration(smollm2_dir, domain_texts, tmp_path_factory) -> Path:
    """A scales file whose thresholds are half the reference maxima on a few prompts, so live
    traffic clips: clip-rate panels get data and the clip-rate alert must fire. Tests that start
    SmolLM2 load it too, so they share one compiled graph (the cache key covers the traced ops,
    not the file's values) and CI compiles SmolLM2 once."""
    from reference import reference_stats
    from transformers import AutoTokenizer

    from vllm_maxact.int8 import SCALES_FORMAT

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    ref = reference_stats(smollm2_dir, [tok(t).input_ids[:128] for _, t in domain_texts[:4]])
    sites = {n: {"threshold_max": 0.5 * s.absmax, "threshold_p999": None} for n, s in ref.items() if s.absmax}
    path = tmp_path_factory.mktemp("calibration") / "scales.json"
    path.write_text(json.dumps({"format": SCALES_FORMAT, "version": 1, "sites": sites}))
    return path


#: Every test engine and server schedules at most this many tokens and sequences a step
#: (vLLM's CPU defaults: 4096 tokens for the LLM class, 2048 for `vllm serve`). vLLM's profiling
#: and warm-up forwards run at the token budget, and on a CPU without AVX-512 bf16 GEMMs run at
#: a few GFLOP/s (SmolLM2's engine start: 197 s at 4096); and vLLM's compile cache keys on both
#: values, so with one setting the LLM-class engines and the servers of a model key the same
#: entry. Longer prompts are prefilled in chunks, which the recorder must handle anyway.
TEST_MAX_BATCHED_TOKENS, TEST_MAX_SEQS = 512, 64


def build_llm(model: str, **kwargs):
    from vllm import LLM

    for key, value in json.loads(os.environ.get(ENGINE_ARGS_ENV) or "{}").items():
        kwargs.setdefault(key, value)
    kwargs.setdefault("max_model_len", 1024)
    kwargs.setdefault("max_num_batched_tokens", TEST_MAX_BATCHED_TOKENS)
    kwargs.setdefault("max_num_seqs", TEST_MAX_SEQS)
    kwargs.setdefault("enable_prefix_caching", False)
    kwargs.setdefault("dtype", "bfloat16")
    return LLM(model, **kwargs)


def close_llm(llm) -> None:
    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception:
        pass
    del llm
    gc.collect()


def prompt_only(llm, token_lists: list[list[int]]) -> None:
    from vllm import SamplingParams

    llm.generate([{"prompt_token_ids": t} for t in token_lists], SamplingParams(max_tokens=1), use_tqdm=False)


def served_stats(model: str, token_lists: list[list[int]], *, per_rank: bool = False, payloads: list | None = None,
                 **engine_kwargs):
    """A fresh engine for ``model``: reset, prompt-only over ``token_lists``, read back
    (`vllm_maxact.read_stats`), closed. ``payloads``, if given, receives the workers' raw
    payloads (hot path, sites recorded in kernels, ...)."""
    import vllm_maxact
    from vllm_maxact.api import collect

    llm = build_llm(model, **engine_kwargs)
    try:
        vllm_maxact.reset_stats(llm)
        prompt_only(llm, token_lists)
        if payloads is not None:
            payloads.extend(collect(llm))
        return vllm_maxact.read_stats(llm, per_rank=per_rank)
    finally:
        close_llm(llm)


#: vLLM's CPU kernels compute differently by instruction set (AMX, AVX-512 and AVX2-only machines
#: take other attention and GEMM paths), and that moves a few maxima from exact arithmetic by more
#: than bf16 rounding of the same forward does: measured on an AVX2-only EPYC, where transformers'
#: bf16 and float32 forwards agree within 0.3%, vLLM's value of one site in a few hundred is 4.2-4.8%
#: off (SmolLM2 layer 10's residual, the tiny Gemma 3's last gate), within 3-4% on AMX machines.
#: So a value outside a test's own tolerance must be within CPU_KERNEL_DRIFT of the float32
#: reference, or within ROUNDING_FACTOR times the site's gap between transformers' bf16 and
#: float32 forwards where that is larger (amplifying tiny models), never more than BAND_CAP. A
#: recorder error (another site, a missed token, the residual before the add) is off by the tiny
#: models' 3-4x steps between sites, or loses the real models' massive activations.
CPU_KERNEL_DRIFT, ROUNDING_FACTOR, BAND_CAP = 0.06, 2.0, 0.12


def within_cpu_drift(got: float, fp32: float, rtol: float, atol: float, bf16: float | None = None) -> bool:
    """``got`` is within vLLM's CPU kernel drift (or bf16 rounding's reach) of the float32 value."""
    spread = ROUNDING_FACTOR * abs(bf16 - fp32) if bf16 is not None else 0.0
    band = min(max(rtol * abs(fp32), CPU_KERNEL_DRIFT * abs(fp32), spread), BAND_CAP * abs(fp32))
    return abs(got - fp32) <= band + atol


def off_float32_reference(got: dict, ref: dict, off: list[tuple[str, str]], model_dir: str,
                          toks: list[list[int]], rtol: float, atol: float) -> list[str]:
    """Of the (site, stat) pairs ``off`` the bf16 transformers reference ``ref``, those also
    outside vLLM's CPU kernel drift (`within_cpu_drift`) of the float32 transformers forward of
    the same weights, as messages; the float32 forward runs only when ``off`` is not empty."""
    if not off:
        return []
    import torch
    from reference import reference_stats

    ref32 = reference_stats(model_dir, toks, dtype=torch.float32)
    return [
        f"{name}.{key}: vllm {got[name][key]:.5g} vs transformers bf16 {getattr(ref[name], key):.5g}, "
        f"fp32 {getattr(ref32[name], key):.5g}"
        for name, key in off
        if not within_cpu_drift(got[name][key], getattr(ref32[name], key), rtol, atol, bf16=getattr(ref[name], key))
    ]


def stats_by_site(table) -> dict[str, dict]:
    rows = [r for r in table.to_pylist() if r["rank"] is None and r["domain"] is None]
    return {r["site"]: r for r in rows}


def dump(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, default=str))
