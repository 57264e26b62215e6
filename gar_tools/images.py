"""Load and validate images: local paths, ``data:`` URIs, raw base64 and (when allowed) http(s) URLs.

Everything a caller sends as an image goes through :func:`load_image`, which returns an RGB
:class:`PIL.Image.Image` with EXIF orientation applied, or raises :class:`~gar_tools.errors.ImageError`
naming the field, what was wrong and what is allowed. Limits live in :class:`ImagePolicy`.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from gar_tools.errors import ImageError
from gar_tools.model.rgb import to_rgb

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "ImagePolicy",
    "read_source_bytes",
    "decode_image_bytes",
    "load_image",
]

DEFAULT_MAX_BYTES = 25 * 1024 * 1024
"""Default cap on the encoded size of one image or mask: 25 MiB."""

DEFAULT_MAX_PIXELS = 40_000_000
"""Default cap on width x height of one image or mask: 40 megapixels."""

_MIN_BASE64_CHARS = 16
_CHUNK = 64 * 1024
_SOURCE_KINDS = "a local file path, a data: URI, raw base64 or an http(s) URL"
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class ImagePolicy:
    """Limits and permissions for reading images and masks.

    Attributes:
        max_bytes: largest encoded image accepted, in bytes (file size, decoded base64, or
            downloaded body). Default 25 MiB (:data:`DEFAULT_MAX_BYTES`).
        max_pixels: largest ``width * height`` accepted. Default 40 000 000
            (:data:`DEFAULT_MAX_PIXELS`). Checked from the image header before pixels are decoded.
            Pillow's own decompression-bomb guard (``PIL.Image.MAX_IMAGE_PIXELS``, about 89 MP by
            default) is honoured too and turned into :class:`~gar_tools.errors.ImageError`.
        allowed_dirs: folders local paths must lie in, after resolving ``~`` and symlinks.
            ``None`` (default) allows any readable local path; servers should set it.
        allow_urls: whether http(s) URLs are fetched. Default ``False``. Note that enabling it lets
            callers make this process fetch any URL it can reach.
        url_timeout_s: overall time limit for one URL download, in seconds. Default 10.
    """

    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    allowed_dirs: tuple[Path, ...] | None = None
    allow_urls: bool = False
    url_timeout_s: float = 10.0
    _resolved_dirs: tuple[Path, ...] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.max_bytes, bool) or not isinstance(self.max_bytes, int) or self.max_bytes <= 0:
            raise ValueError(f"ImagePolicy.max_bytes must be a positive int, got {self.max_bytes!r}")
        if isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, int) or self.max_pixels <= 0:
            raise ValueError(f"ImagePolicy.max_pixels must be a positive int, got {self.max_pixels!r}")
        if not self.url_timeout_s > 0:
            raise ValueError(f"ImagePolicy.url_timeout_s must be > 0, got {self.url_timeout_s!r}")
        if self.allowed_dirs is not None:
            if isinstance(self.allowed_dirs, (str, os.PathLike)):
                raise ValueError("ImagePolicy.allowed_dirs must be a sequence of folders, not a single path")
            dirs = tuple(Path(d).expanduser() for d in self.allowed_dirs)
            object.__setattr__(self, "allowed_dirs", dirs)
            object.__setattr__(self, "_resolved_dirs", tuple(d.resolve() for d in dirs))

    def path_allowed(self, path: Path) -> bool:
        """Whether the already resolved ``path`` lies inside one of :attr:`allowed_dirs` (always true if unset)."""
        if self._resolved_dirs is None:
            return True
        return any(path.is_relative_to(d) for d in self._resolved_dirs)


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB" if n >= 1024 * 1024 else f"{n} bytes"


def _too_big(size: int | None, policy: ImagePolicy, field: str, what: str) -> ImageError:
    got = f" ({_mib(size)})" if size is not None else ""
    return ImageError(f"{what} is larger than the limit of {_mib(policy.max_bytes)}{got}", field=field)


def _existing_file(source: str) -> Path | None:
    """The expanded path if ``source`` names an existing file (or folder), else None; never raises."""
    if not source or "\x00" in source or len(source) > 4096 or "\n" in source:
        return None
    try:
        path = Path(source).expanduser()
        return path if path.exists() else None
    except (OSError, ValueError, RuntimeError):
        return None


def _read_path(path: Path, policy: ImagePolicy, field: str) -> bytes:
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise ImageError(f"cannot resolve path {str(path)!r}: {exc}", field=field) from exc
    if not policy.path_allowed(resolved):
        allowed = ", ".join(str(d) for d in policy.allowed_dirs or ())
        raise ImageError(
            f"path {str(path)!r} is outside the allowed folders ({allowed}); "
            "pass a file inside them, or the image as a data: URI or base64",
            field=field,
        )
    if not resolved.is_file():
        raise ImageError(f"path {str(path)!r} is not a regular file", field=field)
    try:
        size = resolved.stat().st_size
        if size > policy.max_bytes:
            raise _too_big(size, policy, field, f"file {str(path)!r}")
        with resolved.open("rb") as fh:
            data = fh.read(policy.max_bytes + 1)
    except OSError as exc:
        raise ImageError(f"cannot read file {str(path)!r}: {exc.strerror or exc}", field=field) from exc
    if len(data) > policy.max_bytes:
        raise _too_big(None, policy, field, f"file {str(path)!r}")
    return data


def _decode_base64(text: str, policy: ImagePolicy, field: str, what: str) -> bytes | None:
    """Strict base64 (standard or URL-safe alphabet) of ``text`` ignoring whitespace; None if not base64."""
    compact = _WHITESPACE.sub("", text)
    if len(compact) * 3 // 4 > policy.max_bytes + 2:
        raise _too_big(len(compact) * 3 // 4, policy, field, what)
    for altchars in (None, b"-_"):
        try:
            data = base64.b64decode(compact, altchars=altchars, validate=True)
        except (binascii.Error, ValueError):
            continue
        if len(data) > policy.max_bytes:
            raise _too_big(len(data), policy, field, what)
        return data
    return None


def _read_data_uri(source: str, policy: ImagePolicy, field: str) -> bytes:
    header, sep, payload = source.partition(",")
    if not sep:
        raise ImageError("malformed data: URI, expected 'data:image/png;base64,<data>'", field=field)
    params = header[len("data:") :].split(";")
    if "base64" in (p.strip().lower() for p in params[1:]):
        data = _decode_base64(payload, policy, field, "data: URI payload")
        if data is None:
            raise ImageError("data: URI payload is not valid base64", field=field)
        return data
    if len(payload) > 3 * policy.max_bytes:
        raise _too_big(None, policy, field, "data: URI payload")
    data = urllib.parse.unquote_to_bytes(payload)
    if len(data) > policy.max_bytes:
        raise _too_big(len(data), policy, field, "data: URI payload")
    return data


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise urllib.error.URLError(f"redirect to a non-http(s) URL refused: {newurl}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _read_url(url: str, policy: ImagePolicy, field: str) -> bytes:
    if not policy.allow_urls:
        raise ImageError(
            "URLs are not allowed here (URL fetching is disabled); pass a local file path, a data: URI or base64",
            field=field,
        )
    opener = urllib.request.build_opener(_HttpOnlyRedirects())
    request = urllib.request.Request(url, headers={"User-Agent": "gar-tools", "Accept": "image/*"})
    deadline = time.monotonic() + policy.url_timeout_s
    try:
        with opener.open(request, timeout=policy.url_timeout_s) as response:
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > policy.max_bytes:
                raise _too_big(int(length), policy, field, f"URL {url!r}")
            chunks: list[bytes] = []
            total = 0
            while True:
                if time.monotonic() > deadline:
                    raise ImageError(
                        f"URL {url!r} took longer than {policy.url_timeout_s:g} s to download", field=field
                    )
                chunk = response.read(_CHUNK)
                if not chunk:
                    break
                total += len(chunk)
                if total > policy.max_bytes:
                    raise _too_big(None, policy, field, f"URL {url!r}")
                chunks.append(chunk)
    except ImageError:
        raise
    except urllib.error.HTTPError as exc:
        raise ImageError(f"URL {url!r} returned HTTP {exc.code} {exc.reason}", field=field) from exc
    except urllib.error.URLError as exc:
        raise ImageError(f"cannot fetch URL {url!r}: {exc.reason}", field=field) from exc
    except TimeoutError as exc:
        raise ImageError(f"URL {url!r} timed out after {policy.url_timeout_s:g} s", field=field) from exc
    except (OSError, ValueError) as exc:
        raise ImageError(f"cannot fetch URL {url!r}: {exc}", field=field) from exc
    return b"".join(chunks)


def read_source_bytes(source: str, policy: ImagePolicy, *, field: str) -> bytes:
    """Return the raw bytes an image (or mask) source refers to, enforcing ``policy``.

    ``source`` is tried, in order, as:

    1. an existing local file (``~`` expanded); it must lie inside ``policy.allowed_dirs`` when set,
       symlinks resolved;
    2. a ``data:`` URI (``data:image/png;base64,...``; percent-encoded payloads work too);
    3. an ``http://`` or ``https://`` URL, fetched only when ``policy.allow_urls`` is true, within
       ``policy.url_timeout_s`` and with the body capped at ``policy.max_bytes`` while streaming;
    4. raw base64 (standard or URL-safe alphabet, whitespace ignored, padding required).

    Raises:
        ImageError: naming ``field``, when the source is none of these, is not allowed, cannot be read, or is
            larger than ``policy.max_bytes``.
    """
    if not isinstance(source, str):
        raise ImageError(f"expected a string ({_SOURCE_KINDS}), got {type(source).__name__}", field=field)
    text = source.strip()
    if not text:
        raise ImageError(f"is empty; expected {_SOURCE_KINDS}", field=field)
    path = _existing_file(text)
    if path is not None:
        return _read_path(path, policy, field)
    lowered = text[:8].lower()
    if lowered.startswith("data:"):
        return _read_data_uri(text, policy, field)
    if lowered.startswith(("http://", "https://")):
        return _read_url(text, policy, field)
    if len(text) >= _MIN_BASE64_CHARS:
        data = _decode_base64(text, policy, field, "base64 data")
        if data is not None:
            return data
    shown = text if len(text) <= 80 else text[:77] + "..."
    raise ImageError(
        f"{shown!r} is not an existing file, data: URI, base64 or URL (expected {_SOURCE_KINDS})", field=field
    )


def _check_pixels(size: tuple[int, int], policy: ImagePolicy, field: str) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(f"image has an empty size {width}x{height}", field=field)
    if width * height > policy.max_pixels:
        raise ImageError(
            f"image is {width}x{height} = {width * height:,} pixels, more than the limit of {policy.max_pixels:,}; "
            "downscale it first",
            field=field,
        )


def _formats_hint() -> str:
    common = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
    registered = set(Image.registered_extensions().values())
    return ", ".join(f for f in common if f in registered) + " and other Pillow formats"


def decode_image_bytes(data: bytes, policy: ImagePolicy, *, field: str) -> Image.Image:
    """Decode encoded image bytes with Pillow, checking pixel limits before decoding.

    Returns the first frame, fully loaded, EXIF orientation applied, in its original mode (no
    colour conversion; :func:`load_image` converts to RGB). Raises :class:`ImageError` naming ``field``
    for unreadable data, truncated files, decompression bombs or images over ``policy.max_pixels``.
    """
    if len(data) > policy.max_bytes:
        raise _too_big(len(data), policy, field, "image data")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _check_pixels(image.size, policy, field)
            image.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(
            f"image declares a size over the decompression-bomb limit ({exc}); at most {policy.max_pixels:,} pixels "
            "are allowed",
            field=field,
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"data is not a readable image (expected {_formats_hint()})", field=field) from exc
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
        raise ImageError(f"image data is corrupt or truncated: {exc}", field=field) from exc
    _check_pixels(image.size, policy, field)
    return _exif_transposed(image)


def _exif_transposed(image: Image.Image) -> Image.Image:
    try:
        transposed = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make a readable image unusable
        return image
    return transposed if transposed is not None else image


def load_image(
    source: str | bytes | Image.Image, policy: ImagePolicy | None = None, *, field: str = "image"
) -> Image.Image:
    """Load an image for GAR: any Pillow format, EXIF orientation applied, converted to RGB.

    Args:
        source: a local path, ``data:`` URI, raw base64 or http(s) URL (see :func:`read_source_bytes`);
            for library callers also encoded image ``bytes`` or an open :class:`PIL.Image.Image`
            (validated and converted the same way; the caller's image is not modified).
        policy: limits and permissions; default ``ImagePolicy()`` (25 MiB, 40 megapixels, any local
            path, no URLs).
        field: the request field named in error messages. Default ``"image"``.

    Returns:
        A new RGB image. Alpha is dropped (colours kept as stored, like upstream GAR's
        ``.convert("RGB")``); 16-bit and float images are scaled to 8 bits; animated images give their
        first frame.

    Raises:
        ImageError: naming ``field``, saying what was wrong and what is allowed.
    """
    policy = policy if policy is not None else ImagePolicy()
    if isinstance(source, Image.Image):
        _check_pixels(source.size, policy, field)
        try:
            source.load()
            image = _exif_transposed(source)
            return to_rgb(image)
        except (OSError, ValueError) as exc:
            raise ImageError(f"cannot read the given PIL image: {exc}", field=field) from exc
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        data = read_source_bytes(source, policy, field=field)
    image = decode_image_bytes(data, policy, field=field)
    try:
        return to_rgb(image)
    except (OSError, ValueError) as exc:
        raise ImageError(f"cannot convert the image to RGB: {exc}", field=field) from exc
