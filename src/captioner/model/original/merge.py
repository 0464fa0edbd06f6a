"""The original design's "merge" model, read from ``caption_model.keras`` (+ ``.weights.h5``) without Keras.

The tutorial's ``define_model`` (``build_merge_model`` below, for tests and the benchmark) is

    features (F,) -> [Dropout] -> Dense(U, relu) ------------------------------+
    token ids (L,) -> Embedding(V, E, mask_zero=True) -> [Dropout] -> LSTM(U) -+-> add -> Dense(D, relu)
                                                                                     -> Dense(V, softmax)

A ``.keras`` file is a zip of ``config.json`` (the layer graph) and ``model.weights.h5``; a ``.weights.h5`` from
``model.save_weights`` has the same layout. Both are read with zipfile and h5py: nothing in them is executed, and
only this graph (checked layer by layer) is accepted. ``read_merge_model`` returns the weights by role, the names
``merge_step.MergeStepDecoder`` takes.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from captioner.errors import BundleError

# A tutorial model is ~30 MB (vocabulary 8k, 256 units); far larger members are not this model (or a zip bomb).
MAX_CONFIG_BYTES = 16 * 1024 * 1024
MAX_WEIGHTS_BYTES = 2 * 1024 * 1024 * 1024

SUPPORTED_GRAPH = (
    "the tutorial's merge model: inputs [features (F,), token ids (max_length,)]; features -> [Dropout] -> "
    "Dense(U, relu); ids -> Embedding(V, E, mask_zero=True) -> [Dropout] -> LSTM(U) (tanh/sigmoid, last state "
    "only); add -> Dense(D, relu) -> Dense(V, softmax)"
)
WEIGHT_NAMES = (
    "fe/kernel", "fe/bias", "embedding", "lstm/kernel", "lstm/recurrent_kernel", "lstm/bias",
    "hidden/kernel", "hidden/bias", "out/kernel", "out/bias",
)  # fmt: skip

# Layers that hold no weights at inference, and Keras ops a functional config records beside the layers (the
# Embedding's mask is a NotEqual op); neither is a layer of the saved weights.
_PASS_THROUGH = {"Dropout", "InputLayer"}
_OPS = {"NotEqual"}


@dataclass(frozen=True)
class MergeModel:
    """The merge model's weights by role (float32; see ``WEIGHT_NAMES``) and its sizes."""

    weights: dict[str, np.ndarray]
    feature_size: int  # F
    max_length: int  # L: token ids the model reads, start word included
    vocab_size: int  # V: the softmax width


def build_merge_model(
    keras: Any,
    feature_size: int,
    vocab_size: int,
    max_length: int,
    units: int = 256,
    output_activation: str | None = "softmax",
) -> Any:
    """The original design's merge model (the tutorial's ``define_model``), layer for layer, untrained.

    For the benchmark's baseline and for tests; ``keras`` is the imported module (this file never imports Keras
    itself). output_activation None gives logits, a model ``read_merge_model`` must refuse.
    """
    layers = keras.layers
    inputs1 = keras.Input(shape=(feature_size,))
    fe1 = layers.Dropout(0.5)(inputs1)
    fe2 = layers.Dense(units, activation="relu")(fe1)
    inputs2 = keras.Input(shape=(max_length,))
    se1 = layers.Embedding(vocab_size, units, mask_zero=True)(inputs2)
    se2 = layers.Dropout(0.5)(se1)
    se3 = layers.LSTM(units)(se2)
    decoder1 = layers.add([fe2, se3])
    decoder2 = layers.Dense(units, activation="relu")(decoder1)
    outputs = layers.Dense(vocab_size, activation=output_activation)(decoder2)
    return keras.Model(inputs=[inputs1, inputs2], outputs=outputs)


def read_merge_model(model_path: str | Path, weights_path: str | Path | None = None) -> MergeModel:
    """Read ``caption_model.keras`` and, if given, the weights of ``weights_path`` instead of its own.

    Raises BundleError for a missing or unreadable file, a layer graph other than ``SUPPORTED_GRAPH``, or weights
    that do not fit the graph.
    """
    model_path = Path(model_path)
    if model_path.suffix != ".keras":
        raise BundleError(
            f"{model_path}: expected a Keras v3 '.keras' model file (old-style .h5 models can embed code and "
            "are not loaded; re-save the model with model.save('caption_model.keras'))"
        )
    if not model_path.is_file():
        raise BundleError(f"model file not found: {model_path}")
    try:
        with zipfile.ZipFile(model_path) as archive:
            config = json.loads(_member(archive, "config.json", MAX_CONFIG_BYTES, model_path))
            own_weights = (
                None if weights_path else _member(archive, "model.weights.h5", MAX_WEIGHTS_BYTES, model_path)
            )
    except (zipfile.BadZipFile, OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"cannot load {model_path} ({type(e).__name__}: {e})") from None
    graph = _MergeGraph.from_config(config, model_path)
    if weights_path is not None:
        weights_path = Path(weights_path)
        if not weights_path.is_file():
            raise BundleError(f"weights file not found: {weights_path}")
        source: Any = weights_path
    else:
        assert own_weights is not None  # read above whenever no weights_path is given
        source = io.BytesIO(own_weights)
    weights = graph.read_weights(source, weights_path or model_path)
    return MergeModel(weights, graph.feature_size, graph.max_length, weights["out/kernel"].shape[1])


