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
    """Cheap existence check for preflight: URLs and data URIs count as present."""
    if not isinstance(src, str) or src.startswith(("data:", "http://", "https://")):
        return True
    return resolve_path(src, base_dir).is_file()


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
        raise DataError(f"cannot decode image {shown}: {e}", source=source, line=line, field=field,
                        fix="replace or remove the corrupt file") from None
