"""Image decoding and preprocessing: the ONE path used by feature extraction, evaluation and serving.

Training features and serving features must come from identical pixels, so every caller goes through
``load_image`` -> ``preprocess`` here; nothing else in the package opens an image.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, cast

import numpy as np
from PIL import Image, UnidentifiedImageError

from captioner.errors import ImageError, ImageTooLarge, UnsupportedImageType, without_addresses

# 25 megapixels (e.g. 6000x4200) is far more than an encoder that sees 260x260 needs; larger is refused from the
# header, before any pixel is decoded. Pillow's own bomb check (a process-wide setting we leave alone) warns at
# ~89 MP and raises at ~179 MP: a caller limit above that is met by Pillow's error, reported as ImageTooLarge.
DEFAULT_MAX_PIXELS = 25_000_000

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")

# An image with a side of at least REDUCE_FROM x the encoder's input size is reduced while it is converted to
# RGB (box filter, an integer factor per axis) so that each side stays >= 2x the input size; smaller images keep
# exactly the pixels they always had (training features were extracted from them).
REDUCE_FROM = 4
_STRIP_BYTES = 4 * 1024 * 1024  # rows converted at a time: bounds the RGBA/float temporaries of a large image
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def sniff_format(head: bytes) -> str | None:
    """Return the image format named by the magic bytes at the start of a file, or None.

    Only the formats we accept are recognised; the client's filename and content type are never consulted.
    """
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head.startswith(b"BM") and len(head) >= 26:
        return "BMP"
    return None


def read_source(source: bytes | str | Path) -> bytes:
    """The bytes of an image given as bytes or a path; ImageError when the path cannot be read."""
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    path = Path(source)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"image not found: {path}") from None
    except IsADirectoryError:
        raise ImageError(f"expected an image file but got a folder: {path}") from None
    except OSError as exc:
        raise ImageError(f"cannot read image {path}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says, after JPEG draft: format, decoded size and mode, and decode_bytes, the
    memory its decoded pixels take at once (Pillow keeps 1, 2 or 4 bytes per pixel by mode; WebP is decoded
    into libwebp's buffer, then copied). declared_pixels: width x height as the file declares them (before
    draft). progressive: a progressive JPEG (any number of scans, each a pass over the whole image)."""

    format: str
    width: int
    height: int
    mode: str
    decode_bytes: int
    declared_pixels: int
    progressive: bool

    @property
    def sequential_jpeg(self) -> bool:
        """A JPEG decoded in one pass (baseline or extended sequential): its decoding work is bounded by its
        declared pixels and its bytes, whatever its content (a progressive one's by its number of scans)."""
        return self.format == "JPEG" and not self.progressive


def _bytes_per_pixel(mode: str) -> int:
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4  # LA, RGB, RGBA, CMYK, I, F...: 4 bytes a pixel in Pillow


