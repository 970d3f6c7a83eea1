"""Text-only decoder families (the whole model is the LLM): Qwen2, Qwen3, Llama 3, Gemma, Phi-3."""

from __future__ import annotations

from pathlib import Path

import torch

from .family import Family, chat_template_file, patch_template
from .tiny import QWEN_SPECIAL, build_qwen2, make_tokenizer, save_tiny, text_config

DECODER_LORA = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_TEXT = dict(auto_class="AutoModelForCausalLM", llm=("model",), lora_targets=DECODER_LORA,
             processor_class="AutoTokenizer",
             support="tiny random build: prompt = train prefix, supervised = replies, 1 sft step (text only)")

QWEN2 = Family(name="qwen2", model_types=("qwen2",), build_tiny=build_qwen2, model_class="Qwen2ForCausalLM",
               end_of_turn="<|im_end|>", **_TEXT)

# Qwen3's template writes an empty <think></think> block into the LAST assistant turn only, so the
# rendering of a turn depends on whether later turns follow and no prefix of a multi-turn conversation
# is a prefix of the whole. The patch renders the think block only when there is reasoning content.
QWEN3_TEMPLATE = chat_template_file("qwen3")
QWEN3_PATCH = patch_template(QWEN3_TEMPLATE, ("{%- if loop.last or (not loop.last and reasoning_content) %}",
                                             "{%- if reasoning_content %}"))
# Phi-3's template appends eos_token after the last message when no generation prompt is asked for,
# so a conversation's prefix is not a prefix of the conversation; <|end|> already ends every reply.
PHI3_TEMPLATE = chat_template_file("phi3")
PHI3_PATCH = patch_template(PHI3_TEMPLATE, ("{% else %}{{ eos_token }}{% endif %}", "{% endif %}"))


def _build_text(out, config_cls, model_cls, tok, eos: str, **over) -> None:
    cfg = text_config(tok, eos_token_id=tok.convert_tokens_to_ids(eos), **over)
    torch.manual_seed(0)
    save_tiny(model_cls(config_cls(**cfg)), tok, out)


def build_qwen3(out: str | Path) -> None:
    """Tiny Qwen3 with Qwen3's own (native, unpatched) chat template."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tok = make_tokenizer(QWEN_SPECIAL + ["<think>", "</think>"], QWEN3_TEMPLATE, eos_token="<|im_end|>",
                         pad_token="<|endoftext|>")
    tok.add_tokens(["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"])  # not special, as in Qwen3
    _build_text(out, Qwen3Config, Qwen3ForCausalLM, tok, "<|im_end|>", head_dim=16)


def build_llama3(out: str | Path) -> None:
    """Tiny Llama with the Llama-3-Instruct special tokens and chat template."""
    from transformers import LlamaConfig, LlamaForCausalLM

    special = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
               "<|finetune_right_pad_id|>"]
    tok = make_tokenizer(special, chat_template_file("llama3"), eos_token="<|eot_id|>",
                         pad_token="<|finetune_right_pad_id|>", bos_token="<|begin_of_text|>")
    _build_text(out, LlamaConfig, LlamaForCausalLM, tok, "<|eot_id|>",
                bos_token_id=tok.convert_tokens_to_ids("<|begin_of_text|>"))


def build_gemma(out: str | Path) -> None:
    """Tiny Gemma with Gemma-IT's special tokens and chat template (no system role)."""
    from transformers import GemmaConfig, GemmaForCausalLM

    special = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    tok = make_tokenizer(special, chat_template_file("gemma"), eos_token="<eos>", pad_token="<pad>",
                         bos_token="<bos>", unk_token="<unk>")
    _build_text(out, GemmaConfig, GemmaForCausalLM, tok, "<end_of_turn>", head_dim=16,
                bos_token_id=tok.convert_tokens_to_ids("<bos>"))


def build_phi3(out: str | Path) -> None:
    """Tiny Phi-3 with Phi-3-mini-instruct's special tokens and (native) chat template."""
    from transformers import Phi3Config, Phi3ForCausalLM

    special = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    tok = make_tokenizer(special, PHI3_TEMPLATE, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    _build_text(out, Phi3Config, Phi3ForCausalLM, tok, "<|end|>")


QWEN3 = Family(name="qwen3", model_types=("qwen3",), build_tiny=build_qwen3, model_class="Qwen3ForCausalLM",
               end_of_turn="<|im_end|>", chat_template=QWEN3_PATCH,
               notes="template patch: the empty <think></think> block is written only with reasoning content, "
                     "so multi-turn prefixes agree; the model trains and serves without an empty think block",
               **_TEXT)
LLAMA = Family(name="llama", model_types=("llama",), build_tiny=build_llama3, model_class="LlamaForCausalLM",
               end_of_turn="<|eot_id|>", notes="Llama-3 template (bos in the template; replies are trimmed)",
               **_TEXT)
GEMMA = Family(name="gemma", model_types=("gemma",), build_tiny=build_gemma, model_class="GemmaForCausalLM",
               end_of_turn="<end_of_turn>", notes="the template rejects a system message; replies are trimmed",
               **_TEXT)
PHI3 = Family(name="phi3", model_types=("phi3",), build_tiny=build_phi3, model_class="Phi3ForCausalLM",
              **{**_TEXT, "lora_targets": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")},
              end_of_turn="<|end|>", chat_template=PHI3_PATCH,
              notes="template patch: no eos_token after the last message (it broke the prefix property)")
