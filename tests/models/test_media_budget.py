"""The image token budget is applied to the processor, saved with it, and reloads identically."""

from __future__ import annotations

import pytest
from PIL import Image

from tailorkit.config.train import ModelArgs
from tailorkit.data.encode import encode_prompt
from tailorkit.data.formats import Conversation
from tailorkit.errors import ConfigError
from tailorkit.models.load import load_processor
from tailorkit.models.media_budget import apply_media_budget

IMAGE = Image.new("RGB", (224, 224), "red")  # 256 patches: 64 image tokens with the tiny model's defaults


def image_tokens(processor) -> int:
    conv = Conversation(messages=[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}])
    ids = encode_prompt(conv, processor, images=[IMAGE]).input_ids
    return ids.count(processor.image_token_id)


def test_max_pixels_is_applied_saved_and_reloaded(tiny_vl_dir, tmp_path):
    default = image_tokens(load_processor(str(tiny_vl_dir)))
    proc = load_processor(str(tiny_vl_dir))
    applied = apply_media_budget(proc, ModelArgs(model=str(tiny_vl_dir), max_pixels=28 * 28 * 4, min_pixels=28 * 28))
    assert applied == {"max_pixels": 28 * 28 * 4, "min_pixels": 28 * 28}
    budgeted = image_tokens(proc)
    assert budgeted == 4 < default
    proc.save_pretrained(tmp_path)
    assert image_tokens(load_processor(str(tmp_path))) == budgeted  # what inference from the checkpoint sees


def test_min_pixels_raises_the_token_count(tiny_vl_dir):
    proc = load_processor(str(tiny_vl_dir))
    small = Image.new("RGB", (28, 28), "red")
    conv = Conversation(messages=[{"role": "user", "content": [{"type": "image"}]}])
    before = encode_prompt(conv, proc, images=[small]).input_ids.count(proc.image_token_id)
    apply_media_budget(proc, ModelArgs(model=str(tiny_vl_dir), min_pixels=28 * 28 * 4))
    after = encode_prompt(conv, proc, images=[small]).input_ids.count(proc.image_token_id)
    assert (before, after) == (1, 4)


def test_video_settings_are_applied_and_saved(tiny_vl_dir, tmp_path):
    proc = load_processor(str(tiny_vl_dir))
    apply_media_budget(proc, ModelArgs(model=str(tiny_vl_dir), video_max_frames=8, fps=1.5))
    proc.save_pretrained(tmp_path)
    video = load_processor(str(tmp_path)).video_processor
    assert (video.max_frames, video.fps) == (8, 1.5)


def test_budget_on_a_model_without_one_is_an_error(tiny_text_dir):
    tok = load_processor(str(tiny_text_dir))
    with pytest.raises(ConfigError, match="drop these settings"):
        apply_media_budget(tok, ModelArgs(model=str(tiny_text_dir), max_pixels=1000))
    with pytest.raises(ConfigError, match="min_pixels 2000 is larger than max_pixels 1000"):
        ModelArgs(model="m", max_pixels=1000, min_pixels=2000)
