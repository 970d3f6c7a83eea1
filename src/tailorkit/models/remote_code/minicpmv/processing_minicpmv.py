"""Tiny stand-in for MiniCPM-V 4.5's processor, with its published interface: each ``(<image>./</image>)``
in a text becomes the image processor's placeholder (``<image>`` + query_num ``<unk>`` + ``</image>``, then
one ``<slice>...</slice>`` per slice); texts are tokenized and left-padded; ``image_bound`` holds the
[start, end) token range of every image and slice; pixel_values / tgt_sizes stay nested per text."""

import torch
from transformers.processing_utils import ProcessorMixin

from .image_processing_minicpmv import MiniCPMVBatchFeature

PLACEHOLDER = "(<image>./</image>)"


class MiniCPMVProcessor(ProcessorMixin):
    attributes = ["image_processor", "tokenizer"]

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        self.version = image_processor.version

    def __call__(self, text, images=None, max_length=None, do_pad=True, max_slice_nums=None, use_image_id=None,
                 temporal_ids=None, return_tensors="pt", **kwargs):
        image_inputs = None
        if images is not None:
            image_inputs = self.image_processor(images, do_pad=do_pad, max_slice_nums=max_slice_nums,
                                                temporal_ids=temporal_ids, return_tensors=return_tensors)
        return self._convert_images_texts_to_inputs(image_inputs, text, max_slice_nums=max_slice_nums,
                                                    use_image_id=use_image_id, max_length=max_length,
                                                    return_tensors=return_tensors, **kwargs)

    def _convert(self, input_str, max_inp_length=None):
        input_ids = torch.tensor(self.tokenizer.encode(input_str)[:max_inp_length], dtype=torch.int32)
        tok = self.tokenizer
        starts = torch.where((input_ids == tok.im_start_id) | (input_ids == tok.slice_start_id))[0] + 1
        ends = torch.where((input_ids == tok.im_end_id) | (input_ids == tok.slice_end_id))[0]
        n = max(len(starts), len(ends))
        return input_ids, torch.hstack([starts[:n].unsqueeze(-1), ends[:n].unsqueeze(-1)])

    def _convert_images_texts_to_inputs(self, images, texts, truncation=None, max_length=None, max_slice_nums=None,
                                        use_image_id=None, return_tensors=None, **kwargs):
        if images is None or not len(images):
            inputs = self.tokenizer(texts, return_tensors=return_tensors, truncation=truncation,
                                    max_length=max_length, **kwargs)
            return MiniCPMVBatchFeature(data={**inputs})
        texts = [texts] if isinstance(texts, str) else texts
        image_sizes = images["image_sizes"]
        ids_list, bounds_list = [], []
        for index, text in enumerate(texts):
            chunks = text.split(PLACEHOLDER)
            if len(chunks) - 1 != len(image_sizes[index]):
                raise ValueError(f"{len(chunks) - 1} {PLACEHOLDER} placeholders but {len(image_sizes[index])} images")
            final = "".join(chunk + self.image_processor.get_slice_image_placeholder(
                image_sizes[index][i], i, max_slice_nums, use_image_id) for i, chunk in enumerate(chunks[:-1]))
            ids, bounds = self._convert(final + chunks[-1], max_length)
            ids_list.append(ids)
            bounds_list.append(bounds)
        padded, padding = self.pad(ids_list, padding_side="left")
        bounds_list = [b + n for b, n in zip(bounds_list, padding)]
        return MiniCPMVBatchFeature(data={"input_ids": padded, "attention_mask": padded.ne(0),
                                          "pixel_values": images["pixel_values"], "image_sizes": image_sizes,
                                          "image_bound": bounds_list, "tgt_sizes": images["tgt_sizes"],
                                          "temporal_ids": images["temporal_ids"]})

    @staticmethod
    def pad(inputs, padding_value=0, padding_side="left"):
        width = max(len(x) for x in inputs)
        out = torch.full((len(inputs), width), padding_value, dtype=inputs[0].dtype)
        for i, x in enumerate(inputs):
            if padding_side == "left":
                out[i, width - len(x):] = x
            else:
                out[i, :len(x)] = x
        return out, [width - len(x) for x in inputs]

    @property
    def model_input_names(self):
        return list(dict.fromkeys(self.tokenizer.model_input_names + self.image_processor.model_input_names))
