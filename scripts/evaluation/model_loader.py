"""Model loading of the original design, as a thin shim over the ``captioner`` package.

    from model_loader import load_model, generate_caption
    model = load_model()                       # MODEL_PATH/TOKENIZER_PATH/... or the shipped bundle
    print(generate_caption(model, "photo.jpg"))

Works from a checkout without installing the package: ``src/`` is put on ``sys.path`` when needed.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import captioner  # noqa: F401
except ImportError:  # running from a checkout: <repo>/scripts/evaluation/model_loader.py -> <repo>/src
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from captioner.decode.captioner import Captioner  # noqa: E402
from captioner.decode.options import DecodeOptions  # noqa: E402
from captioner.service.settings import Settings  # noqa: E402
from captioner.service.state import load_captioner  # noqa: E402


def load_settings() -> Settings:
    """The service settings from the environment (MODEL_PATH, TOKENIZER_PATH, CAPTIONER_*, ...)."""
    return Settings()


def load_model(settings: Settings | None = None) -> Captioner:
    """The captioner the environment names: the original format if MODEL_PATH is set, else the bundle (both
    through ``captioner.load``)."""
    return load_captioner(settings or load_settings())


def generate_caption(
    model: Captioner, image: bytes | str | Path, options: DecodeOptions | None = None
) -> str:
    """One image (bytes or a path) -> its best caption."""
    return model.caption_images([model.load(image)], options or DecodeOptions())[0].caption
