"""A battery of bad, odd and hostile uploads: each gets the right status and a problem+json body or a caption,
the service stays healthy, and no temp file is written or left behind."""

from __future__ import annotations

import pytest
import service_inputs as si
from service_helpers import assert_problem

URL = "/generate-caption/"

# name -> (request kwargs for client.post, expected status, expected problem slug or None for a caption)
CASES = {
    "jpeg": ({"files": {"file": ("p.jpg", si.jpeg(), "image/jpeg")}}, 200, None),
    "png": ({"files": {"file": ("p.png", si.png(), "image/png")}}, 200, None),
    "webp": ({"files": {"file": ("p.webp", si.webp(), "image/webp")}}, 200, None),
    "bmp": ({"files": {"file": ("p.bmp", si.bmp(), "image/bmp")}}, 200, None),
    "animated gif (first frame)": ({"files": {"file": ("a.gif", si.animated_gif(), "image/gif")}}, 200, None),
    "cmyk jpeg": ({"files": {"file": ("c.jpg", si.cmyk_jpeg(), "image/jpeg")}}, 200, None),
    "16-bit png": ({"files": {"file": ("d.png", si.png16(), "image/png")}}, 200, None),
    "alpha png": ({"files": {"file": ("a.png", si.alpha_png(), "image/png")}}, 200, None),
    "exif-rotated jpeg": ({"files": {"file": ("r.jpg", si.exif_rotated_jpeg(), "image/jpeg")}}, 200, None),
    "1x1 png": ({"files": {"file": ("1.png", si.one_by_one(), "image/png")}}, 200, None),
    "jpeg + appended zip": (
        {"files": {"file": ("p.jpg", si.jpeg_with_zip_appended(), "image/jpeg")}},
        200,
        None,
    ),
    "unicode filename": ({"files": {"file": ("фото 📷.jpg", si.jpeg(), "image/jpeg")}}, 200, None),
    "path traversal filename": (
        {"files": {"file": ("../../etc/passwd", si.jpeg(), "image/jpeg")}},
        200,
        None,
    ),
    "wrong part content type": ({"files": {"file": ("p.txt", si.jpeg(), "text/plain")}}, 200, None),
    "png named .jpg": ({"files": {"file": ("p.jpg", si.png(), "image/jpeg")}}, 200, None),
    "no filename extension": (
        {"files": {"file": ("photo", si.jpeg(), "application/octet-stream")}},
        200,
        None,
    ),
    "empty body": ({"content": b""}, 422, "missing-file"),
    "json body": ({"json": {"file": "x"}}, 422, "missing-file"),
    "form without file": ({"data": {"file": "photo.jpg"}}, 422, "missing-file"),
    "file in another field": ({"files": {"image": ("p.jpg", si.jpeg(), "image/jpeg")}}, 422, "missing-file"),
    "two files": (
        {
            "files": [
                ("file", ("a.jpg", si.jpeg(), "image/jpeg")),
                ("file", ("b.jpg", si.jpeg(seed=1), "image/jpeg")),
            ]
        },
        422,
        "too-many-files",
    ),
    "three files": (
        {"files": [("file", (f"{i}.jpg", si.jpeg(), "image/jpeg")) for i in range(3)]},
        422,
        "too-many-files",
    ),
    "empty file": ({"files": {"file": ("e.jpg", b"", "image/jpeg")}}, 422, "invalid-image"),
    "text renamed .jpg": (
        {"files": {"file": ("t.jpg", b"hello, I am text\n" * 10, "image/jpeg")}},
        415,
        "unsupported-image-type",
    ),
    "truncated jpeg": ({"files": {"file": ("t.jpg", si.jpeg()[:300], "image/jpeg")}}, 422, "invalid-image"),
    "png with bad crc": ({"files": {"file": ("c.png", si.png_bad_crc(), "image/png")}}, 422, "invalid-image"),
    "zip": ({"files": {"file": ("z.jpg", si.zip_polyglot(), "image/jpeg")}}, 415, "unsupported-image-type"),
    "pdf": ({"files": {"file": ("d.pdf", si.PDF, "application/pdf")}}, 415, "unsupported-image-type"),
    "svg": ({"files": {"file": ("i.svg", si.SVG, "image/svg+xml")}}, 415, "unsupported-image-type"),
    "html": ({"files": {"file": ("i.jpg", si.HTML, "image/jpeg")}}, 415, "unsupported-image-type"),
    "gif/html polyglot": ({"files": {"file": ("i.gif", si.GIFAR_HTML, "image/gif")}}, 422, "invalid-image"),
    "20000x20000 png header": (
        {"files": {"file": ("h.png", si.png_header_only(20000, 20000), "image/png")}},
        413,
        "image-too-large",
    ),
    "20000x20000 jpeg header": (
        {"files": {"file": ("h.jpg", si.jpeg_header_only(20000, 20000), "image/jpeg")}},
        413,
        "image-too-large",
    ),
    "png decompression bomb": (
        {"files": {"file": ("b.png", si.png_bomb(), "image/png")}},
        413,
        "image-too-large",
    ),
    "0x0 png header": (
        {"files": {"file": ("z.png", si.png_header_only(0, 0), "image/png")}},
        422,
        "invalid-image",
    ),
    "null bytes": (
        {"files": {"file": ("n.jpg", b"\x00" * 4096, "image/jpeg")}},
        415,
        "unsupported-image-type",
    ),
    "jpeg magic only": ({"files": {"file": ("m.jpg", b"\xff\xd8\xff", "image/jpeg")}}, 422, "invalid-image"),
    "malformed multipart": (
        {
            "content": b'--xyz\r\nContent-Disposition: form-data; name="file"\r\n\r\nabc',
            "headers": {"Content-Type": "multipart/form-data; boundary=xyz"},
        },
        422,
        None,
    ),
    "multipart without boundary": (
        {"content": b"abc", "headers": {"Content-Type": "multipart/form-data"}},
        422,
        None,
    ),
}


