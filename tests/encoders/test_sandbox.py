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
