"""Load and validate images: local paths, ``data:`` URIs, raw base64 and (when allowed) http(s) URLs.

Everything a caller sends as an image goes through :func:`load_image`, which returns an RGB
:class:`PIL.Image.Image` with EXIF orientation applied, or raises :class:`~gar_tools.errors.ImageError`
naming the field, what was wrong and what is allowed. Limits live in :class:`ImagePolicy`.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import io
import ipaddress
import os
import re
import socket
import ssl
import threading
import time
import urllib.parse
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from gar_tools.errors import ImageError
from gar_tools.model.rgb import to_rgb

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "MAX_REDIRECTS",
    "MEMORY_BYTES_PER_PIXEL",
    "MEMORY_OVERHEAD_BYTES",
    "ImagePolicy",
    "UrlTarget",
    "address_refusal",
    "check_url",
    "read_source_bytes",
    "decode_image_bytes",
    "load_image",
]

DEFAULT_MAX_BYTES = 25 * 1024 * 1024
"""Default cap on the encoded size of one image or mask: 25 MiB."""

DEFAULT_MAX_PIXELS = 40_000_000
"""Default cap on width x height of one image or mask: 40 megapixels."""

MEMORY_BYTES_PER_PIXEL = 17
"""Peak bytes per image pixel of decoding one request's image and up to 5 regions (see :class:`ImagePolicy`)."""

MEMORY_OVERHEAD_BYTES = 16 * 1024 * 1024
"""Fixed part of that bound: block buffers and decoder state, 16 MiB."""

MAX_REDIRECTS = 5
"""Most redirects followed for one URL; each target is checked like the first URL."""

_MIN_BASE64_CHARS = 16
_MAX_URL_CHARS = 8192
_REDIRECTS = (301, 302, 303, 307, 308)
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_CHUNK = 64 * 1024
_SOURCE_KINDS = "a local file path, a data: URI, raw base64 or an http(s) URL"
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class ImagePolicy:
    """Limits and permissions for reading images and masks.

    Memory: decoding one request (its image and up to 5 regions, each a mask image, RLE, polygon or box the image's
    size) peaks at most at ``MEMORY_BYTES_PER_PIXEL`` (17) bytes per image pixel, plus the largest encoded input
    (at most ``max_bytes``), plus ``MEMORY_OVERHEAD_BYTES`` (16 MiB), on top of the request itself. With the
    defaults that is at most 17 × 40 MP + 25 MiB + 16 MiB ≈ 720 MB; ``max_pixels`` is the knob (a server with
    ``max_pixels=16_000_000`` stays under ≈ 310 MB). What stays afterwards is about 9 bytes per pixel: the RGB image
    (Pillow keeps 4 bytes per pixel) and one byte per region mask. How: pixel limits are checked from the header
    before decoding; 16/32-bit images and masks are converted in blocks of rows; a compressed RLE's ``counts`` may
    be at most ``H·W·9/8 + 32`` characters (:func:`gar_tools.regions.max_rle_chars`, more than any mask needs) and
    is decoded block by block straight into the mask. The worst inputs known (a float TIFF image, 32-bit TIFF
    masks, a checkerboard RLE) are measured in a fresh process by ``tests/test_regions.py`` (Linux ``VmHWM``):
    about 16.5 bytes per pixel plus the encoded input at 3 MP. The model's own preprocessing (tiling, resizing, on
    CPU with the tiny checkpoint) adds roughly 7 bytes per pixel plus 150 MB afterwards; that is not counted here.

    Attributes:
        max_bytes: largest encoded image accepted, in bytes (file size, decoded base64, or
            downloaded body). Default 25 MiB (:data:`DEFAULT_MAX_BYTES`).
        max_pixels: largest ``width * height`` accepted. Default 40 000 000
            (:data:`DEFAULT_MAX_PIXELS`). Checked from the image header before pixels are decoded.
            Pillow's own decompression-bomb guard (``PIL.Image.MAX_IMAGE_PIXELS``, about 89 MP by
            default) is honoured too and turned into :class:`~gar_tools.errors.ImageError`.
        allowed_dirs: folders local paths must lie in, after resolving ``~`` and symlinks.
            ``None`` (default) allows any readable local path; servers should set it.
        allow_urls: whether http(s) URLs are fetched. Default ``False``. Even when enabled, only public
            addresses are fetched (see ``allow_private_urls``), redirects are followed at most
            :data:`MAX_REDIRECTS` times and each target is checked again.
        allow_private_urls: also fetch URLs whose host is (or resolves to) a loopback, private, link-local,
            multicast or reserved address, in any spelling (``127.1``, ``2130706433``, ``[::ffff:127.0.0.1]``).
            Default ``False``: such URLs, and redirects to them, are refused. The connection goes to the address
            that was checked, so DNS cannot answer differently between the check and the connect.
        url_timeout_s: overall time limit for one URL download (resolving, connecting, TLS, redirects and the
            whole body together), in seconds. Default 10. A server that sends slowly is cut off at this deadline.
    """

    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    allowed_dirs: tuple[Path, ...] | None = None
    allow_urls: bool = False
    allow_private_urls: bool = False
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


