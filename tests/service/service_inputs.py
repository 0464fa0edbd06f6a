"""Image bytes for the service tests: good images of every odd kind, and bad or hostile inputs.

Huge images are crafted as headers only (a few hundred bytes that declare 20000x20000 pixels); nothing here
allocates the pixels it declares.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def photo(size=(96, 64), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    channels = [np.sin(xx * rng.uniform(2, 9) + yy * rng.uniform(2, 9) + rng.uniform(0, 6)) for _ in range(3)]
    return Image.fromarray(((np.stack(channels, -1) + 1) * 127.5).astype(np.uint8), "RGB")


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def jpeg(size=(96, 64), seed=0) -> bytes:
    return encode(photo(size, seed), "JPEG", quality=90)


def png(size=(96, 64), seed=0) -> bytes:
    return encode(photo(size, seed), "PNG")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int, bits: int = 8, color: int = 2) -> bytes:
    """A PNG declaring width x height with a tiny (wrong-sized) compressed body: a decompression bomb's header."""
    ihdr = struct.pack(">IIBBBBB", width, height, bits, color, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def png_bomb(side: int = 30_000) -> bytes:
    """A real zlib stream of zeros for side x side grey pixels, cut after 64 KiB: a few KiB that inflate to GBs."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    comp = zlib.compressobj(9)
    row = b"\x00" * (side + 1)
    data = b"".join(comp.compress(row) for _ in range(2000)) + comp.flush()
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def jpeg_header_only(width: int, height: int) -> bytes:
    """A 16x16 JPEG whose SOF0 header declares width x height instead (the scan data is far too short)."""
    good = jpeg((16, 16))
    sof = good.index(b"\xff\xc0")
    return good[: sof + 5] + struct.pack(">HH", height, width) + good[sof + 9 :]


def png_bad_crc() -> bytes:
    data = bytearray(png((32, 32)))
    ihdr_crc = 8 + 8 + 13  # signature, IHDR length+type, IHDR data
    data[ihdr_crc] ^= 0xFF
    return bytes(data)


def cmyk_jpeg() -> bytes:
    return encode(photo((64, 48)).convert("CMYK"), "JPEG")


def png16() -> bytes:
    arr = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    return encode(Image.fromarray(arr), "PNG")  # uint16 -> mode I;16


def alpha_png() -> bytes:
    image = photo((64, 48)).convert("RGBA")
    image.putalpha(128)
    return encode(image, "PNG")


def animated_gif() -> bytes:
    frames = [photo((48, 32), seed=i).convert("P") for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW on display
    return encode(photo((96, 48)), "JPEG", exif=exif.tobytes())


def webp() -> bytes:
    return encode(photo((64, 48)), "WEBP")


def bmp() -> bytes:
    return encode(photo((40, 30)), "BMP")


def one_by_one() -> bytes:
    return encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG")


def zip_polyglot() -> bytes:
    """A valid zip whose first bytes are not an image (a zip appended to nothing): PK\\x03\\x04..."""
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.txt", "hello")
    return buf.getvalue()


def jpeg_with_zip_appended() -> bytes:
    """A real JPEG followed by a zip archive (a classic polyglot): still a JPEG by its magic bytes."""
    return jpeg() + zip_polyglot()


PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><script>alert(1)</script></svg>'
HTML = b"<!doctype html><html><body><script>alert(1)</script></body></html>"
GIFAR_HTML = b"GIF89a/*<html><script>alert(1)</script></html>*/"
