"""Image decoding and preprocessing: the one pixel path shared by feature extraction and serving."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image

from captioner.encoders.images import (
    Preprocessing,
    load_and_preprocess,
    load_image,
    preprocess,
    sniff_format,
)
from captioner.errors import ImageError, ImageTooLarge, UnsupportedImageType


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height (8-bit RGB) followed by a tiny IDAT: a decompression bomb header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def rgb_image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8), "RGB")


# -- sources and type sniffing --


def test_bytes_and_path_give_the_same_pixels(tmp_path, rgb_image):
    data = encode(rgb_image, "PNG")
    path = tmp_path / "a.png"
    path.write_bytes(data)
    from_bytes, from_str, from_path = load_image(data), load_image(str(path)), load_image(path)
    assert from_bytes.mode == "RGB" and from_bytes.size == (30, 20)
    np.testing.assert_array_equal(pixels(from_bytes), pixels(rgb_image))
    np.testing.assert_array_equal(pixels(from_str), pixels(rgb_image))
    np.testing.assert_array_equal(pixels(from_path), pixels(rgb_image))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF"])
def test_every_supported_format_is_sniffed_and_decoded(fmt, rgb_image):
    data = encode(rgb_image, fmt)
    assert sniff_format(data[:32]) == fmt
    out = load_image(data)
    assert out.mode == "RGB" and out.size == rgb_image.size


def test_type_comes_from_the_bytes_not_the_file_name(tmp_path, rgb_image):
    text = tmp_path / "notes.jpg"
    text.write_text("this is a text file, not a photo\n")
    with pytest.raises(UnsupportedImageType, match="not a supported image"):
        load_image(text)
    # A PNG named .jpg is still a fine PNG.
    png = tmp_path / "really_png.jpg"
    png.write_bytes(encode(rgb_image, "PNG"))
    assert load_image(png).size == rgb_image.size


def test_truncated_jpeg_is_an_image_error(rgb_image):
    data = encode(rgb_image.resize((200, 150)), "JPEG", quality=90)
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_image(data[: len(data) // 2])


def test_empty_and_missing_files_are_image_errors(tmp_path):
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(empty)
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="folder"):
        load_image(tmp_path)


def test_huge_declared_size_is_refused_before_decoding():
    bomb = png_header_only(100_000, 100_000)  # 10^10 pixels, 30 GB as RGB
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLarge, match="10,000,000,000 pixels"):
            load_image(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000, f"refusing the bomb allocated {peak} bytes"


def test_pixel_limit_is_the_callers_choice(rgb_image):
    data = encode(rgb_image, "PNG")  # 600 pixels
    assert load_image(data, max_pixels=600).size == (30, 20)
    with pytest.raises(ImageTooLarge, match="limit is 599"):
        load_image(data, max_pixels=599)


# -- modes and orientation --


def test_exif_orientation_is_applied():
    # Stored 40 wide x 20 high, red left half; Orientation=6 means "rotate 90 degrees clockwise to display".
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    stored = Image.fromarray(arr, "RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    out = pixels(load_image(encode(stored, "JPEG", quality=95, exif=exif.tobytes())))
    assert out.shape == (40, 20, 3)  # transposed: now 20 wide x 40 high
    # The stored left half (red) ends up on top after a clockwise rotation.
    assert out[:15, :, 0].mean() > 200 and out[:15, :, 2].mean() < 50
    assert out[25:, :, 2].mean() > 200 and out[25:, :, 0].mean() < 50


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # no cyan, full magenta+yellow: red
    out = load_image(encode(cmyk, "JPEG", quality=95))
    assert out.mode == "RGB"
    r, g, b = pixels(out).reshape(-1, 3).mean(0)
    assert r > 200 and g < 60 and b < 60


def test_16_bit_png_keeps_its_brightness():
    # A 16-bit ramp over the full 0..65535 range: naive convert("RGB") would clip it to almost all white.
    ramp = np.linspace(0, 65535, 64 * 32).reshape(32, 64).astype(np.uint16)
    data = encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = pixels(load_image(data))
    expected_mean = ramp.mean() / 65535 * 255  # ~127.5
    assert out.shape == (32, 64, 3)
    assert abs(out.mean() - expected_mean) < 3, (out.mean(), expected_mean)
    assert out.min() <= 1 and out.max() >= 254
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_alpha_is_composited_on_white():
    arr = np.zeros((8, 8, 4), np.uint8)
    arr[..., :3] = (10, 20, 30)
    arr[:, :4, 3] = 0  # left half fully transparent
    arr[:, 4:, 3] = 255
    out = pixels(load_image(encode(Image.fromarray(arr, "RGBA"), "PNG")))
    np.testing.assert_array_equal(out[:, :4], 255)
    np.testing.assert_array_equal(out[:, 4:].reshape(-1, 3)[0], (10, 20, 30))


def test_palette_transparency_is_composited_on_white():
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, 200, 0, 0] + [0] * (254 * 3))
    image.paste(1, (4, 0, 8, 8))  # right half: palette entry 1 (red)
    out = pixels(load_image(encode(image, "PNG", transparency=0)))
    np.testing.assert_array_equal(out[:, :4], 255)  # entry 0 is transparent, not black
    np.testing.assert_array_equal(out[0, 6], (200, 0, 0))


def test_grayscale_becomes_three_equal_channels():
    gray = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, "L")
    out = pixels(load_image(encode(gray, "PNG")))
    assert out.shape == (8, 8, 3)
    np.testing.assert_array_equal(out[..., 0], pixels(gray))
    np.testing.assert_array_equal(out[..., 1], out[..., 2])


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out = pixels(load_image(buf.getvalue()))
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), (255, 0, 0), atol=2)


# -- preprocessing --


@pytest.mark.parametrize("layout, shape", [("NCHW", (3, 16, 16)), ("NHWC", (16, 16, 3))])
def test_preprocess_layout_and_normalisation(layout, shape):
    spec = Preprocessing(size=16, mean=(127.0, 100.0, 50.0), std=(128.0, 64.0, 32.0), layout=layout)
    x = preprocess(Image.new("RGB", (40, 30), (200, 20, 50)), spec)
    assert x.shape == shape and x.dtype == np.float32 and x.flags.c_contiguous
    channels = x if layout == "NCHW" else x.transpose(2, 0, 1)
    expected = [(200 - 127) / 128, (20 - 100) / 64, (50 - 50) / 32]
    for c in range(3):
        np.testing.assert_allclose(channels[c], expected[c], rtol=1e-6)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_batch_preprocessing_is_bit_identical_to_the_formula_per_image(layout):
    # The engine normalises in place into one batch; the features training used came from this formula.
    from captioner.encoders.images import preprocess_batch, resize

    spec = Preprocessing(size=24, mean=(127.0, 100.0, 50.0), std=(128.0, 64.0, 32.0), layout=layout)
    rng = np.random.default_rng(5)
    images = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
        for h, w in ((30, 40), (24, 24), (50, 20))
    ]
    batch = preprocess_batch(images, spec)
    assert (
        batch.shape == (3, *((3, 24, 24) if layout == "NCHW" else (24, 24, 3))) and batch.flags.c_contiguous
    )
    for image, got in zip(images, batch, strict=True):
        x = (np.asarray(resize(image, spec), dtype=np.float32) - np.float32(spec.mean)) * (
            1.0 / np.float32(spec.std)
        )
        expected = x.transpose(2, 0, 1) if layout == "NCHW" else x
        assert np.array_equal(got, expected)
    assert np.array_equal(preprocess(images[0], spec), batch[0])
    assert preprocess_batch([], spec).shape == (0, *batch.shape[1:])


def test_center_crop_keeps_the_middle_and_squash_keeps_everything():
    # 300 x 100: red | green | blue thirds.
    arr = np.zeros((100, 300, 3), np.uint8)
    arr[:, :100, 0] = arr[:, 100:200, 1] = arr[:, 200:, 2] = 255
    image = Image.fromarray(arr, "RGB")
    base = dict(size=50, mean=(0.0,) * 3, std=(1.0,) * 3, layout="NHWC")
    crop = preprocess(image, Preprocessing(**base, resize="center_crop"))
    squash = preprocess(image, Preprocessing(**base, resize="squash"))
    assert crop.shape == squash.shape == (50, 50, 3)
    # Only the green third survives the crop (edge columns blend with the neighbours in the resize).
    np.testing.assert_allclose(crop[:, 2:-2].reshape(-1, 3).mean(0), (0, 255, 0), atol=1)
    assert squash[:, :10, 0].min() > 250 and squash[:, 25, 1].min() > 250 and squash[:, -10:, 2].min() > 250


def test_jpeg_draft_decoding_is_deterministic_and_same_size():
    big = Image.fromarray((np.random.default_rng(1).random((3, 4, 3)) * 255).astype(np.uint8), "RGB").resize(
        (2000, 1500), Image.BILINEAR
    )
    data = encode(big, "JPEG", quality=90)
    drafted = load_image(data, draft_size=224)
    assert min(drafted.size) >= 224 and drafted.size[0] < 2000  # reduced by libjpeg, still big enough
    full = load_image(data)
    assert full.size == (2000, 1500)
    spec = Preprocessing(size=224, mean=(127.0,) * 3, std=(128.0,) * 3)
    a, b = load_and_preprocess(data, spec), load_and_preprocess(data, spec)
    np.testing.assert_array_equal(a, b)
    assert a.shape == preprocess(full, spec).shape == (3, 224, 224)
    # A smooth image: the draft decode is a good approximation of the full decode.
    assert np.abs(a - preprocess(full, spec)).mean() < 0.05


@pytest.mark.parametrize("name", ["chelsea", "astronaut", "coffee"])
def test_real_photos_load(name):
    import skimage.data

    arr = getattr(skimage.data, name)()
    out = load_image(encode(Image.fromarray(arr), "PNG"))
    np.testing.assert_array_equal(pixels(out), arr)
    jpeg = load_image(encode(Image.fromarray(arr), "JPEG", quality=95))
    assert jpeg.size == (arr.shape[1], arr.shape[0])
    assert np.abs(pixels(jpeg) - arr).mean() < 5


# -- reduction of large images; small ones keep today's pixels --


def _todays_load_image(data: bytes, draft_size: int) -> Image.Image:
    """The decoding path before reduction and strips (verbatim in substance): full-size conversion."""
    from PIL import ImageOps

    image = Image.open(io.BytesIO(data))
    if image.format == "JPEG" and image.mode in ("RGB", "L", "CMYK", "YCbCr"):
        image.draft(image.mode, (draft_size, draft_size))
    image.seek(0)
    image.load()
    image = ImageOps.exif_transpose(image) or image
    return _todays_to_rgb(image)


def _todays_to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
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
    return image.convert("RGB")


def _small_images_of_every_mode() -> dict[str, bytes]:
    rng = np.random.default_rng(3)
    rgba = Image.fromarray(rng.integers(0, 256, (700, 1000, 4), dtype=np.uint8), "RGBA")  # 1000 < 4 x 260
    palette = rgba.convert("RGB").quantize(64)
    gray16 = Image.fromarray(rng.integers(0, 65536, (300, 200), dtype=np.uint16))
    rotated = rgba.convert("RGB")
    exif = rotated.getexif()
    exif[0x0112] = 6
    return {
        "RGB": encode(rgba.convert("RGB"), "PNG"),
        "RGBA": encode(rgba, "PNG"),
        "LA": encode(rgba.convert("LA"), "PNG"),
        "L": encode(rgba.convert("L"), "PNG"),
        "1": encode(rgba.convert("1"), "PNG"),
        "P": encode(palette, "PNG"),
        "P+transparency": encode(palette, "PNG", transparency=3),
        "GIF": encode(palette, "GIF", transparency=5),
        "I;16": encode(gray16, "PNG"),
        "CMYK JPEG": encode(rgba.convert("CMYK"), "JPEG", quality=90),
        "JPEG rotated": encode(rotated, "JPEG", quality=90, exif=exif),
        "WEBP": encode(rgba, "WEBP", lossless=True),
        "BMP": encode(rgba.convert("RGB"), "BMP"),
    }


@pytest.mark.parametrize("name", list(_small_images_of_every_mode()))
def test_small_images_keep_exactly_todays_pixels(name):
    data = _small_images_of_every_mode()[name]
    spec = Preprocessing(size=260, mean=(127.0,) * 3, std=(128.0,) * 3)
    expected = preprocess(_todays_load_image(data, spec.size), spec)
    np.testing.assert_array_equal(load_and_preprocess(data, spec), expected)


@pytest.mark.parametrize("mode", ["I", "F"])
def test_integer_and_float_images_are_rescaled_as_before(mode):
    from captioner.encoders.images import _convert_in_strips

    rng = np.random.default_rng(4)
    values = rng.integers(0, 4000, (300, 1100)).astype(np.int32 if mode == "I" else np.float32)
    image = Image.fromarray(values, mode)
    np.testing.assert_array_equal(
        np.asarray(_convert_in_strips(image, (1, 1))), np.asarray(_todays_to_rgb(image))
    )


def test_large_images_are_reduced_to_at_least_twice_the_encoder_size():
    from captioner.encoders.images import reduction

    assert reduction((1039, 1039), 260) == (1, 1)  # below 4 x 260 on both sides: untouched
    assert reduction((6320, 6320), 260) == (12, 12)
    assert reduction((20000, 1000), 260) == (38, 1)  # squash: each axis on its own
    assert reduction((20000, 1000), 260, uniform=True) == (1, 1)  # center_crop keeps the aspect ratio
    image = Image.new("P", (2600, 1300))
    image.putpalette([0, 0, 0, 200, 10, 10] * 128)
    out = load_image(encode(image, "PNG", transparency=0), draft_size=260)
    assert out.mode == "RGB" and out.size == (520, 650)  # factors (5, 2): 2600/5, 1300/2
    assert out.getpixel((0, 0)) == (255, 255, 255)  # the transparent colour composited on white


def test_importing_does_not_change_pillows_globals():
    import subprocess
    import sys

    code = (
        "from PIL import Image, ImageFile; before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES); "
        "import captioner.encoders.images, captioner.encoders.sandbox; "
        "assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == before, Image.MAX_IMAGE_PIXELS"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_error_messages_carry_no_object_reprs():
    with pytest.raises(ImageError) as info:
        load_image(b"GIF89a" + bytes(4))
    assert "0x" not in str(info.value) and "object" not in str(info.value)
