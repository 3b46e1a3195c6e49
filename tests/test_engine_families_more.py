"""Every family adapter in plugins/ that the CPU build of vLLM can run, served for real.

For each family a tiny random-weight model is built from a config (no downloads, see
`tiny_models.py`), served by vLLM (CPU build, torch.compile on) with one engine per family
(closed before the next starts), and every site the family has must be recorded, over every
prompt token, and match the independent transformers-hooks reference (`tests/reference.py`)
with the tolerance of test_engine_families.py: 4% relative plus 0.02 absolute (both sides run
bf16 with different kernels; see that file's docstring). A value outside that tolerance of the
bf16 reference must be within vLLM's CPU kernel drift of the float32 transformers forward
(`conftest.within_cpu_drift`).

The expected site set is the reference's default-kind sites, i.e. what the family's transformers code exposes:
embedding, residual / attn_out / mlp_out per layer, gate on layers with a dense MLP, router on
MoE layers, final_norm. So an adapter that misses a site, or invents one, fails.

Families the CPU build cannot run are listed in plugins/FAMILIES.md with the reason; they are
checked on GPU machines instead. Ling / Bailing-MoE has no transformers implementation (remote
code only), so it has no reference here.
"""

from __future__ import annotations

import random
import time

import pytest
from conftest import build_llm, close_llm, off_float32_reference, prompt_only, stats_by_site
from reference import reference_stats

import vllm_maxact
from vllm_maxact.api import collect
from vllm_maxact.export.arrow import table_from_payloads
from vllm_maxact.sites import OPTIONAL_KINDS, Kind, Site

pytestmark = pytest.mark.slow

RTOL, ATOL = 0.04, 0.02

#: tiny arch -> the adapter that must serve it (not the generic fallback). The first four were already built by tiny_models.py; the rest were added with their adapters.
FAMILIES = {
    "mistral": "llama",
    "qwen3_moe": "qwen3_moe",
    "mixtral": "mixtral",
    "gemma2": "gemma2",
    "gemma": "gemma",
    "phi3": "phi3",
    "olmo2": "olmo2",
    "deepseek_v2": "deepseek",
    "gpt_oss": "gpt_oss",
    "qwen3_next": "qwen3_next",
    "qwen3_5": "qwen3_next",  # Qwen3.5 layers subclass Qwen3-Next's (vLLM's qwen3_5.py)
    "qwen3_5_moe": "qwen3_next",
    "deepseek_v3": "deepseek",  # vLLM's deepseek_v2.py
    # Multimodal wrappers, served text-only (MULTIMODAL below): the adapters point at the text
    # backbone, `language_model.model`.
    "qwen2_5_vl": "qwen2_vl",
    "gemma3_mm": "gemma3_mm",
    "qwen3_5_mm": "qwen3_5_mm",  # Qwen3.5 as released (Qwen3_5ForConditionalGeneration)
    "qwen3_5_moe_mm": "qwen3_5_mm",
}

#: Archs whose vLLM model module needs torchvision (vLLM 0.26 and 0.32 alike): vLLM's
#: qwen3_5.py imports qwen3_vl.py (for the multimodal Qwen3.5 classes), which imports
#: transformers' Qwen2-VL image processor; vLLM's qwen2_5_vl.py imports it directly and
#: gemma3_mm.py imports transformers' Gemma 3 image processor; both image processors import
#: torchvision.transforms.v2 at module level. So vLLM's registry cannot even inspect these
#: architectures without torchvision ("Model architectures [...] failed to be inspected").
#: install.sh removes torchvision on CPU machines (the registry's wheels are CUDA builds; with
#: torch 2.13.0+cpu their import fails: "operator torchvision::nms does not exist"), so these
#: cases are skipped there and run wherever torchvision imports (GPU machines:
#: benchmarks/gpu_families.sh), or on CPU machines with the opt-in import stub
#: (MAXACT_TEST_TORCHVISION_STUB=1, tests/stubs/torchvision).
NEEDS_TORCHVISION = {"qwen3_5", "qwen3_5_moe", "qwen2_5_vl", "gemma3_mm", "qwen3_5_mm", "qwen3_5_moe_mm"}

