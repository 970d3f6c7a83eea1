"""Tiny stand-in for MiniCPM-V 4.5's image processor, with its published interface: each image becomes a
source image plus slices (a grid chosen by aspect ratio when the image is larger than
``scale_resolution``), each laid out by ``reshape_by_patch`` as [3, patch, H*W/patch]; outputs are nested
per-text lists (pixel_values, image_sizes, tgt_sizes, temporal_ids, skip_image_idx) in a
MiniCPMVBatchFeature. Videos (temporal_ids) are not part of the stand-in."""

import math

import numpy as np
import torch
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature


def _convert_nested(fn, value):
    return [_convert_nested(fn, v) for v in value] if isinstance(value, list) else fn(value)


class MiniCPMVBatchFeature(BatchFeature):
    """A BatchFeature whose values may be nested lists of arrays of different shapes."""

    def __init__(self, data=None, tensor_type=None):
        super().__init__(data)
        self.convert_to_tensors(tensor_type=tensor_type)

    def convert_to_tensors(self, tensor_type=None):
        if tensor_type is None:
            return self
        is_tensor, as_tensor = self._get_is_as_tensor_fns(tensor_type)
        for key, value in self.items():
            self[key] = _convert_nested(lambda v: v if is_tensor(v) else as_tensor(v), value)
        return self


