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
from captioner.caption_dir import caption_dir, discover_images, fetch
from captioner.decode.options import DecodeOptions
from captioner.errors import CaptionerError
from captioner.fetch import DownloadPolicy
from conftest_helpers import SECRET
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


def assert_same_results(a: list[dict], b: list[dict]) -> None:
    """What two runs over the same images guarantee: the same images in the same order, the same captions,
    candidates and errors exactly, and the same scores up to float rounding. Encoder and decoder floats depend
    on the batch shape, thread count and CPU (BLAS blocking), so log-probs may differ in the last bits."""
    assert [r["image"] for r in a] == [r["image"] for r in b]
    for x, y in zip(a, b, strict=True):
        assert (x.get("caption"), x.get("error"), x.get("model_version")) == (
            y.get("caption"),
            y.get("error"),
            y.get("model_version"),
        )
        cx, cy = x.get("candidates", []), y.get("candidates", [])
        assert [c["caption"] for c in cx] == [c["caption"] for c in cy]
        for key in ("log_prob", "score"):
            assert [c[key] for c in cx] == pytest.approx([c[key] for c in cy], abs=1e-4), x["image"]


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
    resumed = out.read_text().splitlines()
    assert resumed[:6] == full[:6]  # lines already written are kept as they were, byte for byte
    # The two redone images ran in another batch than the first time (here 2 images instead of 4).
    assert_same_results([json.loads(line) for line in resumed], [json.loads(line) for line in full])
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
        listing, out, bundle=tiny_bundle, options=GREEDY, max_download_bytes=20_000, allow_private_urls=True,
        progress=False,
    )  # fmt: skip
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
        with pytest.raises(CaptionerError, match="took longer than 0.3 s"):
            fetch(url, DownloadPolicy(timeout_s=0.3, allow_private=True))


def hostile_list(tmp_path: Path, collection: Path, base: str) -> Path:
    """Two good files, a good URL, and URLs that drip, lie, truncate, loop or leave http."""
    hostile = ["/drip-status", "/drip-headers", "/drip-body", "/bad-status", "/many-headers", "/truncated",
               "/reason", "/loop", "/close", "/to/ftp"]  # fmt: skip
    entries = [
        str(collection / "a.jpg"),
        f"{base}/ok.jpg",
        *[base + p for p in hostile],
        str(collection / "b.JPEG"),
    ]
    listing = tmp_path / "hostile.txt"
    listing.write_text("\n".join([*entries, "ftp://127.0.0.1/x.jpg"]) + "\n")
    return listing


def test_a_job_over_hostile_urls_records_every_item_and_ends(collection, tiny_bundle, tmp_path, hostile):
    hostile.redirects["ftp"] = "ftp://127.0.0.1/x.jpg"
    hostile.body = (collection / "a.jpg").read_bytes()  # /ok.jpg serves a real photo
    listing = hostile_list(tmp_path, collection, hostile.base)
    out = tmp_path / "results.jsonl"
    summary = caption_dir(
        listing, out, bundle=tiny_bundle, options=GREEDY, batch_size=4, download_timeout_s=1.0,
        allow_private_urls=True, progress=False,
    )  # fmt: skip
    records = {r["image"].rsplit("/", 1)[-1]: r for r in lines(out)}
    assert len(lines(out)) == summary["images"] == 14
    assert (summary["captioned"], summary["errors"]) == (3, 11)
    assert records["ok.jpg"]["caption"] == records["a.jpg"]["caption"]
    details = {k: r["error"]["detail"] for k, r in records.items() if "error" in r}
    assert all(records[k]["error"]["type"] == "DownloadError" for k in details)
    for drip in ("drip-status", "drip-headers", "drip-body"):
        assert "took longer than 1 s" in details[drip]
    assert "bad status line" in details["bad-status"] and "HTTP 500" in details["reason"]
    assert "more than 5 redirects" in details["loop"] and "only http://" in details["ftp"]
    assert SECRET.decode() not in out.read_text()
    # The drips never end: only the per-URL deadline (three of them run at once) ends the job.
    assert summary["seconds"] < 20


def test_the_job_refuses_loopback_urls_by_default(collection, tiny_bundle, tmp_path, hostile):
    listing = tmp_path / "list.txt"
    spellings = ["127.0.0.1", "127.1", "2130706433", "0x7f000001", "localhost", "[::ffff:127.0.0.1]"]
    listing.write_text("\n".join(f"http://{h}:{hostile.port}/ok.jpg" for h in spellings) + "\n")
    out = tmp_path / "results.jsonl"
    summary = caption_dir(listing, out, bundle=tiny_bundle, options=GREEDY, progress=False)
    assert summary["errors"] == len(spellings)
    assert all("refused address" in r["error"]["detail"] for r in lines(out))
    assert hostile.requests == []


def test_resume_keeps_recorded_errors_unless_retry_errors(collection, tiny_bundle, tmp_path, hostile):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{collection / 'a.jpg'}\n{hostile.base}/bad-status\n{hostile.base}/missing.jpg\n")
    out = tmp_path / "results.jsonl"
    job = functools.partial(
        caption_dir, listing, out, bundle=tiny_bundle, options=GREEDY, allow_private_urls=True, progress=False
    )
    first = job()
    assert (first["captioned"], first["errors"], len(hostile.requests)) == (1, 2, 2)
    again = job()
    assert (again["skipped"], again["captioned"], again["errors"]) == (3, 0, 0)
    assert len(hostile.requests) == 2  # recorded errors are not fetched again
    retried = job(retry_errors=True)
    assert (retried["skipped"], retried["errors"]) == (1, 2)
    assert len(hostile.requests) == 4
    records = lines(out)
    assert len(records) == 3 and sorted(r["image"] for r in records) == sorted(
        [str(collection / "a.jpg"), f"{hostile.base}/bad-status", f"{hostile.base}/missing.jpg"]
    )


def test_invalid_download_limits_are_one_line_errors(capsys, collection, tiny_bundle, tmp_path):
    out = tmp_path / "r.jsonl"
    for flag, value in (
        ("--download-timeout-s", "0"),
        ("--max-redirects", "-1"),
        ("--max-download-bytes", "0"),
    ):
        code, _, err = run(
            capsys, "caption-dir", collection, "--out", out, "--bundle", tiny_bundle, flag, value
        )
        assert_one_line_error(code, err, "download limits")
    assert not out.exists()


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
    assert_same_results(lines(local), lines(distributed))