#: Multimodal wrappers are served text-only: `language_model_only=True` (vLLM >= 0.26) sets every
#: modality's limit to 0, so vLLM builds no vision tower (`_mark_tower_model`) and needs no
#: multimodal processing; the wrapper class (the adapter's architecture) and its text backbone
#: are what runs. Prompts are token ids below the tiny models' multimodal token ids.
MULTIMODAL = {"qwen2_5_vl", "gemma3_mm", "qwen3_5_mm", "qwen3_5_moe_mm"}

#: Text-only Qwen3.5 (`Qwen3_5ForCausalLM`, `Qwen3_5MoeForCausalLM`) is a registered vLLM
#: architecture in 0.32 but not in 0.26, whose qwen3_5.py has the classes without the hybrid
#: (GDN state) and text-mrope interfaces the engine needs; released Qwen3.5 checkpoints are the
#: multimodal classes, which 0.26 serves (qwen3_5_mm, qwen3_5_moe_mm).
NEEDS_REGISTERED = {"qwen3_5": "Qwen3_5ForCausalLM", "qwen3_5_moe": "Qwen3_5MoeForCausalLM"}

#: Kinds each tiny model must show somewhere (beyond embedding/residual/attn/mlp/final_norm),
#: so the config really exercises the family's dense and MoE paths.
EXTRA_KINDS = {
    "qwen3_moe": {Kind.ROUTER},
    "mixtral": {Kind.ROUTER},
    "deepseek_v2": {Kind.GATE, Kind.ROUTER},  # layer 0 dense, layers 1.. MoE
    "gpt_oss": {Kind.ROUTER},
    "qwen3_next": {Kind.GATE, Kind.ROUTER},  # layer 0 dense, layers 1.. MoE
    "qwen3_5": {Kind.GATE},  # dense MLP on every layer
    "qwen3_5_moe": {Kind.ROUTER},  # MoE block on every layer
    "deepseek_v3": {Kind.GATE, Kind.ROUTER},  # layer 0 dense, layers 1.. MoE
    "qwen2_5_vl": {Kind.GATE},
    "gemma3_mm": {Kind.GATE},
    "qwen3_5_mm": {Kind.GATE},
    "qwen3_5_moe_mm": {Kind.ROUTER},
}


def close(a: float, b: float) -> bool:
    return abs(a - b) <= RTOL * abs(b) + ATOL


def compare(got: dict, ref: dict, names: set[str], model_dir: str, toks: list[list[int]], record_property) -> None:
    """Every site over every token, finite, and within tolerance of the reference.

    The bf16 reference rounds every op to bf16; over four layers with massive channels that can
    drift past 4% on a few maxima, while vLLM, which keeps fp32 where it fuses, stays nearer the
    exact value. So a value off the bf16 reference must be within vLLM's CPU kernel drift of the
    float32 transformers forward of the same weights (`conftest.within_cpu_drift`: the largest of
    this tolerance, 6% and twice the site's bf16-fp32 gap, at most 12%); a recording error (wrong
    site, missed padding mask, residual before the add) is far from both."""
    total = sum(len(t) for t in toks)
    off, worst = [], 0.0
    for name in sorted(names):
        g, r = got[name], ref[name]
        assert g["tokens"] == total, name
        assert g["nan_count"] == 0 and g["inf_count"] == 0, name
        for key in ("max", "min", "absmax"):
            rv = getattr(r, key)
            if not close(g[key], rv):
                off.append((name, key))
            if abs(rv) > 1.0:
                worst = max(worst, abs(g[key] - rv) / abs(rv))
    record_property("max_rel_dev", round(worst, 4))
    if off:
        bad = off_float32_reference(got, ref, off, model_dir, toks, RTOL, ATOL)
        record_property("fp32_checked", [f"{n}.{k}" for n, k in off])
        assert not bad, "\n".join(bad)


