"""The decoder step as one onnxruntime graph: the same equations and weights as ``step.NumpyDecoder``.

Why: at the batch sizes the engine runs (32 images x 3 beams), onnxruntime's MLAS kernels with its own
intra-op threads run a step 2.5-3x faster than NumPy with one BLAS thread (bench/results/decoder_step.json),
and the graph also does the log-softmax and each row's top-k, so beam search sorts k candidates per row
instead of the whole vocabulary.

The graph is built in memory from the NumPy decoder's weights when a bundle is loaded (a few milliseconds);
bundles carry no extra file. Optional int8: the three matmuls quantised dynamically (int8 weights,
activations quantised per call), for machines where that measures faster and the quality cost is acceptable.

Graph inputs:  tokens int64 [N], h float32 [N, H], c float32 [N, H], v float32 [N, E], k int64 [1]
Graph outputs: log_probs [N, V], top_values [N, k] (descending; ties: lower id first), top_ids int64 [N, k],
               h_out [N, H], c_out [N, H]
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from captioner.model.step import NumpyDecoder

Precision = str  # "fp32" or "int8"
PRECISIONS = ("fp32", "int8")
OPSET = 17


GRAPH_WEIGHTS = (
    "token_gates",
    "recurrent_kernel",
    "proj_kernel",
    "proj_bias",
    "logits_kernel",
    "logits_bias",
)


def build_step_graph(weights: dict[str, np.ndarray], in_memory_weights: bool = False):
    """onnx.ModelProto of one LSTM step followed by the merge and output layers, float32:

        gates = token_gates[token] + h @ recurrent_kernel          (Keras gate order i, f, c, o)
        h', c' = LSTM cell;  z = relu(h' @ proj_kernel + proj_bias + v);  log_softmax(z @ logits_kernel + logits_bias)

    ``weights`` holds the GRAPH_WEIGHTS arrays, from a step decoder's ``graph_weights()``: token_gates [V, 4H] is
    the embedding times the LSTM input kernel plus the LSTM bias (a gather replaces that matmul).
    in_memory_weights: leave the weights out of the graph (marked external); the session gets the arrays
    themselves through ``add_external_initializers``, so loading makes no serialised copies of them.
    """
    import onnx
    from onnx import TensorProto, numpy_helper
    from onnx import helper as oh

    missing = [n for n in GRAPH_WEIGHTS if n not in weights]
    if missing:
        raise ValueError(f"step graph weights lack {missing}")
    H = weights["recurrent_kernel"].shape[0]
    E, V = weights["logits_kernel"].shape
    inits = [
        _external_tensor(n, weights[n]) if in_memory_weights else numpy_helper.from_array(_f32(weights[n]), n)
        for n in GRAPH_WEIGHTS
    ]
    inits.append(numpy_helper.from_array(np.array([H] * 4, np.int64), "gate_sizes"))
    node = oh.make_node
    nodes = [
        node("Gather", ["token_gates", "tokens"], ["input_gates"], axis=0),
        node("MatMul", ["h", "recurrent_kernel"], ["recurrent_gates"]),
        node("Add", ["input_gates", "recurrent_gates"], ["gates"]),
        node(
            "Split", ["gates", "gate_sizes"], ["gate_i", "gate_f", "gate_g", "gate_o"], axis=1
        ),  # Keras order
        node("Sigmoid", ["gate_i"], ["i"]),
        node("Sigmoid", ["gate_f"], ["f"]),
        node("Tanh", ["gate_g"], ["g"]),
        node("Sigmoid", ["gate_o"], ["o"]),
        node("Mul", ["f", "c"], ["f_c"]),
        node("Mul", ["i", "g"], ["i_g"]),
        node("Add", ["f_c", "i_g"], ["c_out"]),
        node("Tanh", ["c_out"], ["tanh_c"]),
        node("Mul", ["o", "tanh_c"], ["h_out"]),
        node("MatMul", ["h_out", "proj_kernel"], ["proj"]),
        node("Add", ["proj", "proj_bias"], ["proj_b"]),
        node("Add", ["proj_b", "v"], ["merged"]),
        node("Relu", ["merged"], ["z"]),
        node("MatMul", ["z", "logits_kernel"], ["logits_nb"]),
        node("Add", ["logits_nb", "logits_bias"], ["logits"]),
        node("LogSoftmax", ["logits"], ["log_probs"], axis=1),
        # ONNX TopK: "the element with the lower index will appear first" among equal values, as search needs.
        node("TopK", ["log_probs", "k"], ["top_values", "top_ids"], axis=1, largest=1, sorted=1),
    ]

    def tensor(name, elem, shape):
        return oh.make_tensor_value_info(name, elem, shape)

    F, I64 = TensorProto.FLOAT, TensorProto.INT64
    graph = oh.make_graph(
        nodes,
        "caption_decoder_step",
        [tensor("tokens", I64, ["N"]), tensor("h", F, ["N", H]), tensor("c", F, ["N", H]),
         tensor("v", F, ["N", E]), tensor("k", I64, [1])],
        [tensor("log_probs", F, ["N", V]), tensor("top_values", F, ["N", "k"]), tensor("top_ids", I64, ["N", "k"]),
         tensor("h_out", F, ["N", H]), tensor("c_out", F, ["N", H])],
        inits,
    )  # fmt: skip
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", OPSET)], producer_name="captioner")
    model.ir_version = min(model.ir_version, 9)  # readable by onnxruntime >= 1.18
    if (
        not in_memory_weights
    ):  # the checker would look for the external data on disk (the same graph otherwise)
        onnx.checker.check_model(model)
    return model


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _external_tensor(name: str, array: np.ndarray):
    """A float32 initializer whose data is supplied at session creation (add_external_initializers)."""
    from onnx import TensorProto

    t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=array.shape)
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "in-memory"), ("offset", "0"), ("length", str(array.size * 4))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t


def quantize_step_graph(model) -> bytes:
    """Dynamic int8 quantisation of the step's MatMuls (weights int8 per tensor, activations per call)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="captioner-step-") as tmp:
        src, dst = Path(tmp) / "step.onnx", Path(tmp) / "step.int8.onnx"
        onnx.save(model, src)
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
        return dst.read_bytes()


class OnnxDecoder:
    """StepDecoder running ``build_step_graph`` in onnxruntime; ``step_topk`` feeds the searches.

    decoder: the NumPy reference (``NumpyDecoder``, or any step decoder with ``graph_weights()`` whose state is
    (h, c, v) as the graph reads it); its ``initial_state`` is used as is.
    threads: intra-op threads (default: all cores, as for the encoder). precision: "fp32" or "int8".
    Thread-safe (onnxruntime sessions are; all state is in the arguments).
    """

    def __init__(self, decoder: NumpyDecoder, threads: int | None = None, precision: Precision = "fp32"):
        import onnxruntime as ort

        from captioner.encoders.runtime import session_options

        if precision not in PRECISIONS:
            raise ValueError(f"decoder precision must be one of {PRECISIONS}, got {precision!r}")
        self.numpy = decoder
        self.config = getattr(decoder, "config", None)
        self.vocab_size = decoder.vocab_size
        self.precision = precision
        weights = decoder.graph_weights()
        opts = session_options(threads or os.cpu_count())
        if precision == "int8":
            blob = quantize_step_graph(build_step_graph(weights))
        else:
            # The session reads the decoder's own arrays: no serialised copy of the ~30 MB of weights at load.
            self._weights = {n: _f32(weights[n]) for n in GRAPH_WEIGHTS}  # kept alive for the session
            values = [ort.OrtValue.ortvalue_from_numpy(a) for a in self._weights.values()]
            opts.add_external_initializers(list(self._weights), values)
            blob = build_step_graph(weights, in_memory_weights=True).SerializeToString()
        self.session = ort.InferenceSession(blob, sess_options=opts, providers=["CPUExecutionProvider"])

    @classmethod
    def from_h5(cls, config, path, threads: int | None = None, precision: Precision = "fp32") -> OnnxDecoder:
        return cls(NumpyDecoder.from_h5(config, path), threads=threads, precision=precision)

    def initial_state(self, features: np.ndarray) -> tuple[np.ndarray, ...]:
        """features [B, F] -> (h0, c0, v): once per batch, in NumPy (the same code as NumpyDecoder)."""
        return self.numpy.initial_state(features)

    def _run(self, names: list[str], tokens: np.ndarray, state: tuple[np.ndarray, ...], k: int):
        h, c, v = state
        feed = {
            "tokens": np.ascontiguousarray(tokens, dtype=np.int64).reshape(-1),
            "h": np.ascontiguousarray(h, dtype=np.float32),
            "c": np.ascontiguousarray(c, dtype=np.float32),
            "v": np.ascontiguousarray(v, dtype=np.float32),
            "k": np.array([k], dtype=np.int64),
        }
        if feed["tokens"].shape[0] == 0:  # onnxruntime handles empty batches, but there is nothing to run
            out = {"log_probs": np.zeros((0, self.vocab_size), np.float32), "top_values": np.zeros((0, k), np.float32),
                   "top_ids": np.zeros((0, k), np.int64), "h_out": h, "c_out": c}  # fmt: skip
            return [out[n] for n in names]
        return self.session.run(names, feed)

    def step(
        self, tokens: np.ndarray, state: tuple[np.ndarray, ...]
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """tokens int [N], state (h, c, v) -> (log_probs float32 [N, V], new state), as NumpyDecoder.step."""
        log_probs, h, c = self._run(["log_probs", "h_out", "c_out"], tokens, state, 1)
        return log_probs, (h, c, state[2])

    def step_topk(
        self, tokens: np.ndarray, state: tuple[np.ndarray, ...], k: int
    ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
        """-> (values float32 [N, k] best first, ids int64 [N, k], new state): each row's k best log-probs,
        equal values in ascending id order. k is capped at the vocabulary size."""
        k = max(1, min(int(k), self.vocab_size))
        values, ids, h, c = self._run(["top_values", "top_ids", "h_out", "c_out"], tokens, state, k)
        return values, ids, (h, c, state[2])
