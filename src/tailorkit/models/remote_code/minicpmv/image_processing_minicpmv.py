"""Tiny stand-in for MiniCPM-V's image processor: one slice per image (no slicing), with tgt_sizes."""

import numpy as np
import torch
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature


class MiniCPMVImageProcessor(BaseImageProcessor):
    model_input_names = ["pixel_values", "tgt_sizes"]

    def __init__(self, image_size=28, patch_size=14, norm_mean=(0.5, 0.5, 0.5), norm_std=(0.5, 0.5, 0.5), **kwargs):
        super().__init__(**kwargs)
        self.image_size, self.patch_size = image_size, patch_size
        self.norm_mean, self.norm_std = list(norm_mean), list(norm_std)

    def preprocess(self, images, return_tensors=None, **kwargs):
        images = images if isinstance(images, (list, tuple)) else [images]
        arrays = []
        for image in images:
            image = image.convert("RGB").resize((self.image_size, self.image_size))
            mean, std = np.float32(self.norm_mean), np.float32(self.norm_std)
            array = (np.asarray(image, dtype=np.float32) / 255.0 - mean) / std
            arrays.append(torch.from_numpy(array).permute(2, 0, 1))
        side = self.image_size // self.patch_size
        data = {"pixel_values": torch.stack(arrays), "tgt_sizes": torch.tensor([[side, side]] * len(arrays))}
        return BatchFeature(data=data, tensor_type=return_tensors)
