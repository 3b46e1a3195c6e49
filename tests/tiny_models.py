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

ARCHS = (
    "llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "mixtral", "gemma2", "gemma3",
    # Added for the family adapters (tests/test_engine_families_more.py):
    "gemma", "phi3", "olmo2", "deepseek_v2", "gpt_oss", "qwen3_next",
    "qwen3_5", "qwen3_5_moe", "deepseek_v3",
    # Multimodal wrappers (text backbone + a small vision tower; see _MULTIMODAL):
    "qwen2_5_vl", "gemma3_mm", "qwen3_5_mm", "qwen3_5_moe_mm",
    "bailing_moe",  # no transformers class: config via local remote code, no reference model
)


#: Multimodal token ids of the tiny multimodal wrappers: the top of the 49152-token vocab, above
#: every id the tests prompt with, so text-only prompts never contain one.
_MM_TOKENS: dict[str, dict[str, int]] = {
    "qwen2_5_vl": {"vision_start_token_id": 49148, "vision_end_token_id": 49149, "image_token_id": 49150,
                   "video_token_id": 49151},
    "gemma3_mm": {"boi_token_index": 49149, "eoi_token_index": 49150, "image_token_index": 49151},
}

#: Processor files of the multimodal wrappers, written next to the checkpoint (what the real
#: checkpoints ship, sized for the tiny vision towers), so that transformers' processor classes
#: load from the folder where vLLM asks for them. The tests serve these models text-only
#: (vLLM's `language_model_only`), where the vision tower is not built.
_MM_FILES: dict[str, dict[str, dict[str, Any]]] = {
    "qwen2_5_vl": {
        "preprocessor_config.json": {
            "min_pixels": 3136, "max_pixels": 200704, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
            "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
            "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
        },
    },
    **{arch: {
        "preprocessor_config.json": {
            "size": {"longest_edge": 200704, "shortest_edge": 4096}, "patch_size": 16, "temporal_patch_size": 2,
            "merge_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
            "image_processor_type": "Qwen2VLImageProcessorFast", "processor_class": "Qwen3VLProcessor",
        },
    } for arch in ("qwen3_5_mm", "qwen3_5_moe_mm")},
    "gemma3_mm": {
        "preprocessor_config.json": {
            "do_convert_rgb": None, "do_normalize": True, "do_pan_and_scan": None, "do_rescale": True,
            "do_resize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
            "image_processor_type": "Gemma3ImageProcessor", "image_seq_length": 4,
            "processor_class": "Gemma3Processor", "resample": 2, "rescale_factor": 1 / 255,
            "size": {"height": 64, "width": 64},
        },
        "processor_config.json": {"image_seq_length": 4, "processor_class": "Gemma3Processor"},
    },
}


# Dense routing: the MoE models added for the family adapters route every token to every
# expert (top-k = number of experts): with top-2 of 8, a token whose router logits nearly tie is
# routed to different experts by vLLM (fused kernels, fp32 accumulation) and by transformers (bf16
# ops), and the layers after it then differ by several percent. That is a difference between
# two correct implementations, not a recording error, so the tiny models avoid it; the router
# site (the router Linear's logits) and the fused-MoE path are exercised all the same. The
# older qwen3_moe and mixtral configs keep top-2 (other tests use them); pass
# ``overrides={"num_experts_per_tok": ...}`` to make_tiny for dense routing.


