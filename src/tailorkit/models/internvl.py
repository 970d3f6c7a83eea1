"""InternVL (transformers-native InternVL2.5/3 "-hf" checkpoints): InternViT + pixel-shuffle MLP + Qwen2 LLM."""

from __future__ import annotations

from pathlib import Path

import torch

from .family import Family, chat_template_file
from .text import DECODER_LORA
from .tiny import QWEN_SPECIAL, make_tokenizer, save_tiny, text_config

INTERNVL_TEMPLATE = chat_template_file("internvl")  # OpenGVLab/InternVL3-*-hf


def build_internvl(out: str | Path) -> None:
    """Tiny InternVL: 2-layer InternViT (28 px, 4 patches -> 1 token after pixel shuffle), Qwen2 LLM."""
    from transformers import (GotOcr2ImageProcessor, InternVLConfig, InternVLForConditionalGeneration,
                              InternVLProcessor, InternVLVideoProcessor)

    names = dict(start_image_token="<img>", end_image_token="</img>", context_image_token="<IMG_CONTEXT>",
                 video_token="<video>")
    tok = make_tokenizer(QWEN_SPECIAL + list(names.values()), INTERNVL_TEMPLATE, eos_token="<|im_end|>",
                         pad_token="<|endoftext|>", extra_special_tokens=names)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=[28, 28], patch_size=[14, 14])
    cfg = InternVLConfig(vision_config=vision, text_config=dict(model_type="qwen2", **text_config(tok)),
                         image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"), downsample_ratio=0.5,
                         vision_feature_layer=-1, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = InternVLForConditionalGeneration(cfg)
    size = {"height": 28, "width": 28}
    processor = InternVLProcessor(image_processor=GotOcr2ImageProcessor(size=size, crop_to_patches=False),
                                  video_processor=InternVLVideoProcessor(size=size), tokenizer=tok,
                                  image_seq_length=1, chat_template=INTERNVL_TEMPLATE)
    save_tiny(model, processor, out)


INTERNVL = Family(name="internvl", model_types=("internvl",), auto_class="AutoModelForImageTextToText",
                  vision=("model.vision_tower",), aligner=("model.multi_modal_projector",),
                  llm=("model.language_model",), lora_targets=DECODER_LORA, build_tiny=build_internvl,
                  model_class="InternVLForConditionalGeneration", processor_class="InternVLProcessor",
                  end_of_turn="<|im_end|>",
                  notes="native -hf checkpoints only (OpenGVLab/InternVL*-hf); the original remote-code "
                        "checkpoints use other module names")
