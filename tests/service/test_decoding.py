"""Hostile images against the real service: decodes in killable worker processes under a memory budget."""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest
from PIL import Image
from service_inputs import jpeg

from hostile_images import palette_png_with_transparency, progressive_jpeg_scan_bomb

URL = "/generate-caption/"
MiB = 2**20


def peak_rss_mib(pid: int | str = "self") -> float:
    """The process's peak resident memory so far (VmHWM), MiB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))


def test_palette_bomb_is_captioned_without_expanding_it(make_client):
    # Today's 40 MP limit, so that the 6320x6320 PNG passes the pixel check and is really decoded.
    client = make_client(max_image_pixels=40_000_000)
    bomb = palette_png_with_transparency()
    assert len(bomb) < 60_000
    service = client.app.state.service
    server_before = peak_rss_mib()
    workers_before = {pid: peak_rss_mib(pid) for pid in service.decoders.pids}
    r = client.post(URL, files={"file": bomb})
    assert r.status_code == 200, r.text
    # The full-size RGBA path grew the process by ~840 MB; the pixels alone are 40 MB as P.
    assert peak_rss_mib() - server_before < 200
    for pid, before in workers_before.items():
        assert peak_rss_mib(pid) - before < 200


def test_palette_bomb_is_over_the_default_pixel_limit(client):
    r = client.post(URL, files={"file": palette_png_with_transparency()})
    assert r.status_code == 413 and r.json()["type"].endswith("image-too-large")
    assert "25,000,000 pixels" in r.json()["detail"]


def test_cpu_bomb_is_stopped_at_the_decode_timeout_and_its_worker_replaced(make_client):
    client = make_client(decode_timeout_s=1.0, decode_workers=1)
    service = client.app.state.service
    (old_pid,) = service.decoders.pids
    bomb = progressive_jpeg_scan_bomb(2000, 3000)  # ~200 KB, ~15 s of CPU to decode
    start = time.perf_counter()
    r = client.post(URL, files={"file": bomb})
    elapsed = time.perf_counter() - start
    assert r.status_code == 422 and r.json()["type"].endswith("image-too-complex"), r.text
    assert "re-encode" in r.json()["detail"]
    assert elapsed < 6, f"answered after {elapsed:.1f} s"
    with pytest.raises(ProcessLookupError):
        os.kill(old_pid, 0)  # killed and reaped: no CPU left burning
    assert service.decoders.budget.used == 0
    assert client.post(URL, files={"file": jpeg()}).status_code == 200  # waits for the fresh worker
    assert service.decoders.pids != [old_pid]


def test_image_over_the_memory_budget_is_413(make_client):
    client = make_client(decode_memory_budget_bytes=16 * MiB)
    out = io.BytesIO()
    Image.new("RGB", (3000, 2000), (40, 90, 200)).save(out, "PNG")  # 6 MP x 4 bytes = 23 MiB decoded
    r = client.post(URL, files={"file": out.getvalue()})
    assert r.status_code == 413 and r.json()["type"].endswith("image-too-large"), r.text
    assert "memory budget is 16 MiB" in r.json()["detail"]
    assert client.post(URL, files={"file": jpeg()}).status_code == 200


def test_batch_of_palette_bombs_holds_only_small_images(make_client):
    client = make_client(max_image_pixels=40_000_000)
    before = peak_rss_mib()
    bomb = palette_png_with_transparency()
    r = client.post("/generate-captions/", files=[("files", bomb)] * 4)
    assert r.status_code == 200 and all("result" in item for item in r.json()["results"]), r.text
    assert peak_rss_mib() - before < 200


@pytest.mark.parametrize("url", [URL, "/generate-captions/"])
def test_invalid_image_details_name_no_object_or_address(client, url):
    field = "file" if url == URL else "files"
    r = client.post(url, files={field: b"GIF89a" + bytes(4)})
    body = r.json() if url == URL else r.json()["results"][0]["error"]
    assert body["status"] == 422
    assert "0x" not in body["detail"] and "object" not in body["detail"], body["detail"]


def _jpeg(size: tuple[int, int]) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, "JPEG")
    return out.getvalue()


def test_small_sequential_jpegs_decode_inline_and_the_rest_in_workers(make_client):
    client = make_client(decode_inline_max_pixels=400_000, decode_inline_max_bytes=MiB)
    decoders = client.app.state.service.decoders
    small = _jpeg((500, 375))
    before = decoders.inline_decodes
    for data in (small, _jpeg((800, 600))):  # 480,000 pixels: a worker's
        r = client.post(URL, files={"file": data})
        assert r.status_code == 200, r.text
    assert decoders.inline_decodes == before + 1
    r = client.post(URL, files={"file": small[: len(small) // 2]})  # cut in its pixels: corrupt, inline
    assert r.status_code == 422 and "corrupt" in r.json()["detail"], r.text
    assert decoders.inline_decodes == before + 2 and decoders.budget.used == 0
    assert client.post(URL, files={"file": small}).status_code == 200  # and it keeps serving


def test_inline_decoding_can_be_turned_off(make_client):
    client = make_client(decode_inline_max_pixels=0)
    assert client.post(URL, files={"file": _jpeg((500, 375))}).status_code == 200
    assert client.app.state.service.decoders.inline_decodes == 0
