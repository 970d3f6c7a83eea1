"""Fixtures of the export tests: a tiny Qwen2.5-VL whose layer sizes suit GPTQ/AWQ, shapes rows."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_vl_quant_dir(tiny_vl_dir, tmp_path_factory):
    """The tiny Qwen2.5-VL with 4 key/value heads: AWQ's clipping search needs every output size to be a multiple
    of 64 (real models' are), and the stock tiny build's k/v projections have 32 outputs."""
    from transformers import AutoConfig, AutoProcessor, Qwen2_5_VLForConditionalGeneration

    out = tmp_path_factory.mktemp("tiny-vl-quant")
    config = AutoConfig.from_pretrained(tiny_vl_dir)
    config.text_config.num_key_value_heads = 4
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(out)
    AutoProcessor.from_pretrained(tiny_vl_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def shapes_rows(tmp_path_factory):
    """Six image conversations (coloured shapes) in jsonl: calibration and held-out rows."""
    from tailorkit.demo.shapes import write_split

    return write_split(tmp_path_factory.mktemp("shapes"), "train", 6, seed=0)
