"""One typed configuration object, read from environment variables and/or a file.

Every field can be set as ``VLLM_MAXACT_<FIELD>`` (upper case) or in a TOML/JSON file named by
``VLLM_MAXACT_CONFIG``; environment variables win over the file. The object is validated once,
at plugin start, and a bad value fails with an error that names the field.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import tomllib
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from vllm_maxact.sites import KIND_ORDER, OPTIONAL_KINDS, Kind

ENV_PREFIX = "VLLM_MAXACT_"
#: Longest publish / snapshot interval: a day (threads wait on it; inf would kill them).
MAX_INTERVAL_S = 86400.0
#: Every kind but the opt-in ones (linear inputs with their channels, KV-cache keys and values).
DEFAULT_KINDS = tuple(k for k in KIND_ORDER if k not in OPTIONAL_KINDS)


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the source."""


class MaxActConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    enable: bool = Field(True, description="Master switch: 0 leaves vLLM untouched.")
    kinds: Annotated[tuple[Kind, ...], NoDecode] = Field(
        DEFAULT_KINDS, description="Site kinds to record, comma separated (e.g. 'residual,attn_out'); add "
        "attn_in,mlp_in,o_in,down_in for per-channel input maxima of every quantized linear layer (SmoothQuant, "
        "static activation scales) and k,v for the KV cache."
    )
    layers: str | None = Field(
        None, description="Restrict per-layer sites to these layers: '0-3,10' (default: all)."
    )
    publish_interval_s: float = Field(
        2.0, gt=0, le=MAX_INTERVAL_S, allow_inf_nan=False,
        description="How often the worker copies device statistics to the host."
    )
    async_collect: bool = Field(
        True, description="Queue the periodic copy to the host behind the step instead of waiting for "
        "the device (published a step or so later); false: wait, as the API's reads always do."
    )
    window_s: float = Field(
        60.0, gt=0, allow_inf_nan=False, description="Length of the 'recent' window for window maxima."
    )
    snapshot_dir: Path | None = Field(None, description="Directory for periodic Arrow snapshots.")
    snapshot_interval_s: float = Field(
        60.0, gt=0, le=MAX_INTERVAL_S, allow_inf_nan=False, description="Seconds between periodic snapshots."
    )
    snapshot_retain: int = Field(100, ge=1, description="Keep at most this many snapshots per model.")
    runtime_dir: Path | None = Field(
        None, description="Where workers publish statistics for the API server (default: a temp dir)."
    )
    exporter_host: str = Field("127.0.0.1", description="Standalone exporter bind address.")
    exporter_port: int | None = Field(
        None, ge=0, le=65535, description="Start the standalone exporter on this port (offline use)."
    )
    int8_check: bool = Field(
        False, description="Trace the on-device INT-8 reconstruction check (replay --int8-check sets it)."
    )
    calibration: Path | None = Field(
        None, description="Calibration scales (JSON from `vllm-maxact scales`) for live INT-8 drift."
    )
    hot_path: Literal["auto", "cpu_op", "triton", "in_kernel"] = Field(
        "auto",
        description="How sites are folded in the forward (vllm_maxact.hotpath): 'auto' = cpu_op on CPU, "
        "triton on CUDA; both leave the served outputs bit for bit unchanged. 'in_kernel' (CUDA, opt-in) "
        "records vLLM's Llama-layout sites inside Triton copies of the model's norm and SiLU-and-mul: no "
        "extra kernel, but it rounds differently, so the served logprobs CHANGE.",
    )
    admin_token: str | None = Field(
        None, min_length=16, description="Lets callers outside the instance's own process (vLLM's dev-mode "
        "/collective_rpc) run the state-changing worker methods (maxact_reset, maxact_int8): they pass it as "
        "kwargs token. Unset: only the process that started the instance can.",
    )

    @field_validator("kinds", mode="before")
    @classmethod
    def _split_kinds(cls, value: Any) -> Any:
        return parse_kinds(value)

    @field_validator("layers")
    @classmethod
    def _check_layers(cls, value: str | None) -> str | None:
        if value is not None:
            parse_layer_spec(value)
        return value

    def layer_set(self) -> set[int] | None:
        return None if self.layers is None else parse_layer_spec(self.layers)

    def signature(self) -> str:
        """What changes the traced graph; mixed into vLLM's compile-cache key."""
        return json.dumps(
            {"kinds": [k.value for k in self.kinds], "layers": self.layers, "int8": self.int8_enabled,
             "hot_path": self.hot_path},
            sort_keys=True,
        )

    @property
    def int8_enabled(self) -> bool:
        return self.int8_check or self.calibration is not None


