"""Tiny stand-in for Monkey's (Qwen-VL's) QWenTokenizer, with its published interface: a tiktoken-format
vocabulary file (``qwen.tiktoken``: base64 token, rank), byte-level BPE over Qwen's pre-tokenizer pattern,
the special tokens after the mergeable ranks (<|endoftext|>, <|im_start|>, <|im_end|>, extras, then <ref>
</ref> <box> </box> <quad> </quad> <img> </img> <imgpad>), and the image tag: ``<img>PATH</img>`` becomes
<img>, the bytes of PATH, <imgpad> up to IMG_TOKEN_SPAN, </img> (published span: 1280, the number of
features Monkey's vision side writes there; this one: 80). Encoding is plain Python instead of tiktoken."""

import base64
import os
import unicodedata

import regex
from transformers import PreTrainedTokenizer

VOCAB_FILES_NAMES = {"vocab_file": "qwen.tiktoken"}
PAT_STR = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"""
           r"""\s+(?!\S)|\s+""")
ENDOFTEXT, IMSTART, IMEND = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
EXTRAS = tuple(f"<|extra_{i}|>" for i in range(205))
SPECIAL_TOKENS = (ENDOFTEXT, IMSTART, IMEND) + EXTRAS


def _load_tiktoken_bpe(path):
    with open(path, "rb") as f:
        return {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in f.read().splitlines()
                                                                    if line)}


def _replace_closed_tag(tokens, start, end, inside):
    """Every run start ... end of ``tokens`` replaced by ``inside(run)``."""
    out, i = [], 0
    while i < len(tokens):
        if tokens[i] != start:
            out.append(tokens[i])
            i += 1
            continue
        close = tokens.index(end, i) if end in tokens[i:] else -1
        if close == -1:
            raise ValueError("Unclosed image token")
        out.extend(inside(tokens[i:close + 1]))
        i = close + 1
    return out


class QWenTokenizer(PreTrainedTokenizer):
    vocab_files_names = VOCAB_FILES_NAMES
    IMG_TOKEN_SPAN = 80

    def __init__(self, vocab_file, errors="replace", image_start_tag="<img>", image_end_tag="</img>",
                 image_pad_tag="<imgpad>", ref_start_tag="<ref>", ref_end_tag="</ref>", box_start_tag="<box>",
                 box_end_tag="</box>", quad_start_tag="<quad>", quad_end_tag="</quad>", **kwargs):
        self.image_start_tag, self.image_end_tag, self.image_pad_tag = image_start_tag, image_end_tag, image_pad_tag
        self.IMAGE_ST = (ref_start_tag, ref_end_tag, box_start_tag, box_end_tag, quad_start_tag, quad_end_tag,
                         image_start_tag, image_end_tag, image_pad_tag)
        self.errors = errors
        self.mergeable_ranks = _load_tiktoken_bpe(vocab_file)
        self.special_tokens = {t: i for i, t in enumerate(SPECIAL_TOKENS + self.IMAGE_ST,
                                                          start=len(self.mergeable_ranks))}
        self.decoder = {v: k for k, v in self.mergeable_ranks.items()}
        self.decoder.update({v: k for k, v in self.special_tokens.items()})
        self.img_start_id = self.special_tokens[image_start_tag]
        self.img_end_id = self.special_tokens[image_end_tag]
        self.img_pad_id = self.special_tokens[image_pad_tag]
        self.eod_id = self.special_tokens[ENDOFTEXT]
        self.im_start_id, self.im_end_id = self.special_tokens[IMSTART], self.special_tokens[IMEND]
        self._split = regex.compile("(" + "|".join(regex.escape(t) for t in sorted(self.special_tokens, key=len,
                                                                                    reverse=True)) + ")")
        self._pattern = regex.compile(PAT_STR)
        super().__init__(**kwargs)

    def __len__(self):
        return len(self.mergeable_ranks) + len(self.special_tokens)

    @property
    def vocab_size(self):
        return len(self)

    def get_vocab(self):
        return {**{k.decode("latin-1"): v for k, v in self.mergeable_ranks.items()}, **self.special_tokens}

    def _add_tokens(self, new_tokens, special_tokens=False):
        for token in new_tokens:
            if str(token) not in self.special_tokens:
                raise ValueError("Adding unknown special tokens is not supported")
        return 0

    def _bpe(self, piece: bytes) -> list[bytes]:
        """tiktoken's merge: repeatedly join the adjacent pair of lowest rank that is itself a token."""
        parts = [piece[i:i + 1] for i in range(len(piece))]
        while len(parts) > 1:
            ranks = [self.mergeable_ranks.get(parts[i] + parts[i + 1]) for i in range(len(parts) - 1)]
            best = min((r, i) for i, r in enumerate(ranks) if r is not None) if any(
                r is not None for r in ranks) else None
            if best is None:
                break
            i = best[1]
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        return parts

    def tokenize(self, text, allowed_special="all", disallowed_special=(), **kwargs):
        tokens = []
        for chunk in self._split.split(unicodedata.normalize("NFC", text)):
            if chunk in self.special_tokens:
                tokens.append(chunk)
            elif chunk:
                for piece in self._pattern.findall(chunk):
                    tokens.extend(self._bpe(piece.encode("utf-8")))

        def encode_image_url(run):
            url = b"".join(t if isinstance(t, bytes) else t.encode("utf-8") for t in run[1:-1])
            out = [self.decoder[b] for b in url]  # as published: the token whose id is the byte's value
            if len(out) > self.IMG_TOKEN_SPAN:
                raise ValueError(f"The content in {self.image_start_tag}..{self.image_end_tag} is too long")
            return [self.image_start_tag, *out, *[self.image_pad_tag] * (self.IMG_TOKEN_SPAN - len(out)),
                    self.image_end_tag]

        return _replace_closed_tag(tokens, self.image_start_tag, self.image_end_tag, encode_image_url)

    def convert_tokens_to_ids(self, tokens):
        if isinstance(tokens, (str, bytes)):
            return self._convert_token_to_id(tokens)
        return [self._convert_token_to_id(t) for t in tokens]

    def _convert_token_to_id(self, token):
        if token in self.special_tokens:
            return self.special_tokens[token]
        if isinstance(token, str):
            token = token.encode("utf-8")
        if token in self.mergeable_ranks:
            return self.mergeable_ranks[token]
        raise ValueError(f"unknown token {token!r}")

    def _convert_id_to_token(self, index):
        if index in self.decoder:
            return self.decoder[index]
        raise ValueError("unknown ids")

    def convert_tokens_to_string(self, tokens):
        text, pending = "", b""
        for t in tokens:
            if isinstance(t, bytes):
                pending += t
                continue
            text += pending.decode("utf-8", errors=self.errors) + t
            pending = b""
        return text + pending.decode("utf-8", errors=self.errors)

    def _decode(self, token_ids, skip_special_tokens=False, errors=None, **kwargs):
        ids = [token_ids] if isinstance(token_ids, int) else list(token_ids)

        def decode_image_url(run):  # the path again, not the padded span
            inner = run[1:-1]
            inner = inner[: inner.index(self.img_pad_id)] if self.img_pad_id in inner else inner
            return [self.img_start_id, *inner, self.img_end_id]

        ids = _replace_closed_tag(ids, self.img_start_id, self.img_end_id, decode_image_url)
        if skip_special_tokens:
            ids = [i for i in ids if i < self.eod_id]
        return self.convert_tokens_to_string([self.decoder[i] for i in ids])

    def save_vocabulary(self, save_directory, filename_prefix=None):
        path = os.path.join(save_directory, (filename_prefix + "-" if filename_prefix else "") + "qwen.tiktoken")
        with open(path, "w", encoding="utf8") as f:
            for token, rank in self.mergeable_ranks.items():
                f.write(base64.b64encode(token).decode("utf8") + " " + str(rank) + "\n")
        return (path,)
