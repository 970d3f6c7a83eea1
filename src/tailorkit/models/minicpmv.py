"""MiniCPM-V 4 / 4.5 (remote code only): ``vpm`` vision transformer, ``resampler`` (aligner), ``llm``.

No transformers-native class exists for 4/4.5, so tests run against a tiny local remote-code directory
(models/remote_code/minicpmv) with the published module names and processor interface.
"""

from __future__ import annotations

import json
from pathlib import Path

from .family import Family, chat_template_file
from .text import DECODER_LORA, QWEN3_TEMPLATE
from .tiny import QWEN_SPECIAL, make_tokenizer
from .remote import build_remote_tiny

# The published chat() writes "(<image>./</image>)\n" before the text of a message with images and renders
# the result with the LLM's ChatML template. The patch does the same from content parts, rendering turns
# as Qwen3's template does without tools or reasoning (see text.QWEN3_PATCH).
MINICPMV_TEMPLATE = chat_template_file("minicpmv")
QUERY_NUM = 4


def build_minicpmv(out: str | Path) -> None:
    """Tiny remote-code MiniCPM-V 4.5 look-alike: 2-layer vision (28 px), 4-query resampler, Qwen3 LLM."""
    special = QWEN_SPECIAL + ["<unk>", "<image>", "</image>", "<slice>", "</slice>", "<think>", "</think>"]
    tok = make_tokenizer(special, QWEN3_TEMPLATE, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                         unk_token="<unk>")
    config = dict(model_type="minicpmv", architectures=["MiniCPMV"], version=4.5, vocab_size=len(tok),
                  hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                  tie_word_embeddings=False, query_num=QUERY_NUM, image_size=28, patch_size=14,
                  image_token_id=tok.convert_tokens_to_ids("<unk>"),
                  vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=2, image_size=28, patch_size=14),
                  auto_map={"AutoConfig": "configuration_minicpm.MiniCPMVConfig",
                            "AutoModel": "modeling_minicpmv.MiniCPMV",
                            "AutoModelForCausalLM": "modeling_minicpmv.MiniCPMV"})
    processor = {"AutoProcessor": "processing_minicpmv.MiniCPMVProcessor",
                 "AutoImageProcessor": "image_processing_minicpmv.MiniCPMVImageProcessor"}
    files = {
        "processor_config.json": dict(processor_class="MiniCPMVProcessor", n_queries=QUERY_NUM,
                                      auto_map=processor),
        "preprocessor_config.json": dict(image_processor_type="MiniCPMVImageProcessor", image_size=28,
                                         patch_size=14, processor_class="MiniCPMVProcessor", auto_map=processor),
    }
    build_remote_tiny(out, "minicpmv", config, tok, {k: json.dumps(v, indent=2) for k, v in files.items()})


MINICPMV = Family(
    packing_refusal=(
        "the remote-code MiniCPMV class accepts no attention implementation other than eager "
        "(transformers refuses to switch it to the segment-aware attention packed rows need)"),
    name="minicpmv", model_types=("minicpmv",), auto_class="AutoModelForCausalLM", vision=("vpm",),
    aligner=("resampler",), llm=("llm.model",), lm_head=("llm.lm_head",), lora_targets=DECODER_LORA,
    build_tiny=build_minicpmv, model_class="MiniCPMV (remote code)", processor_class="MiniCPMVProcessor (remote code)",
    end_of_turn="<|im_end|>", chat_template=MINICPMV_TEMPLATE, trust_remote_code=True,
    notes="template patch: content parts rendered with the (<image>./</image>) placeholder the processor expands; "
          "the tiny stand-in takes keyword tensors, the published forward(data) needs its own batch adapter",
    support="structure-tested, no real weights: tiny local remote-code look-alike (module names, placeholder "
            "and processor outputs); prompt = train prefix, supervised = replies, 1 sft step with an image")
