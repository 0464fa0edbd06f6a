"""caption-dir: discovery, per-image errors, resume, lists of paths and URLs (a loopback http.server), the CLI,
and the same job on a local Ray instance."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioner import loading
from captioner.batch import caption_dir, discover_images, fetch
from captioner.decode.options import DecodeOptions
from captioner.errors import CaptionerError
from test_cli import assert_one_line_error, run

GREEDY = DecodeOptions(strategy="greedy", max_length=8)


def make_photo(size: tuple[int, int], seed: int) -> Image.Image:
    """Smooth random RGB (conftest.make_photo's recipe; tests must not import conftest: module names clash)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    channels = [np.sin(xx * rng.uniform(2, 9) + yy * rng.uniform(2, 9) + rng.uniform(0, 6)) for _ in range(3)]
    return Image.fromarray(((np.stack(channels, -1) + 1) * 127.5).astype(np.uint8), "RGB")


@pytest.fixture
def collection(tmp_path) -> Path:
    """7 images (nested, upper-case extension, no extension, PNG) + a corrupt .jpg + files that are not images."""
    root = tmp_path / "photos"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".hidden").mkdir()
    for i, rel in enumerate(["a.jpg", "b.JPEG", "sub/c.jpg", "sub/deeper/d.jpg", "no_extension", "e.webp"]):
        make_photo((80 + 8 * i, 64), seed=i).save(
            root / rel, format="WEBP" if rel.endswith("webp") else "JPEG"
        )
    make_photo((70, 50), seed=9).save(root / "sub" / "f.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 40)
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden" / "g.jpg").write_bytes((root / "a.jpg").read_bytes())
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    return root


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_discovery_by_extension_and_magic_bytes(collection):
    keys = [key for key, _ in discover_images(collection)]
    assert keys == [
        "a.jpg", "b.JPEG", "broken.jpg", "e.webp", "no_extension", "sub/c.jpg", "sub/deeper/d.jpg", "sub/f.png",
    ]  # fmt: skip


def test_caption_dir_one_line_per_image_with_errors(collection, tiny_bundle, tmp_path):
    out = tmp_path / "out" / "results.jsonl"
    summary = caption_dir(collection, out, bundle=tiny_bundle, options=GREEDY, batch_size=3, progress=False)
    assert summary | {"seconds": 0, "images_per_s": 0} == {
        "source": str(collection), "out": str(out), "images": 8, "skipped": 0, "captioned": 7, "errors": 1,
        "seconds": 0, "images_per_s": 0, "engine": "local", "workers": 1, "batch_size": 3,
        "model_version": summary["model_version"],
    }  # fmt: skip
    records = {r["image"]: r for r in lines(out)}
    assert len(records) == 8
    assert records["broken.jpg"]["error"]["type"] == "ImageError"
    assert "corrupt" in records["broken.jpg"]["error"]["detail"]
    # The same captions as the engine's own file API (batched differently).
    captioner = loading.load(tiny_bundle)
    expected = captioner.caption_files([collection / "a.jpg", collection / "sub" / "f.png"], GREEDY)
    assert [records["a.jpg"]["caption"], records["sub/f.png"]["caption"]] == [r.caption for r in expected]
    assert records["a.jpg"]["model_version"] == captioner.version


def test_resume_skips_done_images_and_drops_a_cut_line(collection, tiny_bundle, tmp_path):
    out = tmp_path / "results.jsonl"
    caption_dir(collection, out, bundle=tiny_bundle, options=GREEDY, batch_size=4, progress=False)
    full = out.read_text().splitlines()
    # An interrupted run: the last two images missing, and half a line written when it died.
    out.write_text("\n".join(full[:-2]) + "\n" + full[-2][:25])
    summary = caption_dir(collection, out, bundle=tiny_bundle, options=GREEDY, progress=False)
    assert (summary["skipped"], summary["captioned"] + summary["errors"]) == (6, 2)
    assert out.read_text().splitlines() == full
    again = caption_dir(collection, out, bundle=tiny_bundle, options=GREEDY, progress=False)
    assert (again["skipped"], again["captioned"], again["errors"]) == (8, 0, 0)


def test_resume_refuses_another_models_output(collection, tiny_bundle, tmp_path):
    out = tmp_path / "results.jsonl"
    out.write_text(json.dumps({"image": "a.jpg", "caption": "x", "model_version": "0123456789ab"}) + "\n")
    with pytest.raises(CaptionerError, match="written with model 0123456789ab"):
        caption_dir(collection, out, bundle=tiny_bundle, options=GREEDY, progress=False)
    out.write_text("not json\n")
    with pytest.raises(CaptionerError, match="line 1 is not a caption-dir result"):
        caption_dir(collection, out, bundle=tiny_bundle, options=GREEDY, progress=False)


@pytest.fixture
def http_folder(tmp_path):
    """A loopback http.server over a folder: (folder, base URL). No network beyond 127.0.0.1."""
    folder = tmp_path / "www"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=folder))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_list_of_paths_and_urls(collection, tiny_bundle, tmp_path, http_folder):
    www, base = http_folder
    (www / "remote.jpg").write_bytes((collection / "a.jpg").read_bytes())
    make_photo((800, 600), seed=3).save(www / "big.jpg", quality=95)
    listing = tmp_path / "list.txt"
    listing.write_text(
        "# photos to caption\n"
        "photos/a.jpg\n"  # relative to the list file
        f"{collection / 'sub' / 'c.jpg'}\n"
        "photos/a.jpg\n"  # duplicate: once
        "\n"
        f"{base}/remote.jpg\n"
        f"{base}/missing.jpg\n"
        f"{base}/big.jpg\n"
        "ftp://example.invalid/x.jpg\n"
        "photos/nope.jpg\n"
    )
    out = tmp_path / "results.jsonl"
    summary = caption_dir(
        listing, out, bundle=tiny_bundle, options=GREEDY, max_download_bytes=20_000, progress=False
    )
    records = lines(out)
    assert [r["image"] for r in records] == [
        "photos/a.jpg", str(collection / "sub" / "c.jpg"), f"{base}/remote.jpg", f"{base}/missing.jpg",
        f"{base}/big.jpg", "ftp://example.invalid/x.jpg", "photos/nope.jpg",
    ]  # fmt: skip
    assert (summary["captioned"], summary["errors"]) == (3, 4)
    assert records[2]["caption"] == records[0]["caption"]  # the same bytes over HTTP
    errors = {r["image"].rsplit("/", 1)[-1]: r["error"] for r in records if "error" in r}
    assert errors["missing.jpg"]["type"] == "DownloadError" and "HTTP 404" in errors["missing.jpg"]["detail"]
    assert "byte limit" in errors["big.jpg"]["detail"]
    assert "only http:// and https://" in errors["x.jpg"]["detail"]
    assert errors["nope.jpg"]["type"] == "ImageError"


