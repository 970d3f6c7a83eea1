"""Monkey / Monkey-Chat (remote code only, Qwen-VL layout): ``transformer.visual`` ViT whose ``attn_pool``
resampler is the aligner, ``transformer.{wte,h,ln_f}`` LLM and ``lm_head``.

Monkey ships a tokenizer and no processor: its QWenTokenizer turns ``<img>PATH</img>`` into the bytes of
PATH padded with ``<imgpad>`` to a fixed span, and the model opens the image file itself and writes its
features over that span. ``MonkeyProcessor`` is tailorkit's side of that interface: each decoded image is
written once to a file named by its content, and the file's path goes between the tags. Tests run against a
tiny local remote-code directory (models/remote_code/monkey) with the published tokenizer, tags and modules.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from pathlib import Path

from ..errors import DataError
from .family import Family, chat_template_file
from .remote import build_remote_tiny

# Monkey ships no chat template; its README prompts with "<img>{path}</img> {question} Answer: ". The patch
# renders that layout from content parts, one turn after another, closing each answer with <|endoftext|>;
# MonkeyProcessor writes the path into each <img></img>.
MONKEY_TEMPLATE = chat_template_file("monkey")
N_QUERIES = 16  # per crop; 4 windows + the whole image = the tokenizer's 80-token image span
IMAGE_TAGS = ("<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>", "<img>", "</img>", "<imgpad>")
SPECIAL = 3 + 205  # <|endoftext|>, <|im_start|>, <|im_end|> and <|extra_0..204|>, after the 256 byte tokens


def build_monkey(out: str | Path) -> None:
    """Tiny remote-code Monkey look-alike: byte-level QWenTokenizer (80-token image span), 2-block ViT on 28 px
    crops with a 16-query resampler, 2-block QWen LLM."""
    vocab = "".join(f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(256))
    image_start_id = 256 + SPECIAL + IMAGE_TAGS.index("<img>")
    config = dict(model_type="monkey", architectures=["MonkeyLMHeadModel"], vocab_size=256 + SPECIAL + len(IMAGE_TAGS),
                  hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, fp32=True,
                  eos_token_id=256, pad_token_id=256,
                  visual=dict(image_size=28, patch_size=14, width=32, layers=2, heads=2, n_queries=N_QUERIES,
                              image_start_id=image_start_id),
                  auto_map={"AutoConfig": "configuration_monkey.MonkeyConfig",
                            "AutoModelForCausalLM": "modeling_monkey.MonkeyLMHeadModel"})
    tokenizer_config = dict(tokenizer_class="QWenTokenizer", model_max_length=8192,
                            auto_map={"AutoTokenizer": ["tokenization_qwen.QWenTokenizer", None]})
    build_remote_tiny(out, "monkey", config, None, {"qwen.tiktoken": vocab,
                                                    "tokenizer_config.json": json.dumps(tokenizer_config, indent=2)})


def image_cache() -> Path:
    """Where MonkeyProcessor writes images: the user's cache folder (XDG_CACHE_HOME, else ~/.cache)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tailorkit" / "monkey-images"


class ImageFiles:
    """Monkey's image processing on our side: each image written once as PNG, named by its pixels; its path."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __call__(self, images: list) -> list[str]:
        paths = []
        for image in images:
            digest = hashlib.sha256(f"{image.mode}{image.size}".encode() + image.tobytes()).hexdigest()[:16]
            path = self.folder / f"{digest}.png"
            if not path.is_file():
                self.folder.mkdir(parents=True, exist_ok=True)
                partial = path.with_suffix(f".{os.getpid()}.tmp")
                image.save(partial, format="PNG")
                partial.replace(path)  # whole or absent: another process may write the same image
            paths.append(str(path))
        return paths


class MonkeyProcessor:
    """The processor Monkey does not ship, over its own tokenizer: images become the file paths its tags carry."""

    # An image's tokens are the bytes of its path, named by its pixels: the encoder indexes the span's length from
    # the image header and takes the ids from this processor when the batch decodes the image.
    ids_from_media = True

    def __init__(self, tokenizer, folder: Path | None = None):
        self.tokenizer = tokenizer
        self.image_processor = ImageFiles(folder or image_cache())
        self.image_token_id = tokenizer.img_pad_id  # the span's padding: media, never supervised
        if tokenizer.pad_token is None:  # as Monkey's finetune script: pad with <|endoftext|>
            tokenizer.pad_token = "<|endoftext|>"

    @property
    def chat_template(self):
        return self.tokenizer.chat_template

    @chat_template.setter
    def chat_template(self, value):
        self.tokenizer.chat_template = value

    def apply_chat_template(self, messages, **kwargs):
        return self.tokenizer.apply_chat_template(messages, **kwargs)

    def __call__(self, text=None, images=None, return_tensors=None, **kwargs):
        texts = [text] if isinstance(text, str) else list(text)
        paths = iter(self.image_processor(list(images or [])))
        placeholders = sum(t.count("<img></img>") for t in texts)
        if placeholders != len(images or []):
            raise DataError(f"{placeholders} <img></img> placeholders but {len(images or [])} images")
        span = self.tokenizer.IMG_TOKEN_SPAN
        expanded = [re.sub(r"<img></img>", lambda _: f"<img>{next(paths)}</img>", t) for t in texts]
        for path in re.findall(r"<img>(.*?)</img>", "".join(expanded)):
            if len(path.encode()) > span:
                raise DataError(f"Monkey's tokenizer carries image paths of at most {span} bytes and {path} is "
                                "longer", fix="set XDG_CACHE_HOME to a shorter folder")
        return self.tokenizer(expanded, return_tensors=return_tensors, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def save_pretrained(self, folder, **kwargs):
        """The tokenizer's files with the chat template used (the image files are not part of a checkpoint)."""
        return self.tokenizer.save_pretrained(folder, **kwargs)


MONKEY = Family(
    packing_refusal=(
        "the remote-code model builds its own causal mask and rotary positions from the sequence length and takes "
        "no segment boundaries, so packed samples would attend to each other"),
    name="monkey", model_types=("monkey",), auto_class="AutoModelForCausalLM", vision=("transformer.visual",),
    aligner=("transformer.visual.attn_pool",), llm=("transformer.wte", "transformer.h", "transformer.ln_f"),
    lora_targets=("c_attn", "c_proj", "w1", "w2"), build_tiny=build_monkey,
    model_class="MonkeyLMHeadModel (remote code)",
    processor_class="MonkeyProcessor (tailorkit's, over the remote-code QWenTokenizer)",
    end_of_turn="<|endoftext|>", chat_template=MONKEY_TEMPLATE, trust_remote_code=True,
    wrap_processor=MonkeyProcessor,
    notes="template patch: Monkey has no chat template (README layout '<img>PATH</img> Q Answer: A'); the model "
          "reads images from the paths inside <img></img>, so MonkeyProcessor writes each decoded image once to "
          "~/.cache/tailorkit/monkey-images (named by its pixels) and puts that path there",
    support="structure-tested, no real weights: tiny local remote-code look-alike (QWenTokenizer with the "
            "<img>PATH</img> span, model reading image files, module names); prompt = train prefix, supervised = "
            "replies, 1 sft step with an image")
