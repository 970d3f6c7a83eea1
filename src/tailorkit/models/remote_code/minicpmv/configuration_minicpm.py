"""Tiny stand-in for openbmb/MiniCPM-V-4_5's remote configuration (a Qwen3 config plus vision fields)."""

from transformers import Qwen3Config


class MiniCPMVConfig(Qwen3Config):
    """Extra fields (query_num, image_size, patch_size, vision_config) are kept as plain attributes."""

    model_type = "minicpmv"