def test_fetch_times_out_on_a_silent_server():
    import socket

    with socket.socket() as listener:  # accepts the connection (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/slow.jpg"
        with pytest.raises(CaptionerError, match="timed out"):
            fetch(url, timeout_s=0.3)


def test_cli_caption_dir(capsys, collection, tiny_bundle, tmp_path):
    out = tmp_path / "r.jsonl"
    args = ("caption-dir", collection, "--out", out, "--bundle", tiny_bundle, "--strategy", "greedy")
    code, stdout, _ = run(capsys, *args, "--no-progress")
    assert code == 0
    assert json.loads(stdout)["captioned"] == 7 and len(lines(out)) == 8
    code, _, err = run(capsys, "caption-dir", tmp_path / "nothing", "--out", out, "--bundle", tiny_bundle)
    assert_one_line_error(code, err, "not found", "nothing")
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(capsys, "caption-dir", empty, "--out", out, "--bundle", tiny_bundle)
    assert_one_line_error(code, err, "no images under")


@pytest.mark.slow
def test_ray_output_equals_single_process(collection, tiny_bundle, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'ray[data]'")
    local, distributed = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    caption_dir(collection, local, bundle=tiny_bundle, options=GREEDY, batch_size=3, progress=False)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        summary = caption_dir(
            collection, distributed, bundle=tiny_bundle, options=GREEDY, batch_size=3, ray=True, workers=2,
            progress=False,
        )  # fmt: skip
    finally:
        ray.shutdown()
    assert (summary["engine"], summary["workers"], summary["captioned"], summary["errors"]) == (
        "ray",
        2,
        7,
        1,
    )
    a, b = lines(local), lines(distributed)
    assert [r["image"] for r in a] == [r["image"] for r in b]  # same order
    for x, y in zip(a, b, strict=True):
        assert x.get("caption") == y.get("caption") and x.get("error") == y.get("error")
        # Float sums may differ in the last bits between batch compositions; captions may not.
        for cx, cy in zip(x.get("candidates", []), y.get("candidates", []), strict=True):
            assert cx["caption"] == cy["caption"] and cx["log_prob"] == pytest.approx(
                cy["log_prob"], abs=1e-4
            )