def _member(archive: zipfile.ZipFile, name: str, limit: int, path: Path) -> bytes:
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise BundleError(f"{path} has no {name}; it is not a Keras v3 model file") from None
    if info.file_size > limit:
        raise BundleError(f"{path}: {name} is {info.file_size} bytes, over the {limit} a caption model needs")
    return archive.read(info)


def _snake(name: str) -> str:
    """Keras's ``naming.to_snake_case`` (the key of a layer in a weights file)."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


@dataclass
class _Layer:
    name: str
    kind: str
    config: dict
    inputs: list[str]
    key: str = ""  # where its weights are in a .weights.h5


class _MergeGraph:
    """The layers of a functional model's config.json, matched against the merge model's shape."""

    def __init__(self, layers: dict[str, _Layer], inputs: list[str], output: str, path: Path):
        self.path = path
        unsupported = f"{path} is not a model this captioner can serve; supported: {SUPPORTED_GRAPH}"
        by_kind = lambda kind: [layer for layer in layers.values() if layer.kind == kind]  # noqa: E731
        if len(inputs) != 2:
            raise BundleError(f"{path} has {len(inputs)} inputs, the merge model 2; {unsupported}")
        out = layers[output]
        if out.kind != "Dense" or out.config.get("activation") != "softmax":
            raise BundleError(f"{path} does not output a softmax over the vocabulary; {unsupported}")
        hidden = self._through(layers, out.inputs, "Dense", unsupported)
        add = self._through(layers, hidden.inputs, "Add", unsupported)
        if hidden.config.get("activation") != "relu" or len(add.inputs) != 2:
            raise BundleError(unsupported)
        branches = {}
        for name in add.inputs:
            layer = self._skip(layers, name)
            branches[layer.kind] = layer
        fe, lstm = branches.get("Dense"), branches.get("LSTM")
        if fe is None or lstm is None or fe.config.get("activation") != "relu":
            raise BundleError(unsupported)
        embedding = self._through(layers, lstm.inputs, "Embedding", unsupported)
        c = lstm.config
        if (
            c.get("activation", "tanh") != "tanh"
            or c.get("recurrent_activation", "sigmoid") != "sigmoid"
            or c.get("return_sequences") or c.get("go_backwards") or c.get("stateful")
            or not c.get("use_bias", True) or not embedding.config.get("mask_zero")
        ):  # fmt: skip
            raise BundleError(f"{path}: its LSTM or Embedding differs from the tutorial's; {unsupported}")
        feat_in, ids_in = self._skip(layers, fe.inputs[0]), self._skip(layers, embedding.inputs[0])
        if {feat_in.name, ids_in.name} != set(inputs):
            raise BundleError(unsupported)
        for layer in layers.values():
            if layer.kind not in {"Dense", "Add", "LSTM", "Embedding", *_PASS_THROUGH, *_OPS}:
                raise BundleError(f"{path} has a {layer.kind} layer; {unsupported}")
        if len(by_kind("Dense")) != 3 or len(by_kind("LSTM")) != 1 or len(by_kind("Embedding")) != 1:
            raise BundleError(unsupported)
        self.feature_size = self._width(feat_in, unsupported)
        self.max_length = self._width(ids_in, unsupported)
        self.roles = {"fe": fe, "embedding": embedding, "lstm": lstm, "hidden": hidden, "out": out}

    @classmethod
    def from_config(cls, config: Any, path: Path) -> _MergeGraph:
        unsupported = f"{path} is not a model this captioner can serve; supported: {SUPPORTED_GRAPH}"
        try:
            model = config["config"]
            if config.get("class_name") != "Functional":
                raise BundleError(
                    f"{path} holds a {config.get('class_name')} model, not a functional one; {unsupported}"
                )
            layers: dict[str, _Layer] = {}
            counters: dict[str, int] = {}
            for entry in model["layers"]:
                # args only: kwargs carry the mask (a NotEqual op), which the merge step applies by design
                inputs = [
                    n for node in entry.get("inbound_nodes", []) for n in _history(node.get("args", []))
                ]
                layer = _Layer(entry["name"], entry["class_name"], entry.get("config", {}), inputs)
                if layer.kind not in _OPS:  # Keras keys a layer's weights by class name and a counter
                    key = _snake(layer.kind)
                    counters[key] = counters.get(key, -1) + 1
                    layer.key = key if counters[key] == 0 else f"{key}_{counters[key]}"
                layers[layer.name] = layer
            inputs, outputs = _refs(model["input_layers"]), _refs(model["output_layers"])
        except BundleError:
            raise
        except (KeyError, TypeError, IndexError, AttributeError) as e:
            raise BundleError(f"{path}: config.json is not a Keras functional model config ({e!r})") from None
        if len(outputs) != 1:
            raise BundleError(f"{path} has {len(outputs)} outputs, the merge model 1; {unsupported}")
        return cls(layers, inputs, outputs[0], path)

    @staticmethod
    def _skip(layers: dict[str, _Layer], name: str) -> _Layer:
        """The layer ``name``, looking through Dropout (identity at inference)."""
        layer = layers[name]
        while layer.kind == "Dropout" and len(layer.inputs) == 1:
            layer = layers[layer.inputs[0]]
        return layer

    def _through(self, layers: dict[str, _Layer], inputs: list[str], kind: str, message: str) -> _Layer:
        if len(inputs) != 1 or self._skip(layers, inputs[0]).kind != kind:
            raise BundleError(message)
        return self._skip(layers, inputs[0])

    @staticmethod
    def _width(layer: _Layer, message: str) -> int:
        shape = layer.config.get("batch_shape") or layer.config.get("batch_input_shape")
        if layer.kind != "InputLayer" or not shape or len(shape) != 2 or not isinstance(shape[1], int):
            raise BundleError(f"{message} (inputs must be (None, n) with a fixed n)")
        return shape[1]

    def read_weights(self, source: Any, path: Path) -> dict[str, np.ndarray]:
        """Weights by role from a Keras v3 weights file (a path or a file object)."""
        import h5py

        keys = {
            "fe": ["fe/kernel", "fe/bias"],
            "embedding": ["embedding"],
            "hidden": ["hidden/kernel", "hidden/bias"],
            "out": ["out/kernel", "out/bias"],
        }
        try:
            with h5py.File(source, "r") as f:
                w: dict[str, np.ndarray | None] = {}
                for role, names in keys.items():
                    group = f[f"layers/{self.roles[role].key}/vars"]
                    for i, name in enumerate(names):
                        w[name] = _array(group, i, self.roles[role].config.get("use_bias", True))
                group = f[f"layers/{self.roles['lstm'].key}/cell/vars"]
                for i, name in enumerate(("lstm/kernel", "lstm/recurrent_kernel", "lstm/bias")):
                    w[name] = _array(group, i, True)
        except (OSError, KeyError, ValueError) as e:
            raise BundleError(
                f"{path} holds no weights of this merge model ({type(e).__name__}: {e}); "
                "use the weights saved from this very model (model.save_weights)"
            ) from None
        return self._check_shapes(w, path)

    def _check_shapes(self, w: dict[str, np.ndarray | None], path: Path) -> dict[str, np.ndarray]:
        """``w`` with zero biases for Dense layers without one, once every shape fits the graph."""
        # The sizes the graph declares: weights of another model (even a self-consistent set) do not fit them.
        r = {role: layer.config for role, layer in self.roles.items()}
        F, V, U = self.feature_size, r["out"].get("units"), r["lstm"].get("units")
        E, D = r["embedding"].get("output_dim"), r["hidden"].get("units")
        if (
            V is None
            or U is None
            or E is None
            or D is None
            or r["embedding"].get("input_dim") != V
            or r["fe"].get("units") != U
        ):
            raise BundleError(
                f"{self.path}: the Embedding, LSTM and Dense sizes do not agree; supported: {SUPPORTED_GRAPH}"
            )
        for name in ("fe", "hidden", "out"):  # a Dense with use_bias=False
            if w[f"{name}/bias"] is None:
                w[f"{name}/bias"] = np.zeros(cast(np.ndarray, w[f"{name}/kernel"]).shape[-1], np.float32)
        full = cast(dict[str, np.ndarray], w)  # the Dense biases were the only arrays that could be missing
        expected = {
            "fe/kernel": (F, U), "fe/bias": (U,), "embedding": (V, E), "lstm/kernel": (E, 4 * U),
            "lstm/recurrent_kernel": (U, 4 * U), "lstm/bias": (4 * U,), "hidden/kernel": (U, D),
            "hidden/bias": (D,), "out/kernel": (D, V), "out/bias": (V,),
        }  # fmt: skip
        for name, shape in expected.items():
            if full[name].shape != shape:
                raise BundleError(
                    f"the weights in {path} do not fit the model: {name} has shape {full[name].shape}, "
                    f"the graph needs {shape}; use the weights saved from this very model"
                )
        return full


def _array(group: Any, i: int, present: bool) -> np.ndarray | None:
    if not present:
        return None
    return np.ascontiguousarray(group[str(i)][()], dtype=np.float32)


def _history(node: Any) -> list[str]:
    """Names of the layers whose outputs feed ``node`` (any nesting of inbound_nodes' args)."""
    if isinstance(node, dict):
        if node.get("class_name") == "__keras_tensor__":
            return [node["config"]["keras_history"][0]]
        return [n for v in node.values() for n in _history(v)]
    if isinstance(node, list):
        return [n for v in node for n in _history(v)]
    return []


def _refs(refs: list) -> list[str]:
    """Layer names of input_layers/output_layers: a list of [name, node, tensor], or one such triple."""
    return [refs[0]] if isinstance(refs[0], str) else [ref[0] for ref in refs]
