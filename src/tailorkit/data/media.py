"""Open media given as a path (relative to the dataset file), an http(s) URL or a base64 data URI."""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path

from ..errors import DataError


def resolve_path(src: str, base_dir: str | None) -> Path:
    path = Path(src).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return path


def media_exists(src, base_dir: str | None) -> bool:
    """Cheap existence check for preflight: URLs and data URIs count as present; frame lists need every frame."""
    if isinstance(src, list):
        return all(media_exists(s, base_dir) for s in src)
    if not isinstance(src, str) or src.startswith(("data:", "http://", "https://")):
        return True
    return resolve_path(src, base_dir).is_file()


def missing_media(src, base_dir: str | None) -> Path | None:
    """The first missing local file of a media item (a path or a list of frame paths), or None."""
    for item in (src if isinstance(src, list) else [src]):
        if not media_exists(item, base_dir):
            return resolve_path(item, base_dir)
    return None


def read_media_bytes(src: str, base_dir: str | None) -> bytes:
    if src.startswith("data:"):
        try:
            return base64.b64decode(src.split(",", 1)[1], validate=True)
        except (IndexError, binascii.Error) as e:
            raise ValueError(f"invalid base64 data URI: {e}") from None
    if src.startswith(("http://", "https://")):
        import urllib.request
        with urllib.request.urlopen(src, timeout=30) as resp:  # noqa: S310 - user's own dataset
            return resp.read()
    return resolve_path(src, base_dir).read_bytes()


def load_image(src, base_dir: str | None = None, *, source: str | None = None, line: int | None = None,
               field: str = "images"):
    """A decoded RGB PIL image; unreadable media is a DataError naming the row."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(src, Image.Image):
        return src.convert("RGB")
    if isinstance(src, dict):  # {"bytes": ..., "path": ...} as written by `datasets`
        src = src.get("bytes") or src.get("path")
    try:
        data = src if isinstance(src, bytes) else read_media_bytes(str(src), base_dir)
        image = Image.open(io.BytesIO(data))
        image.load()
        return image.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"image file {resolve_path(str(src), base_dir)} does not exist", source=source, line=line,
                        field=field, fix="fix the path; relative paths resolve against the dataset file's folder")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        shown = str(src)[:60] + ("..." if len(str(src)) > 60 else "")
        why = "not a recognised image format" if isinstance(e, UnidentifiedImageError) else str(e)
        raise DataError(f"cannot decode image {shown}: {why}", source=source, line=line, field=field,
                        fix="replace or remove the corrupt file") from None


def load_video(src, base_dir: str | None = None, *, source: str | None = None, line: int | None = None,
               field: str = "videos"):
    """A video as a list of decoded frames (given as a list of images), or the resolved file/URL for the
    processor to decode (it needs a video backend such as av or decord)."""
    if isinstance(src, list):
        if not src:
            raise DataError("a video given as frames needs at least one frame", source=source, line=line, field=field)
        return [load_image(f, base_dir, source=source, line=line, field=field) for f in src]
    if isinstance(src, str) and not src.startswith(("data:", "http://", "https://")):
        path = resolve_path(src, base_dir)
        if not path.is_file():
            raise DataError(f"video file {path} does not exist", source=source, line=line, field=field,
                            fix="fix the path; relative paths resolve against the dataset file's folder")
        _need_video_backend(str(path), source=source, line=line, field=field)
        return str(path)
    return src


def _need_video_backend(path: str, **where) -> None:
    """Video files are decoded by the processor through av, decord, torchcodec or opencv; one must be installed."""
    import importlib.util

    if not any(importlib.util.find_spec(m) for m in ("av", "decord", "torchcodec", "cv2")):
        raise DataError(f"cannot decode video {path}: no video decoder is installed", **where,
                        fix="pip install av, or give the video as a list of frame images")


def load_audio(src, base_dir: str | None = None, *, source: str | None = None, line: int | None = None,
               field: str = "audios"):
    """(mono float32 samples, sampling rate) from a PCM .wav file/URL/data URI or a `datasets` audio dict."""
    import wave

    import numpy as np

    if isinstance(src, dict) and "array" in src:
        return np.asarray(src["array"], dtype=np.float32), int(src["sampling_rate"])
    try:
        data = read_media_bytes(str(src), base_dir)
        with wave.open(io.BytesIO(data)) as w:
            width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
            raw = w.readframes(w.getnframes())
    except FileNotFoundError:
        raise DataError(f"audio file {resolve_path(str(src), base_dir)} does not exist", source=source, line=line,
                        field=field, fix="fix the path; relative paths resolve against the dataset file's folder")
    except (wave.Error, EOFError, ValueError) as e:
        raise DataError(f"cannot decode audio {str(src)[:60]}: {e}", source=source, line=line, field=field,
                        fix="give PCM .wav audio (or a `datasets` Audio column)") from None
    kinds = {1: (np.uint8, 128.0, 128.0), 2: (np.int16, 0.0, 32768.0), 4: (np.int32, 0.0, 2147483648.0)}
    if width not in kinds:
        raise DataError(f"unsupported wav sample width {width} bytes", source=source, line=line, field=field)
    dtype, offset, scale = kinds[width]
    samples = (np.frombuffer(raw, dtype=dtype).astype(np.float32) - offset) / scale
    return samples.reshape(-1, channels).mean(axis=1), rate
