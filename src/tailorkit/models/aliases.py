"""Model names as the tutorials write them, mapped to a family: ``model: MiniCPM-V-4`` next to
``pretrained_model_path`` in ms-swift's YAML layout.

The family always comes from the checkpoint's own config; a name tailorkit knows is checked against it
before any weight loads (a path pointing at the wrong checkpoint is caught), an unknown one is only recorded.
"""

from __future__ import annotations

import re

# (pattern over the lower-cased name without its organisation, family), most specific first.
NAME_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"minicpm-?v", "minicpmv"),
    (r"monkey", "monkey"),
    (r"phi-?4-?multimodal", "phi4_multimodal"),
    (r"qwen2\.5-?vl", "qwen2_5_vl"),
    (r"qwen2-?vl", "qwen2_vl"),
    (r"qwen3-?vl", "qwen3_vl"),
    (r"qwen2-?audio", "qwen2_audio"),
    (r"internvl", "internvl"),
    (r"llava-?onevision", "llava_onevision"),
    (r"llava-?(next|v1\.6)", "llava_next"),
    (r"llava", "llava"),
    (r"idefics3", "idefics3"),
    (r"smolvlm", "smolvlm"),
    (r"deepseek-?vl", "deepseek_vl"),
    (r"gemma-?3", "gemma3"),
    (r"qwen3", "qwen3"),
    (r"qwen2(\.5)?(?!-?(vl|audio))", "qwen2"),
    (r"phi-?3", "phi3"),
)


def family_of_name(name: str) -> str | None:
    """The family a model name means ('openbmb/MiniCPM-V-4' -> 'minicpmv'), or None for a name not in the table."""
    short = name.strip().rsplit("/", 1)[-1].lower()
    for pattern, family in NAME_PATTERNS:
        if re.search(pattern, short):
            return family
    return None
