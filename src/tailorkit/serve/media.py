"""Images named in API requests, under the operator's policy: checked before anything is read or fetched.

data: URIs are always accepted; http(s) URLs only with --allow_remote_media (size-bounded, no redirects);
server-local files (plain paths or file:// URLs) only inside --media_root. Everything else is refused.
An image's size is read from its header and checked (per image and per request) before it is decoded,
so a small file that would decode to gigabytes (a decompression bomb) costs nothing.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from .errors import ApiError


FORMATS = ("PNG", "JPEG", "WEBP", "GIF")  # what OpenAI's API takes; no other Pillow decoder sees request bytes
MAX_PATH_CHARS = 4096
MAX_NAME_BYTES = 255  # one path component, as most file systems allow


@dataclass(frozen=True)
class MediaPolicy:
    allow_remote: bool = False
    media_root: str | None = None
    max_remote_bytes: int = 20 * 1024 * 1024  # also bounds files read from media_root
    timeout_s: float = 10.0
    max_image_pixels: int = 4096 * 4096
    max_request_pixels: int = 2 * 4096 * 4096
    max_images: int = 16


def load_request_images(urls: list, policy: MediaPolicy, param: str) -> list:
    """Decoded RGB images for a request's ``image_url``s, within the policy's count and pixel limits."""
    if len(urls) > policy.max_images:
        raise ApiError(400, f"the request has {len(urls)} images; this server takes at most {policy.max_images} "
                            "per request (--max_images_per_request)", param=param)
    left, images = policy.max_request_pixels, []
    for url in urls:
        image = _open(request_image_bytes(url, policy, param), param)
        width, height = image.size
        if width * height > policy.max_image_pixels:
            raise ApiError(400, f"an image is {width}x{height} = {width * height} pixels; this server takes at most "
                                f"{policy.max_image_pixels} pixels per image (--max_image_pixels)", param=param)
        left -= width * height
        if left < 0:
            raise ApiError(400, f"the request's images have more than {policy.max_request_pixels} pixels together "
                                "(--max_request_pixels)", param=param)
        images.append(_decode(image, param))
    return images


def request_image_bytes(url: str, policy: MediaPolicy, param: str) -> bytes:
    """The bytes of an ``image_url`` of a request; a refused or unreadable one is an ApiError (400)."""
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
    return data


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
    check_path_text(url, param)
    root = Path(policy.media_root).resolve()
    try:
        target = (root / url).resolve()
        if not target.is_relative_to(root):
            raise ApiError(400, "the image path is outside the server's media root", param=param)
        if not target.is_file():
            raise ApiError(400, "the image file does not exist in the server's media root", param=param)
        size = target.stat().st_size
    except (OSError, RuntimeError) as e:  # a symlink loop, a name the file system refuses
        raise ApiError(400, f"cannot open the image path: {e.strerror or type(e).__name__}", param=param) from None
    if size > policy.max_remote_bytes:
        raise ApiError(400, f"the image file is larger than {policy.max_remote_bytes} bytes", param=param)
    return target


def check_path_text(path: str, param: str) -> None:
    """Refuse a path the file system must never see: NUL bytes, over-long paths or names."""
    if "\0" in path:
        raise ApiError(400, "the image path contains a NUL byte", param=param)
    if len(path) > MAX_PATH_CHARS:
        raise ApiError(400, f"the image path is longer than {MAX_PATH_CHARS} characters", param=param)
    if any(len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES for name in path.split("/")):
        raise ApiError(400, f"a name in the image path is longer than {MAX_NAME_BYTES} bytes", param=param)


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
    except (httpx.HTTPError, httpx.InvalidURL, ValueError) as e:  # InvalidURL is no HTTPError
        raise ApiError(400, f"cannot fetch the image: {type(e).__name__}", param=param) from None


def _open(data: bytes, param: str):
    """The image with only its header read (size and format known, pixels not decoded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError:
        raise ApiError(400, "the image is larger than this server's pixel limit (--max_image_pixels)",
                       param=param) from None
    except UnidentifiedImageError:
        raise ApiError(400, f"the data is not an image in a supported format ({', '.join(FORMATS)})",
                       param=param) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ApiError(400, f"cannot read the image header: {e}", param=param) from None


def _decode(image, param: str):
    from PIL import Image

    try:
        image.load()
        return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ApiError(400, f"cannot decode the image: {e}", param=param) from None
    finally:
        image.close()
