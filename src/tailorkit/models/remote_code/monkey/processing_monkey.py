"""Tiny stand-in for Monkey's image interface: each ``<img></img>`` in the prompt becomes ``<img>`` +
n_queries ``<imgpad>`` + ``</img>`` and the images become pixel_values at the vision tower's size."""

import numpy as np
import torch
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.tokenization_utils_base import BatchEncoding

PLACEHOLDER = "<img></img>"


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


class MonkeyProcessor(ProcessorMixin):
    def __init__(self, image_processor=None, tokenizer=None, n_queries=4, chat_template=None, **kwargs):
        self.n_queries = n_queries
        self.image_token_id = tokenizer.convert_tokens_to_ids("<imgpad>")
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    def __call__(self, text=None, images=None, return_tensors=None, **kwargs):
        texts = [text] if isinstance(text, str) else list(text)
        n_images = sum(t.count(PLACEHOLDER) for t in texts)
        if n_images != len(images or []):
            raise ValueError(f"{n_images} {PLACEHOLDER} placeholders but {len(images or [])} images")
        expanded = [t.replace(PLACEHOLDER, "<img>" + "<imgpad>" * self.n_queries + "</img>") for t in texts]
        kwargs.pop("padding", None)
        data = dict(self.tokenizer(expanded, return_tensors=return_tensors, **kwargs))
        if images:
            data.update(self.image_processor(images, return_tensors=return_tensors))
        return BatchEncoding(data=data, tensor_type=return_tensors)
