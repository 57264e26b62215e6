"""Tests for gar_tools.images: sources, limits, formats, EXIF, allowed folders, URLs."""

from __future__ import annotations

import base64
import http.server
import io
import ipaddress
import re
import shutil
import ssl
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gar_tools import images
from gar_tools.errors import ImageError, InputError
from gar_tools.images import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    MAX_REDIRECTS,
    ImagePolicy,
    address_refusal,
    check_url,
    load_image,
    read_source_bytes,
)

ASSETS = Path(__file__).resolve().parents[1] / "gar_tools" / "assets"


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _sample(mode: str = "RGB", size: tuple[int, int] = (32, 24)) -> Image.Image:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr).convert(mode)


@pytest.fixture
def png_file(tmp_path: Path) -> Path:
    path = tmp_path / "sample.png"
    _sample().save(path)
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares a huge size (its pixel data is just one row)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    idat = zlib.compress(b"\x00" * (width + 1))
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


# --- policy ----------------------------------------------------------------------------------------------------------


def test_policy_defaults() -> None:
    policy = ImagePolicy()
    assert policy.max_bytes == DEFAULT_MAX_BYTES == 25 * 1024 * 1024
    assert policy.max_pixels == DEFAULT_MAX_PIXELS == 40_000_000
    assert policy.allowed_dirs is None
    assert policy.allow_urls is False
    assert policy.url_timeout_s == 10


def test_policy_normalises_allowed_dirs(tmp_path: Path) -> None:
    policy = ImagePolicy(allowed_dirs=[str(tmp_path)])  # type: ignore[arg-type]
    assert policy.allowed_dirs == (tmp_path,)
    with pytest.raises(ValueError):
        ImagePolicy(allowed_dirs=str(tmp_path))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ImagePolicy(max_bytes=0)


# --- sources ---------------------------------------------------------------------------------------------------------


def test_load_from_path(png_file: Path) -> None:
    image = load_image(str(png_file))
    assert image.mode == "RGB"
    assert image.size == (32, 24)
    assert np.array_equal(np.asarray(image), np.asarray(_sample()))


def test_load_real_asset_rgba_png() -> None:
    image = load_image(str(ASSETS / "demo_image_1.png"))
    assert image.mode == "RGB"
    assert image.size == (1024, 770)


def test_load_from_home_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    _sample().save(tmp_path / "home.png")
    assert load_image("~/home.png").size == (32, 24)


def test_load_from_data_uri(png_file: Path) -> None:
    uri = "data:image/png;base64," + base64.b64encode(png_file.read_bytes()).decode()
    assert np.array_equal(np.asarray(load_image(uri)), np.asarray(_sample()))


def test_load_from_raw_base64_with_line_breaks(png_file: Path) -> None:
    b64 = base64.encodebytes(png_file.read_bytes()).decode()  # wrapped at 76 columns
    assert "\n" in b64
    assert np.array_equal(np.asarray(load_image(b64)), np.asarray(_sample()))


def test_load_from_urlsafe_base64(png_file: Path) -> None:
    b64 = base64.urlsafe_b64encode(png_file.read_bytes()).decode()
    assert load_image(b64).size == (32, 24)


def test_load_from_bytes_and_pil_image(png_file: Path) -> None:
    assert load_image(png_file.read_bytes()).size == (32, 24)
    original = _sample("RGBA")
    converted = load_image(original)
    assert converted.mode == "RGB"
    assert original.mode == "RGBA"  # the caller's image is left alone
    assert converted is not original


def test_read_source_bytes_returns_file_bytes(png_file: Path) -> None:
    assert read_source_bytes(str(png_file), ImagePolicy(), field="image") == png_file.read_bytes()


@pytest.mark.parametrize("source", ["hello", "/no/such/file.png", "not base64 at all, clearly!"])
def test_unrecognised_source(source: str) -> None:
    with pytest.raises(ImageError, match="not an existing file, data: URI, base64 or URL") as info:
        load_image(source, field="image")
    assert info.value.field == "image"
    assert str(info.value).startswith("image: ")


def test_empty_and_non_string_source() -> None:
    with pytest.raises(ImageError, match="empty"):
        read_source_bytes("   ", ImagePolicy(), field="image")
    with pytest.raises(ImageError, match="expected a string"):
        read_source_bytes(123, ImagePolicy(), field="image")  # type: ignore[arg-type]


