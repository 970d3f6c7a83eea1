"""Tiny stand-in for MiniCPM-V's processor interface: the prompt carries one ``(<image>./</image>)`` per
image, which becomes ``<image>`` + query_num ``<unk>`` + ``</image>``; images become pixel_values/tgt_sizes."""

from transformers.processing_utils import ProcessorMixin
from transformers.tokenization_utils_base import BatchEncoding

PLACEHOLDER = "(<image>./</image>)"


class MiniCPMVProcessor(ProcessorMixin):
    def __init__(self, image_processor=None, tokenizer=None, query_num=4, chat_template=None, **kwargs):
        self.query_num = query_num
        self.image_token_id = tokenizer.convert_tokens_to_ids("<unk>")
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    def __call__(self, text=None, images=None, return_tensors=None, **kwargs):
        texts = [text] if isinstance(text, str) else list(text)
        n_images = sum(t.count(PLACEHOLDER) for t in texts)
        if n_images != len(images or []):
            raise ValueError(f"{n_images} {PLACEHOLDER} placeholders but {len(images or [])} images")
        expanded = [t.replace(PLACEHOLDER, "<image>" + "<unk>" * self.query_num + "</image>") for t in texts]
        kwargs.pop("padding", None)
        data = dict(self.tokenizer(expanded, return_tensors=return_tensors, **kwargs))
        if images:
            data.update(self.image_processor(images, return_tensors=return_tensors))
        return BatchEncoding(data=data, tensor_type=return_tensors)