def parse_kinds(value: str | Any) -> tuple[Kind, ...]:
    """Site kinds from ``'residual,attn_out'`` or a sequence; ValueError names an unknown one."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    known = {k.value for k in Kind}
    for v in value:
        if str(getattr(v, "value", v)) not in known:
            raise ValueError(f"unknown site kind {v!r}; choose from {sorted(known)}")
    return tuple(Kind(getattr(v, "value", v)) for v in value)


def parse_layer_spec(spec: str) -> set[int]:
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = (int(p) for p in part.split("-", 1))
                if lo > hi:
                    raise ValueError
                out.update(range(lo, hi + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise ValueError(f"bad layer range {part!r}; expected e.g. '0-3,10'") from None
    return out


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{ENV_PREFIX}CONFIG={path}: cannot read the config file ({e})") from e
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{ENV_PREFIX}CONFIG={path}: not valid {path.suffix or 'TOML'} ({e})") from e
    # Accept either a flat table or one under [vllm_maxact].
    return dict(data.get("vllm_maxact", data))


def load_config(**overrides: Any) -> MaxActConfig:
    """Build the configuration from the file (if any), the environment and ``overrides``."""
    file_values: dict[str, Any] = {}
    if path := os.environ.get(f"{ENV_PREFIX}CONFIG"):
        file_values = _read_file(Path(path))
    # Environment variables must win over the file: drop file keys that the env sets.
    env_set = {k[len(ENV_PREFIX) :].lower() for k in os.environ if k.startswith(ENV_PREFIX)}
    init = {k: v for k, v in file_values.items() if k not in env_set}
    init.update(overrides)
    try:
        return MaxActConfig(**init)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            field = ".".join(str(p) for p in err["loc"]) or "?"
            problems.append(f"{ENV_PREFIX}{field.upper()} ({field}): {err['msg']}")
        raise ConfigError("invalid vllm-maxact configuration: " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_config() -> MaxActConfig:
    """The process-wide configuration, validated once."""
    return load_config()


#: The key of vLLM's ``additional_config`` that carries settings for one engine.
ENGINE_KEY = "vllm_maxact"


def engine_settings(vllm_config) -> dict:
    """Settings given to one engine (``LLM(..., additional_config={"vllm_maxact": {...}})``, or
    ``--additional-config`` on ``vllm serve``): vLLM hands its config to every worker (local
    processes, Ray actors on other nodes), so this is how `vllm-maxact replay` passes its
    choices (sites, the INT-8 check) to the workers, rather than through the environment."""
    extra = getattr(vllm_config, "additional_config", None) if vllm_config is not None else None
    settings = extra.get(ENGINE_KEY) if isinstance(extra, dict) else None
    return dict(settings) if isinstance(settings, dict) else {}


def engine_config(vllm_config=None) -> MaxActConfig:
    """The configuration for an engine being built now: the file and the environment as they
    are at this moment (so that ``VLLM_MAXACT_ENABLE`` set around one engine of a process applies
    to that engine), then the engine's own settings (`engine_settings`) over them."""
    try:
        return load_config(**engine_settings(vllm_config))
    except Exception:  # noqa: BLE001  (validated at start; a later bad edit keeps the start's values)
        if engine_settings(vllm_config):
            raise  # the engine's own settings are wrong: say so, rather than run without them
        return get_config()