def test_folder_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(str(tmp_path))


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not a picture")
    with pytest.raises(ImageError, match="not a readable image") as info:
        load_image(str(path), field="image")
    assert "PNG" in str(info.value)


def test_truncated_image(png_file: Path) -> None:
    data = _png_bytes(_sample(size=(300, 300)))
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_image(data[: len(data) // 2])


def test_bad_data_uri() -> None:
    with pytest.raises(ImageError, match="malformed data: URI"):
        load_image("data:image/png;base64")
    with pytest.raises(ImageError, match="not valid base64"):
        load_image("data:image/png;base64,@@@@")


def test_errors_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        load_image("nope")


# --- modes and EXIF --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "LA", "1", "CMYK", "I;16"])
def test_modes_are_converted_to_rgb(tmp_path: Path, mode: str) -> None:
    path = tmp_path / ("img.tiff" if mode == "CMYK" else "img.png")
    _sample(mode).save(path)
    image = load_image(str(path))
    assert image.mode == "RGB"
    assert image.size == (32, 24)


def test_palette_with_transparency_is_converted(tmp_path: Path) -> None:
    image = _sample("P")
    image.info["transparency"] = 0
    path = tmp_path / "p.png"
    image.save(path, transparency=0)
    assert load_image(str(path)).mode == "RGB"


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    arr = np.array([[0, 32768, 65535]], dtype=np.uint16)
    image = load_image(Image.fromarray(arr))
    values = np.asarray(image)[0, :, 0]
    assert values[0] == 0 and 120 <= values[1] <= 135 and values[2] == 255


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = (255, 0, 0)  # left half red
    arr[:, 20:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    Image.fromarray(arr).save(path, format="JPEG", exif=exif, quality=95)

    image = load_image(str(path))
    assert image.size == (20, 40)  # width and height swapped
    top = np.asarray(image)[5, 10].astype(int)
    bottom = np.asarray(image)[35, 10].astype(int)
    assert top[0] > 200 and top[2] < 60  # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_exif_orientation_is_applied_to_pil_input() -> None:
    image = Image.new("RGB", (40, 20))
    exif = image.getexif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    opened = Image.open(io.BytesIO(buffer.getvalue()))
    assert load_image(opened).size == (20, 40)


# --- limits ----------------------------------------------------------------------------------------------------------


def test_byte_limit_for_each_source(png_file: Path) -> None:
    data = png_file.read_bytes()
    policy = ImagePolicy(max_bytes=len(data) - 1)
    b64 = base64.b64encode(data).decode()
    for source in (str(png_file), b64, "data:image/png;base64," + b64):
        with pytest.raises(ImageError, match="larger than the limit") as info:
            load_image(source, policy, field="image")
        assert info.value.field == "image"
    with pytest.raises(ImageError, match="larger than the limit"):
        load_image(data, policy)
    assert load_image(str(png_file), ImagePolicy(max_bytes=len(data))).size == (32, 24)


def test_pixel_limit(png_file: Path) -> None:
    policy = ImagePolicy(max_pixels=32 * 24 - 1)
    with pytest.raises(ImageError, match=r"32x24 = 768 pixels, more than the limit of 767") as info:
        load_image(str(png_file), policy, field="image")
    assert info.value.field == "image"
    with pytest.raises(ImageError, match="more than the limit"):
        load_image(_sample(), policy)
    assert load_image(str(png_file), ImagePolicy(max_pixels=32 * 24)).size == (32, 24)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("side", [10_000, 100_000])  # above Pillow's warning limit, above its error limit
def test_decompression_bomb_raises_image_error(side: int) -> None:
    bomb = _bomb_png(side, side)
    assert len(bomb) < 200_000
    with pytest.raises(ImageError) as info:
        load_image(bomb, ImagePolicy(max_pixels=10**12))
    assert "decompression-bomb" in str(info.value)
    with pytest.raises(ImageError, match="more than the limit|decompression-bomb"):
        load_image("data:image/png;base64," + base64.b64encode(bomb).decode())


def test_pixel_cap_checked_before_decoding() -> None:
    bomb = _bomb_png(5000, 5000)  # 25 MP: under Pillow's guard, over our cap
    with pytest.raises(ImageError, match="5000x5000 = 25,000,000 pixels"):
        load_image(bomb, ImagePolicy(max_pixels=1_000_000))


# --- allowed folders -------------------------------------------------------------------------------------------------


def test_allowed_dirs(tmp_path: Path) -> None:
    inside_dir = tmp_path / "allowed"
    outside_dir = tmp_path / "elsewhere"
    inside_dir.mkdir()
    outside_dir.mkdir()
    _sample().save(inside_dir / "in.png")
    _sample().save(outside_dir / "out.png")
    policy = ImagePolicy(allowed_dirs=(inside_dir,))

    assert load_image(str(inside_dir / "in.png"), policy).size == (32, 24)
    with pytest.raises(ImageError, match="outside the allowed folders") as info:
        load_image(str(outside_dir / "out.png"), policy, field="image")
    assert info.value.field == "image"
    # '..' does not get out either
    with pytest.raises(ImageError, match="outside the allowed folders"):
        load_image(str(inside_dir / ".." / "elsewhere" / "out.png"), policy)


def test_allowed_dirs_symlink_escape(tmp_path: Path) -> None:
    inside_dir = tmp_path / "allowed"
    inside_dir.mkdir()
    secret = tmp_path / "secret.png"
    _sample().save(secret)
    (inside_dir / "link.png").symlink_to(secret)
    (inside_dir / "linkdir").symlink_to(tmp_path)
    policy = ImagePolicy(allowed_dirs=(inside_dir,))
    with pytest.raises(ImageError, match="outside the allowed folders"):
        load_image(str(inside_dir / "link.png"), policy)
    with pytest.raises(ImageError, match="outside the allowed folders"):
        load_image(str(inside_dir / "linkdir" / "secret.png"), policy)
    # a symlink that stays inside is fine
    _sample().save(inside_dir / "real.png")
    (inside_dir / "alias.png").symlink_to(inside_dir / "real.png")
    assert load_image(str(inside_dir / "alias.png"), policy).size == (32, 24)


def test_allowed_dirs_do_not_affect_inline_data(tmp_path: Path, png_file: Path) -> None:
    policy = ImagePolicy(allowed_dirs=(tmp_path / "nowhere",))
    assert load_image(base64.b64encode(png_file.read_bytes()).decode(), policy).size == (32, 24)


# --- URLs ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["https://example.com/cat.png", "http://127.0.0.1:9/cat.png", "HTTP://x/y.png"])
def test_urls_refused_by_default(url: str) -> None:
    with pytest.raises(ImageError, match="URLs are not allowed") as info:
        load_image(url, field="image")
    assert info.value.field == "image"


class _Handler(http.server.BaseHTTPRequestHandler):
    """Routes: (status, headers, body); ``{port}`` in a Location is this server's port. ``/drip`` sends its body
    one byte every 50 ms, ``/drip-head`` its status line the same way."""

    routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
    hosts: list[str] = []

    def do_GET(self) -> None:
        self.hosts.append(self.headers.get("Host", ""))
        if self.path in ("/drip", "/drip-head"):
            self._drip(head=self.path == "/drip-head")
            return
        status, headers, body = self.routes.get(self.path, (404, {}, b"not found"))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value.replace("{port}", str(self.server.server_address[1])))
        if "X-Hide-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _drip(self, *, head: bool) -> None:
        data = b"HTTP/1.0 200 OK\r\nContent-Length: 200\r\n\r\n" if head else b"x" * 200
        if not head:
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.flush()
        for i in range(len(data)):  # at most 10 s, ends as soon as the client hangs up
            try:
                self.wfile.write(data[i : i + 1])
                self.wfile.flush()
            except OSError:
                return
            threading.Event().wait(0.05)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass


@pytest.fixture
def local_server(png_file: Path) -> Iterator[str]:
    """A loopback-only HTTP server (no network) with a few routes."""
    big = _png_bytes(_sample(size=(400, 400)))
    _Handler.hosts = []
    _Handler.routes = {
        "/ok.png": (200, {"Content-Type": "image/png"}, png_file.read_bytes()),
        "/big.png": (200, {"Content-Type": "image/png"}, big),
        "/big-no-length.png": (200, {"Content-Type": "image/png", "X-Hide-Length": "1"}, big),
        "/to-file": (302, {"Location": "file:///etc/hostname"}, b""),
        "/to-ok": (302, {"Location": "/ok.png"}, b""),
        "/to-internal": (302, {"Location": "http://internal.test:{port}/ok.png"}, b""),
        "/to-decimal": (307, {"Location": "http://2130706434:{port}/ok.png"}, b""),  # 127.0.0.2
        "/to-mapped": (301, {"Location": "http://[::ffff:127.0.0.2]:{port}/ok.png"}, b""),
        "/loop": (302, {"Location": "/loop"}, b""),
    }
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


LOOPBACK_OK = ImagePolicy(allow_urls=True, allow_private_urls=True, url_timeout_s=5)


def test_url_fetch_when_allowed(local_server: str) -> None:
    assert load_image(f"{local_server}/ok.png", LOOPBACK_OK).size == (32, 24)
    assert load_image(f"{local_server}/to-ok", LOOPBACK_OK).size == (32, 24)


def test_url_errors(local_server: str) -> None:
    policy = ImagePolicy(allow_urls=True, allow_private_urls=True, url_timeout_s=5, max_bytes=10_000)
    with pytest.raises(ImageError, match="HTTP 404"):
        load_image(f"{local_server}/missing.png", policy)
    with pytest.raises(ImageError, match="larger than the limit"):
        load_image(f"{local_server}/big.png", policy)
    with pytest.raises(ImageError, match="larger than the limit of"):
        load_image(f"{local_server}/big-no-length.png", policy)
    with pytest.raises(ImageError, match="only http:// and https://"):
        load_image(f"{local_server}/to-file", policy)
    with pytest.raises(ImageError, match=f"redirects more than {MAX_REDIRECTS} times"):
        load_image(f"{local_server}/loop", policy)


def test_loopback_url_refused_without_the_flag(local_server: str) -> None:
    policy = ImagePolicy(allow_urls=True, url_timeout_s=5)
    with pytest.raises(ImageError, match="127.0.0.1, a loopback address") as info:
        load_image(f"{local_server}/ok.png", policy, field="image")
    assert info.value.field == "image" and "--allow-private-urls" in str(info.value)
    assert _Handler.hosts == []  # refused before anything was sent


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Resolve names from a dict instead of DNS; a name not in it fails the test."""
    table: dict[str, list[str]] = {}

    def resolve(host: str, port: int) -> list[str]:
        assert host in table, f"unexpected resolver call for {host!r}"
        return table[host]

    monkeypatch.setattr(images, "_resolve", resolve)
    return table


@pytest.mark.parametrize("path", ["/to-internal", "/to-decimal", "/to-mapped"])
def test_redirect_to_a_private_address_is_refused(
    local_server: str, fake_dns: dict[str, list[str]], monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """A public-looking first URL that redirects to a loopback address: refused at the redirect, flag off.

    ``public.test`` resolves to 127.0.0.1, which this test (only) counts as public, so the first request reaches the
    local server; ``internal.test`` resolves to 127.0.0.2, which is refused like every other loopback address."""
    real = images.address_refusal
    monkeypatch.setattr(images, "address_refusal", lambda a: None if str(a) == "127.0.0.1" else real(a))
    fake_dns.update({"public.test": ["127.0.0.1"], "internal.test": ["127.0.0.2"]})
    port = local_server.rsplit(":", 1)[1]
    policy = ImagePolicy(allow_urls=True, url_timeout_s=5)
    assert load_image(f"http://public.test:{port}/ok.png", policy).size == (32, 24)
    assert _Handler.hosts == [f"public.test:{port}"]  # connected to the checked address, Host header kept
    with pytest.raises(ImageError, match="loopback address") as info:
        load_image(f"http://public.test:{port}{path}", policy, field="image")
    assert info.value.field == "image"
    assert len(_Handler.hosts) == 2  # the redirect target was never requested


def test_url_deadline_cuts_a_dripping_server(local_server: str) -> None:
    policy = ImagePolicy(allow_urls=True, allow_private_urls=True, url_timeout_s=0.5)
    for path in ("/drip", "/drip-head"):
        started = time.monotonic()
        with pytest.raises(ImageError, match=r"took longer than 0.5 s") as info:
            load_image(f"{local_server}{path}", policy, field="image")
        assert time.monotonic() - started < 2.0
        assert info.value.field == "image"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:9/a\r\nHost: evil", "control character"),
        ("http://127.0.0.1:9/a\nb", "control character"),
        ("http://127.0.0.1:9/a b.png", "control character or space"),
        ("http://127.0.0.1:9/\x00.png", "control character"),
        ("http://127.0.0.1:9/\x85.png", "control character"),
        ("http://user:pw@127.0.0.1:9/a.png", "user name or password"),
        ("http://127.0.0.1:99999/a.png", "malformed"),
        ("http:///a.png", "no host"),
    ],
)
def test_bad_urls_are_image_errors(url: str, message: str) -> None:
    with pytest.raises(ImageError, match=message) as info:
        load_image(url, ImagePolicy(allow_urls=True, allow_private_urls=True), field="image")
    assert info.value.field == "image"


@pytest.mark.parametrize("url", ["ftp://example.com/a.png", "file:///etc/hostname", "gopher://x/"])
def test_check_url_refuses_other_schemes(url: str) -> None:
    with pytest.raises(ImageError, match="only http:// and https://"):
        check_url(url, ImagePolicy(allow_urls=True, allow_private_urls=True), field="image")


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("2130706433", "loopback"),  # decimal
        ("0x7f000001", "loopback"),  # hex
        ("0177.0.0.1", "loopback"),  # octal
        ("0x7f.1", "loopback"),
        ("127.1", "loopback"),
        ("0", "unspecified"),
        ("0.0.0.0", "unspecified"),
        ("10.1.2.3", "private"),
        ("012.1.2.3", "private"),  # octal 10.1.2.3
        ("172.16.5.4", "private"),
        ("192.168.0.1", "private"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "not globally routable"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("[::1]", "loopback"),
        ("[::]", "unspecified"),
        ("[::ffff:127.0.0.1]", "loopback"),
        ("[::ffff:7f00:1]", "loopback"),
        ("[::ffff:10.0.0.1]", "private"),
        ("[fe80::1]", "link-local"),
        ("[fc00::1]", "private"),
        ("[fd12:3456::1]", "private"),
        ("[ff02::1]", "multicast"),
        ("[2002:7f00:1::1]", "loopback"),  # 6to4 of 127.0.0.1
        ("[2002:a00:1::1]", "private"),  # 6to4 of 10.0.0.1
        ("[64:ff9b::7f00:1]", "loopback"),  # NAT64 of 127.0.0.1
        ("[2001:db8::1]", "private|not globally routable"),  # documentation
    ],
)
def test_private_address_literals_are_refused(host: str, reason: str, fake_dns: dict[str, list[str]]) -> None:
    """Decided from the literal alone: no resolver call (fake_dns has no names), no connection."""
    policy = ImagePolicy(allow_urls=True)
    with pytest.raises(ImageError, match=rf"a ({reason})") as info:
        check_url(f"http://{host}:8080/cat.png", policy, field="image")
    assert "only public addresses" in str(info.value)
    target = check_url(f"http://{host}:8080/cat.png", ImagePolicy(allow_urls=True, allow_private_urls=True), field="f")
    assert target.port == 8080 and target.path == "/cat.png"


def test_resolved_names_are_checked(fake_dns: dict[str, list[str]]) -> None:
    fake_dns.update(
        {
            "localhost": ["127.0.0.1", "::1"],
            "metadata.test": ["169.254.169.254"],
            "mixed.test": ["93.184.216.34", "10.0.0.1"],  # one private answer is enough to refuse
            "v6.test": ["fd00::5"],
            "public.test": ["93.184.216.34", "2606:2800:220:1::1"],
        }
    )
    policy = ImagePolicy(allow_urls=True)
    for name, reason in [("localhost", "loopback"), ("metadata.test", "link-local"), ("mixed.test", "private")]:
        with pytest.raises(ImageError, match=f"a {reason} address"):
            check_url(f"https://{name}/x.png", policy, field="image")
    with pytest.raises(ImageError, match="private address"):
        check_url("http://v6.test/x.png", policy, field="image")
    target = check_url("https://public.test/a%20b.png?size=2", policy, field="image")  # checked, not fetched
    assert target.scheme == "https" and target.host == "public.test" and target.port == 443
    assert [str(a) for a in target.addresses] == ["93.184.216.34", "2606:2800:220:1::1"]
    assert target.path == "/a%20b.png?size=2"


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "2001:4860:4860::8888"]
)
def test_public_addresses_pass(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address)) is None


# --- truncated and corrupt images ------------------------------------------------------------------------------------


def _png_with_trailing_chunk() -> bytes:
    """A valid PNG whose pixel data is followed by a large ancillary chunk, so cutting it at 90 % keeps every pixel
    but loses the end of the file (Pillow used to decode it anyway)."""
    raw = _png_bytes(_sample(size=(16, 16)))
    assert raw.endswith(_png_chunk(b"IEND", b""))
    body = raw[: -len(_png_chunk(b"IEND", b""))]
    return body + _png_chunk(b"tEXt", b"Comment\x00" + b"x" * 4000) + _png_chunk(b"IEND", b"")


@pytest.mark.parametrize("cut", [0.9, 0.97])
def test_png_cut_after_its_pixels_is_refused(cut: float) -> None:
    data = _png_with_trailing_chunk()
    assert load_image(data).size == (16, 16)
    with pytest.raises(ImageError, match="corrupt or truncated") as info:
        load_image(data[: int(len(data) * cut)], field="image")
    assert info.value.field == "image"


def test_png_without_iend_or_with_a_bad_crc_is_refused() -> None:
    data = _png_bytes(_sample(size=(16, 16)))
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_image(data[: -len(_png_chunk(b"IEND", b""))])
    broken = bytearray(_png_with_trailing_chunk())
    broken[-30] ^= 0xFF  # inside the tEXt chunk: its CRC no longer matches
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_image(bytes(broken))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"])
@pytest.mark.parametrize("cut", [0.5, 0.9, 0.99])
def test_truncated_files_are_refused(fmt: str, cut: float) -> None:
    buffer = io.BytesIO()
    _sample(size=(64, 48)).save(buffer, format=fmt)
    data = buffer.getvalue()
    with pytest.raises(ImageError, match="corrupt or truncated|not a readable image"):
        load_image(data[: int(len(data) * cut)])


def test_truncated_image_from_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cut.png"
    data = _png_with_trailing_chunk()
    path.write_bytes(data[: int(len(data) * 0.9)])
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_image(str(path))


# --- the path oracle --------------------------------------------------------------------------------------------------


def _message(source: str, policy: ImagePolicy) -> str:
    with pytest.raises(ImageError) as info:
        load_image(source, policy, field="image")
    assert info.value.field == "image"
    return re.sub(r"'[^']*'", "<source>", str(info.value), count=1)


def test_outside_paths_get_one_message_whether_or_not_they_exist(tmp_path: Path) -> None:
    inside_dir = tmp_path / "allowed"
    outside_dir = tmp_path / "elsewhere"
    inside_dir.mkdir()
    outside_dir.mkdir()
    _sample().save(outside_dir / "real.png")
    (outside_dir / "notes.txt").write_text("secret")
    (inside_dir / "link-to-real.png").symlink_to(outside_dir / "real.png")
    (inside_dir / "link-to-nothing.png").symlink_to(outside_dir / "nothing.png")
    policy = ImagePolicy(allowed_dirs=(inside_dir,))
    existing = [
        str(outside_dir / "real.png"),
        str(outside_dir / "notes.txt"),
        str(outside_dir),
        str(inside_dir / ".." / "elsewhere" / "real.png"),
        str(inside_dir / "link-to-real.png"),
        "/etc/passwd",
    ]
    missing = [
        str(outside_dir / "nothing.png"),
        str(outside_dir / "no" / "such" / "dir"),
        str(inside_dir / ".." / "elsewhere" / "nothing.png"),
        str(inside_dir / "link-to-nothing.png"),
        "/etc/nofile",
    ]
    messages = {_message(source, policy) for source in existing + missing}
    assert len(messages) == 1, messages
    (message,) = messages
    assert "outside the allowed folders" in message and str(inside_dir) in message
    # Inside the allowed folders, saying what does not exist tells nothing new.
    assert "not an existing file" in _message(str(inside_dir / "nothing.png"), policy)


@pytest.fixture
def tls_server(tmp_path: Path, png_file: Path) -> Iterator[tuple[int, Path]]:
    """A loopback HTTPS server whose self-signed certificate names only ``public.test``."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=public.test"]
        + ["-addext", "subjectAltName=DNS:public.test"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    _Handler.hosts = []
    _Handler.routes = {"/ok.png": (200, {"Content-Type": "image/png"}, png_file.read_bytes())}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], cert
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_https_connects_to_the_checked_address_with_the_hosts_name(
    tls_server: tuple[int, Path], fake_dns: dict[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The TLS name (SNI and certificate check) and Host header are the URL's host, the connection goes to the
    address that was checked."""
    port, cert = tls_server
    real = images.address_refusal
    monkeypatch.setattr(images, "address_refusal", lambda a: None if str(a) == "127.0.0.1" else real(a))
    monkeypatch.setattr(images, "_tls_context", lambda: ssl.create_default_context(cafile=str(cert)))
    fake_dns.update({"public.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    policy = ImagePolicy(allow_urls=True, url_timeout_s=5)
    assert load_image(f"https://public.test:{port}/ok.png", policy).size == (32, 24)
    assert _Handler.hosts == [f"public.test:{port}"]
    with pytest.raises(ImageError, match="cannot fetch URL.*(certificate|hostname)"):
        load_image(f"https://other.test:{port}/ok.png", policy)  # same address, but not the certificate's name


def test_each_checked_address_is_tried(local_server: str, fake_dns: dict[str, list[str]]) -> None:
    port = local_server.rsplit(":", 1)[1]
    fake_dns["twice.test"] = ["127.0.0.2", "127.0.0.1"]  # nothing listens on 127.0.0.2
    assert load_image(f"http://twice.test:{port}/ok.png", LOOPBACK_OK).size == (32, 24)
    assert _Handler.hosts == [f"twice.test:{port}"]


def test_a_path_is_never_read_as_base64() -> None:
    """Base64 uses one alphabet: text mixing ``/`` with ``-`` or ``_`` (any path with a dash) is a path, however
    long; a missing one says so instead of 'not a readable image'."""
    for path in ("/tmp/pytest-of-root/no_such/dir0", "/tmp/a-b/c_d/efgh/ijkl/mnop/qrst"):
        assert len(path) % 4 == 0
        with pytest.raises(ImageError) as info:
            load_image(path, ImagePolicy())
        assert "not an existing file" in info.value.reason, info.value.reason


# --- the engine's decoded-image cache ---------------------------------------------------------------------------------


def test_read_image_decodes_each_distinct_image_once(tmp_path: Path, monkeypatch) -> None:
    """The local engine reuses a decoded image (and its pixel digest) for the very same encoded bytes — sent as a
    path or as base64 — and only for them: a file overwritten in place is decoded again; the policy is checked on
    every call; failures are not kept."""
    from gar_tools.engine import local
    from gar_tools.model.rgb import image_digest
    from gar_tools.segment.cache import ImageValueCache

    decoded: list[int] = []
    real_load = local.load_image

    def counting_load(source, policy=None, *, field="image"):
        decoded.append(1)
        return real_load(source, policy, field=field)

    monkeypatch.setattr(local, "load_image", counting_load)
    cache, policy = ImageValueCache(10 * 2**20), ImagePolicy()
    rng = np.random.default_rng(0)
    first = Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
    path = tmp_path / "photo.png"
    path.write_bytes(_png_bytes(first))
    a, digest = local.read_image(str(path), policy, cache)
    b, again = local.read_image(base64.b64encode(path.read_bytes()).decode(), policy, cache)
    assert a is b and len(decoded) == 1 and np.array_equal(np.asarray(a), np.asarray(first))
    assert digest == again == image_digest(first)
    assert cache.nbytes == 40 * 60 * 3

    second = Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
    path.write_bytes(_png_bytes(second))  # same path, new bytes
    assert np.array_equal(np.asarray(local.read_image(str(path), policy, cache)[0]), np.asarray(second))
    assert len(decoded) == 2

    elsewhere = ImagePolicy(allowed_dirs=[tmp_path / "only-here"])
    with pytest.raises(ImageError, match="outside"):
        local.read_image(str(path), elsewhere, cache)  # cached bytes or not, the path is refused
    broken = tmp_path / "broken.png"
    broken.write_bytes(_png_bytes(first)[:-30])
    for _ in range(2):
        with pytest.raises(ImageError, match="corrupt or truncated"):
            local.read_image(str(broken), policy, cache)
    assert len(decoded) == 4  # the broken file was decoded (and refused) both times
