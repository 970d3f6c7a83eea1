"""DeepSeek-VL (transformers-native DeepseekVLForConditionalGeneration): SigLIP tower, MLP aligner, Llama LLM."""

from __future__ import annotations

from pathlib import Path

import torch

from .family import Family, chat_template_file, patch_template
from .text import DECODER_LORA
from .tiny import make_tokenizer, save_tiny, text_config

DEEPSEEK_VL_TEMPLATE = chat_template_file("deepseek_vl")  # deepseek-community/deepseek-vl-*-chat
EOS = "<\uff5cend\u2581of\u2581sentence\uff5c>"
# The native template writes the end-of-sentence separator after every assistant turn except the last one,
# so a model trained on single-turn rows never sees the token that stops it. The patch always writes it.
DEEPSEEK_VL_PATCH = patch_template(DEEPSEEK_VL_TEMPLATE, (
    "{% if not loop.last or add_generation_prompt %}",
    "{% if not loop.last or add_generation_prompt or message['role']|lower == 'assistant' %}"))


def build_deepseek_vl(out: str | Path) -> None:
    """Tiny DeepSeek-VL: 2-layer SigLIP (32 px, patch 16 -> 4 image tokens), 2-layer Llama, DeepseekVLProcessor."""
    from transformers import DeepseekVLConfig, DeepseekVLForConditionalGeneration, DeepseekVLImageProcessor
    from transformers import DeepseekVLProcessor

    bos = "<\uff5cbegin\u2581of\u2581sentence\uff5c>"
    tok = make_tokenizer([bos, EOS, "<image_placeholder>"], DEEPSEEK_VL_TEMPLATE, eos_token=EOS, pad_token=EOS,
                         bos_token=bos, extra_special_tokens={"image_token": "<image_placeholder>"})
    text = dict(model_type="llama", **text_config(tok, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id))
    vision = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, image_size=32, patch_size=16)
    cfg = DeepseekVLConfig(text_config=text, vision_config=vision,
                           image_token_id=tok.convert_tokens_to_ids("<image_placeholder>"), tie_word_embeddings=False)
    torch.manual_seed(0)
    model = DeepseekVLForConditionalGeneration(cfg)
    processor = DeepseekVLProcessor(image_processor=DeepseekVLImageProcessor(size={"height": 32, "width": 32}),
                                    tokenizer=tok, chat_template=DEEPSEEK_VL_TEMPLATE, num_image_tokens=4)
    save_tiny(model, processor, out)


DEEPSEEK_VL = Family(
    name="deepseek_vl", model_types=("deepseek_vl",), auto_class="AutoModelForImageTextToText",
    vision=("model.vision_model",), aligner=("model.aligner",), llm=("model.language_model",),
    lora_targets=DECODER_LORA, build_tiny=build_deepseek_vl, model_class="DeepseekVLForConditionalGeneration",
    processor_class="DeepseekVLProcessor", end_of_turn=EOS, chat_template=DEEPSEEK_VL_PATCH,
    notes="template patch: the end-of-sentence token closes every reply, the last one included (natively it is "
          "missing after the last turn, so the model never learns to stop); DeepSeek-VL hybrid (SAM high-res) "
          "is a different model_type with no family file")
