"""Service settings, read from environment variables (and an optional ``.env``) only here, at the edge.

Two families of variables:

- the original design's ``MODEL_PATH``, ``WEIGHTS_PATH``, ``TOKENIZER_PATH``, ``HOST``, ``PORT`` (unprefixed, so
  old deployment files keep working);
- everything else ``CAPTIONER_``-prefixed, named with units (``CAPTIONER_MAX_UPLOAD_BYTES``).

List settings accept a JSON list or a comma-separated string: ``CAPTIONER_CORS_ALLOW_ORIGINS=https://a.example,https://b.example``.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from captioner.decode.answer import AnswerOptions
from captioner.decode.options import MAX_SCORE_DROP, DecodeOptions
from captioner.encoders.imagenet import MAX_TAGS_TOP_K
from captioner.encoders.images import DEFAULT_MAX_PIXELS
from captioner.encoders.providers import DEFAULT_EXECUTION_PROVIDER, ExecutionProvider, is_gpu
from captioner.errors import OptionsError
from captioner.model.backends import DecoderBackend

MiB = 1024 * 1024
# Multipart headers and boundaries around the files: allowed on top of the per-file byte limit.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
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
    model_path: Path | None = Field(
        None,
        validation_alias=AliasChoices("MODEL_PATH", "CAPTIONER_MODEL_PATH"),
        description="The original design's caption_model.keras: when set, the original format is served "
        "(with TOKENIZER_PATH and CAPTIONER_ENCODER_PATH), by the same engine, without TensorFlow.",
    )
    weights_path: Path | None = Field(
        None,
        validation_alias=AliasChoices("WEIGHTS_PATH", "CAPTIONER_WEIGHTS_PATH"),
        description="Optional weights/caption_model.weights.h5 applied over MODEL_PATH.",
    )
    tokenizer_path: Path | None = Field(
        None,
        validation_alias=AliasChoices("TOKENIZER_PATH", "CAPTIONER_TOKENIZER_PATH"),
        description="The original tokenizer.pkl (required with MODEL_PATH; read by a restricted unpickler).",
    )
    host: str = Field(
        "127.0.0.1",
        validation_alias=AliasChoices("HOST", "CAPTIONER_HOST"),
        description="Listen address; set 0.0.0.0 deliberately (in a container, behind a TLS proxy).",
    )
    port: int = Field(
        8000,
        ge=1,
        le=65535,
        validation_alias=AliasChoices("PORT", "CAPTIONER_PORT"),
        description="Listen port.",
    )

    # -- model --
    bundle_path: Path | None = Field(
        None, description="The model bundle folder; unset: the shipped models/default. Not with MODEL_PATH."
    )
    bundle_sha256: str | None = Field(
        None,
        description="The bundle digest to trust (bundle_sha256 of 'captioner info', the sha256 of manifest.json): "
        "a bundle with any other manifest, and so any changed file, is refused at startup and at a model switch. "
        "Unset: only the manifest's own checksums are checked.",
    )
    encoder_path: Path | None = Field(
        None,
        description="The ONNX encoder for the original format (captioner export-encoder inception_v3 --out FILE).",
    )
    threads: int | None = Field(
        None, ge=1, le=256, description="onnxruntime intra-op threads; unset: all cores (set the CPU limit)."
    )
    decoder_backend: DecoderBackend | None = Field(
        None,
        description="How the decoder step runs (bundle and original format alike): onnx-int8 (int8 matmuls "
        "quantised per row: the fastest, dev scores as good as fp32's), onnx (fp32: exactly the trained model's "
        "captions) or numpy (the reference). Unset: onnx-int8 on the CPU, onnx on a GPU.",
    )
    ensemble: bool = Field(
        True,
        description="true: decode with all of the bundle's decoders (its ensemble members, averaged per step); "
        "false: only its main decoder (faster; whether the members help is in the bundle's model card). Bundles "
        "without members ignore it.",
    )
    load_in_background: bool = Field(
        False,
        description="true: answer /livez at once and /readyz 503 until the model is loaded; false: a bad model "
        "setting stops startup with its message.",
    )

    # -- limits --
    max_upload_bytes: int = Field(
        10 * MiB,
        ge=1024,
        description="Bytes per image; a request body may be this (times the batch size on /generate-captions/) "
        "plus 64 KiB of multipart overhead. Larger: 413 while the body streams.",
    )
    max_image_pixels: int = Field(
        DEFAULT_MAX_PIXELS,
        ge=1,
        le=100_000_000,
        description="Images whose header declares more pixels are refused (413) before decoding. The encoder sees "
        "260x260: 25 MP (e.g. 6000x4200) is plenty for captioning. At most 100 MP (Pillow's own bomb check).",
    )
    decode_memory_budget_bytes: int = Field(
        192 * MiB,
        ge=16 * MiB,
        description="Bytes of decoded pixels held at once by all image decodes together (estimated from each "
        "header: width x height x 1, 2 or 4 bytes by mode, x2 for WebP). Decodes wait for their share (within "
        "the request timeout); an image that alone needs more is refused (413). Also caps each decode worker's "
        "memory (RLIMIT_DATA: its size at start + this + 64 MiB).",
    )
    decode_workers: int = Field(
        2,
        ge=1,
        le=32,
        description="Worker processes that decode images (each ~35 MB idle), reused across requests.",
    )
    decode_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Longest a single image may take to decode; its worker is then killed and replaced and the "
        "client gets 422 image-too-complex. Must be less than CAPTIONER_REQUEST_TIMEOUT_S.",
    )
    decode_inline_max_pixels: int = Field(
        2_000_000,
        ge=0,
        le=25_000_000,
        description="Sequential (not progressive) JPEGs of at most this many declared pixels, and at most "
        "CAPTIONER_DECODE_INLINE_MAX_BYTES, decode in the request's own thread instead of a worker: their decoding "
        "work is bounded by pixels and bytes (random pixels at the defaults: ~9 ms on 2 cores), and the hand-over "
        "to a worker costs more than a photo's decode. 0: every image goes to a worker.",
    )
    decode_inline_max_bytes: int = Field(
        1 * MiB,
        ge=0,
        le=64 * MiB,
        description="The largest file that may decode in the request's thread (with "
        "CAPTIONER_DECODE_INLINE_MAX_PIXELS); 0: every image goes to a worker.",
    )
    max_batch_images: int = Field(
        8, ge=1, le=256, description="Files per /generate-captions/ request; more: 413."
    )
    max_queue: int = Field(
        32, ge=1, description="Captioning requests queued or running; beyond it 503 overloaded at once."
    )
    inference_workers: int = Field(
        2, ge=1, le=64, description="Captioning jobs running at once when micro-batching is off."
    )
    microbatch_max_size: int = Field(
        8,
        ge=1,
        le=64,
        description="Concurrent single-image requests captioned as one encoder batch and one decoding batch "
        "(on the CPU); 1 turns micro-batching off.",
    )
    microbatch_max_wait_ms: float = Field(
        5.0,
        ge=0.0,
        le=1000.0,
        description="Longest wait for more requests to join a micro-batch (on the CPU).",
    )
    microbatch_max_wait_expected_ms: float = Field(
        20.0,
        ge=0.0,
        le=1000.0,
        description="Longest wait for a micro-batch while requests already received (upload being read or image "
        "decoded) are still on their way to it; never less than the max wait above.",
    )
    inference_lanes: int = Field(
        2,
        ge=1,
        le=16,
        description="Micro-batches captioned side by side on the CPU, each by an encoder session of its own with an "
        "equal share of the threads (one encodes while another searches; decode/microbatch.py); each lane costs "
        "its session's weights (~35 MB). A lone request still gets every thread. Capped at the thread count.",
    )
    request_timeout_s: float = Field(
        30.0, gt=0, description="Longest wait for a caption before 504; the job's slot is freed when it ends."
    )

    # -- connections (enforced by the server, service/server.py, and the body deadline in middleware.py) --
    max_header_bytes: int = Field(
        32 * 1024,
        ge=1024,
        le=1 * MiB,
        description="Largest request head (request line + headers) in bytes; larger: 431 and the connection closed.",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="Seconds a client has to send a whole request head (total, not per line), counted from the "
        "connection's start or the request's first byte; later: 408 and the connection closed (slowloris).",
    )
    body_timeout_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="Seconds a client has to send a whole request body, counted from the end of its headers; "
        "later: 408 and the connection closed. A client must upload at least max body / this fast.",
    )
    keepalive_timeout_s: float = Field(
        5.0,
        gt=0,
        le=300,
        description="Seconds an idle keep-alive connection stays open between requests. A proxy in front must "
        "close idle upstream connections sooner (nginx: keepalive_timeout 4s in the upstream block).",
    )
    max_connections: int = Field(
        256,
        ge=1,
        description="Open connections (or requests in progress) at most; requests past it get 503 at once.",
    )
    max_upload_buffer_bytes: int = Field(
        128 * MiB,
        ge=1024,
        description="Bytes of request bodies buffered at once across all uploads: each upload reserves its "
        "Content-Length (or its body limit when chunked) before it is read; past it, 503 at once. At least one "
        "whole batch body (max_upload_bytes x max_batch_images + 64 KiB).",
    )
    forwarded_allow_ips: Annotated[list[str], NoDecode] = Field(
        [],
        validation_alias=AliasChoices("CAPTIONER_FORWARDED_ALLOW_IPS", "FORWARDED_ALLOW_IPS"),
        description="Proxies (IP addresses or CIDR networks, or '*') whose X-Forwarded-For / X-Forwarded-Proto "
        "are believed; the client IP (rate limit, logs) is theirs to set. Empty (the default): trust no one, "
        "the client IP is the TCP peer's. uvicorn's FORWARDED_ALLOW_IPS is read too.",
    )
    # -- execution provider (encoders/providers.py; GPUs need the gpu extra) --
    execution_provider: ExecutionProvider = Field(
        DEFAULT_EXECUTION_PROVIDER,
        description="Where the encoder and decoder-step sessions run: auto (CUDA when onnxruntime offers it, else "
        "the CPU), cpu, cuda or tensorrt (one that onnxruntime does not offer stops startup). /health's "
        "model.providers says what each session really got (onnxruntime falls back to the CPU silently).",
    )
    microbatch_max_size_gpu: int = Field(
        32,
        ge=1,
        le=256,
        description="Micro-batch size when the encoder really runs on a GPU (a starting point, not measured).",
    )
    microbatch_max_wait_ms_gpu: float = Field(
        10.0, ge=0.0, le=1000.0, description="Micro-batch wait when the encoder really runs on a GPU."
    )

    # -- cross-origin --
    cors_allow_origins: Annotated[list[str], NoDecode] = Field(
        [],
        description="Allowed origins (scheme://host[:port]), comma-separated; empty: no CORS headers at all.",
    )
    cors_allow_credentials: bool = Field(
        False, description="Allow credentials; refused together with origin *."
    )

    # -- rate limiting (token bucket per API key, else per client IP) --
    rate_limit_per_minute: int = Field(
        60, ge=0, description="Caption requests per minute per client (API key, else IP); 0: no rate limit."
    )
    rate_limit_burst: int | None = Field(
        None, ge=1, description="Token-bucket size (requests allowed at once); unset: the per-minute rate."
    )
    redis_url: str | None = Field(
        None,
        description="redis://host:6379/0: rate limits, auth-failure budgets and the result cache shared by all "
        "instances; while Redis is unreachable each instance falls back to its memory (one warning).",
    )

    # -- authentication --
    api_keys_sha256: Annotated[list[str], NoDecode] = Field(
        [],
        description="sha256 hex digests of the accepted API keys (printf %s KEY | sha256sum); empty: no keys.",
    )
    api_keys_file: Path | None = Field(
        None, description="A file of API-key digests, one per line (# comments); re-read when it changes."
    )
    admin_keys_sha256: Annotated[list[str], NoDecode] = Field(
        [],
        description="sha256 hex digests of the keys that may switch models (POST /admin/model/reload and "
        "/admin/model/rollback, header X-Admin-Key); empty: the admin endpoints are off (SIGHUP still reloads).",
    )
    auth_failures_per_minute: int = Field(
        5,
        ge=0,
        description="Failed API/admin-key attempts a client IP regains per minute; once its budget is spent, its "
        "requests get 429 without their key being checked. 0: no budget.",
    )
    auth_failures_burst: int = Field(
        10, ge=1, description="Failed key attempts a client IP may make at once."
    )

    # -- cache --
    cache_max_entries: int = Field(
        1024,
        ge=0,
        description="Results kept in the in-memory LRU (per API key when keys are on); 0: no cache.",
    )
    cache_ttl_s: int = Field(86_400, ge=1, description="Lifetime of a cached result in Redis.")

    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        "info", description="debug, info, warning, error or critical (JSON lines on stderr)."
    )
    instance_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9._:-]{1,64}$",
        description="Sent as X-Instance-ID on every response (e.g. the pod name), to trace a replica; unset: none.",
    )

    # -- default decode options (a request's query parameters override them; defaults chosen on dev) --
    default_strategy: Literal["greedy", "beam"] = Field(
        DecodeOptions().strategy, description="Default strategy."
    )
    default_beam_size: int = Field(DecodeOptions().beam_size, description="Default beam_size.")
    default_max_length: int = Field(DecodeOptions().max_length, description="Default max_length (words).")
    default_length_penalty: float = Field(
        DecodeOptions().length_penalty, description="Default length_penalty."
    )
    default_n_best: int = Field(DecodeOptions().n_best, description="Default n_best (1 whenever greedy).")
    default_label_constraint: bool = Field(
        DecodeOptions().label_constraint,
        description="Default label_constraint: name what the encoder's ImageNet head sees with a word of the bundle's "
        "labels.json (a tabby -> cat) when the plain caption does not (the three settings below); false, or a bundle "
        "without labels.json: plain search.",
    )
    default_label_constraint_min_prob: float = Field(
        DecodeOptions().label_constraint_min_prob,
        gt=0.0,
        le=1.0,
        description="Default label_constraint_min_prob: the least word mass (the probability of the ImageNet classes "
        "that the label map names with a word) at which the caption is searched again to hold that word.",
    )
    default_label_constraint_max_score_drop: float = Field(
        DecodeOptions().label_constraint_max_score_drop,
        ge=0.0,
        le=MAX_SCORE_DROP,
        description="Default label_constraint_max_score_drop: a caption made to name the object replaces the plain "
        "one only if its score (log_prob / length**length_penalty) is at most this much lower...",
    )
    default_label_constraint_always_prob: float = Field(
        DecodeOptions().label_constraint_always_prob,
        gt=0.0,
        le=1.0,
        description="Default label_constraint_always_prob: ...or whatever its score when the word mass reaches this.",
    )
    # -- default answer options (query parameters tags_top_k, tags_min_prob, gender_neutral override them) --
    default_tags_top_k: int = Field(
        AnswerOptions().tags_top_k,
        ge=0,
        le=MAX_TAGS_TOP_K,
        description="Default tags_top_k: ImageNet tags per image.",
    )
    default_tags_min_prob: float = Field(
        AnswerOptions().tags_min_prob,
        ge=0.0,
        le=1.0,
        description="Default tags_min_prob: tags below it are left out.",
    )
    default_gender_neutral: bool = Field(
        False,
        description='Default gender_neutral: true answers "a person in a red shirt", not "a man in a red shirt".',
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator(
        "cors_allow_origins", "api_keys_sha256", "admin_keys_sha256", "forwarded_allow_ips", mode="before"
    )
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

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxies(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            if entry == "*":
                continue
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"CAPTIONER_FORWARDED_ALLOW_IPS entry {entry!r} is not an IP address or network: list the "
                    "proxies' addresses, e.g. 172.28.0.10 or 10.8.0.0/24 (or '*' when only the proxy can reach "
                    "the service)"
                ) from None
        return entries

    @field_validator("api_keys_sha256", "admin_keys_sha256")
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

    @field_validator("bundle_sha256")
    @classmethod
    def _bundle_digest(cls, digest: str | None) -> str | None:
        if digest is None:
            return None
        digest = digest.strip().lower()
        if not _SHA256_HEX.match(digest):
            raise ValueError(
                "CAPTIONER_BUNDLE_SHA256 must be the bundle's digest, 64 hex digits: the bundle_sha256 that "
                "'captioner info --bundle FOLDER' prints (or sha256sum FOLDER/manifest.json)"
            )
        return digest

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
        if self.decode_timeout_s >= self.request_timeout_s:
            raise ValueError(
                f"CAPTIONER_DECODE_TIMEOUT_S ({self.decode_timeout_s:g}) must be less than CAPTIONER_REQUEST_TIMEOUT_S "
                f"({self.request_timeout_s:g}): a decode that is stopped must still leave time to answer"
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
        if self.model_path and (self.bundle_path or self.bundle_sha256):
            raise ValueError(
                "set either MODEL_PATH (original format) or CAPTIONER_BUNDLE_PATH/CAPTIONER_BUNDLE_SHA256, not both"
            )
        largest_body = self.max_upload_bytes * self.max_batch_images + MULTIPART_OVERHEAD_BYTES
        if self.max_upload_buffer_bytes < largest_body:
            raise ValueError(
                f"CAPTIONER_MAX_UPLOAD_BUFFER_BYTES={self.max_upload_buffer_bytes} is smaller than one whole batch "
                f"body ({largest_body} bytes = CAPTIONER_MAX_UPLOAD_BYTES x CAPTIONER_MAX_BATCH_IMAGES + 64 KiB), "
                "so a full batch could never be accepted: raise it or lower those limits"
            )
        try:
            self.default_options()
        except OptionsError as exc:
            raise ValueError(f"invalid CAPTIONER_DEFAULT_* decode options: {exc}") from None
        return self

    @property
    def original(self) -> bool:
        """True when serving the original format (MODEL_PATH + TOKENIZER_PATH)."""
        return self.model_path is not None

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys_sha256) or self.api_keys_file is not None

    @property
    def burst(self) -> int:
        return self.rate_limit_burst or self.rate_limit_per_minute

    def microbatch_for(self, provider: str) -> tuple[int, float]:
        """(max batch size, max wait ms) of the micro-batcher for an encoder that really runs on ``provider``."""
        if is_gpu(provider):
            return self.microbatch_max_size_gpu, self.microbatch_max_wait_ms_gpu
        return self.microbatch_max_size, self.microbatch_max_wait_ms

    def default_options(self, **overrides: object) -> DecodeOptions:
        """DecodeOptions from the defaults, with the non-None ``overrides`` applied. Raises OptionsError."""
        values: dict[str, Any] = {  # checked by DecodeOptions (OptionsError)
            "strategy": self.default_strategy,
            "beam_size": self.default_beam_size,
            "max_length": self.default_max_length,
            "length_penalty": self.default_length_penalty,
            "n_best": self.default_n_best,
            "label_constraint": self.default_label_constraint,
            "label_constraint_min_prob": self.default_label_constraint_min_prob,
            "label_constraint_max_score_drop": self.default_label_constraint_max_score_drop,
            "label_constraint_always_prob": self.default_label_constraint_always_prob,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values["strategy"] == "greedy" and overrides.get("n_best") is None:
            values["n_best"] = 1
        return DecodeOptions(**values)

    def answer_options(self, **overrides: object) -> AnswerOptions:
        """AnswerOptions from the defaults, with the non-None ``overrides`` applied. Raises OptionsError."""
        values: dict[str, object] = {
            "tags_top_k": self.default_tags_top_k,
            "tags_min_prob": self.default_tags_min_prob,
            "gender_neutral": self.default_gender_neutral,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return AnswerOptions(**values)  # type: ignore[arg-type]


# -- the settings table of docs/service.md, generated from the field descriptions above --

SETTINGS_TABLE_BEGIN = (
    "<!-- settings table: generated by `python -m captioner.service.settings --update docs/service.md` -->"
)
SETTINGS_TABLE_END = "<!-- end of settings table -->"


def env_name(name: str) -> str:
    """The environment variable of a setting (its first alias, else CAPTIONER_<NAME>)."""
    alias = Settings.model_fields[name].validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return "CAPTIONER_" + name.upper()


def _default_text(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        return "empty" if not value else f"`{','.join(map(str, value))}`"
    if isinstance(value, int) and value >= MiB and value % MiB == 0:
        return f"`{value}` ({value // MiB} MiB)"
    return f"`{value}`"


def settings_table() -> str:
    """The markdown table of every setting: variable, default, meaning (the field's description)."""
    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        meaning = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{env_name(name)}` | {_default_text(field.default)} | {meaning} |")
    return "\n".join(rows)


def update_settings_doc(doc: Path) -> bool:
    """Rewrite the table between the markers in ``doc``; True if it changed."""
    text = doc.read_text()
    start = text.index(SETTINGS_TABLE_BEGIN) + len(SETTINGS_TABLE_BEGIN)
    end = text.index(SETTINGS_TABLE_END)
    new = text[:start] + "\n" + settings_table() + "\n" + text[end:]
    if new != text:
        doc.write_text(new)
    return new != text


if __name__ == "__main__":  # python -m captioner.service.settings [--update docs/service.md]
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "--update":
        print("updated" if update_settings_doc(Path(sys.argv[2])) else "up to date")
    else:
        print(settings_table())