def _qwen3_5_moe_text(common: dict[str, Any]) -> dict[str, Any]:
    """Qwen3.5-MoE text settings: a sparse MoE block with shared expert on every layer."""
    return dict(
        {k: v for k, v in common.items() if k != "intermediate_size"},
        num_experts=4,
        num_experts_per_tok=4,  # dense routing (see above _config)
        moe_intermediate_size=256,
        shared_expert_intermediate_size=256,
    )


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
    if arch == "gemma":
        return tf.GemmaConfig(**common, architectures=["GemmaForCausalLM"])
    if arch == "phi3":
        return tf.Phi3Config(**common, architectures=["Phi3ForCausalLM"])
    if arch == "olmo2":
        return tf.Olmo2Config(**common, architectures=["Olmo2ForCausalLM"])
    if arch == "deepseek_v2":
        # MLA: vLLM's CPU MLA backend needs the real latent size (kv_lora_rank 512 + rope 64).
        return tf.DeepseekV2Config(
            **{k: v for k, v in common.items() if k not in ("head_dim", "num_key_value_heads")},
            num_key_value_heads=HEADS,  # MLA: one latent KV, expanded per head
            kv_lora_rank=512,
            q_lora_rank=None,  # V2-Lite style: q_proj, no q LoRA
            qk_rope_head_dim=64,
            qk_nope_head_dim=64,
            v_head_dim=64,
            n_routed_experts=4,
            n_shared_experts=1,
            num_experts_per_tok=4,  # dense routing (see above _config)
            moe_intermediate_size=128,
            first_k_dense_replace=1,  # layer 0 dense (gate site), layers 1.. MoE (router site)
            topk_method="greedy",
            n_group=1,
            topk_group=1,
            norm_topk_prob=False,
            routed_scaling_factor=1.0,
            architectures=["DeepseekV2ForCausalLM"],
        )
    if arch == "gpt_oss":
        return tf.GptOssConfig(
            **common,
            num_local_experts=4,
            num_experts_per_tok=4,  # dense routing (see above _config)
            sliding_window=128,
            layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)],
            # vLLM's gpt-oss always builds YaRN rope; keep factor x original = max positions.
            rope_parameters={
                "rope_type": "yarn",
                "rope_theta": 150000.0,
                "factor": 2.0,
                "original_max_position_embeddings": MAX_POS // 2,
                "beta_fast": 32.0,
                "beta_slow": 1.0,
                "truncate": False,
            },
            architectures=["GptOssForCausalLM"],
        )
    if arch == "qwen3_next":
        return tf.Qwen3NextConfig(
            **common,
            linear_conv_kernel_dim=4,
            linear_key_head_dim=64,
            linear_value_head_dim=64,
            linear_num_key_heads=2,
            linear_num_value_heads=4,
            # Three linear-attention layers, then one full-attention layer (as the real model).
            layer_types=["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(layers)],
            num_experts=4,
            num_experts_per_tok=4,  # dense routing (see above _config)
            moe_intermediate_size=256,
            shared_expert_intermediate_size=256,
            decoder_sparse_step=1,
            mlp_only_layers=[0],  # layer 0 dense (gate site), the others MoE (router site)
            norm_topk_prob=True,
            architectures=["Qwen3NextForCausalLM"],
        )
    if arch in ("qwen3_5", "qwen3_5_moe"):
        # Qwen3.5 text models: Qwen3-Next's hybrid layout (three Gated DeltaNet layers, then one
        # full-attention layer), with the DeltaNet input projections unfused in the checkpoint
        # (in_proj_qkv / in_proj_z / in_proj_b / in_proj_a; vLLM fuses them on load) and partial
        # rope (a quarter of head_dim). Dense Qwen3.5 has a dense MLP on every layer (gate
        # site), Qwen3.5-MoE a sparse MoE block with shared expert on every layer (router site).
        linear = dict(
            linear_conv_kernel_dim=4,
            linear_key_head_dim=64,
            linear_value_head_dim=64,
            linear_num_key_heads=2,
            linear_num_value_heads=4,
            layer_types=["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(layers)],
        )
        if arch == "qwen3_5":
            return tf.Qwen3_5TextConfig(**common, **linear, architectures=["Qwen3_5ForCausalLM"])
        return tf.Qwen3_5MoeTextConfig(**_qwen3_5_moe_text(common), **linear, architectures=["Qwen3_5MoeForCausalLM"])
    if arch in ("qwen3_5_mm", "qwen3_5_moe_mm"):
        # Qwen3.5 / Qwen3.5-MoE as released (`*ForConditionalGeneration`): the text models above
        # with interleaved multimodal rope (mrope_section splits the 8 rotary frequencies of the
        # partial rope; positions coincide for text), plus a small vision tower (2 blocks,
        # 16x16 patches, 8x8 position grid) merging 2x2 patches into the text width.
        text = dict(
            common if arch == "qwen3_5_mm" else _qwen3_5_moe_text(common),
            layer_types=["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(layers)],
            linear_conv_kernel_dim=4, linear_key_head_dim=64, linear_value_head_dim=64,
            linear_num_key_heads=2, linear_num_value_heads=4,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25,
                             "mrope_section": [3, 3, 2], "mrope_interleaved": True},
        )
        cls, name = ((tf.Qwen3_5Config, "Qwen3_5ForConditionalGeneration") if arch == "qwen3_5_mm"
                     else (tf.Qwen3_5MoeConfig, "Qwen3_5MoeForConditionalGeneration"))
        return cls(
            text_config=text,
            vision_config=dict(depth=2, hidden_size=128, intermediate_size=256, num_heads=2, out_hidden_size=HIDDEN,
                               patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64),
            **_MM_TOKENS["qwen2_5_vl"],
            tie_word_embeddings=True,
            architectures=[name],
        )
    if arch == "deepseek_v3":
        # DeepSeek V3 layout: MLA with q LoRA, sigmoid scores with `noaux_tc` top-k (the
        # e_score_correction_bias, randomized in _randomize, is added for selection only),
        # grouped top-k over n_group expert groups, normalized top-k weights x
        # routed_scaling_factor. vLLM's CPU MLA backend needs kv_lora_rank 512 + rope 64 (as
        # deepseek_v2). Dense routing: top-k = all experts and topk_group = n_group, so the
        # group mask keeps every expert and both sides route identically.
        return tf.DeepseekV3Config(
            **{k: v for k, v in common.items() if k not in ("head_dim", "num_key_value_heads")},
            num_key_value_heads=HEADS,
            kv_lora_rank=512,
            q_lora_rank=128,
            qk_rope_head_dim=64,
            qk_nope_head_dim=64,
            v_head_dim=64,
            n_routed_experts=4,
            n_shared_experts=1,
            num_experts_per_tok=4,  # dense routing (see above _config)
            n_group=2,
            topk_group=2,
            topk_method="noaux_tc",  # read by vLLM (real V3 configs carry it; transformers implies it)
            scoring_func="sigmoid",
            moe_intermediate_size=128,
            first_k_dense_replace=1,  # layer 0 dense (gate site), layers 1.. MoE (router site)
            norm_topk_prob=True,
            routed_scaling_factor=2.5,
            architectures=["DeepseekV3ForCausalLM"],
        )
    if arch == "qwen2_5_vl":
        # Qwen2.5-VL: a Qwen2 text backbone (multimodal rope: mrope_section splits head_dim / 2
        # over temporal / height / width positions, which coincide for text) and a small
        # windowed ViT (2 blocks, the second with full attention) merging 2x2 patches into the
        # text width. The vision token ids sit at the top of the vocab, above every prompt id.
        text = dict(common, use_sliding_window=False,
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12]})
        return tf.Qwen2_5_VLConfig(
            text_config=text,
            vision_config=dict(depth=2, hidden_size=128, intermediate_size=256, num_heads=2, out_hidden_size=HIDDEN,
                               patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                               fullatt_block_indexes=[1]),
            **_MM_TOKENS["qwen2_5_vl"],
            tie_word_embeddings=True,
            architectures=["Qwen2_5_VLForConditionalGeneration"],
        )
    if arch == "gemma3_mm":
        # Gemma 3 multimodal: the tiny Gemma 3 text model above plus a one-layer SigLIP tower
        # (64x64 images, 16x16 patches: 4x4 patches pooled to mm_tokens_per_image = 4).
        text = dict(common, query_pre_attn_scalar=HEAD_DIM, sliding_window=128,
                    layer_types=["sliding_attention" if (i + 1) % 4 else "full_attention" for i in range(layers)])
        return tf.Gemma3Config(
            text_config=text,
            vision_config=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=1, num_attention_heads=2,
                               image_size=64, patch_size=16, vision_use_head=False),
            mm_tokens_per_image=4,
            **_MM_TOKENS["gemma3_mm"],
            tie_word_embeddings=True,
            architectures=["Gemma3ForConditionalGeneration"],
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
        "gemma": tf.GemmaForCausalLM,
        "phi3": tf.Phi3ForCausalLM,
        "olmo2": tf.Olmo2ForCausalLM,
        "deepseek_v2": tf.DeepseekV2ForCausalLM,
        "gpt_oss": tf.GptOssForCausalLM,
        "qwen3_next": tf.Qwen3NextForCausalLM,
        "qwen3_5": tf.Qwen3_5ForCausalLM,
        "qwen3_5_moe": tf.Qwen3_5MoeForCausalLM,
        "deepseek_v3": tf.DeepseekV3ForCausalLM,
        "qwen2_5_vl": tf.Qwen2_5_VLForConditionalGeneration,
        "gemma3_mm": tf.Gemma3ForConditionalGeneration,
        "qwen3_5_mm": tf.Qwen3_5ForConditionalGeneration,
        "qwen3_5_moe_mm": tf.Qwen3_5MoeForConditionalGeneration,
    }[arch]


