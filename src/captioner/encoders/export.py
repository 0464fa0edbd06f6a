"""Export any registered encoder to one self-describing ONNX file.

The file carries its EncoderSpec (name, preprocessing, feature size) in ONNX metadata, so a runtime needs
nothing but the file to preprocess images exactly as the features for training were computed.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from captioner.encoders.registry import get_encoder_spec

METADATA_KEY = "captioner.encoder"


def export_encoder(name: str, out_path: str | Path, weights: str | Path | None = "imagenet") -> Path:
    """Export encoder ``name`` with ``weights`` ("imagenet", a file, or None = random) to ``out_path``."""
    import onnx

    spec = get_encoder_spec(name)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        if spec.framework == "keras":
            from captioner.encoders import inception_v3

            inception_v3.export_onnx(raw, weights)
        else:
            from captioner.encoders import efficientnet_lite

            efficientnet_lite.export_onnx(name, raw, weights)
        model = onnx.load(str(raw), load_external_data=True)
        meta = dict(
            spec.to_dict(), weights=str(weights) if weights in (None, "imagenet") else Path(weights).name
        )
        del model.metadata_props[:]
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(meta, sort_keys=True)
        onnx.checker.check_model(model)
        tmp_out = Path(tmp) / "model.onnx"
        onnx.save_model(model, str(tmp_out), save_as_external_data=False)
        tmp_out.replace(out_path)  # atomic: a crashed export never leaves a half-written file
    return out_path
