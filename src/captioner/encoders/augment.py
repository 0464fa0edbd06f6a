"""Training-time views of a photo: what users' copies of a scene differ by, applied before the encoder.

A user's photo differs from Flickr8k's copy of a similar scene in framing, exposure, colour and JPEG compression.
``PhotoView`` draws one such variation per photo, seeded by the view's number and the photo's name, so a feature
cache of a view can be rebuilt bit for bit and resumed. Used by ``pipeline.dataset_features``
(``TrainConfig.augment_views``); serving never augments. Measured on dev (models/default/README.md,
``bench/results/recompression.json``): decoders trained with 2 or 4 views score no better on Flickr8k's files; on
the photos saved again as JPEG one 4-view run held its scores and another, differing only in its random draws,
did not; an invisible re-save changes about half of any decoder's captions. The shipped recipe has 0 views.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageEnhance


@dataclass(frozen=True)
class PhotoView:
    """One random view per photo: a crop of at least ``min_crop_area`` of the photo with its aspect ratio moved by
    up to ``aspect_jitter`` (resized back to the photo's size), brightness, contrast and saturation each scaled by
    a factor within 1 +- ``colour_jitter``, mirrored with probability ``mirror_prob``, then saved as a JPEG of a
    quality drawn from ``jpeg_quality`` (inclusive) and decoded again. ``number`` seeds the draws (with the photo's
    name): views 1, 2, ... of one photo differ, view k of a photo is always the same."""

    number: int
    min_crop_area: float = 0.75
    aspect_jitter: float = 0.15
    colour_jitter: float = 0.25
    mirror_prob: float = 0.5
    jpeg_quality: tuple[int, int] = (40, 95)

    def __post_init__(self) -> None:
        if not isinstance(self.number, int) or self.number < 1:
            raise ValueError(f"PhotoView.number must be an integer >= 1, got {self.number!r}")
        if not 0.0 < self.min_crop_area <= 1.0:
            raise ValueError(f"PhotoView.min_crop_area must be in (0, 1], got {self.min_crop_area!r}")
        for name in ("aspect_jitter", "colour_jitter"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"PhotoView.{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not 0.0 <= self.mirror_prob <= 1.0:
            raise ValueError(f"PhotoView.mirror_prob must be in [0, 1], got {self.mirror_prob!r}")
        low, high = self.jpeg_quality
        if not 1 <= low <= high <= 100:
            raise ValueError(
                f"PhotoView.jpeg_quality must be (low, high) with 1 <= low <= high <= 100, got {low, high}"
            )

    def rng(self, key: str) -> np.random.Generator:
        digest = hashlib.sha256(key.encode()).digest()
        return np.random.default_rng([self.number, int.from_bytes(digest[:8], "little")])

    def __call__(self, image: Image.Image, key: str) -> Image.Image:
        """This view of an RGB image; key: the photo's name (seeds the draws with ``number``)."""
        rng = self.rng(key)
        w, h = image.size
        area = rng.uniform(self.min_crop_area, 1.0)
        aspect = rng.uniform(1.0 - self.aspect_jitter, 1.0 + self.aspect_jitter)
        cw = max(1, min(w, round(w * float(np.sqrt(area * aspect)))))
        ch = max(1, min(h, round(h * float(np.sqrt(area / aspect)))))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        view = image.crop((x, y, x + cw, y + ch)).resize((w, h), Image.Resampling.BILINEAR)
        for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            view = enhance(view).enhance(rng.uniform(1.0 - self.colour_jitter, 1.0 + self.colour_jitter))
        if rng.random() < self.mirror_prob:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        buffer = io.BytesIO()
        view.save(buffer, "JPEG", quality=int(rng.integers(self.jpeg_quality[0], self.jpeg_quality[1] + 1)))
        with Image.open(io.BytesIO(buffer.getvalue())) as saved:
            return saved.convert("RGB")

    def to_dict(self) -> dict:
        """JSON-ready (a feature cache's index compares it after a round trip)."""
        return asdict(self) | {"jpeg_quality": list(self.jpeg_quality)}
