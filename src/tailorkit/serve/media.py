"""Images named in API requests, under the operator's policy: checked before anything is read or fetched.

data: URIs are always accepted; http(s) URLs only with --allow_remote_media (size-bounded, no redirects);
server-local files (plain paths or file:// URLs) only inside --media_root. Everything else is refused.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from .errors import ApiError


@dataclass(frozen=True)
class MediaPolicy:
    allow_remote: bool = False
    media_root: str | None = None
    max_remote_bytes: int = 20 * 1024 * 1024
    timeout_s: float = 10.0


def load_request_image(url: str, policy: MediaPolicy, param: str):
    """A decoded RGB image for an ``image_url`` of a request; a refused or unreadable one is an ApiError (400)."""
    if not isinstance(url, str) or not url:
        raise ApiError(400, "image_url.url must be a non-empty string", param=param)
    scheme = urlparse(url).scheme.lower() if "://" in url or url.startswith("data:") else ""
    if scheme == "data":
        data = _data_uri_bytes(url, param)
    elif scheme in ("http", "https"):
        if not policy.allow_remote:
            raise ApiError(400, "image URLs are not fetched by this server (the operator can allow them with "
                                "--allow_remote_media); send the image as a data: URI", param=param)
        data = fetch_remote(url, policy, param)
    elif scheme in ("", "file"):
        data = read_local(local_path(url, scheme, policy, param))
    else:
        raise ApiError(400, f"unsupported image URL scheme {scheme!r}; use a data: URI", param=param)
    return _decode(data, param)


def _data_uri_bytes(url: str, param: str) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep or ";base64" not in header:
        raise ApiError(400, "a data URI image must look like data:image/png;base64,<data>", param=param)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ApiError(400, f"the data URI is not valid base64: {e}", param=param) from None


def local_path(url: str, scheme: str, policy: MediaPolicy, param: str) -> Path:
    """The file a request names, if it lies inside --media_root (symlinks and '..' resolved first)."""
    if policy.media_root is None:
        raise ApiError(400, "server-local image paths are not allowed by this server (the operator can allow a "
                            "folder with --media_root); send the image as a data: URI", param=param)
    if scheme == "file":
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise ApiError(400, "file:// URLs must not name a host", param=param)
        url = unquote(parsed.path)
    root = Path(policy.media_root).resolve()
    target = (root / url).resolve()
    if not target.is_relative_to(root):
        raise ApiError(400, "the image path is outside the server's media root", param=param)
    if not target.is_file():
        raise ApiError(400, "the image file does not exist in the server's media root", param=param)
    return target


def read_local(path: Path) -> bytes:
    return path.read_bytes()


def fetch_remote(url: str, policy: MediaPolicy, param: str) -> bytes:
    """GET ``url`` without following redirects, refusing bodies over the size limit."""
    import httpx

    try:
        with httpx.stream("GET", url, timeout=policy.timeout_s, follow_redirects=False) as resp:
            if resp.status_code != 200:
                raise ApiError(400, f"fetching the image gave HTTP {resp.status_code}", param=param)
            chunks, size = [], 0
            for chunk in resp.iter_bytes():
                size += len(chunk)
                if size > policy.max_remote_bytes:
                    raise ApiError(400, f"the image at the URL is larger than {policy.max_remote_bytes} bytes",
                                   param=param)
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as e:
        raise ApiError(400, f"cannot fetch the image: {type(e).__name__}", param=param) from None


def _decode(data: bytes, param: str):
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise ApiError(400, f"cannot decode the image: {e}", param=param) from None