def _local_path(source: str) -> Path | None:
    """``source`` as a ``~``-expanded path (nothing read), or None if it cannot be one."""
    if not source or "\x00" in source or len(source) > 4096 or "\n" in source:
        return None
    try:
        return Path(source).expanduser()
    except (OSError, ValueError, RuntimeError):
        return None


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError, RuntimeError):
        return False


def _may_read(path: Path, policy: ImagePolicy) -> bool:
    """Whether ``path`` is inside the allowed folders, decided without asking the file system anything about paths
    outside them: first lexically (absolute, ``..`` folded), then with symlinks resolved."""
    if policy.allowed_dirs is None:
        return True
    try:
        lexical = Path(os.path.abspath(path))
    except (OSError, ValueError):
        return False
    roots = policy.allowed_dirs + (policy._resolved_dirs or ())
    if not any(lexical.is_relative_to(os.path.abspath(d)) for d in roots):
        return False
    try:
        return policy.path_allowed(path.resolve())
    except (OSError, RuntimeError):
        return False


def _outside_error(source: str, policy: ImagePolicy, field: str) -> ImageError:
    """The one error for a path outside the allowed folders: the same whether or not something exists there."""
    shown = source if len(source) <= 80 else source[:77] + "..."
    allowed = ", ".join(str(d) for d in policy.allowed_dirs or ()) or "none: local paths are off"
    return ImageError(
        f"{shown!r} is outside the allowed folders ({allowed}), and not a data: URI, base64 or URL; "
        "pass a file inside them, or the image as a data: URI or base64 (whoever runs the tools allows a folder "
        "with --allow-dir DIR, or allowed_dirs=[DIR] / ImagePolicy(allowed_dirs=...) in Python)",
        field=field,
    )


