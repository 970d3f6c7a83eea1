"""Open media given as a path (relative to the dataset file), an http(s) URL or a base64 data URI."""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
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
    """A decoded RGB PIL image as a viewer shows it; unreadable media is a DataError naming the row.

    EXIF orientation is applied (a phone photo stored sideways is turned upright), 16-bit and 32-bit
    greyscale is scaled to 8 bits (a plain conversion clips it to almost white), and an animated image is
    refused: its first frame alone would silently stand for it (give it under ``videos`` instead).
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(src, Image.Image):
        return as_viewed(src)
    if isinstance(src, dict):  # {"bytes": ..., "path": ...} as written by `datasets`
        src = src.get("bytes") or src.get("path")
    where = dict(source=source, line=line, field=field)
    try:
        data = src if isinstance(src, bytes) else read_media_bytes(str(src), base_dir)
        image = Image.open(io.BytesIO(data))
        image.load()
    except FileNotFoundError:
        raise DataError(f"image file {resolve_path(str(src), base_dir)} does not exist", **where,
                        fix="fix the path; relative paths resolve against the dataset file's folder") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        why = "not a recognised image format" if isinstance(e, UnidentifiedImageError) else str(e)
        raise DataError(f"cannot decode image {shown_source(src)}: {why}", **where,
                        fix="replace or remove the corrupt file") from None
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        raise DataError(f"image {shown_source(src)} is animated ({frames} frames); one image would silently stand "
                        "for all of them", **where,
                        fix="give it under 'videos' (decoded frame by frame) or save the frame you mean as PNG")
    return as_viewed(image)


def shown_source(src) -> str:
    """A media source for an error message: paths and URLs whole, inline data cut short."""
    text = str(src) if not isinstance(src, bytes) else f"<{len(src)} bytes>"
    if not text.startswith("data:"):
        return text
    return text[:60] + ("..." if len(text) > 60 else "")


def as_viewed(image):
    """RGB as an image viewer shows it: EXIF rotation applied, high bit depths scaled (not clipped) to 8 bits."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        import numpy as np
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() <= 65535 else float(2 ** 32 - 1)
        image = Image.fromarray(np.clip(np.rint(values * 255.0 / top), 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":  # float pixels are taken as 0..1
        import numpy as np
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


@dataclass
class Video:
    """Decoded frames of one video (sampled by --fps / --video_max_frames) and where they came from."""

    frames: list  # RGB frames (numpy HxWx3 uint8 for files, PIL images for frame lists)
    indices: list[int]  # frame numbers of ``frames`` in the whole video
    total: int  # frames in the whole video
    fps: float | None  # the file's frame rate; None for a frame list

    def metadata(self):
        """transformers' VideoMetadata: the processor derives time steps (Qwen's second_per_grid_ts) from it."""
        from transformers.video_utils import VideoMetadata

        first = self.frames[0]
        height, width = (first.shape[:2] if hasattr(first, "shape") else (first.height, first.width))
        return VideoMetadata(total_num_frames=self.total, fps=self.fps, frames_indices=list(self.indices),
                             duration=self.total / self.fps if self.fps else None, height=height, width=width,
                             video_backend="pyav")


def sample_indices(total: int, video_fps: float | None, fps: float | None, max_frames: int | None) -> list[int]:
    """Frame numbers kept from a video of ``total`` frames: ``fps`` frames per second of its duration (evenly
    spread, at least one), then at most ``max_frames`` of those, evenly spread."""
    import numpy as np

    picked = list(range(total))
    if fps is not None and video_fps:
        n = min(total, max(1, int(total / video_fps * fps)))
        picked = [int(i) for i in np.linspace(0, total - 1, n).round()]
    if max_frames is not None and len(picked) > max_frames:
        picked = [picked[int(i)] for i in np.linspace(0, len(picked) - 1, max_frames).round()]
    return picked


def load_video(src, base_dir: str | None = None, *, fps: float | None = None, max_frames: int | None = None,
               source: str | None = None, line: int | None = None, field: str = "videos") -> Video:
    """A video's frames, sampled at ``fps`` and capped at ``max_frames``: a file, URL or data URI decoded
    with PyAV (mp4, webm, mkv, avi, gif ...), or a list of frame images (taken as already sampled at an
    unknown rate: only ``max_frames`` applies)."""
    where = dict(source=source, line=line, field=field)
    if isinstance(src, list):
        if not src:
            raise DataError("a video given as frames needs at least one frame", **where)
        keep = sample_indices(len(src), None, None, max_frames)
        return Video([load_image(src[i], base_dir, **where) for i in keep], keep, len(src), None)
    data, shown = video_bytes(src, base_dir, where)
    return _decode_video(data, shown, fps, max_frames, where)


def video_bytes(src, base_dir: str | None, where: dict) -> tuple[bytes, str]:
    """(the bytes of a video file, URL, data URI or `datasets` dict, how errors show it); DataError when unreadable."""
    if isinstance(src, dict):  # {"bytes": ..., "path": ...} as written by `datasets`
        src = src.get("bytes") or src.get("path")
    try:
        data = src if isinstance(src, bytes) else read_media_bytes(str(src), base_dir)
    except FileNotFoundError:
        raise DataError(f"video file {resolve_path(str(src), base_dir)} does not exist", **where,
                        fix="fix the path; relative paths resolve against the dataset file's folder") from None
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read video {shown_source(src)}: {e}", **where) from None
    return data, shown_source(src)


def video_stream(container, shown: str, where: dict):
    """(the first video stream of an open PyAV container, its frame rate or None, its number of frames); a
    header that does not count the frames has them decoded and counted, then the container is rewound."""
    if not container.streams.video:
        raise DataError(f"video {shown} has no video stream", **where, fix="give a video file")
    stream = container.streams.video[0]
    rate = float(stream.average_rate or stream.guessed_rate or 0) or None
    total = stream.frames
    if not total:
        total = sum(1 for _ in container.decode(stream))
        container.seek(0)
    return stream, rate, total


def _decode_video(data: bytes, shown: str, fps: float | None, max_frames: int | None, where: dict) -> Video:
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            stream, rate, total = video_stream(container, shown, where)
            keep = sample_indices(total, rate, fps, max_frames)
            wanted, frames = set(keep), []
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    frames.append(frame.to_ndarray(format="rgb24"))
    except av.error.FFmpegError as e:
        raise DataError(f"cannot decode video {shown}: {e}", **where, fix="replace or remove the corrupt file") \
            from None
    if not frames or len(frames) < len(keep):
        raise DataError(f"cannot decode video {shown}: {len(frames)} of the {total} frames it declares could be "
                        "decoded", **where, fix="replace or remove the corrupt file")
    return Video(frames, keep, total, rate)


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


def at_rate(samples, rate: int, target: int | None):
    """Audio samples at the feature extractor's sampling rate (linear interpolation when they differ): the
    extractor takes bare arrays at its own rate, so audio at another rate would silently play at the wrong
    speed."""
    import numpy as np

    if target is None or rate == target or len(samples) == 0:
        return samples
    n = max(1, int(round(len(samples) * target / rate)))
    return np.interp(np.arange(n) * (rate / target), np.arange(len(samples)), samples).astype(np.float32)