@torch.no_grad()
def _randomize(model: nn.Module, arch: str, gen: torch.Generator) -> None:
    """Varied, realistic-scale weights (transformers' 0.02 init gives tiny, uniform activations)."""
    gemma = arch.startswith("gemma")  # Gemma norms scale by (1 + w)
    # Qwen3-Next's and Qwen3.5's RMSNorms also scale by (1 + w), except the gated norm inside
    # linear attention.
    zero_centered = gemma or arch.startswith(("qwen3_next", "qwen3_5"))

    def normal(p: torch.Tensor, std: float, mean: float = 0.0) -> None:
        p.copy_(torch.randn(p.shape, generator=gen) * std + mean)

    for name, p in model.named_parameters():
        if "embed_tokens" in name:
            normal(p, 0.5 if not gemma else 0.05)  # Gemma multiplies by sqrt(hidden) = 16
        elif "norm" in name:
            centered = zero_centered and "linear_attn.norm" not in name
            normal(p, 0.25, 0.0 if centered else 1.0)
        elif name.endswith("A_log"):  # linear attention's decay: keep it a decay
            normal(p, 0.5)
        elif name.endswith("dt_bias"):
            normal(p, 0.5)
        elif name.endswith("bias"):
            normal(p, 0.1)
        elif p.dim() >= 2:
            fan_in = p.shape[-1]
            normal(p, 1.5 / math.sqrt(fan_in))  # std 0.07-0.1 here: activations grow a little
        else:
            normal(p, 0.1)
    for name, b in model.named_buffers():
        if name.endswith("e_score_correction_bias"):  # DeepSeek V3: a buffer, zeros by default
            normal(b, 0.1)
    # DeepSeek V3 multiplies the routed experts' output by routed_scaling_factor (2.5): divide
    # their down projections by it, so the MoE output keeps the other tiny models' scale (a
    # recorder or model that dropped the factor would still be 2.5x off). Undivided, the
    # residual reaches ~1100 by layer 3 and the model is ill-conditioned in bf16: transformers'
    # own bf16 and fp32 forwards differ by 19% on a layer-3 maximum, vLLM by 5% on a layer-2 one.
    scale = getattr(model.config, "routed_scaling_factor", 1.0) or 1.0
    if scale != 1.0:
        for name, p in model.named_parameters():
            if ".experts." in name and "down_proj" in name:
                p /= scale

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
        attn = getattr(layer, "self_attn", None) or getattr(layer, "linear_attn", None)
        out_proj = getattr(attn, "o_proj", None) or getattr(attn, "out_proj", None)
        out_proj.weight *= 1.0 + i
        for sub in ("gate_proj", "gate", "router"):
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
                    if "down_proj" in pname and "bias" in pname:
                        continue
                    if "down_proj" in pname or pname.endswith("w2.weight"):
                        if p.dim() == 3 and arch == "gpt_oss":  # gpt-oss: (E, intermediate, hidden)
                            p[:, :, c] *= boost
                        elif p.dim() == 3:  # fused experts (E, hidden, intermediate)
                            p[:, c, :] *= boost
                        else:
                            p[c, :] *= boost
            post_ff = getattr(layer, "post_feedforward_layernorm", None)
            if gemma and post_ff is not None:
                post_ff.weight[c] = boost * 4.0


