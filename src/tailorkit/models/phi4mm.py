"""Phi-4-multimodal (transformers-native Phi4MultimodalForCausalLM): SigLIP image embedder with HD crops and
an up/down projection (the aligner), a conformer audio embedder (component "other") and a Phi-3-style LLM.

The checkpoint ships two peft LoRA adapters on the LLM, ``vision-lora/`` and ``speech-lora/`` (its config
names them as ``vision_lora`` / ``speech_lora``), and the model's own code switches between them by the
input's modality: images (with or without audio) use the vision adapter, audio alone the speech adapter,
text neither. ``--train_type dummy`` finds both folders and trains them routed the same way
(``ADAPTER_BY_INPUT``; tuners/modality.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from .family import Family, chat_template_file, patch_template
from .tiny import make_tokenizer, save_tiny, text_config

PHI4MM_TEMPLATE = chat_template_file("phi4mm")  # microsoft/Phi-4-multimodal-instruct (native processor)
# Same quirk as Phi-3: eos_token after the last message when no generation prompt is asked for.
PHI4MM_PATCH = patch_template(PHI4MM_TEMPLATE, ("{% else %}{{ eos_token }}{% endif %}", "{% endif %}"))
_EMBED = "model.embed_tokens_extend"
# The public checkpoint's LoRA layout: every attention and MLP projection of the LLM (r 256 / 320 there).
_LORA_LAYERS = r"model\.layers\.\d+\.((self_attn\.(qkv_proj|o_proj))|(mlp\.(gate_up|down)_proj))"
SHIPPED_ADAPTERS = {"vision-lora": "vision_lora", "speech-lora": "speech_lora"}  # folder -> config key
# Batch input that selects an adapter, in the model's priority order (image and audio together: vision).
ADAPTER_BY_INPUT = (("image_pixel_values", "vision-lora"), ("audio_input_features", "speech-lora"))


def build_phi4mm(out: str | Path) -> None:
    """Tiny Phi-4-multimodal: 2-layer SigLIP at the processor's fixed 448 px crop (the image processor
    hard-codes 256 + 16 tokens per crop layout), 1-block conformer audio, 2-layer LLM."""
    from transformers import (Phi4MultimodalConfig, Phi4MultimodalFeatureExtractor, Phi4MultimodalForCausalLM,
                              Phi4MultimodalImageProcessor, Phi4MultimodalProcessor)

    names = dict(image_token="<|image|>", audio_token="<|audio|>")
    special = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|tool|>", "<|/tool|>",
               *names.values()]
    tok = make_tokenizer(special, PHI4MM_TEMPLATE, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                         extra_special_tokens=names)
    text = text_config(tok, eos_token_id=tok.convert_tokens_to_ids("<|end|>"))
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=448,
                  patch_size=14, crop_size=448, image_token_id=tok.convert_tokens_to_ids("<|image|>"))
    audio = dict(hidden_size=32, intermediate_size=64, num_blocks=1, num_attention_heads=2, nemo_conv_channels=32,
                 depthwise_separable_out_channel=32, ext_pw_out_channel=32, depthwise_multiplier=1,
                 audio_token_id=tok.convert_tokens_to_ids("<|audio|>"))
    torch.manual_seed(0)
    model = Phi4MultimodalForCausalLM(Phi4MultimodalConfig(**text, vision_config=vision, audio_config=audio))
    image_processor = Phi4MultimodalImageProcessor(size={"height": 448, "width": 448}, patch_size=14, dynamic_hd=1)
    processor = Phi4MultimodalProcessor(image_processor=image_processor,
                                        audio_processor=Phi4MultimodalFeatureExtractor(), tokenizer=tok,
                                        chat_template=PHI4MM_TEMPLATE)
    for seed, key in enumerate(SHIPPED_ADAPTERS.values(), 1):
        setattr(model.config, key, {"r": 4, "lora_alpha": 8, "dp": 0.0, "layer": _LORA_LAYERS})
    save_tiny(model, processor, out)
    for seed, folder in enumerate(SHIPPED_ADAPTERS, 1):
        _save_shipped_lora(model, Path(out) / folder, seed)


def _save_shipped_lora(model, folder: Path, seed: int) -> None:
    """A peft LoRA folder on the LLM projections with non-zero (trained-looking) weights, as the checkpoint has."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=_LORA_LAYERS, init_lora_weights=False,
                        task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(str(folder))
    peft_model.unload()  # the base model stays as it was for the next adapter


PHI4MM = Family(
    packing_refusal=(
        "its image encoder gives an image different features when it is batched with images whose crops "
        "are masked differently (stock transformers, sdpa), so a row holding several samples' images "
        "cannot equal those samples one by one"),
    name="phi4_multimodal", model_types=("phi4_multimodal",), auto_class="AutoModelForCausalLM",
    vision=(f"{_EMBED}.image_embed",),
    aligner=(f"{_EMBED}.image_embed.img_projection_up", f"{_EMBED}.image_embed.img_projection_down"),
    llm=("model.embed_tokens", "model.layers", "model.norm"),
    lora_targets=("qkv_proj", "o_proj", "gate_up_proj", "down_proj"), build_tiny=build_phi4mm,
    model_class="Phi4MultimodalForCausalLM", processor_class="Phi4MultimodalProcessor", end_of_turn="<|end|>",
    chat_template=PHI4MM_PATCH, adapter_by_input=ADAPTER_BY_INPUT, media=("image", "audio"),
    notes="template patch: no eos_token after the last message; the audio embedder is 'other' (trains with the "
          "LLM unless --freeze_llm); the image processor fixes 448 px crops (~550 tokens for one small image); "
          "ships vision-lora/ and speech-lora/, which --train_type dummy finds and routes by modality",
    support="tiny random build with vision-lora/ and speech-lora/: prompt = train prefix, supervised = replies, "
            "1 sft step with an image; dummy: image rows move only vision-lora, audio rows only speech-lora")
