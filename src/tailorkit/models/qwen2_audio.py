"""Qwen2-Audio: Whisper-style audio encoder (its "vision" slot, as ms-swift maps it, so --freeze_vit keeps it
frozen) + linear projector (the aligner) + Qwen2 LLM; Qwen2AudioProcessor with a Whisper feature extractor."""

from __future__ import annotations

from pathlib import Path

import torch

from .family import Family, chat_template_file
from .tiny import QWEN_SPECIAL, make_tokenizer, save_tiny, text_config

AUDIO_SPECIAL = ["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]
# Qwen2-Audio-7B-Instruct's chat template (the processor's published default).
QWEN2_AUDIO_TEMPLATE = chat_template_file("qwen2_audio")
_CHUNK_SECONDS = 2  # the feature extractor pads every clip to this length; the encoder's positions match it


def build_qwen2_audio(out: str | Path) -> None:
    """Tiny Qwen2-Audio: 1-layer audio encoder over 2-second clips (200 mel frames, 50 positions), 2-layer
    Qwen2 LLM, the real processor class and template."""
    from transformers import (Qwen2AudioConfig, Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor,
                              WhisperFeatureExtractor)

    tok = make_tokenizer(QWEN_SPECIAL + AUDIO_SPECIAL, QWEN2_AUDIO_TEMPLATE, eos_token="<|im_end|>",
                         pad_token="<|endoftext|>")
    frames = _CHUNK_SECONDS * 100  # Whisper features: 100 mel frames per second
    audio = dict(model_type="qwen2_audio_encoder", d_model=32, encoder_layers=1, encoder_attention_heads=2,
                 encoder_ffn_dim=64, num_mel_bins=80, max_source_positions=frames // 2)
    cfg = Qwen2AudioConfig(audio_config=audio, text_config=dict(model_type="qwen2", **text_config(tok)),
                           audio_token_id=tok.convert_tokens_to_ids("<|AUDIO|>"))
    cfg.eos_token_id, cfg.pad_token_id = cfg.text_config.eos_token_id, cfg.text_config.pad_token_id
    torch.manual_seed(0)
    model = Qwen2AudioForConditionalGeneration(cfg)
    processor = Qwen2AudioProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80,
                                                                              chunk_length=_CHUNK_SECONDS),
                                    tokenizer=tok, chat_template=QWEN2_AUDIO_TEMPLATE)
    save_tiny(model, processor, out)


QWEN2_AUDIO = Family(
    name="qwen2_audio", model_types=("qwen2_audio",), auto_class="AutoModelForMultimodalLM",
    vision=("model.audio_tower",), aligner=("model.multi_modal_projector",), llm=("model.language_model",),
    lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    build_tiny=build_qwen2_audio, model_class="Qwen2AudioForConditionalGeneration",
    processor_class="Qwen2AudioProcessor", end_of_turn="<|im_end|>", media=("audio",),
    support="tiny random build: prompt = train prefix, supervised = replies, 1 sft step with a .wav",
    notes="audio only; the audio encoder takes the --freeze_vit/--vit settings and the projector the aligner's "
          "(ms-swift's mapping); every clip is padded to the feature extractor's chunk_length (30 s on the real "
          "model: 750 audio tokens per clip)")
