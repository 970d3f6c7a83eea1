"""Tiny stand-in for Monkey's image interface: each ``<img></img>`` in the prompt becomes ``<img>`` +
n_queries ``<imgpad>`` + ``</img>`` and the images become pixel_values at the vision tower's size."""

import numpy as np
import torch
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

from .tiny_remote_common import PlaceholderProcessor


class MonkeyImageProcessor(BaseImageProcessor):
    model_input_names = ["pixel_values"]

    def __init__(self, image_size=28, mean=(0.48145466, 0.4578275, 0.40821073),
                 std=(0.26862954, 0.26130258, 0.27577711), **kwargs):
        super().__init__(**kwargs)
        self.image_size, self.mean, self.std = image_size, list(mean), list(std)

    def preprocess(self, images, return_tensors=None, **kwargs):
        images = images if isinstance(images, (list, tuple)) else [images]
        mean, std = np.float32(self.mean), np.float32(self.std)
        arrays = [torch.from_numpy((np.asarray(im.convert("RGB").resize((self.image_size,) * 2), dtype=np.float32)
                                    / 255.0 - mean) / std).permute(2, 0, 1) for im in images]
        return BatchFeature(data={"pixel_values": torch.stack(arrays)}, tensor_type=return_tensors)


class MonkeyProcessor(PlaceholderProcessor):
    placeholder, start, pad, end = "<img></img>", "<img>", "<imgpad>", "</img>"
