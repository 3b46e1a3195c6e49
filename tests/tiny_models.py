"""Tiny random-weight models for tests, built from configs (no downloads).

The weights are random but shaped to give varied, realistic activations: a larger init std
than transformers' 0.02, random norm weights, and a few "massive" residual channels that grow
layer by layer into the hundreds or thousands, as in trained models. Every site therefore has
its own, clearly different maximum, so a recorder that mixes sites up (or reads the wrong
tensor) fails the comparison with the reference.

    make_tiny("llama", tmp / "llama", tokenizer_dir=smollm2_folder)

`tokenizer_dir` (optional) is a folder whose tokenizer files are copied in, so vLLM and replay
can tokenize text; the vocab is 49152 to match the SmolLM2 tokenizer. Without it the folder has
no tokenizer (fine for transformers-only tests or vLLM with `skip_tokenizer_init=True`).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

VOCAB = 49152  # SmolLM2's tokenizer
HIDDEN = 256
INTERMEDIATE = 512
HEADS = 4
KV_HEADS = 2
HEAD_DIM = 64  # vLLM's CPU attention rejects head_dim 16
LAYERS = 4
MAX_POS = 2048
SPECIAL = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}  # SmolLM2's ids

#: Residual channels made massive, and the per-layer growth of their boost.
MASSIVE_CHANNELS = (7, 101)
MASSIVE_GROWTH = 3.0

# Files that make up a Hugging Face tokenizer folder.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)

ARCHS = ("llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "mixtral", "gemma2", "gemma3")


def _config(arch: str, layers: int) -> Any:
    import transformers as tf

    common: dict[str, Any] = dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        max_position_embeddings=MAX_POS,
        tie_word_embeddings=True,  # halves the file: the 49152-row embedding dominates it
        **SPECIAL,
    )
    if arch == "llama":
        return tf.LlamaConfig(**common, architectures=["LlamaForCausalLM"])
    if arch == "mistral":
        return tf.MistralConfig(**common, sliding_window=None, architectures=["MistralForCausalLM"])
    if arch == "qwen2":
        return tf.Qwen2Config(**common, use_sliding_window=False, architectures=["Qwen2ForCausalLM"])
    if arch == "qwen3":
        return tf.Qwen3Config(**common, use_sliding_window=False, architectures=["Qwen3ForCausalLM"])
    if arch == "qwen3_moe":
        return tf.Qwen3MoeConfig(
            **common,
            num_experts=8,
            num_experts_per_tok=2,
            moe_intermediate_size=256,
            decoder_sparse_step=1,
            norm_topk_prob=True,
            architectures=["Qwen3MoeForCausalLM"],
        )
    if arch == "mixtral":
        return tf.MixtralConfig(
            **common, num_local_experts=4, num_experts_per_tok=2, architectures=["MixtralForCausalLM"]
        )
    if arch == "gemma2":
        return tf.Gemma2Config(
            **common,
            query_pre_attn_scalar=HEAD_DIM,
            sliding_window=128,
            architectures=["Gemma2ForCausalLM"],
        )
    if arch == "gemma3":
        # Text-only Gemma 3: vLLM's registry maps "Gemma3ForCausalLM" to its gemma3 text model.
        return tf.Gemma3TextConfig(
            **common,
            query_pre_attn_scalar=HEAD_DIM,
            sliding_window=128,
            layer_types=["sliding_attention" if (i + 1) % 4 else "full_attention" for i in range(layers)],
            architectures=["Gemma3ForCausalLM"],
        )
    raise ValueError(f"unknown tiny arch {arch!r}; known: {', '.join(ARCHS)}")


def _model_class(arch: str) -> type[nn.Module]:
    import transformers as tf

    return {
        "llama": tf.LlamaForCausalLM,
        "mistral": tf.MistralForCausalLM,
        "qwen2": tf.Qwen2ForCausalLM,
        "qwen3": tf.Qwen3ForCausalLM,
        "qwen3_moe": tf.Qwen3MoeForCausalLM,
        "mixtral": tf.MixtralForCausalLM,
        "gemma2": tf.Gemma2ForCausalLM,
        "gemma3": tf.Gemma3ForCausalLM,
    }[arch]


@torch.no_grad()
def _randomize(model: nn.Module, arch: str, gen: torch.Generator) -> None:
    """Varied, realistic-scale weights (transformers' 0.02 init gives tiny, uniform activations)."""
    gemma = arch.startswith("gemma")  # Gemma norms scale by (1 + w)

    def normal(p: torch.Tensor, std: float, mean: float = 0.0) -> None:
        p.copy_(torch.randn(p.shape, generator=gen) * std + mean)

    for name, p in model.named_parameters():
        if "embed_tokens" in name:
            normal(p, 0.5 if not gemma else 0.05)  # Gemma multiplies by sqrt(hidden) = 16
        elif "norm" in name:
            normal(p, 0.25, 0.0 if gemma else 1.0)
        elif name.endswith("bias"):
            normal(p, 0.1)
        elif p.dim() >= 2:
            fan_in = p.shape[-1]
            normal(p, 1.5 / math.sqrt(fan_in))  # std 0.07-0.1 here: activations grow a little
        else:
            normal(p, 0.1)

    # Massive activations: a few residual channels get a boost that grows with depth, through
    # the MLP's down projection (and, for Gemma, the post-feedforward norm that scales what the
    # MLP adds to the residual).
    base = _find(model, "layers")
    for i, layer in enumerate(base.layers):
        boost = MASSIVE_GROWTH ** (i + 1)
        mlp = getattr(layer, "mlp", None)
        if mlp is None:
            mlp = getattr(layer, "block_sparse_moe", None)
        # Per-layer scales, so attention, gate and router maxima also differ between layers
        # (a recorder that swaps layers must fail too, not only one that swaps kinds).
        layer.self_attn.o_proj.weight *= 1.0 + i
        for sub in ("gate_proj", "gate"):
            lin = getattr(mlp, sub, None)
            if lin is not None and getattr(lin, "weight", None) is not None:
                lin.weight *= 1.0 + 0.5 * i
        for c in MASSIVE_CHANNELS:
            down = getattr(mlp, "down_proj", None)
            if isinstance(down, nn.Linear):
                down.weight[c, :] *= boost
            experts = getattr(mlp, "experts", None)
            if experts is not None:
                for pname, p in experts.named_parameters():
                    if "down_proj" in pname or pname.endswith("w2.weight"):
                        if p.dim() == 3:  # fused experts (E, hidden, intermediate)
                            p[:, c, :] *= boost
                        else:
                            p[c, :] *= boost
            post_ff = getattr(layer, "post_feedforward_layernorm", None)
            if gemma and post_ff is not None:
                post_ff.weight[c] = boost * 4.0


def _find(model: nn.Module, attr: str) -> Any:
    for _, m in model.named_modules():
        if isinstance(getattr(m, attr, None), nn.ModuleList):
            return m
    raise ValueError(f"no module with {attr}")


def make_tiny(
    arch: str,
    out_dir: Path,
    *,
    tokenizer_dir: Path | str | None = None,
    seed: int = 0,
    layers: int = LAYERS,
) -> Path:
    """Build, randomize and save a tiny `arch` model as bf16 safetensors into `out_dir`."""
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    config = _config(arch, layers)
    model = _model_class(arch)(config)
    _randomize(model, arch, torch.Generator().manual_seed(seed))
    model.to(torch.bfloat16).eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    if tokenizer_dir is not None:
        copied = [
            shutil.copy2(Path(tokenizer_dir) / f, out_dir / f)
            for f in _TOKENIZER_FILES
            if (Path(tokenizer_dir) / f).is_file()
        ]
        if not copied:
            raise FileNotFoundError(f"no tokenizer files in {tokenizer_dir}")
    (out_dir / "tiny_model.json").write_text(
        json.dumps({"arch": arch, "seed": seed, "layers": layers}) + "\n"
    )
    return out_dir
