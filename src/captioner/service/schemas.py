"""Response bodies (documented in the OpenAPI schema at /docs)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class CandidateOut(BaseModel):
    caption: str
    log_prob: float = Field(description="sum of the words' log-probabilities")
    score: float = Field(description="log_prob / length**length_penalty; candidates are sorted by it")
    confidence: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="this caption's confidence (see CaptionOut.confidence)",
    )


class TagOut(BaseModel):
    label: str = Field(description="an ImageNet class name, e.g. 'tabby' or 'espresso'")
    probability: float = Field(ge=0.0, le=1.0, description="the encoder's ImageNet classifier's probability")
    class_id: int = Field(ge=0, le=999, description="the ImageNet-1k class index")


class Timings(BaseModel):
    encoder: float = Field(description="ms in the image encoder (0 when cached)")
    decoder: float = Field(description="ms in the caption search (0 when cached)")
    total: float = Field(description="ms from the upload being read to the response")


class CaptionOut(BaseModel):
    caption: str = Field(description="the best caption")
    candidates: list[CandidateOut] = Field(description="the n-best captions, best first")
    confidence: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="how good the best caption is likely to be: from the model's average certainty per word "
        "(geometric-mean token probability), calibrated on training images to the share of captions that read "
        "as well as a typical human caption (CIDEr); higher ranks better captions. On unseen photos it runs "
        "about 0.1 high",
    )
    tags: list[TagOut] | None = Field(
        None,
        description="ImageNet classes the encoder sees, most probable first (tags_top_k, tags_min_prob); null "
        "when the model's encoder has no ImageNet head",
    )
    model_version: str
    timings_ms: Timings
    cached: bool = Field(
        description="true if the result came from the cache or a simultaneous identical request"
    )


class Problem(BaseModel):
    """RFC 7807 problem details (media type application/problem+json)."""

    type: str = Field(examples=["urn:captioner:problem:unsupported-image-type"])
    title: str
    status: int
    detail: str = Field(description="what was wrong and how to fix it")
    request_id: str | None = None


class BatchItem(BaseModel):
    index: int = Field(description="position of the file in the request")
    result: CaptionOut | None = None
    error: Problem | None = None


class BatchOut(BaseModel):
    results: list[BatchItem]
    model_version: str


class ModelVersions(BaseModel):
    active: str | None = Field(description="version of the model answering new requests")
    previous: str | None = Field(description="version of the model kept loaded for an immediate rollback")


class Health(BaseModel):
    status: Literal["ok", "loading", "error"]
    liveness: bool
    readiness: bool
    model: dict
    uptime_s: float
    process: dict
    inference: dict
    cache: dict
    rate_limit: dict
    load_error: str | None = None


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "content": {"application/problem+json": {}}, "description": text}
    for code, text in {
        401: "missing or wrong X-API-Key",
        413: "body or image too large",
        415: "not a JPEG, PNG, WebP, BMP or GIF",
        422: "invalid options, missing file, or a corrupt image",
        429: "rate limited (see Retry-After)",
        503: "model loading or server overloaded (see Retry-After)",
        504: "inference timed out",
    }.items()
}
