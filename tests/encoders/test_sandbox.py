"""The decoding pool: real worker processes, the same pixels as decoding in-process, a shared memory budget."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from captioner.encoders.images import load_image
from captioner.encoders.sandbox import DecodePool, MemoryBudget
from captioner.errors import ImageError, ImageTooLarge, UnsupportedImageType


@pytest.fixture(scope="module")
def pool():
    with DecodePool(workers=1, timeout_s=20.0, memory_budget_bytes=32 * 2**20) as p:
        assert p.wait_ready(60)
        yield p


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "L"])
def test_worker_gives_the_same_pixels_as_decoding_here(pool, mode):
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (1200, 900, 3), dtype=np.uint8), "RGB").convert(mode)
    data = png(image)
    got = pool.load(data, draft_size=224)
    assert np.array_equal(np.asarray(got), np.asarray(load_image(data, draft_size=224)))


def test_worker_errors_come_back_as_the_same_image_errors(pool):
    with pytest.raises(UnsupportedImageType):
        pool.load(b"not an image at all")
    with pytest.raises(ImageTooLarge, match="limit is 99"):
        pool.load(png(Image.new("RGB", (10, 10))), max_pixels=99)
    with pytest.raises(ImageError, match="corrupt"):
        pool.load(png(Image.new("RGB", (64, 64)))[:60])
    assert pool.load(png(Image.new("RGB", (3, 2)))).size == (3, 2)  # the worker is still serving


def test_image_needing_more_than_the_budget_is_refused_from_its_header(pool):
    with pytest.raises(ImageTooLarge, match="memory budget is 32 MiB"):
        pool.load(png(Image.new("RGBA", (3000, 3000))))  # 36 MB as RGBA


def test_budget_makes_decodes_wait_for_each_other():
    budget = MemoryBudget(16)
    assert budget.acquire(10, wait_s=0)
    assert not budget.acquire(10, wait_s=0.05)  # would exceed 16: waits, then gives up
    threading.Timer(0.1, budget.release, (10,)).start()
    start = time.monotonic()
    assert budget.acquire(10, wait_s=10)
    assert 0.05 < time.monotonic() - start < 5 and budget.used == 10


# -- small sequential JPEGs decode in the calling thread --

INLINE_PIXELS, INLINE_BYTES = 300_000, 256 * 1024


@pytest.fixture(scope="module")
def inline_pool():
    with DecodePool(1, 20.0, 32 * 2**20, inline_max_pixels=INLINE_PIXELS, inline_max_bytes=INLINE_BYTES) as p:
        assert p.wait_ready(60)
        yield p


def jpeg(size: tuple[int, int], progressive: bool = False, noise: bool = False) -> bytes:
    """A smooth photo-like JPEG of ``size``; noise: every pixel random at quality 100 (the most bytes a size can
    take)."""
    rng = np.random.default_rng(0)
    if noise:
        photo = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    else:
        small = rng.integers(0, 256, (size[1] // 16 + 1, size[0] // 16 + 1, 3), dtype=np.uint8)
        photo = Image.fromarray(small, "RGB").resize(size, Image.BILINEAR)
    out = io.BytesIO()
    photo.save(out, "JPEG", quality=100 if noise else 90, progressive=progressive)
    return out.getvalue()


def test_small_sequential_jpeg_decodes_in_the_calling_thread_with_the_workers_pixels(pool, inline_pool):
    data = jpeg((500, 375))
    before = inline_pool.inline_decodes
    got = inline_pool.load(data, draft_size=260)
    assert inline_pool.inline_decodes == before + 1
    assert np.array_equal(np.asarray(got), np.asarray(pool.load(data, draft_size=260)))  # a worker's decode
    assert pool.inline_decodes == 0  # off by default


@pytest.mark.parametrize(
    ("size", "progressive", "noise"),
    [((500, 375), True, False), ((700, 500), False, False), ((500, 500), False, True)],
    ids=["progressive", "more-pixels", "more-bytes"],
)
def test_progressive_or_larger_jpegs_go_to_a_worker(inline_pool, size, progressive, noise):
    data = jpeg(size, progressive, noise)
    if noise:  # within the pixel limit, over the byte limit
        assert size[0] * size[1] <= INLINE_PIXELS and len(data) > INLINE_BYTES
    before = inline_pool.inline_decodes
    got = inline_pool.load(data, draft_size=260)
    assert inline_pool.inline_decodes == before
    assert np.array_equal(np.asarray(got), np.asarray(load_image(data, draft_size=260)))


def test_other_formats_go_to_a_worker(inline_pool):
    before = inline_pool.inline_decodes
    assert inline_pool.load(png(Image.new("RGB", (64, 48)))).size == (64, 48)
    assert inline_pool.inline_decodes == before


def test_a_corrupt_small_jpeg_fails_in_the_calling_thread_as_in_a_worker(pool, inline_pool):
    data = jpeg((500, 375))[:2000]  # cut in its entropy-coded data
    before = inline_pool.inline_decodes
    with pytest.raises(ImageError, match="corrupt or truncated") as here:
        inline_pool.load(data, draft_size=260)
    assert inline_pool.inline_decodes == before + 1
    with pytest.raises(ImageError) as there:
        pool.load(data, draft_size=260)
    assert str(here.value) == str(there.value)
    assert inline_pool.load(jpeg((64, 48))).size == (64, 48)  # and it goes on


def test_inline_limits_are_validated():
    with pytest.raises(ValueError, match="inline limits >= 0"):
        DecodePool(1, 1.0, 2**20, inline_max_pixels=-1)
