"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: ViT with a patch merger (the aligner) and a Qwen LLM with 3-D mRoPE."""

from __future__ import annotations

from pathlib import Path

import torch

from .family import Family, chat_template_file
from .text import DECODER_LORA
from .tiny import QWEN2_VL_TEMPLATE, QWEN_SPECIAL, build_qwen2_5_vl, qwen_tokenizer, save_tiny, text_config

def dummy_image(owner: torch.nn.Module, like: torch.Tensor) -> dict:
    """``get_image_features`` kwargs for one image of zero patches: the smallest grid the merger takes."""
    cfg = owner.visual.config
    merge = cfg.spatial_merge_size
    width = cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size ** 2
    return {"pixel_values": torch.zeros(merge * merge, width, device=like.device, dtype=owner.visual.dtype),
            "image_grid_thw": torch.tensor([[1, merge, merge]], device=like.device)}


_COMMON = dict(
    dummy_image=dummy_image,
    auto_class="AutoModelForImageTextToText",
    vision=("model.visual",),
    aligner=("model.visual.merger",),
    llm=("model.language_model",),
    lora_targets=DECODER_LORA,
    end_of_turn="<|im_end|>",
)
_PIXELS = dict(min_pixels=28 * 28, max_pixels=28 * 28 * 16)


def _vision_ids(tok) -> dict:
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    return dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])


def build_qwen2_vl(out: str | Path) -> None:
    """Tiny Qwen2-VL: 2-block ViT (embed 32) with merger, 2-layer LLM with mRoPE, real processor + template."""
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor,
                              Qwen2VLProcessor, Qwen2VLVideoProcessor)

    tok = qwen_tokenizer(QWEN2_VL_TEMPLATE)
    text = text_config(tok, rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3],
                                              "rope_theta": 10000.0})
    vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2)
    cfg = Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **_vision_ids(tok))
    cfg.eos_token_id, cfg.pad_token_id = text["eos_token_id"], text["pad_token_id"]
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(cfg)
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(**_PIXELS),
                                 video_processor=Qwen2VLVideoProcessor(**_PIXELS), tokenizer=tok,
                                 chat_template=QWEN2_VL_TEMPLATE)
    save_tiny(model, processor, out)


def build_qwen3_vl(out: str | Path) -> None:
    """Tiny Qwen3-VL: 2-block ViT (patch 16) with deepstack merger, 2-layer Qwen3 LLM, real template."""
    from transformers import (Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLForConditionalGeneration,
                              Qwen3VLProcessor, Qwen3VLVideoProcessor)

    template = chat_template_file("qwen3_vl")
    tok = qwen_tokenizer(template)
    text = text_config(tok, head_dim=16, rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3],
                                                           "mrope_interleaved": True, "rope_theta": 10000.0})
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=16,
                  num_position_embeddings=16, deepstack_visual_indexes=[1])
    cfg = Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **_vision_ids(tok))
    cfg.eos_token_id, cfg.pad_token_id = text["eos_token_id"], text["pad_token_id"]
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(cfg)
    pixels = dict(patch_size=16, merge_size=2, size={"shortest_edge": 32 * 32, "longest_edge": 32 * 32 * 16})
    processor = Qwen3VLProcessor(image_processor=Qwen2VLImageProcessor(**pixels),
                                 video_processor=Qwen3VLVideoProcessor(**pixels), tokenizer=tok,
                                 chat_template=template)
    save_tiny(model, processor, out)


QWEN2_5_VL = Family(name="qwen2_5_vl", model_types=("qwen2_5_vl",), build_tiny=build_qwen2_5_vl,
                    model_class="Qwen2_5_VLForConditionalGeneration", processor_class="Qwen2_5_VLProcessor",
                    notes="3-D mRoPE position ids; the processor expands <|image_pad|> per image grid", **_COMMON)
QWEN2_VL = Family(name="qwen2_vl", model_types=("qwen2_vl",), build_tiny=build_qwen2_vl,
                  model_class="Qwen2VLForConditionalGeneration", processor_class="Qwen2VLProcessor",
                  notes="3-D mRoPE position ids", **_COMMON)
QWEN3_VL = Family(name="qwen3_vl", model_types=("qwen3_vl",), build_tiny=build_qwen3_vl,
                  model_class="Qwen3VLForConditionalGeneration", processor_class="Qwen3VLProcessor",
                  notes="patch 16; deepstack mergers (model.visual.deepstack_merger_list) count as aligner",
                  **{**_COMMON, "aligner": ("model.visual.merger", "model.visual.deepstack_merger_list")})
