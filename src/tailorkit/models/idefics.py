"""Idefics3 and SmolVLM: SigLIP-style tower + pixel-shuffle connector (the aligner) + Llama-style LLM."""

from __future__ import annotations

from pathlib import Path

import torch

from .family import Family, chat_template_file
from .text import DECODER_LORA
from .tiny import make_tokenizer, save_tiny, text_config

_COMMON = dict(auto_class="AutoModelForImageTextToText", vision=("model.vision_model",),
               aligner=("model.connector",), llm=("model.text_model",), lora_targets=DECODER_LORA,
               end_of_turn="<end_of_utterance>")
_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28,
               patch_size=14)
_IMAGE = dict(size={"longest_edge": 28}, max_image_size={"longest_edge": 28}, do_image_splitting=False)


def _tokenizer(template: str, bos: str, eos: str, pad: str):
    special = [bos, eos, pad, "<end_of_utterance>", "<fake_token_around_image>", "<image>", "<global-img>"]
    return make_tokenizer(list(dict.fromkeys(special)), template, eos_token=eos, pad_token=pad, bos_token=bos)


def _build(out, tok, config_cls, model_cls, processor) -> None:
    """The processor adds its row/col tokens to the tokenizer, so the config is sized after it."""
    text = text_config(tok, eos_token_id=tok.convert_tokens_to_ids("<end_of_utterance>"),
                        bos_token_id=tok.bos_token_id)
    cfg = config_cls(vision_config=_VISION, text_config=dict(model_type="llama", **text), scale_factor=2,
                     image_token_id=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=False)
    cfg.eos_token_id, cfg.pad_token_id = text["eos_token_id"], text["pad_token_id"]
    torch.manual_seed(0)
    save_tiny(model_cls(cfg), processor, out)


def build_idefics3(out: str | Path) -> None:
    """Tiny Idefics3 (28 px, 1 image token), Idefics3Processor and the Idefics3-8B-Llama3 template."""
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor,
                              Idefics3Processor)

    template = chat_template_file("idefics3")
    tok = _tokenizer(template, "<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>")
    processor = Idefics3Processor(image_processor=Idefics3ImageProcessor(**_IMAGE), tokenizer=tok, image_seq_len=1,
                                  chat_template=template)
    _build(out, processor.tokenizer, Idefics3Config, Idefics3ForConditionalGeneration, processor)


def build_smolvlm(out: str | Path) -> None:
    """Tiny SmolVLM (28 px, 1 image token), SmolVLMProcessor and SmolVLM-Instruct's template."""
    from transformers import (SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessor,
                              SmolVLMProcessor, SmolVLMVideoProcessor)

    template = chat_template_file("smolvlm")
    tok = _tokenizer(template, "<|im_start|>", "<|im_end|>", "<|im_end|>")
    processor = SmolVLMProcessor(image_processor=SmolVLMImageProcessor(**_IMAGE),
                                 video_processor=SmolVLMVideoProcessor(**_IMAGE), tokenizer=tok, image_seq_len=1,
                                 chat_template=template)
    _build(out, processor.tokenizer, SmolVLMConfig, SmolVLMForConditionalGeneration, processor)


IDEFICS3 = Family(name="idefics3", model_types=("idefics3",), build_tiny=build_idefics3,
                  model_class="Idefics3ForConditionalGeneration", processor_class="Idefics3Processor",
                  notes="the template needs content parts (tailorkit passes them); bos is in the template",
                  **_COMMON)
SMOLVLM = Family(name="smolvlm", model_types=("smolvlm", "smolvlm_vision"), build_tiny=build_smolvlm,
                 model_class="SmolVLMForConditionalGeneration", processor_class="SmolVLMProcessor",
                 requires=("num2words",), notes="SmolVLMProcessor refuses to start without the num2words package",
                 **_COMMON)
