"""Everything one app instance holds: settings, the captioner, cache, limiter, keys, pool, metrics, readiness."""

from __future__ import annotations

import functools
import io
import logging
import os
import re
import time
from dataclasses import dataclass, field

from PIL import Image

from captioner.decode.captioner import Captioner
from captioner.decode.microbatch import MicroBatcher
from captioner.encoders.providers import CPU, ProviderError, is_gpu, resolve_providers
from captioner.encoders.runtime import OnnxEncoder
from captioner.encoders.sandbox import DecodeBusy, DecodePool
from captioner.loading import load
from captioner.service.cache import ResultCache, SingleFlight, make_cache
from captioner.service.inference import InferencePool
from captioner.service.metrics import Metrics, ProcessStats
from captioner.service.models import ModelSlot, ServedModel
from captioner.service.problems import ServiceError
from captioner.service.ratelimit import make_rate_limiter
from captioner.service.redis_guard import connect_redis
from captioner.service.security import ApiKeys, AuthFailureThrottle
from captioner.service.settings import Settings
from captioner.service.uploads import UploadBudget

log = logging.getLogger("captioner.service")

# The model facts that /health shows to anyone: never a filesystem path (the captioner's info holds the bundle's
# and the original format's file paths, which only the server's log and the CLI show).
PUBLIC_MODEL_FIELDS = (
    "format", "version", "sha256", "encoder", "vocab_size", "metrics", "decoder_backend",
    "feature_size", "max_length", "start_word", "end_word", "num_words", "keras_version", "providers",
    "decoders",
)  # fmt: skip


