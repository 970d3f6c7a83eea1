"""Gemma 3 (vision): SigLIP tower + pooled projector (the aligner) + Gemma3 text model."""

from __future__ import annotations

from pathlib import Path

import torch

from .family import Family, chat_template_file
from .text import DECODER_LORA
from .tiny import make_tokenizer, save_tiny, text_config

GEMMA3_TEMPLATE = chat_template_file("gemma3")  # google/gemma-3-*-it


def build_gemma3(out: str | Path) -> None:
    """Tiny Gemma3: SigLIP (28 px, 4 patches -> 4 soft tokens), 2-layer Gemma3 text model, Gemma3Processor."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor

    names = dict(boi_token="<start_of_image>", eoi_token="<end_of_image>", image_token="<image_soft_token>")
    special = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", *names.values()]
    tok = make_tokenizer(special, GEMMA3_TEMPLATE, eos_token="<eos>", pad_token="<pad>", bos_token="<bos>",
                         unk_token="<unk>", extra_special_tokens=names)
    ids = {k: tok.convert_tokens_to_ids(v) for k, v in names.items()}
    text = text_config(tok, head_dim=16, sliding_window=16, eos_token_id=tok.convert_tokens_to_ids("<end_of_turn>"),
                        bos_token_id=tok.bos_token_id)
    vision = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, image_size=28, patch_size=14)
    cfg = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                       image_token_id=ids["image_token"], boi_token_id=ids["boi_token"],
                       eoi_token_id=ids["eoi_token"], tie_word_embeddings=False)
    cfg.eos_token_id, cfg.pad_token_id = text["eos_token_id"], text["pad_token_id"]
    torch.manual_seed(0)
    model = Gemma3ForConditionalGeneration(cfg)
    with torch.no_grad():  # initialised to zeros, which would cut the image off from the LLM (no vision gradient)
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(std=0.02)
    processor = Gemma3Processor(image_processor=Gemma3ImageProcessor(size={"height": 28, "width": 28}),
                                tokenizer=tok, image_seq_length=4, chat_template=GEMMA3_TEMPLATE)
    save_tiny(model, processor, out)


GEMMA3 = Family(
    packing_refusal=(
        "its image tokens attend to each other bidirectionally (a token_type_ids mask), and the per-"
        "segment attention of packed rows is causal only"),
    name="gemma3", model_types=("gemma3",), auto_class="AutoModelForImageTextToText",
                vision=("model.vision_tower",), aligner=("model.multi_modal_projector",),
                llm=("model.language_model",), lora_targets=DECODER_LORA, build_tiny=build_gemma3,
                model_class="Gemma3ForConditionalGeneration", processor_class="Gemma3Processor",
                end_of_turn="<end_of_turn>",
                notes="bidirectional attention over image tokens (token_type_ids from the processor); "
                      "replies are trimmed by the template")