# -- families transformers does not implement (remote code only) ----------------------------

#: A local `trust_remote_code` config class for Ling / Bailing-MoE (no download: the file is
#: written next to config.json and named in its auto_map).
_BAILING_CONFIG_PY = '''
from transformers import PretrainedConfig


class BailingMoeConfig(PretrainedConfig):
    model_type = "bailing_moe"

    def __init__(self, **kwargs):
        defaults = dict(
            vocab_size=49152, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, head_dim=64, hidden_act="silu",
            use_qkv_bias=False, use_bias=False, use_qk_norm=False, rms_norm_eps=1e-6,
            max_position_embeddings=2048, embedding_dropout=0.0, num_experts=4,
            num_shared_experts=1, num_experts_per_tok=4, norm_topk_prob=True,
            moe_intermediate_size=256, first_k_dense_replace=1, norm_head=False,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        )
        for key, value in defaults.items():
            setattr(self, key, kwargs.pop(key, value))
        super().__init__(**kwargs)
'''


def _make_bailing_moe(out_dir: Path, layers: int, gen: torch.Generator) -> None:
    """Ling / Bailing-MoE: config + remote-code config class + checkpoint in its own names.

    Layer 0 is dense (``first_k_dense_replace=1``: gate site), layers 1.. are MoE with a shared
    expert (router site), routing densely like the other tiny MoE models. Same weight recipe as
    `_randomize`: realistic scales, massive channels growing with depth.
    """
    from safetensors.torch import save_file

    (out_dir / "configuration_bailing_moe.py").write_text(_BAILING_CONFIG_PY.lstrip())
    config = {
        "architectures": ["BailingMoeForCausalLM"],
        "model_type": "bailing_moe",
        "auto_map": {"AutoConfig": "configuration_bailing_moe.BailingMoeConfig"},
        "vocab_size": VOCAB, "hidden_size": HIDDEN, "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": layers, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM, "max_position_embeddings": MAX_POS, "tie_word_embeddings": True,
        "num_experts": 4, "num_shared_experts": 1, "num_experts_per_tok": 4, "norm_topk_prob": True,
        "moe_intermediate_size": 256, "first_k_dense_replace": 1, "torch_dtype": "bfloat16",
        **SPECIAL,
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=1) + "\n")

    def normal(shape: tuple[int, ...], std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(shape, generator=gen) * std + mean

    def linear(out_f: int, in_f: int, scale: float = 1.0) -> torch.Tensor:
        return normal((out_f, in_f), 1.5 / math.sqrt(in_f)) * scale

    def mlp(prefix: str, inter: int, boost: float) -> dict[str, torch.Tensor]:
        down = linear(HIDDEN, inter)
        for c in MASSIVE_CHANNELS:
            down[c, :] *= boost
        return {f"{prefix}.gate_proj.weight": linear(inter, HIDDEN), f"{prefix}.up_proj.weight": linear(inter, HIDDEN),
                f"{prefix}.down_proj.weight": down}

    qkv = (HEADS + 2 * KV_HEADS) * HEAD_DIM
    w = {"model.word_embeddings.weight": normal((VOCAB, HIDDEN), 0.5), "model.norm.weight": normal((HIDDEN,), 0.25, 1.0)}
    for i in range(layers):
        pre = f"model.layers.{i}"
        boost = MASSIVE_GROWTH ** (i + 1)
        w[f"{pre}.input_layernorm.weight"] = normal((HIDDEN,), 0.25, 1.0)
        w[f"{pre}.post_attention_layernorm.weight"] = normal((HIDDEN,), 0.25, 1.0)
        w[f"{pre}.attention.query_key_value.weight"] = linear(qkv, HIDDEN)
        w[f"{pre}.attention.dense.weight"] = linear(HIDDEN, HEADS * HEAD_DIM, 1.0 + i)
        if i < config["first_k_dense_replace"]:
            w.update(mlp(f"{pre}.mlp", INTERMEDIATE, boost))
        else:
            w[f"{pre}.mlp.gate.weight"] = linear(config["num_experts"], HIDDEN, 1.0 + 0.5 * i)
            for e in range(config["num_experts"]):
                w.update(mlp(f"{pre}.mlp.experts.{e}", config["moe_intermediate_size"], boost))
            w.update(mlp(f"{pre}.mlp.shared_experts", config["moe_intermediate_size"], 1.0))
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in w.items()}, str(out_dir / "model.safetensors"),
              metadata={"format": "pt"})