def _read_path(path: Path, source: str, policy: ImagePolicy, field: str) -> bytes:
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise ImageError(f"cannot resolve path {str(path)!r}: {exc}", field=field) from exc
    if not policy.path_allowed(resolved):
        raise _outside_error(source, policy, field)
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
    if any(c in compact for c in "+/") and any(c in compact for c in "-_"):
        return None  # one alphabet or the other, never both: such text is a path, not base64
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


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def _shown(url: str) -> str:
    return repr(url if len(url) <= 200 else url[:197] + "...")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (IPv4-mapped, 6to4, Teredo client, NAT64), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if any(address in net for net in _NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def address_refusal(address: IPAddress) -> str | None:
    """Why a URL may not be fetched from ``address`` without ``allow_private_urls``, or None if it may.

    Refused: loopback, private, link-local, multicast, reserved, unspecified and any other not globally routable
    address (carrier-grade NAT, documentation ranges, ...), for IPv4 and IPv6, including IPv4 addresses carried in
    IPv6 ones (``::ffff:127.0.0.1``, 6to4, Teredo, NAT64).
    """
    if isinstance(address, ipaddress.IPv6Address):
        inner = _embedded_ipv4(address)
        if inner is not None:
            reason = address_refusal(inner)
            if reason is not None:
                return reason
        if address.scope_id:
            return "link-local"
    for reason, hit in (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
        ("not globally routable", not address.is_global),
    ):
        if hit:
            return reason
    return None


def _numeric_host(host: str) -> IPAddress | None:
    """``host`` as an IP address if it is one in any form a resolver accepts (IPv6, dotted IPv4, and the decimal,
    octal and hex forms of ``inet_aton`` such as ``2130706433``, ``0177.0.0.1``, ``0x7f.1``), else None."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values: list[int] = []
    for part in parts:
        try:
            if part[:2].lower() == "0x":
                values.append(int(part[2:] or "0", 16))
            elif len(part) > 1 and part.startswith("0"):
                values.append(int(part[1:], 8))
            else:
                values.append(int(part, 10) if part.isdigit() else -1)
        except ValueError:
            return None
    if any(v < 0 for v in values):
        return None
    *head, last = values
    if any(v > 255 for v in head) or last >= 1 << (8 * (4 - len(head))):
        return None
    number = last
    for i, value in enumerate(head):
        number |= value << (8 * (3 - i))
    return ipaddress.IPv4Address(number)


def _resolve(host: str, port: int) -> list[str]:
    """Addresses ``host`` resolves to (tests patch this to resolve names without DNS)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _resolve_within(host: str, port: int, seconds: float) -> list[str]:
    """:func:`_resolve` bounded by ``seconds`` (a resolver that hangs is left behind on a daemon thread)."""
    result: dict[str, object] = {}

    def target() -> None:
        try:
            result["addresses"] = _resolve(host, port)
        except Exception as exc:  # noqa: BLE001 - reported to the caller below
            result["error"] = exc

    thread = threading.Thread(target=target, name="gar-resolve", daemon=True)
    thread.start()
    thread.join(max(seconds, 0.0))
    if thread.is_alive():
        raise TimeoutError(f"resolving {host!r} took longer than the time limit")
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return list(result["addresses"])  # type: ignore[arg-type]


@dataclass(frozen=True)
class UrlTarget:
    """Where a checked URL is fetched from (see :func:`check_url`)."""

    scheme: str
    host: str  # ASCII (IDNA) host name or address, no brackets
    port: int
    path: str  # path and query, percent-encoded, never empty
    addresses: tuple[IPAddress, ...]


def _url_parts(url: str, field: str) -> tuple[urllib.parse.SplitResult, str, int]:
    if len(url) > _MAX_URL_CHARS:
        raise ImageError(f"URL is longer than {_MAX_URL_CHARS} characters", field=field)
    bad = next((c for c in url if ord(c) <= 0x20 or 0x7F <= ord(c) <= 0x9F), None)
    if bad is not None:
        raise ImageError(
            f"URL {_shown(url)} contains a control character or space ({bad!r}); percent-encode it (%20, ...)",
            field=field,
        )
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
        host = parts.hostname or ""
    except ValueError as exc:
        raise ImageError(f"URL {_shown(url)} is malformed: {exc}", field=field) from exc
    if parts.scheme.lower() not in ("http", "https"):
        raise ImageError(
            f"URL {_shown(url)} is not an http(s) URL; only http:// and https:// URLs are fetched", field=field
        )
    if not host:
        raise ImageError(f"URL {_shown(url)} has no host", field=field)
    if parts.username is not None or parts.password is not None:
        raise ImageError(f"URL {_shown(url)} carries a user name or password; that is not supported", field=field)
    try:
        host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError as exc:
        raise ImageError(f"URL {_shown(url)} has an invalid host name", field=field) from exc
    default = 443 if parts.scheme.lower() == "https" else 80
    return parts, host, port if port is not None else default


def check_url(url: str, policy: ImagePolicy, *, field: str, timeout_s: float | None = None) -> UrlTarget:
    """Check one URL (the first, or a redirect target) against ``policy`` before anything is sent to it.

    Refuses control characters and spaces, schemes other than http(s), user names in URLs, and, unless
    ``policy.allow_private_urls``, a host any of whose addresses :func:`address_refusal` refuses. Numeric hosts in
    any form (``127.1``, ``2130706433``, ``0x7f000001``, ``[::ffff:7f00:1]``) are read without a resolver.

    Returns:
        where to connect: the checked addresses (connect to one of them, not to the name again, so a second DNS
        answer cannot differ from the checked one) and the host name for the ``Host`` header and TLS.

    Raises:
        ImageError: naming ``field``.
    """
    parts, host, port = _url_parts(url, field)
    numeric = _numeric_host(host)
    if numeric is not None:
        addresses: list[IPAddress] = [numeric]
    else:
        try:
            found = _resolve_within(host, port, policy.url_timeout_s if timeout_s is None else timeout_s)
            addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in dict.fromkeys(found)]
        except (OSError, UnicodeError, ValueError) as exc:
            raise ImageError(f"cannot resolve the host of URL {_shown(url)}: {exc}", field=field) from exc
        if not addresses:
            raise ImageError(f"the host of URL {_shown(url)} has no address", field=field)
    if not policy.allow_private_urls:
        for address in addresses:
            reason = address_refusal(address)
            if reason is not None:
                inner = _embedded_ipv4(address) if isinstance(address, ipaddress.IPv6Address) else None
                shown = f"{address} ({inner})" if inner is not None else str(address)
                raise ImageError(
                    f"URL {_shown(url)} points to {shown}, a {reason} address; only public addresses are fetched "
                    "(a server can allow private ones with --allow-private-urls)",
                    field=field,
                )
    path = urllib.parse.quote(parts.path or "/", safe=_PATH_SAFE)
    if parts.query:
        path += "?" + urllib.parse.quote(parts.query, safe=_PATH_SAFE + "?")
    return UrlTarget(parts.scheme.lower(), host, port, path, tuple(addresses))