def load_captioner(settings: Settings) -> Captioner:
    """The model the settings name: the original format if MODEL_PATH is set, else a bundle (default: shipped)."""
    load_with = functools.partial(
        load,
        threads=settings.threads,
        max_pixels=settings.max_image_pixels,
        decoder_backend=settings.decoder_backend,
        execution_provider=settings.execution_provider,
    )
    if settings.original:
        return load_with(
            model=settings.model_path,
            tokenizer=settings.tokenizer_path,
            weights=settings.weights_path,
            encoder=settings.encoder_path,
        )
    return load_with(settings.bundle_path, bundle_sha256=settings.bundle_sha256, ensemble=settings.ensemble)


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics
    injected: Captioner | None = None  # a model given by code (tests); else the settings' model is loaded
    ready: bool = False
    load_error: str | None = None
    started: float = field(default_factory=time.time)
    cache: ResultCache = field(init=False)  # made in __post_init__ (from the settings)
    flights: SingleFlight = field(default_factory=SingleFlight)

    def __post_init__(self) -> None:
        s = self.settings
        redis_client = connect_redis(s.redis_url) if s.redis_url else None
        self.redis_backend = redis_client is not None
        self.cache = make_cache(s.cache_max_entries, redis_client, s.cache_ttl_s)
        self.limiter = make_rate_limiter(s.rate_limit_per_minute, s.burst, redis_client)
        self.api_keys = ApiKeys(s.api_keys_sha256, s.api_keys_file)
        self.admin_keys = ApiKeys(s.admin_keys_sha256)
        self.auth_throttle = AuthFailureThrottle(
            make_rate_limiter(
                s.auth_failures_per_minute, s.auth_failures_burst, redis_client, "API-key failure budget"
            )
        )
        self.uploads = UploadBudget(s.max_upload_buffer_bytes, self.metrics.upload_buffer.set)
        # With micro-batching, pool threads only decode images and wait on the batcher, so every queued
        # request gets one (max_queue bounds them); the batcher's single worker does the heavy compute.
        # The provider the encoder will ask for picks the batch size (the one it really gets is known once loaded).
        workers = s.max_queue if s.microbatch_for(_expected_provider(s))[0] > 1 else s.inference_workers
        self.pool = InferencePool(s.max_queue, workers, s.request_timeout_s, self.metrics.inflight.set)
        # The served model and the previous one; a switch (admin endpoint, SIGHUP) reloads the settings' path.
        self.models = ModelSlot(self.build_model, retire_after_s=s.request_timeout_s)
        # Image decoding runs in worker processes (a decode past its time is killed, memory is budgeted), but for
        # small sequential JPEGs, whose decoding work is bounded (encoders/sandbox.py).
        self.decoders = DecodePool(
            s.decode_workers, s.decode_timeout_s, s.decode_memory_budget_bytes,
            s.decode_inline_max_pixels, s.decode_inline_max_bytes,
        )  # fmt: skip
        self.process = ProcessStats()

    def build_model(self, captioner: Captioner | None = None) -> ServedModel:
        """Load the settings' model (unless ``captioner`` is given), warm the whole path (a decode in a worker,
        the encoder, the search) and give it its micro-batcher. Raises on a broken or tampered model."""
        if captioner is None:
            start = time.perf_counter()
            captioner = load_captioner(self.settings)
            log.info("model loaded in %.1f s: %s", time.perf_counter() - start, captioner.model_info)
        blank = io.BytesIO()
        Image.new("RGB", (64, 64), (127, 127, 127)).save(blank, "PNG")
        image = captioner.load(blank.getvalue(), self.decoders, wait_s=60.0)
        captioner.caption_images([image], self.settings.default_options())
        batcher = None
        info = captioner.model_info
        provider = info.providers.get("encoder", CPU) if info is not None else CPU
        size, wait_ms = self.settings.microbatch_for(provider)
        if size > 1:
            lanes = self.build_lanes(captioner, provider, image)
            log.info(
                "micro-batching up to %d images, %g ms, on %s, %d lane(s)",
                size,
                wait_ms,
                provider,
                len(lanes) or 1,
            )
            batcher = MicroBatcher(
                captioner,
                max_batch_size=size,
                max_wait_ms=wait_ms,
                max_queue=self.settings.max_queue,
                max_wait_expected_ms=max(wait_ms, self.settings.microbatch_max_wait_expected_ms),
                lanes=lanes or None,
            )
        return ServedModel(captioner, batcher)

    def build_lanes(self, captioner: Captioner, provider: str, image: Image.Image) -> list[Captioner]:
        """The micro-batcher's lanes on the CPU (decode/microbatch.py): ``captioner`` with an encoder session of its
        own per lane, an equal share of the threads each, warmed on ``image``. None (an empty list) where one lane
        is all there is room for: the setting, the thread count, a GPU, an encoder that is not an onnxruntime file."""
        threads = self.settings.threads or os.cpu_count() or 1
        count = min(self.settings.inference_lanes, threads)
        encoder = getattr(captioner, "encoder", None)
        if count < 2 or is_gpu(provider) or not isinstance(encoder, OnnxEncoder):
            return []
        lanes = [
            captioner.with_encoder(OnnxEncoder(encoder.path, threads=threads // count)) for _ in range(count)
        ]
        for lane in lanes:
            lane.encoder.run([image])
        return lanes

    def load_and_warm(self) -> None:
        """Load and warm the first model, then mark ready. Raises on failure."""
        try:
            self.models.load(self.build_model(self.injected))
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("model failed to load: %s", self.load_error)
            raise
        self.ready = True
        self.metrics.ready.set(1)

    @property
    def served(self) -> ServedModel | None:
        """The active model; a request reads it once and keeps it to the end (a switch never changes it)."""
        return self.models.active

    @property
    def captioner(self) -> Captioner | None:
        return self.models.active.captioner if self.models.active else None

    @captioner.setter
    def captioner(self, captioner: Captioner) -> None:  # tests: replace the active model's captioner in place
        self.models.active = ServedModel(
            captioner, self.models.active.batcher if self.models.active else None
        )

    @property
    def batcher(self) -> MicroBatcher | None:
        return self.models.active.batcher if self.models.active else None

    def load_image(self, captioner: Captioner, data: bytes, started: float):
        """Decode an upload in a worker: RGB, reduced for the encoder. ``started``: the request's perf_counter().

        Raises ImageError (413 / 415 / 422), or ServiceError 503 when no worker or memory came free in time.
        """
        wait_s = self.settings.request_timeout_s - (time.perf_counter() - started)
        try:
            return captioner.load(data, self.decoders, max(wait_s, 0.0), self.settings.max_image_pixels)
        except DecodeBusy:
            raise ServiceError(
                503, "overloaded", "the server is busy decoding other images; retry in a moment",
                headers={"Retry-After": "1"},
            ) from None  # fmt: skip

    def close(self) -> None:
        self.models.close()
        self.pool.shutdown()
        self.decoders.close()

    def model_info(self) -> dict:
        """The public description of the model (PUBLIC_MODEL_FIELDS only)."""
        if self.captioner is None:
            return {}
        info = self.captioner.model_info
        public = {"version": self.captioner.version, **(info.to_dict() if info is not None else {})}
        public = {k: public[k] for k in PUBLIC_MODEL_FIELDS if k in public}
        return {**public, "previous_version": self.models.versions()["previous"]}

    @property
    def public_load_error(self) -> str | None:
        """Why the model failed to load, without filesystem paths (the log has the full message)."""
        return None if self.load_error is None else redact_paths(self.load_error)


_ABSOLUTE_PATH = re.compile(r"""(?:^|(?<=[\s'"(\[=:]))(?:~|[A-Za-z]:)?[/\\][^\s'"()\[\],;]*""")


def redact_paths(text: str) -> str:
    """``text`` with every absolute filesystem path replaced by ``<path>`` (for responses anyone can read)."""
    return _ABSOLUTE_PATH.sub("<path>", text)


def _expected_provider(settings: Settings) -> str:
    """The provider the encoder session will ask for first (a cuda setting without CUDA fails at load)."""
    try:
        return resolve_providers(settings.execution_provider)[0]
    except ProviderError:
        return CPU