_REMOTE_CODE_ARCHS = {"bailing_moe": _make_bailing_moe}


def _find(model: nn.Module, attr: str) -> Any:
    """The first module with an `attr` ModuleList, preferring one with a token embedding (the
    text decoder, not a multimodal model's vision encoder, which may come first)."""
    found = [m for _, m in model.named_modules() if isinstance(getattr(m, attr, None), nn.ModuleList)]
    for m in found:
        if isinstance(getattr(m, "embed_tokens", None), nn.Module):
            return m
    if found:
        return found[0]
    raise ValueError(f"no module with {attr}")


def make_tiny(
    arch: str,
    out_dir: Path,
    *,
    tokenizer_dir: Path | str | None = None,
    seed: int = 0,
    layers: int = LAYERS,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """Build, randomize and save a tiny `arch` model as bf16 safetensors into `out_dir`.

    `overrides` sets config attributes after the arch's defaults (e.g. ``num_experts_per_tok``
    for dense routing, see the note above `_config`)."""
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    if arch in _REMOTE_CODE_ARCHS:
        if overrides:
            raise ValueError(f"{arch}: overrides are not supported for remote-code tiny models")
        _REMOTE_CODE_ARCHS[arch](out_dir, layers, torch.Generator().manual_seed(seed))
    else:
        config = _config(arch, layers)
        for key, value in (overrides or {}).items():
            setattr(config, key, value)
        model = _model_class(arch)(config)
        _randomize(model, arch, torch.Generator().manual_seed(seed))
        model.to(torch.bfloat16).eval()
        model.save_pretrained(str(out_dir))
        for name, content in _MM_FILES.get(arch, {}).items():
            (out_dir / name).write_text(json.dumps(content, indent=1) + "\n")
    if tokenizer_dir is not None:
        copied = [
            shutil.copy2(Path(tokenizer_dir) / f, out_dir / f)
            for f in _TOKENIZER_FILES
            if (Path(tokenizer_dir) / f).is_file()
        ]
        if not copied:
            raise FileNotFoundError(f"no tokenizer files in {tokenizer_dir}")
    (out_dir / "tiny_model.json").write_text(
        json.dumps({"arch": arch, "seed": seed, "layers": layers, "overrides": overrides or {}}) + "\n"
    )
    return out_dir
