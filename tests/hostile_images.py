"""Hostile images built in the tests (tiny to ship): a palette PNG that expands ~1000x, a JPEG that decodes slowly."""

from __future__ import annotations

import io
import struct

from PIL import Image


def palette_png_with_transparency(side: int = 6320) -> bytes:
    """~40 KB PNG, side x side palette pixels with a transparent entry: 40 MB as P, 160 MB as RGBA."""
    image = Image.new("P", (side, side))
    image.putpalette([0, 0, 0, 255, 0, 0] * 128)
    out = io.BytesIO()
    image.save(out, "PNG", optimize=True, transparency=0)
    return out.getvalue()


def jpeg_segments(data: bytes) -> list[bytes]:
    """A JPEG split into its marker segments; an SOS segment runs to the next marker (its entropy-coded data)."""
    segments, i = [], 2  # after SOI
    while i < len(data):
        marker = data[i + 1]
        if marker == 0xD9:  # EOI
            break
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        end = i + 2 + length
        if marker == 0xDA:  # scan data: until a marker that is not a stuffed 0xFF00 or a restart marker
            while not (data[end] == 0xFF and data[end + 1] not in (0x00, *range(0xD0, 0xD8))):
                end += 1
        segments.append(data[i:end])
        i = end
    return segments


def progressive_jpeg_scan_bomb(side: int = 2000, repeats: int = 1500) -> bytes:
    """A grey progressive JPEG whose last refinement scan is repeated ``repeats`` times: each repeat is a few
    hundred bytes, but libjpeg decodes every coefficient of the image again for each (seconds of CPU)."""
    out = io.BytesIO()
    Image.new("L", (side, side), 128).save(out, "JPEG", progressive=True, quality=90)
    segments = jpeg_segments(out.getvalue())
    last_scan = max(i for i, s in enumerate(segments) if s[1] == 0xDA)
    body = segments[: last_scan + 1] + [segments[last_scan]] * repeats + segments[last_scan + 1 :]
    return b"\xff\xd8" + b"".join(body) + b"\xff\xd9"