@pytest.fixture(scope="module")
def shared_client(tiny_bundle, service_captioner):
    from fastapi.testclient import TestClient
    from service_helpers import service_settings

    from captioner.service.app import create_app

    app = create_app(service_settings(tiny_bundle, max_image_pixels=40_000_000), captioner=service_captioner)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize("name", list(CASES))
def test_odd_input(shared_client, temp_listing, name):
    kwargs, status, slug = CASES[name]
    before = temp_listing()
    r = shared_client.post(URL, **kwargs)
    if slug is None and status == 200:
        assert r.status_code == 200, r.text
        assert isinstance(r.json()["caption"], str) and r.json()["candidates"]
    else:
        assert_problem(r, status, slug)
    assert temp_listing() == before
    assert shared_client.get("/health").json()["status"] == "ok"


def test_at_least_30_cases():
    assert len(CASES) >= 30


def test_exif_orientation_is_applied(shared_client, service_captioner):
    """The rotated photo must be captioned as its upright version would be."""
    from PIL import Image

    rotated = shared_client.post(URL, files={"file": si.exif_rotated_jpeg()}).json()
    upright = service_captioner.load(si.exif_rotated_jpeg())
    assert upright.size == (48, 96)
    direct = service_captioner.caption_images([upright])[0]
    assert rotated["caption"] == direct.caption
    assert isinstance(upright, Image.Image)


def test_body_above_the_limit_is_413_early_and_while_streaming(make_client, temp_listing):
    client = make_client(max_upload_bytes=64 * 1024)
    before = temp_listing()
    big = si.jpeg() + b"\x00" * (200 * 1024)
    assert_problem(client.post(URL, files={"file": ("big.jpg", big, "image/jpeg")}), 413, "body-too-large")

    def chunks():  # no Content-Length: the middleware must count the streamed bytes
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n\r\n'
        for _ in range(40):
            yield b"\x00" * 8192

    r = client.post(URL, content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert_problem(r, 413, "body-too-large")
    just_over_file_limit = si.jpeg() + b"\x00" * (64 * 1024 - len(si.jpeg()) + 10)
    assert_problem(client.post(URL, files={"file": just_over_file_limit}), 413, "file-too-large")
    assert client.post(URL, files={"file": si.jpeg()}).status_code == 200
    assert temp_listing() == before
    assert 'captioner_rejected_uploads_total{reason="body_too_large"} 2.0' in client.get("/metrics").text


def test_lying_content_length_is_caught_while_streaming(make_client):
    import asyncio

    from captioner.service.middleware import BodyLimitMiddleware

    calls = []

    async def app(scope, receive, send):
        while True:
            message = await receive()
            calls.append(len(message.get("body", b"")))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    from captioner.service.metrics import Metrics

    middleware = BodyLimitMiddleware(app, lambda path: 1000, Metrics(), timeout_s=10.0)
    chunks = [{"type": "http.request", "body": b"x" * 600, "more_body": True}] * 5
    sent = []

    async def receive():
        return chunks.pop(0)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": "/generate-caption/", "headers": [(b"content-length", b"10")]}
    asyncio.run(middleware(scope, receive, send))
    assert sent[0]["status"] == 413
    assert len(calls) == 1  # stopped at the second chunk, never read the rest
    assert len(chunks) == 3


def test_large_upload_under_the_limit_stays_in_memory(make_client, temp_listing):
    """Starlette spools parts over 1 MiB to a temp file by default; ours never does."""
    client = make_client()
    payload = si.jpeg((64, 64)) + b"\x00" * (3 * 1024 * 1024)  # trailing bytes after EOI are ignored
    before = temp_listing()
    r = client.post(URL, files={"file": ("big.jpg", payload, "image/jpeg")})
    assert r.status_code == 200, r.text
    assert temp_listing() == before
