"""Service settings, read from environment variables (and an optional ``.env``) only here, at the edge.

Two families of variables:

- the original design's ``MODEL_PATH``, ``WEIGHTS_PATH``, ``TOKENIZER_PATH``, ``HOST``, ``PORT`` (unprefixed, so
  old deployment files keep working);
- everything else ``CAPTIONER_``-prefixed, named with units (``CAPTIONER_MAX_UPLOAD_BYTES``).

List settings accept a JSON list or a comma-separated string: ``CAPTIONER_CORS_ALLOW_ORIGINS=https://a.example,https://b.example``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from captioner.decode.answer import AnswerOptions
from captioner.decode.captioner import DEFAULT_DECODER_BACKEND, DecoderBackend
from captioner.decode.options import DecodeOptions
from captioner.encoders.imagenet import MAX_TAGS_TOP_K
from captioner.errors import OptionsError

MiB = 1024 * 1024
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def _split_list(value: object) -> object:
    """'a, b' -> ['a', 'b']; a JSON list string -> list; lists pass through."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CAPTIONER_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        validate_default=True,
    )

    # -- the original design's variables (unprefixed) --
    model_path: Path | None = Field(None, validation_alias=AliasChoices("MODEL_PATH", "CAPTIONER_MODEL_PATH"))
    weights_path: Path | None = Field(
        None, validation_alias=AliasChoices("WEIGHTS_PATH", "CAPTIONER_WEIGHTS_PATH")
    )
    tokenizer_path: Path | None = Field(
        None, validation_alias=AliasChoices("TOKENIZER_PATH", "CAPTIONER_TOKENIZER_PATH")
    )
    host: str = Field("127.0.0.1", validation_alias=AliasChoices("HOST", "CAPTIONER_HOST"))
    port: int = Field(8000, ge=1, le=65535, validation_alias=AliasChoices("PORT", "CAPTIONER_PORT"))

    # -- model --
    bundle_path: Path | None = None  # None: the shipped bundle, <repo>/models/default
    encoder_path: Path | None = None  # the ONNX encoder for the original format (MODEL_PATH)
    threads: int | None = Field(None, ge=1, le=256)  # onnxruntime intra-op threads; None: all cores
    # How the bundle's decoder step runs: "onnx-int8" (onnxruntime, int8 matmuls quantised per row: the fastest,
    # dev scores equal to fp32's), "onnx" (fp32: exactly the NumPy reference's captions) or "numpy" (the
    # reference). The original format (MODEL_PATH) always runs its own model.
    decoder_backend: DecoderBackend = DEFAULT_DECODER_BACKEND
    load_in_background: bool = False  # True: answer /livez at once and /readyz 503 until the model is loaded

    # -- limits --
    max_upload_bytes: int = Field(10 * MiB, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=1)
    max_batch_images: int = Field(8, ge=1, le=256)
    max_queue: int = Field(32, ge=1)  # in-flight inference requests; more -> 503 at once
    inference_workers: int = Field(
        2, ge=1, le=64
    )  # requests decoded/encoded at the same time (no micro-batching)
    # Dynamic micro-batching of single-image requests: gather up to this many concurrent requests, waiting at most
    # microbatch_max_wait_ms for more, and run them as one encoder batch and one decoding batch. 1 turns it off.
    microbatch_max_size: int = Field(8, ge=1, le=64)
    microbatch_max_wait_ms: float = Field(5.0, ge=0.0, le=1000.0)
    request_timeout_s: float = Field(30.0, gt=0)

    # -- cross-origin --
    cors_allow_origins: Annotated[list[str], NoDecode] = []  # empty: no CORS headers at all
    cors_allow_credentials: bool = False

    # -- rate limiting (token bucket per API key, else per client IP) --
    rate_limit_per_minute: int = Field(60, ge=0)  # 0: no rate limit
    rate_limit_burst: int | None = Field(None, ge=1)  # bucket size; None: rate_limit_per_minute
    redis_url: str | None = None  # shared rate limits and cache across instances

    # -- authentication --
    api_keys_sha256: Annotated[list[str], NoDecode] = []  # sha256 hex digests of the accepted keys
    api_keys_file: Path | None = None  # one digest per line; re-read when it changes

    # -- cache --
    cache_max_entries: int = Field(1024, ge=0)  # 0: no cache
    cache_ttl_s: int = Field(86_400, ge=1)  # Redis entries only

    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    # Sent as X-Instance-ID on every response so that requests can be traced to a replica behind a load
    # balancer (e.g. the pod name); None: no header.
    instance_id: str | None = Field(None, pattern=r"^[A-Za-z0-9._:-]{1,64}$")

    # -- default decode options (a request's query parameters override them) --
    # Defaults of the per-request decoding options: DecodeOptions' own defaults (chosen on the dev split).
    default_strategy: Literal["greedy", "beam"] = DecodeOptions().strategy
    default_beam_size: int = DecodeOptions().beam_size
    default_max_length: int = DecodeOptions().max_length
    default_length_penalty: float = DecodeOptions().length_penalty
    default_n_best: int = DecodeOptions().n_best
    # -- default answer options (query parameters tags_top_k, tags_min_prob, gender_neutral override them) --
    default_tags_top_k: int = Field(
        AnswerOptions().tags_top_k, ge=0, le=MAX_TAGS_TOP_K
    )  # ImageNet tags per image
    default_tags_min_prob: float = Field(
        AnswerOptions().tags_min_prob, ge=0.0, le=1.0
    )  # tags below are left out
    default_gender_neutral: bool = False  # True: "a person in a red shirt" instead of "a man in a red shirt"

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("cors_allow_origins", "api_keys_sha256", mode="before")
    @classmethod
    def _lists(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("cors_allow_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin != "*" and not re.match(r"^https?://[^/\s]+$", origin):
                raise ValueError(
                    f"CORS origin {origin!r} is not an origin: write scheme://host[:port] without a path or "
                    "trailing slash, e.g. https://app.example.com"
                )
        return origins

    @field_validator("api_keys_sha256")
    @classmethod
    def _digests(cls, digests: list[str]) -> list[str]:
        out = []
        for digest in digests:
            digest = digest.strip().lower()
            if not _SHA256_HEX.match(digest):
                raise ValueError(
                    "CAPTIONER_API_KEYS_SHA256 must hold sha256 hex digests (64 hex digits) of the keys, not the "
                    "keys themselves: compute one with  printf %s 'my-key' | sha256sum"
                )
            out.append(digest)
        return out

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, url: str | None) -> str | None:
        if url and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                f"CAPTIONER_REDIS_URL must start with redis://, rediss:// or unix://, got {url!r}"
            )
        return url or None

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if "*" in self.cors_allow_origins and self.cors_allow_credentials:
            raise ValueError(
                "CAPTIONER_CORS_ALLOW_ORIGINS='*' together with CAPTIONER_CORS_ALLOW_CREDENTIALS=true would let any "
                "site send authenticated requests: list the allowed origins explicitly or turn credentials off"
            )
        if (self.weights_path or self.tokenizer_path) and not self.model_path:
            raise ValueError(
                "WEIGHTS_PATH/TOKENIZER_PATH are set but MODEL_PATH is not: set MODEL_PATH to the caption_model.keras "
                "of the original format, or unset them to serve a bundle"
            )
        if self.model_path and not self.tokenizer_path:
            raise ValueError(
                "MODEL_PATH is set (original format) but TOKENIZER_PATH is not: set it to the tokenizer.pkl that was "
                "saved with the model"
            )
        if self.model_path and not self.encoder_path:
            raise ValueError(
                "MODEL_PATH is set (original format) but CAPTIONER_ENCODER_PATH is not: export the InceptionV3 "
                "encoder with 'captioner export-encoder inception_v3 --out inception_v3.onnx' and point "
                "CAPTIONER_ENCODER_PATH at it"
            )
        if self.model_path and self.bundle_path:
            raise ValueError("set either MODEL_PATH (original format) or CAPTIONER_BUNDLE_PATH, not both")
        try:
            self.default_options()
        except OptionsError as exc:
            raise ValueError(f"invalid CAPTIONER_DEFAULT_* decode options: {exc}") from None
        return self

    @property
    def legacy(self) -> bool:
        """True when serving the original format (MODEL_PATH + TOKENIZER_PATH)."""
        return self.model_path is not None

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys_sha256) or self.api_keys_file is not None

    @property
    def burst(self) -> int:
        return self.rate_limit_burst or self.rate_limit_per_minute

    def default_options(self, **overrides: object) -> DecodeOptions:
        """DecodeOptions from the defaults, with the non-None ``overrides`` applied. Raises OptionsError."""
        values: dict[str, object] = {
            "strategy": self.default_strategy,
            "beam_size": self.default_beam_size,
            "max_length": self.default_max_length,
            "length_penalty": self.default_length_penalty,
            "n_best": self.default_n_best,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values["strategy"] == "greedy" and overrides.get("n_best") is None:
            values["n_best"] = 1
        return DecodeOptions(**values)  # type: ignore[arg-type]

    def answer_options(self, **overrides: object) -> AnswerOptions:
        """AnswerOptions from the defaults, with the non-None ``overrides`` applied. Raises OptionsError."""
        values: dict[str, object] = {
            "tags_top_k": self.default_tags_top_k,
            "tags_min_prob": self.default_tags_min_prob,
            "gender_neutral": self.default_gender_neutral,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return AnswerOptions(**values)  # type: ignore[arg-type]
