"""Export any registered encoder to one self-describing ONNX file.

The file carries its EncoderSpec (name, preprocessing, feature size) in ONNX metadata, so a runtime needs
nothing but the file to preprocess images exactly as the features for training were computed.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from captioner.encoders.registry import get_encoder_spec
from captioner.errors import EncoderError

METADATA_KEY = "captioner.encoder"


def export_encoder(
    name: str, out_path: str | Path, weights: str | Path | None = "imagenet", weights_dtype: str = "float32"
) -> Path:
    """Export encoder ``name`` with ``weights`` ("imagenet", a file, or None = random) to ``out_path``.

    weights_dtype="float16" stores the large weight tensors in half precision (half the file size) with a Cast
    back to float32 that onnxruntime folds at load time: computation stays float32. Features for training must
    then be extracted with this same file, as the pipeline does.
    """
    if weights_dtype not in ("float32", "float16"):
        raise EncoderError(f"weights_dtype must be float32 or float16, got {weights_dtype!r}")
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
        if weights_dtype == "float16":
            store_weights_as_float16(model)
        meta = dict(
            spec.to_dict(),
            weights=str(weights) if weights in (None, "imagenet") else Path(weights).name,
            weights_dtype=weights_dtype,
        )
        del model.metadata_props[:]
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(meta, sort_keys=True)
        onnx.checker.check_model(model)
        tmp_out = Path(tmp) / "model.onnx"
        onnx.save_model(model, str(tmp_out), save_as_external_data=False)
        tmp_out.replace(out_path)  # atomic: a crashed export never leaves a half-written file
    return out_path


def store_weights_as_float16(model, min_elements: int = 1024) -> None:
    """Rewrite float32 initializers of at least ``min_elements`` as float16 + a Cast to float32 (in place)."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    casts = []
    for init in list(graph.initializer):
        if init.data_type != onnx.TensorProto.FLOAT or np.prod(init.dims) < min_elements:
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name + "__fp16")
        graph.initializer.remove(init)
        graph.initializer.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=onnx.TensorProto.FLOAT))
    for i, node in enumerate(casts):  # Cast nodes first keep the graph topologically sorted
        graph.node.insert(i, node)
