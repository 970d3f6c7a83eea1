"""MiniCPM-V 4 / 4.5 (remote code only): ``vpm`` vision transformer, ``resampler`` (aligner), ``llm``.

No transformers-native class exists for 4/4.5, so tests run against a tiny local remote-code directory
(models/remote_code/minicpmv) that follows the published code's interfaces: the processor's nested
per-text outputs (pixel_values slices, tgt_sizes, image_bound), the tokenizer's marker ids and the model's
``forward(data, **kwargs)``. ``as_keyword_model`` makes that forward take our collated batch, and packed
rows work because the language model inside (``llm``) is a standard transformers model whose attention
train/attention.py switches.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import DataError
from .family import Family, chat_template_file
from .remote import build_remote_tiny
from .text import DECODER_LORA, QWEN3_TEMPLATE
from .tiny import QWEN_SPECIAL, make_tokenizer

# The published chat() writes "(<image>./</image>)\n" before the text of a message with images and renders
# the result with the LLM's ChatML template. The patch does the same from content parts, rendering turns
# as Qwen3's template does without tools or reasoning (see text.QWEN3_PATCH).
MINICPMV_TEMPLATE = chat_template_file("minicpmv")
QUERY_NUM = 4
_MARKERS = ["<unk>", "<image>", "</image>", "<slice>", "</slice>", "<image_id>", "</image_id>", "<think>",
            "</think>"]


def build_minicpmv(out: str | Path) -> None:
    """Tiny remote-code MiniCPM-V 4.5 look-alike: 2-layer NaViT SigLIP (patch 14), 4-query resampler, Qwen3
    LLM; images over 28x28 are sliced (source image + grid), as the published processor slices at 448."""
    tok = make_tokenizer(QWEN_SPECIAL + _MARKERS, QWEN3_TEMPLATE, eos_token="<|im_end|>",
                         pad_token="<|endoftext|>", unk_token="<unk>")
    config = dict(model_type="minicpmv", architectures=["MiniCPMV"], version=4.5, vocab_size=len(tok),
                  hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                  tie_word_embeddings=False, query_num=QUERY_NUM, image_size=28, use_image_id=True,
                  drop_vision_last_layer=False, vision_batch_size=16,
                  slice_config=dict(max_slice_nums=9, patch_size=14, scale_resolution=28),
                  vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                                     num_hidden_layers=2, num_attention_heads=2, image_size=224, patch_size=14),
                  auto_map={"AutoConfig": "configuration_minicpm.MiniCPMVConfig",
                            "AutoModel": "modeling_minicpmv.MiniCPMV",
                            "AutoModelForCausalLM": "modeling_minicpmv.MiniCPMV"})
    processor = {"AutoProcessor": "processing_minicpmv.MiniCPMVProcessor",
                 "AutoImageProcessor": "image_processing_minicpmv.MiniCPMVImageProcessor"}
    image = dict(image_processor_type="MiniCPMVImageProcessor", processor_class="MiniCPMVProcessor",
                 auto_map=processor, max_slice_nums=9, scale_resolution=28, patch_size=14, use_image_id=True,
                 image_feature_size=QUERY_NUM, im_start="<image>", im_end="</image>", slice_start="<slice>",
                 slice_end="</slice>", unk="<unk>", im_id_start="<image_id>", im_id_end="</image_id>",
                 slice_mode=True, norm_mean=[0.5, 0.5, 0.5], norm_std=[0.5, 0.5, 0.5], version=4.5)
    files = {"processor_config.json": dict(processor_class="MiniCPMVProcessor", auto_map=processor),
             "preprocessor_config.json": image}
    build_remote_tiny(out, "minicpmv", config, tok, {k: json.dumps(v, indent=2) for k, v in files.items()})
    tok_config = Path(out) / "tokenizer_config.json"  # the published tokenizer is remote code too
    data = json.loads(tok_config.read_text())
    data.update(tokenizer_class="MiniCPMVTokenizerFast",
                auto_map={"AutoTokenizer": [None, "tokenization_minicpmv_fast.MiniCPMVTokenizerFast"],
                          "AutoProcessor": processor["AutoProcessor"]})
    tok_config.write_text(json.dumps(data, indent=2))


def as_keyword_model(model: torch.nn.Module, processor) -> None:
    """Make the published ``forward(data, **kwargs)`` take a collated batch's keyword tensors.

    A forward pre-hook builds ``data`` from them: each row's image ranges (image_bound) are found from its
    marker tokens, as the published processor finds them, so a packed row of several samples is handled like
    a padded batch; pixel_values / tgt_sizes are split per row by those counts and cut back to each slice's
    own patches; position_ids come from the packed row or the attention mask.
    """
    tok = getattr(processor, "tokenizer", processor)
    starts = torch.tensor([tok.convert_tokens_to_ids(t) for t in ("<image>", "<slice>")])
    ends = torch.tensor([tok.convert_tokens_to_ids(t) for t in ("</image>", "</slice>")])

    def to_data(module, args, kwargs):
        if args or "data" in kwargs:  # already the published call
            return None
        input_ids = kwargs.pop("input_ids")
        pixel_values, tgt_sizes = kwargs.pop("pixel_values", None), kwargs.pop("tgt_sizes", None)
        for stale in ("image_bound", "image_sizes", "temporal_ids", "skip_image_idx"):
            kwargs.pop(stale, None)  # per-sample values of the processor; recomputed for the batch here
        bounds = [image_bounds(row, starts.to(row.device), ends.to(row.device)) for row in input_ids]
        data = {"input_ids": input_ids, "image_bound": bounds,
                "position_ids": kwargs.pop("position_ids", None)}
        if data["position_ids"] is None:
            mask = kwargs.get("attention_mask")
            mask = torch.ones_like(input_ids) if mask is None else mask
            data["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
        data["pixel_values"], data["tgt_sizes"] = split_slices(pixel_values, tgt_sizes, [len(b) for b in bounds])
        return (), {"data": data, **kwargs}

    model.register_forward_pre_hook(to_data, with_kwargs=True)


def image_bounds(row: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """[n, 2] [start, end) token ranges of the image and slice features in one row of token ids."""
    first = torch.nonzero(torch.isin(row, starts)).flatten() + 1
    last = torch.nonzero(torch.isin(row, ends)).flatten()
    if len(first) != len(last):
        raise DataError(f"a row has {len(first)} image/slice start markers but {len(last)} end markers "
                        "(a sample cut through an image?)", field="input_ids")
    return torch.stack([first, last], dim=1)


def split_slices(pixel_values, tgt_sizes, counts: list[int]) -> tuple[list, list]:
    """Per row: its slices' [3, patch, h*w*patch] pixels and its [n, 2] tgt_sizes, from the batch's stacked ones."""
    total = 0 if pixel_values is None else len(pixel_values)
    if total != sum(counts):
        raise DataError(f"the batch has {total} image slices but its tokens mark {sum(counts)} image/slice "
                        "ranges", field="pixel_values")
    pixels, sizes, at = [], [], 0
    for n in counts:
        rows = range(at, at + n)
        patch = pixel_values.shape[2] if n else 0
        pixels.append([pixel_values[i][:, :, : int(tgt_sizes[i][0] * tgt_sizes[i][1]) * patch] for i in rows])
        sizes.append(tgt_sizes[at:at + n] if n else [])
        at += n
    return pixels, sizes


MINICPMV = Family(
    name="minicpmv", model_types=("minicpmv",), auto_class="AutoModelForCausalLM", vision=("vpm",),
    aligner=("resampler",), llm=("llm.model",), lm_head=("llm.lm_head",), lora_targets=DECODER_LORA,
    build_tiny=build_minicpmv, model_class="MiniCPMV (remote code)", processor_class="MiniCPMVProcessor (remote code)",
    end_of_turn="<|im_end|>", chat_template=MINICPMV_TEMPLATE, trust_remote_code=True,
    prepare_model=as_keyword_model,
    notes="template patch: content parts rendered with the (<image>./</image>) placeholder the processor expands; "
          "the published forward(data) takes the collated batch through a forward pre-hook (image_bound from "
          "the marker tokens); packing switches the inner llm's attention",
    support="structure-tested, no real weights: tiny local remote-code look-alike of the published interfaces "
            "(forward(data), sliced pixel_values, image_bound, tgt_sizes); prompt = train prefix, supervised = "
            "replies, 1 sft step with an image, packing parity")