class _Deadline:
    """One overall deadline for a fetch: when it passes, every socket it watches is shut down, which ends any
    blocked connect, TLS handshake or read (a server dripping one byte a second cannot hold a request)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        return max(self.end - time.monotonic(), 0.001)

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            expired = self.expired
        if expired:
            self._shutdown(sock)

    @staticmethod
    def _shutdown(sock: socket.socket) -> None:
        try:  # the plain socket's shutdown, also for an SSLSocket (its own would touch the TLS state)
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            self._shutdown(sock)

    def cancel(self) -> None:
        self._timer.cancel()


def _tls_context() -> ssl.SSLContext:
    """The system's default TLS settings: certificates verified against the URL's host name (tests patch this)."""
    return ssl.create_default_context()


def _connection(target: UrlTarget, deadline: _Deadline) -> http.client.HTTPConnection:
    """An HTTP(S) connection to one of ``target``'s checked addresses (tried in order), with ``Host`` and TLS name of
    its host."""
    host = f"[{target.host}]" if ":" in target.host else target.host

    def connect_socket() -> socket.socket:
        error: OSError | None = None
        for address in target.addresses:
            if deadline.expired:
                break
            try:
                sock = socket.create_connection((str(address), target.port), timeout=deadline.remaining())
            except OSError as exc:
                error = exc
                continue
            deadline.watch(sock)
            return sock
        raise error or TimeoutError("no time left to connect")

    if target.scheme == "https":

        class _Https(http.client.HTTPSConnection):
            def connect(self) -> None:
                sock = connect_socket()
                self.sock = self._context.wrap_socket(sock, server_hostname=target.host)
                deadline.watch(self.sock)

        return _Https(host, target.port, timeout=deadline.remaining(), context=_tls_context())

    class _Http(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = connect_socket()

    return _Http(host, target.port, timeout=deadline.remaining())


def _read_url(url: str, policy: ImagePolicy, field: str) -> bytes:
    if not policy.allow_urls:
        raise ImageError(
            "URLs are not allowed here (URL fetching is disabled); pass a local file path, a data: URI or base64",
            field=field,
        )
    deadline = _Deadline(policy.url_timeout_s)
    too_slow = f"URL {_shown(url)} took longer than {policy.url_timeout_s:g} s to download"
    try:
        return _fetch(url, policy, field, deadline)
    except ImageError:
        if deadline.expired:
            raise ImageError(too_slow, field=field) from None
        raise
    except (OSError, ValueError, http.client.HTTPException) as exc:
        if deadline.expired or isinstance(exc, TimeoutError):
            raise ImageError(too_slow, field=field) from exc
        raise ImageError(f"cannot fetch URL {_shown(url)}: {exc or type(exc).__name__}", field=field) from exc
    finally:
        deadline.cancel()


def _fetch(url: str, policy: ImagePolicy, field: str, deadline: _Deadline) -> bytes:
    current = url
    for _hop in range(MAX_REDIRECTS + 1):
        target = check_url(current, policy, field=field, timeout_s=deadline.remaining())
        connection = _connection(target, deadline)
        try:
            connection.request("GET", target.path, headers={"User-Agent": "gar-tools", "Accept": "image/*"})
            response = connection.getresponse()
            if response.status in _REDIRECTS:
                location = response.getheader("Location")
                if not location:
                    raise ImageError(f"URL {_shown(current)} redirects without a Location", field=field)
                current = urllib.parse.urljoin(current, location)
                continue
            if response.status != 200:
                raise ImageError(
                    f"URL {_shown(current)} returned HTTP {response.status} {response.reason}", field=field
                )
            length = response.getheader("Content-Length")
            if length and length.isdigit() and int(length) > policy.max_bytes:
                raise _too_big(int(length), policy, field, f"URL {_shown(current)}")
            chunks: list[bytes] = []
            total = 0
            while True:
                chunk = response.read(_CHUNK)
                if deadline.expired:
                    raise TimeoutError("deadline passed")
                if not chunk:
                    break
                total += len(chunk)
                if total > policy.max_bytes:
                    raise _too_big(None, policy, field, f"URL {_shown(current)}")
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            connection.close()
    raise ImageError(f"URL {_shown(url)} redirects more than {MAX_REDIRECTS} times", field=field)


def read_source_bytes(source: str, policy: ImagePolicy, *, field: str) -> bytes:
    """Return the raw bytes an image (or mask) source refers to, enforcing ``policy``.

    ``source`` is tried, in order, as:

    1. an existing local file (``~`` expanded); it must lie inside ``policy.allowed_dirs`` when set,
       symlinks resolved; a path outside them gets the same error whether or not it exists;
    2. a ``data:`` URI (``data:image/png;base64,...``; percent-encoded payloads work too);
    3. an ``http://`` or ``https://`` URL, fetched only when ``policy.allow_urls`` is true, only from public
       addresses unless ``policy.allow_private_urls`` (see :func:`check_url`; redirects checked the same way),
       within one overall deadline of ``policy.url_timeout_s`` and with the body capped at ``policy.max_bytes``
       while streaming;
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
    path = _local_path(text)
    outside = False
    if path is not None:
        if not _may_read(path, policy):
            outside = True  # never ask whether it exists: that would tell callers what lies outside
        elif _exists(path):
            return _read_path(path, text, policy, field)
    lowered = text[:8].lower()
    if lowered.startswith("data:"):
        return _read_data_uri(text, policy, field)
    if lowered.startswith(("http://", "https://")):
        return _read_url(text, policy, field)
    if len(text) >= _MIN_BASE64_CHARS:
        data = _decode_base64(text, policy, field, "base64 data")
        if data is not None:
            return data
    if outside:
        raise _outside_error(text, policy, field)
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
            _verify_complete(image, data)
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


def _verify_complete(image: Image.Image, data: bytes) -> None:
    """Raise if the file ends early although its pixels decoded (Pillow tolerates a PNG without its last chunks).

    PNG (and APNG) are read again chunk by chunk up to ``IEND``, checking every CRC; no pixels are decoded.
    Other formats already fail in ``load()`` when their data is cut.
    """
    if image.format == "PNG":
        with Image.open(io.BytesIO(data)) as again:
            again.verify()


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
            return to_rgb(image, copy=image is source)
        except (OSError, ValueError) as exc:
            raise ImageError(f"cannot read the given PIL image: {exc}", field=field) from exc
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        data = read_source_bytes(source, policy, field=field)
    image = decode_image_bytes(data, policy, field=field)
    del data  # the encoded bytes are not needed while converting
    try:
        return to_rgb(image, copy=False)
    except (OSError, ValueError) as exc:
        raise ImageError(f"cannot convert the image to RGB: {exc}", field=field) from exc
