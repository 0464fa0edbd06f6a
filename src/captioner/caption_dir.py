"""Batch captioning of large collections: a folder or a list of paths/URLs -> one JSON line per image.

    caption_dir(source, out, bundle=None, options=DecodeOptions(), ...) -> summary dict
    discover_images(folder) / read_list(file) -> [(key, location)]
    caption_batch(captioner, items, options) -> [record]        # the one per-batch step, local and on Ray

Output lines are ``{"image", "caption", "candidates", "model_version"}`` or ``{"image", "error": {"type",
"detail"}}``; ``image`` is the path relative to the folder (or the list entry as written). URLs are downloaded by
``captioner.fetch`` (public addresses only unless allowed, redirects checked, a deadline per URL); every failure
is its item's error line. The job is resumable: images already in ``out`` are skipped (error lines too, unless
``retry_errors``: then they are removed and tried again), a line cut off by a crash is dropped, and each batch is
fsynced before the next one starts, so an interrupted run loses at most the batch in progress.

With ``ray=True`` (or a ``ray_address``) the same ``caption_batch`` runs in a pool of ``workers`` Ray actors, each
holding one model replica (Ray Data ``map_batches`` with a callable class); the driver writes the results in input
order, so the output equals the single-process run's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import numpy as np

from captioner.decode.answer import AnswerOptions, present
from captioner.decode.captioner import Captioner
from captioner.decode.options import DecodeOptions
from captioner.encoders.images import DEFAULT_MAX_PIXELS, sniff_format
from captioner.encoders.providers import DEFAULT_EXECUTION_PROVIDER
from captioner.encoders.runtime import limit_blas_threads
from captioner.errors import CaptionerError, ImageError, without_addresses
from captioner.fetch import DownloadError, DownloadPolicy, download
from captioner.loading import load

__all__ = ["DownloadError", "DownloadPolicy", "caption_batch", "caption_dir", "discover_images", "fetch"]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".gif"})
MiB = 1024 * 1024


Item = tuple[str, str]  # (key written as "image", location: absolute path or http(s) URL)


# -- finding the images --


def discover_images(folder: Path) -> list[Item]:
    """Every image under ``folder`` (recursive, sorted, hidden entries skipped): a file counts if its extension
    is an image extension or, failing that, if its first bytes are JPEG/PNG/WebP/BMP/GIF magic."""
    folder = Path(folder)
    items = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(root) / name
            if name.startswith(".") or not (
                path.suffix.lower() in IMAGE_EXTENSIONS or _has_image_magic(path)
            ):
                continue
            items.append((path.relative_to(folder).as_posix(), str(path.resolve())))
    return sorted(items)


def _has_image_magic(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return sniff_format(f.read(32)) is not None
    except OSError:
        return False


def read_list(list_file: Path) -> list[Item]:
    """One path or http(s) URL per line (blank lines and ``#`` comments skipped, duplicates dropped); relative
    paths are relative to the list file's folder."""
    try:
        lines = Path(list_file).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise CaptionerError(
            f"{list_file} is neither an image nor a text list of image paths/URLs (one per line)"
        ) from None
    items: dict[str, str] = {}
    for line in lines:
        entry = line.strip()
        if not entry or entry.startswith("#") or entry in items:
            continue
        if "://" in entry:
            items[entry] = entry  # URLs (and unsupported schemes, refused per image) go through as written
        else:
            path = Path(entry).expanduser()
            items[entry] = str(path if path.is_absolute() else (Path(list_file).parent / path).resolve())
    return list(items.items())


def find_sources(source: Path) -> list[Item]:
    """A folder -> its images; an image file -> itself; any other file -> a list of paths/URLs."""
    source = Path(source)
    if source.is_dir():
        items = discover_images(source)
        if not items:
            raise CaptionerError(
                f"no images under {source}: looked for {', '.join(sorted(IMAGE_EXTENSIONS))} files and for "
                "JPEG/PNG/WebP/BMP/GIF bytes"
            )
        return items
    if source.is_file():
        if _has_image_magic(source):
            return [(str(source), str(source.resolve()))]
        return read_list(source)
    raise CaptionerError(f"not found: {source} (give a folder of images or a text file of paths/URLs)")


# -- reading one image --


def fetch(location: str, policy: DownloadPolicy = DownloadPolicy()) -> bytes:
    """The bytes of a local file, or of a URL downloaded under ``policy`` (see ``captioner.fetch``)."""
    if "://" in location:
        return download(location, policy)
    try:
        return Path(location).read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read {location}: {exc.strerror or exc}") from None


# -- the per-batch step --


def caption_batch(
    captioner: Captioner,
    items: Sequence[Item],
    options: DecodeOptions,
    policy: DownloadPolicy = DownloadPolicy(),
    answer: AnswerOptions = AnswerOptions(),
) -> list[dict]:
    """Read and decode each image on its own (threads: downloads and JPEG decoding release the GIL), then
    caption the good ones as one batch. One record per item, in order; a bad image fails only its record.
    answer: the tags and wording of the records (decode/answer.py)."""

    with ThreadPoolExecutor(max_workers=min(8, max(1, len(items)))) as pool:
        outcomes = captioner.caption_each(
            items, options, load=lambda item: captioner.load(fetch(item[1], policy)), map=pool.map
        )
    records: list[dict[str, Any]] = []
    for (key, _), outcome in zip(items, outcomes, strict=True):
        if isinstance(outcome, ImageError):
            detail = without_addresses(str(outcome))  # reruns and Ray replicas must write identical lines
            records.append({"image": key, "error": {"type": type(outcome).__name__, "detail": detail}})
            continue
        r = present(outcome, answer).to_dict()
        del r["timings_ms"]  # the records of a rerun must be identical
        records.append({"image": key, **r, "model_version": captioner.version})
    return records


class CaptionerActor:
    """One model replica for Ray Data ``map_batches``: loads the bundle once, then captions batches of rows
    ``{"image", "location"}`` into rows ``{"image", "record"}`` (the record as a JSON string)."""

    def __init__(self, bundle: str, options: DecodeOptions, threads: int = 1, max_pixels: int = DEFAULT_MAX_PIXELS,
                 policy: DownloadPolicy = DownloadPolicy(),
                 execution_provider: str = DEFAULT_EXECUTION_PROVIDER,
                 answer: AnswerOptions = AnswerOptions()):  # fmt: skip
        from threadpoolctl import threadpool_limits

        # This process is one replica on `threads` cores: NumPy's BLAS must not start a thread per machine core.
        self._blas_limit = threadpool_limits(limits=threads)
        limit_blas_threads()  # and one BLAS thread beside onnxruntime's (encoders/runtime.py)
        self.captioner = load(
            bundle, threads=threads, max_pixels=max_pixels, execution_provider=execution_provider
        )
        self.options, self.answer = options, answer
        self.policy = policy

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = list(zip(batch["image"].tolist(), batch["location"].tolist(), strict=True))
        records = caption_batch(self.captioner, items, self.options, self.policy, self.answer)
        return {
            "image": np.array([r["image"] for r in records], dtype=object),
            "record": np.array([json.dumps(r) for r in records], dtype=object),
        }


# -- the job --


def caption_dir(
    source: str | Path,
    out: str | Path,
    bundle: str | Path | None = None,
    options: DecodeOptions = DecodeOptions(),
    batch_size: int = 32,
    threads: int | None = None,
    ray: bool = False,
    ray_address: str | None = None,
    workers: int = 2,
    max_download_bytes: int = 20 * MiB,
    download_timeout_s: float = 20.0,
    max_redirects: int = 5,
    allow_private_urls: bool = False,
    retry_errors: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
    execution_provider: str = DEFAULT_EXECUTION_PROVIDER,
    answer: AnswerOptions = AnswerOptions(),
) -> dict:
    """Caption every image of ``source`` (a folder, an image, or a list file of paths/URLs) into JSONL ``out``.

    threads: onnxruntime and BLAS threads (None: library defaults locally, 1 per Ray replica). ray / ray_address: run on Ray
    (a new local instance, or ``auto`` / ``ray://host:10001``; an already initialised one is used as is) with
    ``workers`` model replicas. max_download_bytes, download_timeout_s (wall clock per URL, redirects included),
    max_redirects, allow_private_urls: the ``DownloadPolicy`` of every URL. execution_provider: auto, cpu, cuda or tensorrt
    (encoders/providers.py). retry_errors: error lines already in
    ``out`` are removed and their images tried again (by default they count as done). Returns the summary: images
    found, skipped (already in ``out``), captioned, errors, seconds, images per second. answer: the
    records' tags and wording (decode/answer.py).
    """
    if batch_size < 1 or workers < 1:
        raise CaptionerError(f"batch_size and workers must be at least 1, got {batch_size} and {workers}")
    policy = DownloadPolicy(max_download_bytes, download_timeout_s, max_redirects, allow_private_urls)
    started = time.perf_counter()
    out = Path(out)
    items = find_sources(Path(source))
    use_ray = ray or ray_address is not None
    if use_ray:
        from captioner.model.bundle import load_bundle

        verified = load_bundle(bundle)  # fail fast, and give the replicas an absolute path
        bundle_path, version, captioner = str(verified.path.resolve()), verified.version, None
    else:
        captioner = load(
            bundle, threads=threads, max_pixels=max_pixels, execution_provider=execution_provider
        )
        bundle_path, version = None, captioner.version
    done = _resume(out, version, retry_errors)
    todo = [item for item in items if item[0] not in done]
    counts = {"captioned": 0, "errors": 0}
    out.parent.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    with (
        out.open("a", encoding="utf-8") as f,
        tqdm(total=len(todo), unit="img", desc="captioning", disable=not progress or not todo) as bar,
    ):

        def write(lines: list[str], errors: int) -> None:
            _append(f, lines)
            counts["errors"] += errors
            counts["captioned"] += len(lines) - errors
            bar.update(len(lines))
            bar.set_postfix(errors=counts["errors"], refresh=False)

        if use_ray and todo:
            actor_kwargs = {"bundle": bundle_path, "options": options, "threads": threads or 1,
                            "max_pixels": max_pixels, "policy": policy,
                            "execution_provider": execution_provider, "answer": answer}  # fmt: skip
            _run_on_ray(todo, actor_kwargs, batch_size, workers, ray_address, write)
        else:
            assert captioner is not None  # loaded above whenever Ray is not used
            with _blas_threads(threads):
                for s in range(0, len(todo), batch_size):
                    chunk = todo[s : s + batch_size]
                    records = caption_batch(captioner, chunk, options, policy, answer)
                    write([json.dumps(r) for r in records], sum("error" in r for r in records))
    seconds = time.perf_counter() - started
    return {
        "source": str(source),
        "out": str(out),
        "images": len(items),
        "skipped": len(items) - len(todo),
        **counts,
        "seconds": round(seconds, 3),
        "images_per_s": round((counts["captioned"] + counts["errors"]) / seconds, 2) if seconds else None,
        "engine": "ray" if use_ray else "local",
        "workers": workers if use_ray else 1,
        "batch_size": batch_size,
        "model_version": version,
    }


def _blas_threads(threads: int | None):
    """Limit NumPy's BLAS pool to ``threads`` (the decoder's matmuls); no limit for None."""
    if threads is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=threads)


