"""POST /generate-caption/ (one image) and POST /generate-captions/ (a batch): the inference endpoints.

The single-image handler is a coroutine: it awaits (bounded by the request timeout) its job on the inference
pool without holding a thread, and asks Redis, when the cache is there, from the threadpool. The batch handler is
a plain ``def`` that FastAPI runs in its threadpool. Each takes two dependencies, in this order:
``admitted_caller`` (the API key and the rate limit) and an async one that checks the query and the model, then
reads the upload.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from captioner.decode.answer import AnswerOptions, present
from captioner.decode.captioner import Captioner, CaptionResult
from captioner.decode.microbatch import Arrival
from captioner.decode.options import DecodeOptions
from captioner.errors import CaptionerError, ImageError
from captioner.service.cache import cache_key
from captioner.service.deps import CallerDep, CaptionCall, caption_call, query_parameters
from captioner.service.models import ServedModel
from captioner.service.problems import ServiceError, from_captioner_error, problem_body
from captioner.service.schemas import PROBLEM_RESPONSES, BatchItem, BatchOut, CaptionOut
from captioner.service.state import ServiceState
from captioner.service.uploads import uploaded_files

router = APIRouter(tags=["captions"], responses=PROBLEM_RESPONSES)


@dataclass(frozen=True)
class Uploaded:
    """A caption request, checked and read: its options (deps.caption_call) and its files."""

    call: CaptionCall
    files: list[bytes]
    arrival: Arrival | None = None  # announced to the micro-batcher before the upload was read (one image)


async def _one_upload(request: Request) -> AsyncIterator[Uploaded]:
    """The request's options and its one file. The request is announced to the micro-batcher before its upload
    is read and its image decoded, so that a batch about to start waits for it (microbatch.py); withdrawn when
    the request ends without submitting. The upload's budget reservation is held until the request is done."""
    call = caption_call(request)
    arrival = call.model.expect()
    try:
        async with uploaded_files(request, call.state, ("file",), 1) as files:
            yield Uploaded(call, files, arrival)
    finally:
        if arrival is not None:
            arrival.cancel()


async def _many_uploads(request: Request) -> AsyncIterator[Uploaded]:
    call = caption_call(request)
    max_files = call.state.settings.max_batch_images
    async with uploaded_files(request, call.state, ("files", "file"), max_files) as files:
        yield Uploaded(call, files)


def _body_schema(batch: bool) -> dict:
    binary = {"type": "string", "format": "binary"}
    if batch:
        props = {"files": {"type": "array", "items": binary, "minItems": 1}}
        required = ["files"]
    else:
        props = {"file": {**binary, "description": "a JPEG, PNG, WebP, BMP or GIF image"}}
        required = ["file"]
    schema = {"type": "object", "properties": props, "required": required}
    return {
        "parameters": query_parameters(),  # the query is validated by caption_call (deps.CaptionQuery)
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}},
    }


def _entry(result) -> dict:
    """What is cached: the model's own answer (all MAX_TAGS_TOP_K tags, its wording); AnswerOptions shape it later."""
    return {
        **result.to_dict(),
        "timings_ms": {
            "encoder": result.timings_ms.get("encoder", 0.0),
            "decoder": result.timings_ms.get("decoder", 0.0),
        },
    }


def _caption_one(
    state: ServiceState,
    model: ServedModel,
    image: bytes,
    options: DecodeOptions,
    key: str,
    started: float,
    arrival: Arrival | None,
) -> dict:
    start = time.perf_counter()
    try:
        result = model.caption_one(state.load_image(model.captioner, image, started), options, arrival)
    finally:
        if arrival is not None:
            arrival.cancel()  # a bad image is not coming: the batch need not wait for it
    state.metrics.inference.labels("single").observe(time.perf_counter() - start)
    entry = _entry(result)
    state.cache.set(key, entry)
    return entry


def _caption_many(
    state: ServiceState,
    captioner: Captioner,
    images: dict[int, bytes],
    options: DecodeOptions,
    keys: list[str],
    started: float,
) -> dict[int, dict | CaptionerError]:
    """Decode each image on its own (one bad file fails only its item), then caption the good ones as one batch.

    The decoded images are reduced for the encoder (at most ~4x its input size a side), never held at full size.
    """
    start = time.perf_counter()
    out: dict[int, dict | CaptionerError] = {}
    outcomes = captioner.caption_each(
        list(images.values()), options, load=lambda data: state.load_image(captioner, data, started)
    )
    for i, outcome in zip(images, outcomes, strict=True):
        if isinstance(outcome, ImageError):
            out[i] = outcome
        else:
            out[i] = entry = _entry(outcome)
            state.cache.set(keys[i], entry)
    state.metrics.inference.labels("batch").observe(time.perf_counter() - start)
    return out