def token_lists(seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    # Varied lengths, so batches mix prefill chunks and the tail of the token axis is padding.
    return [[rng.randrange(3, 49000) for _ in range(n)] for n in (5, 37, 120, 301, 64)]


#: Dense routing (top-k = all experts) for the two older MoE tiny configs, which route top-2;
#: the MoE archs added with the adapters route densely by default (see tiny_models.py).
OVERRIDES = {
    "qwen3_moe": {"num_experts_per_tok": 8},
    "mixtral": {"num_experts_per_tok": 4},
}


#: Depth per arch where the default 4 layers make the random model ill-conditioned in bf16.
#: Gemma 2's four-layer tiny model (sandwich norms scaling massive channels by up to 324, no
#: q/k norm) is chaotic: the transformers forward in bf16 and in fp32 of the same weights
#: differ by up to 21% on some maxima (11% with 3 layers, 0.9% with 2; seeds 0-3 alike), so no
#: bf16 implementation can match either within 4%. Two layers still have every site kind.
LAYERS = {"gemma2": 2}

#: Engine dtype per arch where bf16 arithmetic on the tiny random model drifts past the
#: tolerance from both transformers references at one massive channel (not a recording error):
#: Qwen2.5-VL's layer-3 residual / mlp_out max 8% off in bf16 (H200 and CPU alike), within 3% as
#: float32; Gemma 3 multimodal's layer-3 mlp_out 22% off the bf16 reference on the CPU build,
#: within the float32 reference's tolerance as float32 (CPU, 2026-12-03). Overrides the dtype of
#: MAXACT_TEST_ENGINE_ARGS.
# Mixtral: compiled bf16, the tiny model's last layer (|mlp_out| ~ 500 from a 4-layer random net)
# lands 7% off transformers on one residual minimum (-494 vs -532; eager bf16 and compiled float32
# both agree with transformers), vLLM's compiled MoE arithmetic, not the recording: in float32 the
# same compiled engine and recorder match. bf16 MoE recording stays covered by qwen3_moe.
ENGINE_DTYPE = {"qwen2_5_vl": "float32", "gemma3_mm": "float32", "mixtral": "float32"}


@pytest.fixture(scope="module")
def family_model(tmp_path_factory, tokenizer_dir):
    from tiny_models import LAYERS as DEFAULT_LAYERS
    from tiny_models import make_tiny

    def get(arch: str) -> str:
        out = tmp_path_factory.mktemp(f"family-{arch}")
        return str(make_tiny(arch, out, tokenizer_dir=tokenizer_dir, overrides=OVERRIDES.get(arch),
                             layers=LAYERS.get(arch, DEFAULT_LAYERS)))

    return get


def skip_unservable(arch: str) -> None:
    """Skip, with the reason, an arch this vLLM build cannot serve (see NEEDS_TORCHVISION and
    NEEDS_REGISTERED)."""
    if arch in NEEDS_TORCHVISION:
        pytest.importorskip(
            "torchvision.transforms.v2",
            reason=f"needs torchvision: vLLM's {arch} model module imports transformers' image processor, "
            "which imports torchvision (removed on CPU machines; MAXACT_TEST_TORCHVISION_STUB=1 serves it "
            "text-only with an import stub)",
        )
    if arch in NEEDS_REGISTERED:
        import vllm
        from vllm import ModelRegistry

        if NEEDS_REGISTERED[arch] not in ModelRegistry.get_supported_archs():
            pytest.skip(f"vLLM {vllm.__version__} does not register {NEEDS_REGISTERED[arch]} (text-only "
                        "Qwen3.5; registered in vLLM 0.32); the multimodal Qwen3.5 cases cover the family")


@pytest.mark.parametrize("arch", list(FAMILIES))
def test_family_sites_match_transformers(arch, family_model, record_property):
    skip_unservable(arch)
    model_dir = family_model(arch)
    toks = token_lists()
    t0 = time.monotonic()
    kw = {"language_model_only": True} if arch in MULTIMODAL else {}
    if arch in ENGINE_DTYPE:
        kw["dtype"] = ENGINE_DTYPE[arch]
    llm = build_llm(model_dir, **kw)
    try:
        vllm_maxact.reset_stats(llm)
        prompt_only(llm, toks)
        payloads = collect(llm)
        got = stats_by_site(table_from_payloads(payloads))
    finally:
        close_llm(llm)
    record_property("engine_s", round(time.monotonic() - t0, 1))
    ref = reference_stats(model_dir, toks)

    assert {p["adapter"] for p in payloads} == {FAMILIES[arch]}
    # The engine records the default kinds; the reference also has the opt-in ones (linear
    # inputs, K/V), which test_engine_families.py checks on every hot path.
    expected = {s for s in ref if Site.parse(s).kind not in OPTIONAL_KINDS}
    kinds = {Site.parse(s).kind for s in expected}
    assert EXTRA_KINDS.get(arch, set()) <= kinds, f"tiny {arch} lacks {EXTRA_KINDS[arch] - kinds}"
    assert set(got) == expected, (
        f"missing {sorted(expected - set(got))}, unexpected {sorted(set(got) - expected)}"
    )
    compare(got, ref, expected, model_dir, toks, record_property)
    # Sites really differ (a mix-up could not pass): residual maxima differ layer by layer.
    layers = sorted({Site.parse(s).layer for s in expected if Site.parse(s).layer is not None})
    res = [got[Site(Kind.RESIDUAL, i).name]["absmax"] for i in layers]
    assert len({round(v, 3) for v in res}) == len(res)


def test_bailing_moe_records_every_site(family_model):
    """Ling / Bailing-MoE: no transformers implementation, so no reference. Every expected site
    is recorded over every token with finite values, the embedding site equals the embedding
    rows of the prompt tokens exactly, and the sites differ from each other."""
    from safetensors.torch import load_file

    model_dir = family_model("bailing_moe")
    toks = token_lists()
    llm = build_llm(model_dir, trust_remote_code=True)  # the config class is a local file
    try:
        vllm_maxact.reset_stats(llm)
        prompt_only(llm, toks)
        payloads = collect(llm)
        got = stats_by_site(table_from_payloads(payloads))
    finally:
        close_llm(llm)
    assert {p["adapter"] for p in payloads} == {"bailing_moe"}
    layers = range(4)
    expected = {"embedding", "final_norm", "layers.0.gate"} | {
        Site(k, i).name for i in layers for k in (Kind.RESIDUAL, Kind.ATTN_OUT, Kind.MLP_OUT)
    } | {Site(Kind.ROUTER, i).name for i in layers if i >= 1}  # first_k_dense_replace = 1
    assert set(got) == expected
    total = sum(len(t) for t in toks)
    for name, g in got.items():
        assert g["tokens"] == total and g["nan_count"] == 0 and g["inf_count"] == 0, name
    emb = load_file(f"{model_dir}/model.safetensors")["model.word_embeddings.weight"].float()
    rows = emb[[t for seq in toks for t in seq]]
    assert got["embedding"]["max"] == pytest.approx(float(rows.max()), abs=0)
    assert got["embedding"]["min"] == pytest.approx(float(rows.min()), abs=0)
    res = [got[Site(Kind.RESIDUAL, i).name]["absmax"] for i in layers]
    assert len(set(res)) == len(res) and res[-1] > 4 * res[0]  # massive channels grow with depth


def test_generic_fallback_on_a_served_model(tiny_factory, record_property):
    """An architecture no adapter claims still gets residual sites: tiny Llama served through
    vLLM's Transformers modeling backend (`TransformersForCausalLM`, model type llama, which
    the OLMo 2 adapter does not take) falls back to the generic adapter; its layers return one
    tensor (the residual stream), which must equal the transformers reference."""
    model_dir = tiny_factory("llama")
    toks = token_lists()
    llm = build_llm(model_dir, model_impl="transformers")
    try:
        vllm_maxact.reset_stats(llm)
        prompt_only(llm, toks)
        payloads = collect(llm)
        got = stats_by_site(table_from_payloads(payloads))
    finally:
        close_llm(llm)
    assert {p["adapter"] for p in payloads} == {"generic"}
    assert {p.get("architecture") for p in payloads} <= {"TransformersForCausalLM", None}
    ref = reference_stats(model_dir, toks)
    expected = {"final_norm"} | {Site(Kind.RESIDUAL, i).name for i in range(4)}
    assert set(got) == expected
    compare(got, ref, expected, model_dir, toks, record_property)