def _resume(out: Path, version: str, retry_errors: bool = False) -> set[str]:
    """Keys already in ``out``. A last line cut off by a crash is truncated away; a file that is not ours, or
    was written by another model, is refused rather than appended to. With ``retry_errors`` the error lines are
    removed from ``out`` (rewritten atomically) and their keys are not done."""
    if not out.exists():
        return set()
    data = out.read_bytes()
    complete = data.rfind(b"\n") + 1
    if complete < len(data):
        log.warning("%s: dropping an incomplete last line from an interrupted run", out)
        with out.open("r+b") as f:
            f.truncate(complete)
    done, kept, lines = set(), [], data[:complete].splitlines()
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            key = record["image"]
        except (ValueError, KeyError, TypeError):
            raise CaptionerError(
                f"{out} line {number} is not a caption-dir result: choose another --out file"
            ) from None
        if record.get("model_version", version) != version:
            raise CaptionerError(
                f"{out} was written with model {record['model_version']}, this run uses {version}: pass the same "
                "--bundle to resume, or choose another --out file"
            )
        if retry_errors and "error" in record:
            continue  # dropped by the rewrite below, captioned again
        done.add(key)
        kept.append(line)
    if len(kept) < len(lines):
        _rewrite(out, kept)
    return done


def _rewrite(out: Path, lines: list[bytes]) -> None:
    """Replace ``out`` by ``lines`` atomically (a crash leaves the old file or the new one, never half of one)."""
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(b"".join(line + b"\n" for line in lines))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)


def _append(f: IO[str], lines: list[str]) -> None:
    """Append whole lines and fsync: after a crash the file holds every batch written before it."""
    f.write("".join(line + "\n" for line in lines))
    f.flush()
    os.fsync(f.fileno())


def _run_on_ray(todo: list[Item], actor_kwargs: dict, batch_size: int, workers: int, address, write) -> None:
    """Ray Data: rows -> map_batches(CaptionerActor) on ``workers`` replicas -> the driver writes, in order."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise CaptionerError(
            "--ray needs Ray: pip install 'ray[data]' (the captioner 'distributed' extra)"
        ) from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # results come back in input order
        context.enable_progress_bars = False  # ours counts written images
        rows = ray.data.from_items([{"image": key, "location": loc} for key, loc in todo])
        results = rows.map_batches(
            CaptionerActor,
            fn_constructor_kwargs=actor_kwargs,
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=workers),  # a fixed pool of replicas, each loaded once
            num_cpus=actor_kwargs["threads"],
            batch_format="numpy",
        )
        for batch in results.iter_batches(batch_size=batch_size, batch_format="numpy"):
            lines = batch["record"].tolist()
            write(lines, sum("error" in json.loads(line) for line in lines))
    finally:
        if started_here:
            ray.shutdown()
