"""Qwen2-VL and Qwen2.5-VL: ViT with a patch merger (the aligner) and a Qwen2 LLM with 3-D mRoPE."""

from .family import Family
from .tiny import build_qwen2_5_vl

_COMMON = dict(
    auto_class="AutoModelForImageTextToText",
    vision=("model.visual",),
    aligner=("model.visual.merger",),
    llm=("model.language_model",),
)

QWEN2_5_VL = Family(name="qwen2_5_vl", model_types=("qwen2_5_vl",), build_tiny=build_qwen2_5_vl,
                    notes="3-D mRoPE position ids; the processor expands <|image_pad|> per image grid", **_COMMON)
QWEN2_VL = Family(name="qwen2_vl", model_types=("qwen2_vl",), **_COMMON)
