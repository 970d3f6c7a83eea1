"""Media shapes read from file headers, without decoding pixels, frames or samples.

What a processor makes of a medium (how many tokens, which tokens) depends on its shape only: an image's
size as a viewer shows it (EXIF rotation applied), a video's sampled frames, their size and timing, an
audio clip's length at the feature extractor's rate. ``data/expand.py`` turns a shape into the tokens the
processor expands it to, so encoded lengths are exact before any pixel is decoded.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from ..errors import DataError
from .media import Video, read_media_bytes, resolve_path, sample_indices, shown_source, video_bytes, video_stream

_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class Shape:
    """What a processor's expansion of one medium depends on.

    image: (width, height); video: (frames kept, width, height, frames in the file, file fps, kept frame
    numbers); audio: (samples at the feature extractor's rate,).
    """

    kind: str
    key: tuple


def image_shape(src, base_dir: str | None = None, *, source: str | None = None, line: int | None = None,
                field: str = "images") -> Shape:
    """The size of an image as ``media.load_image`` would return it, from its header only."""
    from PIL import Image, UnidentifiedImageError

    where = dict(source=source, line=line, field=field)
    if isinstance(src, Image.Image):
        return Shape("image", _viewed_size(src))
    if isinstance(src, dict):  # {"bytes": ..., "path": ...} as written by `datasets`
        src = src.get("bytes") or src.get("path")
    try:
        if isinstance(src, bytes) or str(src).startswith(("data:", "http://", "https://")):
            handle = io.BytesIO(src if isinstance(src, bytes) else read_media_bytes(str(src), base_dir))
        else:
            handle = open(resolve_path(str(src), base_dir), "rb")  # noqa: SIM115 - closed below
        with handle, Image.open(handle) as image:
            frames = getattr(image, "n_frames", 1)
            size = _viewed_size(image)
    except FileNotFoundError:
        raise DataError(f"image file {resolve_path(str(src), base_dir)} does not exist", **where,
                        fix="fix the path; relative paths resolve against the dataset file's folder") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        why = "not a recognised image format" if isinstance(e, UnidentifiedImageError) else str(e)
        raise DataError(f"cannot decode image {shown_source(src)}: {why}", **where,
                        fix="replace or remove the corrupt file") from None
    if frames > 1:
        raise DataError(f"image {shown_source(src)} is animated ({frames} frames); one image would silently stand "
                        "for all of them", **where,
                        fix="give it under 'videos' (decoded frame by frame) or save the frame you mean as PNG")
    return Shape("image", size)


def _viewed_size(image) -> tuple[int, int]:
    width, height = image.size
    if image.getexif().get(_EXIF_ORIENTATION, 1) in _ROTATED:
        return height, width
    return width, height


def video_shape(src, base_dir: str | None = None, *, fps: float | None = None, max_frames: int | None = None,
                source: str | None = None, line: int | None = None, field: str = "videos") -> Shape:
    """The frames ``media.load_video`` would keep and their size, from the container's headers (a file whose
    header does not count its frames is counted by decoding, as ``load_video`` does)."""
    where = dict(source=source, line=line, field=field)
    if isinstance(src, list):
        if not src:
            raise DataError("a video given as frames needs at least one frame", **where)
        keep = sample_indices(len(src), None, None, max_frames)
        width, height = image_shape(src[keep[0]], base_dir, **where).key
        return Shape("video", (len(keep), width, height, len(src), None, tuple(keep)))
    data, shown = video_bytes(src, base_dir, where)
    total, rate, width, height = _video_header(data, shown, where)
    keep = sample_indices(total, rate, fps, max_frames)
    return Shape("video", (len(keep), width, height, total, rate, tuple(keep)))


def _video_header(data: bytes, shown: str, where: dict) -> tuple[int, float | None, int, int]:
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            stream, rate, total = video_stream(container, shown, where)
            width, height = stream.codec_context.width, stream.codec_context.height
    except av.error.FFmpegError as e:
        raise DataError(f"cannot decode video {shown}: {e}", **where, fix="replace or remove the corrupt file") \
            from None
    if not total:
        raise DataError(f"cannot decode video {shown}: it holds no frames", **where,
                        fix="replace or remove the corrupt file")
    return total, rate, width, height


def audio_shape(src, base_dir: str | None, rate: int | None, *, source: str | None = None,
                line: int | None = None, field: str = "audios") -> Shape:
    """The number of samples ``media.load_audio`` + ``media.at_rate`` would give, from the wav header."""
    import wave

    where = dict(source=source, line=line, field=field)
    if isinstance(src, dict) and "array" in src:
        n, own = len(src["array"]), int(src["sampling_rate"])
    else:
        try:
            data = read_media_bytes(str(src), base_dir)
            with wave.open(io.BytesIO(data)) as w:
                if w.getsampwidth() not in (1, 2, 4):
                    raise DataError(f"unsupported wav sample width {w.getsampwidth()} bytes", **where)
                n, own = w.getnframes(), w.getframerate()
        except FileNotFoundError:
            raise DataError(f"audio file {resolve_path(str(src), base_dir)} does not exist", **where,
                            fix="fix the path; relative paths resolve against the dataset file's folder") from None
        except (wave.Error, EOFError, ValueError) as e:
            if isinstance(e, DataError):
                raise
            raise DataError(f"cannot decode audio {str(src)[:60]}: {e}", **where,
                            fix="give PCM .wav audio (or a `datasets` Audio column)") from None
    if rate is not None and own != rate and n:
        n = max(1, int(round(n * rate / own)))
    return Shape("audio", (n,))


def blank(shape: Shape):
    """A medium of ``shape`` with blank content: what a processor's probe runs on (its expansion depends on the
    shape only)."""
    import numpy as np

    if shape.kind == "image":
        from PIL import Image

        return Image.new("RGB", shape.key)
    if shape.kind == "video":
        n, width, height, total, rate, keep = shape.key
        return Video([np.zeros((height, width, 3), dtype=np.uint8)] * n, list(keep), total, rate)
    return np.zeros(shape.key[0], dtype=np.float32)
