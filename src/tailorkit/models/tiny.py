"""The toolkit family files build their tiny random models with, and the two default tiny models.

A tiny model is built from a real transformers config class, carries a locally trained byte-level BPE
tokenizer with the family's special tokens and its real chat template, is saved with ``save_pretrained``
and loads with plain ``AutoModel*`` / ``AutoProcessor``. Tests, benchmarks and the demo use them
because no weights can be downloaded. Toolkit: ``make_tokenizer``, ``qwen_tokenizer``, ``text_config``
(a 2-layer LLM config), ``save_tiny``. Default models: ``build_qwen2`` (text), ``build_qwen2_5_vl``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .family import chat_template_file

# Words the demo task and the tests use, so that they become single BPE tokens.
_CORPUS = [
    "What colour is the shape? What shape is this? Describe the picture. Answer with one word.",
    "red green blue yellow purple orange circle square triangle cross star",
    "You are a helpful assistant. The quick brown fox jumps over the lazy dog.",
    "Hello! How are you? I am fine, thank you. Tell me a story about a cat and a dog.",
    "0 1 2 3 4 5 6 7 8 9 10 100 yes no true false the a an is are of to in and or",
    "system user assistant system user assistant",
]

QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]

QWEN2_TEMPLATE = chat_template_file("qwen2")  # Qwen2-Instruct
QWEN2_VL_TEMPLATE = chat_template_file("qwen2_vl")  # Qwen2-VL / Qwen2.5-VL, as published with their processors


def make_tokenizer(special_tokens: list[str], chat_template: str, *, vocab_size: int = 400,
                   eos_token: str, pad_token: str, **named_tokens):
    """A byte-level BPE tokenizer trained on a fixed corpus (deterministic) with ``special_tokens``.

    ``named_tokens`` (bos_token, unk_token, extra_special_tokens={...}) go to the tokenizer as is.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos_token, pad_token=pad_token,
                                   chat_template=chat_template, model_max_length=32768, **named_tokens)


def qwen_tokenizer(chat_template: str):
    """The Qwen special tokens (ChatML turns, vision markers) with ``chat_template``."""
    return make_tokenizer(QWEN_SPECIAL, chat_template, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def _scale_head(model, std: float = 0.25) -> None:
    """Give the random lm_head the logit range of a trained one.

    With the default 0.02 init and a frozen head (LoRA), the largest reachable logit margin is ~1, so
    the loss cannot fall below ~ln(vocab) whatever the adapter learns; trained heads are not like that.
    """
    with torch.no_grad():
        model.get_output_embeddings().weight.normal_(0.0, std, generator=torch.Generator().manual_seed(0))


def save_tiny(model, processor, out: str | Path) -> None:
    """Save a tiny random model and its processor to ``out``, with a trained-looking lm_head and generation ids."""
    out = Path(out)
    _scale_head(model)
    out.mkdir(parents=True, exist_ok=True)
    config = model.config if hasattr(model.config, "eos_token_id") else model.config.get_text_config()
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)


def text_config(tok, **over) -> dict:
    """Keyword arguments of a 2-layer, 64-wide decoder config sized for ``tok`` (``over`` replaces any of them)."""
    cfg = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
               bos_token_id=None, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
               pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    cfg.update(over)
    return cfg


def build_qwen2(out: str | Path, **config: int) -> None:
    """Tiny Qwen2 text model (Qwen2-Instruct chat template); ``config`` overrides its sizes (hidden_size, ...)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = qwen_tokenizer(QWEN2_TEMPLATE)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**text_config(tok, **config)))
    save_tiny(model, tok, out)


def build_qwen2_5_vl(out: str | Path) -> None:
    """Tiny Qwen2.5-VL: 2-block windowed ViT, 2-layer LLM with 3-D mRoPE, real processor + template."""
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    tok = qwen_tokenizer(QWEN2_VL_TEMPLATE)
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    text = text_config(tok, rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3],
                                              "rope_theta": 10000.0})
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                  fullatt_block_indexes=[1], window_size=56)
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                           video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                           vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)
    cfg.eos_token_id, cfg.pad_token_id = text["eos_token_id"], text["pad_token_id"]
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(cfg)
    pixels = dict(min_pixels=28 * 28, max_pixels=28 * 28 * 16)
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        video_processor=Qwen2VLVideoProcessor(**pixels),
        tokenizer=tok, chat_template=QWEN2_VL_TEMPLATE)
    save_tiny(model, processor, out)