def _response(entry: dict, version: str, cached: bool, started: float, answer: AnswerOptions) -> CaptionOut:
    timings = {"encoder": 0.0, "decoder": 0.0} if cached else entry["timings_ms"]
    total = (time.perf_counter() - started) * 1000
    shown = present(CaptionResult.from_dict(entry), answer).to_dict()
    return CaptionOut(
        caption=shown["caption"],
        candidates=shown["candidates"],
        confidence=shown["confidence"],
        tags=shown["tags"],
        model_version=version,
        timings_ms={**timings, "total": total},
        cached=cached,
    )


@router.post(
    "/generate-caption/",
    response_model=CaptionOut,
    summary="Caption one image",
    openapi_extra=_body_schema(batch=False),
)
async def generate_caption(
    who: CallerDep, upload: Annotated[Uploaded, Depends(_one_upload)], response: Response
) -> CaptionOut:
    """Upload one image as multipart field `file`; get its caption and the n-best candidates.

    The image type is read from the bytes (the filename and content type are ignored). Identical requests
    (same bytes, options and model; and API key, when the server has keys) are answered from the cache: header
    `X-Cache: HIT`.
    """
    started = time.perf_counter()
    call, (image,), arrival = upload.call, upload.files, upload.arrival
    state, model, options = call.state, call.model, call.options
    version = model.version
    key = cache_key(image, options, model.cache_identity, who)  # also the single-flight key: per caller too
    # A coroutine (no threadpool hop per request): the only call that may block, Redis, runs in the threadpool.
    entry = await run_in_threadpool(state.cache.get, key) if state.redis_backend else state.cache.get(key)
    cached = entry is not None
    state.metrics.cache_lookup(cached)
    if cached and arrival is not None:
        arrival.cancel()
    if entry is None:
        future, leader = state.flights.join_or_start(
            key,
            lambda: state.pool.submit(
                lambda: _caption_one(state, model, image, options, key, started, arrival)
            ),
        )
        if not leader and arrival is not None:
            arrival.cancel()  # an identical request in flight answers this one
        try:
            entry = await state.pool.wait_async(future, started)
        except ImageError as exc:
            state.metrics.rejected_upload(from_captioner_error(exc).slug)
            raise
        cached = not leader
    response.headers["X-Cache"] = "HIT" if cached else "MISS"
    return _response(entry, version, cached, started, call.answer)


@router.post(
    "/generate-captions/",
    response_model=BatchOut,
    summary="Caption several images",
    openapi_extra=_body_schema(batch=True),
)
def generate_captions(
    request: Request,
    who: CallerDep,
    upload: Annotated[Uploaded, Depends(_many_uploads)],
) -> BatchOut:
    """Upload up to `CAPTIONER_MAX_BATCH_IMAGES` images as repeated multipart field `files`.

    Returns one item per file, in order: `{"index", "result"}` or `{"index", "error"}` (a problem object), so
    one bad file does not fail the others. The status is 200 whenever the request itself was valid.
    """
    started = time.perf_counter()
    call, images = upload.call, upload.files
    state, model, options, answer = call.state, call.model, call.options, call.answer
    captioner, version = model.captioner, model.version
    keys = [cache_key(data, options, model.cache_identity, who) for data in images]
    entries: list[dict | None] = [state.cache.get(k) for k in keys]
    for e in entries:
        state.metrics.cache_lookup(e is not None)
    todo = {i: images[i] for i, e in enumerate(entries) if e is None}
    computed: dict[int, dict | CaptionerError] = {}
    if todo:
        future = state.pool.submit(lambda: _caption_many(state, captioner, todo, options, keys, started))
        computed = state.pool.wait(future, started)
    request_id = request.scope.get("state", {}).get("request_id")
    items = []
    for i, entry in enumerate(entries):
        if entry is not None:
            items.append(BatchItem(index=i, result=_response(entry, version, True, started, answer)))
            continue
        outcome = computed[i]
        if isinstance(outcome, CaptionerError):
            err: ServiceError = from_captioner_error(outcome)
            state.metrics.rejected_upload(err.slug)
            body = problem_body(err.status, err.slug, f"file {i + 1}: {err.detail}", err.title, request_id)
            items.append(BatchItem(index=i, error=body))
        else:
            items.append(BatchItem(index=i, result=_response(outcome, version, False, started, answer)))
    return BatchOut(results=items, model_version=version)