@contextlib.contextmanager
def _decoding(fmt: str, name: str, max_pixels: int):
    """Pillow's errors -> ImageError with a message free of object reprs; its bomb warnings stay local."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's check, on images far above any limit of ours
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{int(found.group(1)):,}" if found else "far more"
        raise ImageTooLarge(
            f"the image{name} is {pixels} pixels; the limit is {max_pixels:,} pixels: downscale it before sending"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(
            f"the {fmt} image{name} is corrupt or truncated and cannot be decoded ({without_addresses(str(exc))})"
        ) from None


def _open(data: bytes, name: str, max_pixels: int, draft_size: int | None) -> tuple[Image.Image, str, int]:
    """Open (header only), check the pixel limit, set JPEG draft: (image, format, declared pixels)."""
    if not data:
        raise ImageError(f"the image{name} is empty (0 bytes); send a JPEG, PNG, WebP, BMP or GIF file")
    fmt = sniff_format(data[:32])
    if fmt is None:
        raise UnsupportedImageType(
            f"the file{name} is not a supported image: its bytes are not JPEG, PNG, WebP, BMP or GIF"
        )
    with _decoding(fmt, name, max_pixels):
        image = Image.open(io.BytesIO(data), formats=[fmt])
        width, height = image.size
        if width < 1 or height < 1:
            raise ImageError(f"the image{name} has no pixels ({width}x{height})")
        if width * height > max_pixels:
            raise ImageTooLarge(
                f"the image{name} is {width}x{height} = {width * height:,} pixels; the limit is "
                f"{max_pixels:,} pixels: downscale it before sending"
            )
        if fmt == "JPEG" and draft_size and image.mode in ("RGB", "L", "CMYK", "YCbCr"):
            image.draft(image.mode, (draft_size, draft_size))
    return image, fmt, width * height


def inspect_image(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None
) -> ImageHeader:
    """Read the header only (no pixel is decoded): the checks of ``load_image`` that need no pixels, and the
    memory its decoding will take. Raises ImageError like ``load_image``."""
    return open_image(data, max_pixels, draft_size)[0]


def open_image(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None
) -> tuple[ImageHeader, Image.Image]:
    """``inspect_image``'s header and the opened image (no pixel decoded yet), which ``decode_opened`` turns into
    what ``load_image`` gives, without reading the header again."""
    image, fmt, declared = _open(data, "", max_pixels, draft_size)
    w, h = image.size
    per_pixel = _bytes_per_pixel(image.mode) + (4 if fmt == "WEBP" else 0)
    progressive = "progressive" in image.info  # Pillow marks progressive JPEGs (SOF2, 6, 10, 14) only
    return ImageHeader(fmt, w, h, image.mode, w * h * per_pixel, declared, progressive), image


def reduction(size: tuple[int, int], target: int | None, uniform: bool = False) -> tuple[int, int]:
    """The integer factors (x, y) by which ``load_image`` reduces a decoded image of ``size`` (w, h).

    (1, 1) unless a side is at least REDUCE_FROM x target; then each side is divided by the largest factor that
    keeps it >= 2 x target. uniform: one factor for both axes (center_crop needs the aspect ratio).
    """
    w, h = size
    if not target or max(w, h) < REDUCE_FROM * target:
        return 1, 1
    fx, fy = max(1, w // (2 * target)), max(1, h // (2 * target))
    return (min(fx, fy),) * 2 if uniform else (fx, fy)


def load_image(
    source: bytes | str | Path,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
    resize: Resize = "squash",
) -> Image.Image:
    """Decode an image to 8-bit RGB with its EXIF orientation applied.

    source: the encoded bytes or a path. max_pixels: refuse images whose header declares more pixels
    (decompression bombs) before any pixel is decoded. draft_size: the encoder's input size, or None for full
    size: JPEGs are decoded by libjpeg at a reduced scale (1/2, 1/4, 1/8) that keeps the short side at least
    this many pixels, and an image with a side of at least REDUCE_FROM x draft_size is reduced while it is
    converted (see ``reduction``; resize: the encoder's, "center_crop" keeps the aspect ratio). Both are
    deterministic, so training and serving use the same value from the encoder's spec. Smaller images keep
    exactly today's pixels. Memory: the decoded image in its own mode plus a few MB, never an RGBA or float
    copy at full size. Animated GIF/WebP: the first frame. Alpha is composited on white; 16-bit and float
    images are rescaled.
    """
    data = read_source(source)
    name = "" if isinstance(source, bytes | bytearray | memoryview) else f" {source}"
    image, fmt, _ = _open(data, name, max_pixels, draft_size)
    return decode_opened(image, fmt, max_pixels, draft_size, resize, name)


def decode_opened(
    image: Image.Image,
    fmt: str,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
    resize: Resize = "squash",
    name: str = "",
) -> Image.Image:
    """The rest of ``load_image`` for an image ``open_image`` opened (with the same max_pixels and draft_size)."""
    with _decoding(fmt, name, max_pixels):
        image.seek(0)  # first frame of animations
        image.load()
    orientation = None
    with contextlib.suppress(Exception):  # a broken EXIF block must not reject an otherwise good photo
        orientation = _ORIENTATION.get(image.getexif().get(0x0112, 1))
    factors = reduction(image.size, draft_size, uniform=resize == "center_crop")
    rgb = _convert_in_strips(image, factors)
    return rgb.transpose(orientation) if orientation is not None else rgb


def _convert_in_strips(image: Image.Image, factors: tuple[int, int]) -> Image.Image:
    """RGB, reduced by ``factors``, converting a few MB of rows at a time (the same per-pixel operations as
    ``_to_rgb`` on the whole image, so the same bits)."""
    if image.mode == "RGB":
        return image if factors == (1, 1) else image.reduce(factors)
    top = _rescale_top(image)
    w, h = image.size
    fx, fy = factors
    # ~16 bytes a pixel of temporaries (RGBA, background, composite, RGB); whole blocks of fy rows.
    rows = max(fy, _STRIP_BYTES // (16 * w) // fy * fy)
    out = Image.new("RGB", ((w + fx - 1) // fx, (h + fy - 1) // fy))
    for y in range(0, h, rows):
        strip = _to_rgb(image.crop((0, y, w, min(h, y + rows))), top)
        out.paste(strip if factors == (1, 1) else strip.reduce(factors), (0, y // fy))
    return out


def _rescale_top(image: Image.Image) -> float | None:
    """The value that maps to 255 for 16-bit and float images (from the whole image), else None."""
    mode = image.mode
    if mode.startswith("I;16"):
        return 65535.0
    if mode in ("I", "F"):
        # one band: Pillow gives (min, max) numbers (tuples per band only for multi-band modes)
        hi = cast(tuple[float, float], image.getextrema())[1]
        if mode == "I":
            return 65535.0 if hi > 255 else 255.0
        return max(float(hi), 1.0)
    return None


def _to_rgb(image: Image.Image, top: float | None = None) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # convert("RGB") would clip 16-bit values at 255 (a white image); rescale to the format's range instead.
        # top: the whole image's when converting it in strips (every strip must share one scale).
        top = _rescale_top(image) if top is None else top
        assert top is not None  # _rescale_top is a number for each of these modes
        arr = np.asarray(image, dtype=np.float32)
        arr8 = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
        if image.mode == "RGB":
            return image
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


Resize = Literal["squash", "center_crop"]
Layout = Literal["NCHW", "NHWC"]


@dataclass(frozen=True)
class Preprocessing:
    """How an encoder wants its pixels.

    size: output height = width in pixels. resize: "squash" (ignore aspect ratio, like Keras load_img with
    target_size and the 224x224 Flickr8k copy) or "center_crop" (shorter side to size, then crop).
    mean/std: per channel, in 0..255 pixel units: x = (pixel - mean) / std. layout: NCHW (torch export) or
    NHWC (Keras export).
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layout: Layout = "NCHW"
    resize: Resize = "squash"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(
            size=int(d["size"]),
            mean=_per_channel(d["mean"]),
            std=_per_channel(d["std"]),
            layout=d.get("layout", "NCHW"),
            resize=d.get("resize", "squash"),
        )


def _per_channel(values: Sequence[float]) -> tuple[float, float, float]:
    """(R, G, B) floats from a list of three numbers (ValueError for any other length)."""
    r, g, b = (float(x) for x in values)
    return r, g, b


def resize(image: Image.Image, spec: Preprocessing) -> Image.Image:
    """Resize with Pillow's antialiased bilinear filter (not nearest, Keras load_img's default)."""
    size = spec.size
    if spec.resize == "center_crop":
        w, h = image.size
        scale = size / min(w, h)
        image = image.resize(
            (max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BILINEAR
        )
        w, h = image.size
        left, top = (w - size) // 2, (h - size) // 2
        return image.crop((left, top, left + size, top + size))
    if image.size == (size, size):
        return image
    return image.resize((size, size), Image.Resampling.BILINEAR)


def preprocess(image: Image.Image, spec: Preprocessing) -> np.ndarray:
    """RGB image -> float32 array [3, S, S] (NCHW) or [S, S, 3] (NHWC), normalised by the spec."""
    return preprocess_batch([image], spec)[0]


def preprocess_batch(images: Sequence[Image.Image], spec: Preprocessing) -> np.ndarray:
    """RGB images -> one float32 batch [B, 3, S, S] (NCHW) or [B, S, S, 3] (NHWC): (pixel - mean) / std.

    Each image is normalised straight into its slot of the batch (two passes over its pixels, no temporaries,
    no stacking copy): the same float32 operations, so the same bits, as (float32(pixels) - mean) * (1 / std).
    """
    mean = np.asarray(spec.mean, dtype=np.float32)
    inv_std = 1.0 / np.asarray(spec.std, dtype=np.float32)
    shape = (3, spec.size, spec.size) if spec.layout == "NCHW" else (spec.size, spec.size, 3)
    batch = np.empty((len(images), *shape), dtype=np.float32)
    for image, out in zip(images, batch, strict=True):
        hwc = out.transpose(1, 2, 0) if spec.layout == "NCHW" else out  # a view: writes land in NCHW order
        np.subtract(np.asarray(resize(image, spec)), mean, out=hwc, dtype=np.float32)
        np.multiply(hwc, inv_std, out=hwc)
    return batch


def load_and_preprocess(
    source: bytes | str | Path, spec: Preprocessing, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode + preprocess in one call, with JPEG draft decoding and reduction sized for the spec."""
    return preprocess(load_image(source, max_pixels, draft_size=spec.size, resize=spec.resize), spec)
