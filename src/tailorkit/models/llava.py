"""LLaVA-1.5, LLaVA-NeXT and LLaVA-OneVision: vision tower + MLP projector (the aligner) + LLM."""

from __future__ import annotations

from pathlib import Path

import torch

from .family import Family, chat_template_file, patch_template
from .text import DECODER_LORA
from .tiny import QWEN_SPECIAL, make_tokenizer, save_tiny, text_config

_COMMON = dict(auto_class="AutoModelForImageTextToText", vision=("model.vision_tower",),
               aligner=("model.multi_modal_projector",), llm=("model.language_model",),
               lora_targets=DECODER_LORA)
_TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    image_size=28, patch_size=14)
_PINPOINTS = [[28, 28], [28, 56], [56, 28], [56, 56]]
LLAVA_TEMPLATE = chat_template_file("llava")  # llava-hf/llava-1.5 and llava-v1.6-vicuna
ONEVISION_TEMPLATE = chat_template_file("llava_onevision")
# OneVision's template writes "<|im_start|>assistant " before a reply but "<|im_start|>assistant\n" as the
# generation prompt, and runs turns together without a newline: its prompt is not a prefix of its own
# training text. The patch gives LLaVA-OneVision's training layout ("<|im_start|>assistant\nA<|im_end|>\n").
ONEVISION_PATCH = patch_template(
    ONEVISION_TEMPLATE,
    ("{{'<|im_start|>' + message['role'] + ' '}}", "{{'<|im_start|>' + message['role'] + '\\n'}}"),
    ("{% generation %}{{ '\\n' + content['text'] }}", "{% generation %}{{ content['text'] }}"),
    ("{{'<|im_end|>'}}", "{{'<|im_end|>\\n'}}"))


def _llama_tokenizer(template: str):
    return make_tokenizer(["<unk>", "<s>", "</s>", "<pad>", "<image>"], template, eos_token="</s>",
                          pad_token="<pad>", bos_token="<s>", unk_token="<unk>")


def _llama_text(tok) -> dict:
    return dict(model_type="llama", **text_config(tok, eos_token_id=tok.eos_token_id,
                                                   bos_token_id=tok.bos_token_id))


def build_llava(out: str | Path) -> None:
    """Tiny LLaVA-1.5: CLIP tower (28 px, 4 patches) + 2-layer MLP + 2-layer Llama, LlavaProcessor."""
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = _llama_tokenizer(LLAVA_TEMPLATE)
    cfg = LlavaConfig(vision_config=dict(model_type="clip_vision_model", **_TINY_VISION), text_config=_llama_text(tok),
                      image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
                      vision_feature_select_strategy="default", tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=LLAVA_TEMPLATE)
    save_tiny(model, processor, out)


def build_llava_next(out: str | Path) -> None:
    """Tiny LLaVA-NeXT: anyres tiles of 28 px over a CLIP tower, 2-layer Llama, LlavaNextProcessor."""
    from transformers import (LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessor,
                              LlavaNextProcessor)

    tok = _llama_tokenizer(LLAVA_TEMPLATE)
    cfg = LlavaNextConfig(vision_config=dict(model_type="clip_vision_model", **_TINY_VISION),
                          text_config=_llama_text(tok), image_token_id=tok.convert_tokens_to_ids("<image>"),
                          vision_feature_layer=-1, vision_feature_select_strategy="default",
                          image_grid_pinpoints=_PINPOINTS, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlavaNextForConditionalGeneration(cfg)
    image_processor = LlavaNextImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                                              image_grid_pinpoints=_PINPOINTS)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=14,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=LLAVA_TEMPLATE)
    save_tiny(model, processor, out)


def build_llava_onevision(out: str | Path) -> None:
    """Tiny LLaVA-OneVision: SigLIP tower (28 px anyres) + Qwen2 LLM, LlavaOnevisionProcessor."""
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                              LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor)

    tok = make_tokenizer(QWEN_SPECIAL + ["<image>", "<video>"], ONEVISION_TEMPLATE, eos_token="<|im_end|>",
                         pad_token="<|endoftext|>")
    cfg = LlavaOnevisionConfig(vision_config=dict(model_type="siglip_vision_model", **_TINY_VISION),
                               text_config=dict(model_type="qwen2", **text_config(tok)),
                               image_token_id=tok.convert_tokens_to_ids("<image>"),
                               video_token_id=tok.convert_tokens_to_ids("<video>"), vision_feature_layer=-1,
                               vision_feature_select_strategy="full", image_grid_pinpoints=_PINPOINTS,
                               vision_aspect_ratio="anyres_max_9", tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlavaOnevisionForConditionalGeneration(cfg)
    size = {"height": 28, "width": 28}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=_PINPOINTS),
        video_processor=LlavaOnevisionVideoProcessor(size=size), tokenizer=tok, num_image_tokens=4,
        vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9", chat_template=ONEVISION_TEMPLATE)
    save_tiny(model, processor, out)


LLAVA = Family(name="llava", model_types=("llava",), build_tiny=build_llava,
               model_class="LlavaForConditionalGeneration", processor_class="LlavaProcessor", end_of_turn="",
               notes="the llava-hf template closes a reply with a space, not </s>: a model trained on it does "
                     "not learn to stop (pass a template with an eos if you need one)", **_COMMON)
LLAVA_NEXT = Family(name="llava_next", model_types=("llava_next",), build_tiny=build_llava_next,
                    model_class="LlavaNextForConditionalGeneration", processor_class="LlavaNextProcessor",
                    end_of_turn="", notes="anyres tiling; the learned image_newline counts as aligner; same "
                                          "reply-end caveat as llava",
                    **{**_COMMON, "aligner": ("model.multi_modal_projector", "model.image_newline")})
LLAVA_ONEVISION = Family(name="llava_onevision", model_types=("llava_onevision",), build_tiny=build_llava_onevision,
                         model_class="LlavaOnevisionForConditionalGeneration",
                         processor_class="LlavaOnevisionProcessor", end_of_turn="<|im_end|>",
                         chat_template=ONEVISION_PATCH,
                         notes="template patch: the role line of a reply now matches the generation prompt; "
                               "image_newline counts as aligner",
                         **{**_COMMON, "aligner": ("model.multi_modal_projector", "model.image_newline")})
