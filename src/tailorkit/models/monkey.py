"""Monkey / Monkey-Chat (remote code only, Qwen-VL layout): ``transformer.visual`` ViT whose ``attn_pool``
resampler is the aligner, ``transformer.{wte,h,ln_f}`` LLM and ``lm_head``.

Tests run against a tiny local remote-code directory (models/remote_code/monkey) with those module names
and an ``<img></img>`` placeholder processor.
"""

from __future__ import annotations

import json
from pathlib import Path

from .family import Family, chat_template_file
from .remote import build_remote_tiny
from .tiny import make_tokenizer

# Monkey ships no chat template; its README prompts with "<img>{path}</img> {question} Answer: ". The patch
# renders that layout from content parts, one turn after another, closing each answer with <|endoftext|>.
MONKEY_TEMPLATE = chat_template_file("monkey")
N_QUERIES = 4


def build_monkey(out: str | Path) -> None:
    """Tiny remote-code Monkey look-alike: 2-block ViT (28 px) with a 4-query resampler, 2-block QWen LLM."""
    special = ["<|endoftext|>", "<img>", "</img>", "<imgpad>", "<ref>", "</ref>", "<box>", "</box>"]
    tok = make_tokenizer(special, None, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    config = dict(model_type="monkey", architectures=["MonkeyLMHeadModel"], vocab_size=len(tok), hidden_size=64,
                  intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                  image_pad_id=tok.convert_tokens_to_ids("<imgpad>"),
                  visual=dict(image_size=28, patch_size=14, width=32, layers=2, heads=2, n_queries=N_QUERIES),
                  auto_map={"AutoConfig": "configuration_monkey.MonkeyConfig",
                            "AutoModelForCausalLM": "modeling_monkey.MonkeyLMHeadModel"})
    processor = {"AutoProcessor": "processing_monkey.MonkeyProcessor",
                 "AutoImageProcessor": "processing_monkey.MonkeyImageProcessor"}
    files = {
        "processor_config.json": dict(processor_class="MonkeyProcessor", n_queries=N_QUERIES, auto_map=processor),
        "preprocessor_config.json": dict(image_processor_type="MonkeyImageProcessor", image_size=28,
                                         processor_class="MonkeyProcessor", auto_map=processor),
    }
    build_remote_tiny(out, "monkey", config, tok, {k: json.dumps(v, indent=2) for k, v in files.items()})


MONKEY = Family(
    packing_refusal=(
        "the remote-code model builds its own causal mask and takes no position_ids, so packed samples "
        "would attend to each other"),
    name="monkey", model_types=("monkey",), auto_class="AutoModelForCausalLM", vision=("transformer.visual",),
    aligner=("transformer.visual.attn_pool",), llm=("transformer.wte", "transformer.h", "transformer.ln_f"),
    lora_targets=("c_attn", "c_proj", "w1", "w2"), build_tiny=build_monkey,
    model_class="MonkeyLMHeadModel (remote code)", processor_class="MonkeyProcessor (tiny stand-in)",
    end_of_turn="<|endoftext|>", chat_template=MONKEY_TEMPLATE, trust_remote_code=True,
    notes="template patch: Monkey has no chat template (README layout '<img>..</img> Q Answer: A'); the published "
          "tokenizer carries image paths inside <img></img>, the stand-in processor takes PIL images instead",
    support="structure-tested, no real weights: tiny local remote-code look-alike (module names, <img></img> "
            "placeholder); prompt = train prefix, supervised = replies, 1 sft step with an image")
