"""Image decoding and preprocessing: the ONE path used by feature extraction, evaluation and serving.

Training features and serving features must come from identical pixels, so every caller goes through
``load_image`` -> ``preprocess`` here; nothing else in the package opens an image.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from captioner.errors import ImageError, ImageTooLarge, UnsupportedImageType

# 40 megapixels (e.g. 8000x5000) decodes to ~120 MB of RGB; larger is refused before decoding.
DEFAULT_MAX_PIXELS = 40_000_000

# Pillow's own bomb check warns at MAX_IMAGE_PIXELS and raises at twice that; we check the header ourselves
# against a caller-chosen limit, so silence the global one to a value we never reach first.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")


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


def _read_source(source: bytes | str | Path) -> bytes:
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


def load_image(
    source: bytes | str | Path,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
) -> Image.Image:
    """Decode an image to 8-bit RGB with its EXIF orientation applied.

    source: the encoded bytes or a path. max_pixels: refuse images whose header declares more pixels
    (decompression bombs) before any pixel is decoded. draft_size: for JPEG, let libjpeg decode at a reduced
    scale (1/2, 1/4, 1/8) that is still at least this many pixels on the short side; much faster for large
    photos and deterministic, so training and serving use the same value from the encoder's spec.
    Animated GIF/WebP: the first frame. Alpha is composited on white; 16-bit and float images are rescaled.
    """
    data = _read_source(source)
    name = "" if isinstance(source, bytes | bytearray | memoryview) else f" {source}"
    if not data:
        raise ImageError(f"the image{name} is empty (0 bytes); send a JPEG, PNG, WebP, BMP or GIF file")
    fmt = sniff_format(data[:32])
    if fmt is None:
        raise UnsupportedImageType(
            f"the file{name} is not a supported image: its bytes are not JPEG, PNG, WebP, BMP or GIF"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
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
            image.seek(0)  # first frame of animations
            image.load()
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(
            f"the {fmt} image{name} is corrupt or truncated and cannot be decoded ({exc})"
        ) from None
    except Image.DecompressionBombError as exc:  # pragma: no cover - guarded above
        raise ImageTooLarge(str(exc)) from None
    # A broken EXIF block must not reject an otherwise good photo.
    with contextlib.suppress(Exception):
        image = ImageOps.exif_transpose(image) or image
    return _to_rgb(image)


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # convert("RGB") would clip 16-bit values at 255 (a white image); rescale to the format's range instead.
        arr = np.asarray(image, dtype=np.float32)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if mode == "F":
            top = max(float(arr.max(initial=1.0)), 1.0)
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
            mean=tuple(float(x) for x in d["mean"]),  # type: ignore[arg-type]
            std=tuple(float(x) for x in d["std"]),  # type: ignore[arg-type]
            layout=d.get("layout", "NCHW"),
            resize=d.get("resize", "squash"),
        )


def resize(image: Image.Image, spec: Preprocessing) -> Image.Image:
    """Resize with Pillow's antialiased bilinear filter (not nearest, Keras load_img's default)."""
    size = spec.size
    if spec.resize == "center_crop":
        w, h = image.size
        scale = size / min(w, h)
        image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
        w, h = image.size
        left, top = (w - size) // 2, (h - size) // 2
        return image.crop((left, top, left + size, top + size))
    if image.size == (size, size):
        return image
    return image.resize((size, size), Image.BILINEAR)


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
    """Decode + preprocess in one call, with JPEG draft decoding sized for the spec."""
    return preprocess(load_image(source, max_pixels=max_pixels, draft_size=spec.size), spec)