class MiniCPMVImageProcessor(BaseImageProcessor):
    model_input_names = ["pixel_values"]

    def __init__(self, max_slice_nums=9, scale_resolution=448, patch_size=14, **kwargs):
        self.use_image_id = kwargs.pop("use_image_id", False)
        self.image_feature_size = kwargs.pop("image_feature_size", 64)
        self.im_start_token, self.im_end_token = kwargs.pop("im_start", "<image>"), kwargs.pop("im_end", "</image>")
        self.slice_start_token = kwargs.pop("slice_start", "<slice>")
        self.slice_end_token = kwargs.pop("slice_end", "</slice>")
        self.unk_token = kwargs.pop("unk", "<unk>")
        self.im_id_start = kwargs.pop("im_id_start", "<image_id>")
        self.im_id_end = kwargs.pop("im_id_end", "</image_id>")
        self.slice_mode = kwargs.pop("slice_mode", True)
        self.mean = np.array(kwargs.pop("norm_mean", [0.5, 0.5, 0.5]), dtype=np.float32)
        self.std = np.array(kwargs.pop("norm_std", [0.5, 0.5, 0.5]), dtype=np.float32)
        self.version = kwargs.pop("version", 2.0)
        super().__init__(**kwargs)
        self.max_slice_nums, self.scale_resolution, self.patch_size = max_slice_nums, scale_resolution, patch_size

    # ---- slicing: sizes are multiples of the patch size; the grid follows the aspect ratio -----------------

    @staticmethod
    def ensure_divide(length, patch_size):
        return max(round(length / patch_size) * patch_size, patch_size)

    def find_best_resize(self, original_size, scale_resolution, patch_size, allow_upscale=False):
        width, height = original_size
        if width * height > scale_resolution * scale_resolution or allow_upscale:
            ratio = width / height
            height = int(scale_resolution / math.sqrt(ratio))
            width = int(height * ratio)
        return self.ensure_divide(width, patch_size), self.ensure_divide(height, patch_size)

    def get_refine_size(self, original_size, grid, scale_resolution, patch_size, allow_upscale=False):
        width, height = original_size
        cell = (self.ensure_divide(width, grid[0]) / grid[0], self.ensure_divide(height, grid[1]) / grid[1])
        best = self.find_best_resize(cell, scale_resolution, patch_size, allow_upscale=allow_upscale)
        return best[0] * grid[0], best[1] * grid[1]

    @staticmethod
    def split_to_patches(image, grid):
        width, height = image.size
        step_x, step_y = int(width / grid[0]), int(height / grid[1])
        return [[image.crop((x, y, x + step_x, y + step_y)) for x in range(0, width, step_x)]
                for y in range(0, height, step_y)]

    def get_sliced_grid(self, image_size, max_slice_nums, nerver_split=False):
        width, height = image_size
        multiple = min(math.ceil(width * height / self.scale_resolution ** 2), max_slice_nums)
        if multiple <= 1 or nerver_split:
            return None
        grids = [[m, n // m] for n in (multiple - 1, multiple, multiple + 1) if 1 < n <= max_slice_nums
                 for m in range(1, n + 1) if n % m == 0]
        log_ratio = math.log(width / height)
        return min(grids, key=lambda g: abs(log_ratio - math.log(g[0] / g[1])))

    def slice_image(self, image, max_slice_nums=9, scale_resolution=448, patch_size=14, never_split=False):
        grid = self.get_sliced_grid(image.size, max_slice_nums, never_split)
        if grid is None:
            size = self.find_best_resize(image.size, scale_resolution, patch_size, allow_upscale=True)
            return image.resize(size, resample=Image.Resampling.BICUBIC), [], None
        source = image.resize(self.find_best_resize(image.size, scale_resolution, patch_size),
                              resample=Image.Resampling.BICUBIC)
        refine = image.resize(self.get_refine_size(image.size, grid, scale_resolution, patch_size, True),
                              resample=Image.Resampling.BICUBIC)
        return source, self.split_to_patches(refine, grid), grid

    def get_sliced_images(self, image, max_slice_nums=None):
        if not self.slice_mode:
            return [image]
        max_slice_nums = self.max_slice_nums if max_slice_nums is None else int(max_slice_nums)
        source, patches, _ = self.slice_image(image, max_slice_nums, self.scale_resolution, self.patch_size)
        return [source] + [p for row in patches for p in row]

    # ---- placeholders: what the processor writes for each image -------------------------------------------

    def get_grid_placeholder(self, grid):
        if grid is None:
            return ""
        one = self.slice_start_token + self.unk_token * self.image_feature_size + self.slice_end_token
        return "\n".join(one * grid[0] for _ in range(grid[1]))

    def get_image_id_placeholder(self, idx=0):
        return f"{self.im_id_start}{idx}{self.im_id_end}"

    def get_slice_image_placeholder(self, image_size, image_idx=0, max_slice_nums=None, use_image_id=None):
        max_slice_nums = self.max_slice_nums if max_slice_nums is None else int(max_slice_nums)
        grid = self.get_sliced_grid(image_size, max_slice_nums)
        text = self.im_start_token + self.unk_token * self.image_feature_size + self.im_end_token
        if self.use_image_id if use_image_id is None else use_image_id:
            text = self.get_image_id_placeholder(image_idx) + text
        return text + self.get_grid_placeholder(grid) if self.slice_mode else text

    # ---- pixels --------------------------------------------------------------------------------------------

    def reshape_by_patch(self, image):
        """[3, H, W] -> [3, patch, H*W/patch]: patches side by side, row by row."""
        p = self.patch_size
        patches = torch.nn.functional.unfold(torch.from_numpy(image), (p, p), stride=(p, p))
        return patches.reshape(image.shape[0], p, p, -1).permute(0, 1, 3, 2).reshape(image.shape[0], p, -1).numpy()

    def preprocess(self, images, do_pad=True, max_slice_nums=None, temporal_ids=None, return_tensors=None,
                   **kwargs):
        if temporal_ids is not None:
            raise ValueError("the tiny stand-in processes images; video frame groups (temporal_ids) are not in it")
        images_list = [[images]] if isinstance(images, Image.Image) else [images] if isinstance(
            images[0], Image.Image) else images
        data = {k: [] for k in ("pixel_values", "image_sizes", "tgt_sizes", "temporal_ids", "skip_image_idx")}
        for sample in images_list:
            pixels, sizes, tgt, tp_ids = [], [], [], []
            for image in sample or []:
                image = image.convert("RGB")
                sizes.append(image.size)
                for part in self.get_sliced_images(image, max_slice_nums):
                    array = ((np.asarray(part, dtype=np.float32) / 255.0 - self.mean) / self.std).transpose(2, 0, 1)
                    pixels.append(self.reshape_by_patch(np.ascontiguousarray(array)))
                    tgt.append(np.array((array.shape[1] // self.patch_size, array.shape[2] // self.patch_size)))
                    tp_ids.append([-1])
            data["pixel_values"].append(pixels)
            data["image_sizes"].append(sizes)
            data["tgt_sizes"].append(np.vstack(tgt) if tgt else [])
            data["temporal_ids"].append(tp_ids)
            data["skip_image_idx"].append([])
        return MiniCPMVBatchFeature(data=data, tensor_type=return_tensors)
