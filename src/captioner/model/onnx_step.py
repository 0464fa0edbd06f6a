"""The decoder step as one onnxruntime graph: the same equations and weights as ``step.NumpyDecoder``.

Why: at the batch sizes the engine runs (32 images x 3 beams), onnxruntime's MLAS kernels with its own
intra-op threads run a step 2.5-3x faster than NumPy with one BLAS thread (bench/results/full.json,
decoder_backends), and the graph also does the log-softmax and each row's top-k, so beam search sorts k
candidates per row instead of the whole vocabulary.

The graph is built in memory from the NumPy decoder's weights when a bundle is loaded (milliseconds); bundles
carry no extra file. Precision "int8" quantises the three matmuls: weights per output column (7-bit, symmetric),
activations per ROW at run time (8-bit, symmetric), integer products accumulated exactly in int32. Per row,
not per tensor as onnxruntime's dynamic quantisation does: a row's result must not depend on which other rows
(images, beams) share its batch, or micro-batching would change captions.

Graph inputs:  tokens int64 [N], h float32 [N, H], c float32 [N, H], v float32 [N, E], k int64 [1]
Graph outputs: log_probs [N, V], top_values [N, k] (descending; ties: lower id first), top_ids int64 [N, k],
               h_out [N, H], c_out [N, H]
"""

from __future__ import annotations

import os

import numpy as np

from captioner.model.step import NumpyDecoder

Precision = str  # "fp32" or "int8"
PRECISIONS = ("fp32", "int8")
OPSET = 17
# Weights in [-63, 63]: an unsigned 8-bit activation times a 7-bit weight, summed in pairs, fits int16, so
# onnxruntime's u8 x s8 kernels cannot saturate on CPUs without VNNI (AVX2's vpmaddubsw).
WEIGHT_LEVELS = 63
ACTIVATION_ZERO_POINT = 128  # activations as uint8: round(x / scale) + 128, scale = max|row| / 127

GRAPH_WEIGHTS = (
    "token_gates",
    "recurrent_kernel",
    "proj_kernel",
    "proj_bias",
    "logits_kernel",
    "logits_bias",
)
MATMULS = ("recurrent_kernel", "proj_kernel", "logits_kernel")
# Steps of at most this many rows run on one thread (faster below ~24 rows on 2 cores).
SINGLE_THREAD_ROWS = 24


def member_prefixes(weights: dict[str, np.ndarray]) -> list[str]:
    """The members of a step's weights: [""] for one decoder, ["m0/", "m1/", ...] for an ensemble
    (``model/ensemble.py``: each member's GRAPH_WEIGHTS under its prefix)."""
    if "m0/logits_bias" not in weights:
        return [""]
    count = 0
    while f"m{count}/logits_bias" in weights:
        count += 1
    return [f"m{i}/" for i in range(count)]


def step_graph_arrays(weights: dict[str, np.ndarray], precision: Precision = "fp32") -> dict[str, np.ndarray]:
    """The initializers of the step graph from a step decoder's ``graph_weights()`` (the GRAPH_WEIGHTS arrays,
    once per member of an ensemble under its prefix).

    fp32: those arrays as float32. int8: each matmul kernel [K, M] becomes ``<name>_q`` (int8, per-column
    symmetric in [-WEIGHT_LEVELS, WEIGHT_LEVELS]) and ``<name>_scale`` (float32 [M]); the rest stays float32.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"decoder precision must be one of {PRECISIONS}, got {precision!r}")
    prefixes = member_prefixes(weights)
    missing = [p + n for p in prefixes for n in GRAPH_WEIGHTS if p + n not in weights]
    if missing:
        raise ValueError(f"step graph weights lack {missing}")
    arrays = {p + n: _f32(weights[p + n]) for p in prefixes for n in GRAPH_WEIGHTS}
    if precision == "int8":
        for name in (p + m for p in prefixes for m in MATMULS):
            kernel = arrays.pop(name)
            scale = np.abs(kernel).max(axis=0) / WEIGHT_LEVELS
            scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
            quantized = np.clip(np.rint(kernel / scale), -WEIGHT_LEVELS, WEIGHT_LEVELS).astype(np.int8)
            arrays[f"{name}_q"], arrays[f"{name}_scale"] = quantized, scale
    return arrays


def build_step_graph(arrays: dict[str, np.ndarray], in_memory_weights: bool = False):
    """onnx.ModelProto of one LSTM step followed by the merge and output layers:

        gates = token_gates[token] + h @ recurrent_kernel          (Keras gate order i, f, c, o)
        h', c' = LSTM cell;  z = relu(h' @ proj_kernel + proj_bias + v);  log_softmax(z @ logits_kernel + logits_bias)

    ``arrays`` from ``step_graph_arrays`` (fp32 or int8, told apart by the quantised kernels' names).
    token_gates [V, 4H] is the embedding times the LSTM input kernel plus the LSTM bias (a gather replaces that
    matmul). An ensemble's arrays (prefixes m0/, m1/, ...) give one such step per member on its slice of the
    state (h, c, v are the members' states side by side) and log_probs = log(mean of the members' probabilities).
    in_memory_weights: leave the arrays out of the graph (marked external); the session gets them
    through ``add_external_initializers``, so loading makes no serialised copies of them.
    """
    import onnx
    from onnx import TensorProto, numpy_helper
    from onnx import helper as oh

    prefixes = member_prefixes(arrays)
    int8 = f"{prefixes[0]}recurrent_kernel_q" in arrays
    hidden = [arrays[p + ("recurrent_kernel_q" if int8 else "recurrent_kernel")].shape[0] for p in prefixes]
    embed = [arrays[p + "proj_bias"].shape[0] for p in prefixes]
    H, E, V = sum(hidden), sum(embed), arrays[prefixes[0] + "logits_bias"].shape[0]
    inits = [
        _external_tensor(n, a) if in_memory_weights else numpy_helper.from_array(np.ascontiguousarray(a), n)
        for n, a in arrays.items()
    ]
    consts: dict[str, np.ndarray | np.generic] = {
        f"{p}gate_sizes": np.array([h] * 4, np.int64) for p, h in zip(prefixes, hidden, strict=True)
    }
    if int8:
        consts |= {"c127": np.float32(127.0), "tiny": np.float32(1e-30), "zp_f": np.float32(ACTIVATION_ZERO_POINT),
                   "zp_u8": np.uint8(ACTIVATION_ZERO_POINT)}  # fmt: skip
    node = oh.make_node

    def matmul(x: str, name: str, out: str) -> list:
        if not int8:
            return [node("MatMul", [x, name], [out])]
        p = f"{name}/"  # x [N, K] -> uint8 per row (scale = max|row| / 127), integer product, rescale
        return [
            node("Abs", [x], [p + "abs"]),
            node("ReduceMax", [p + "abs"], [p + "max"], axes=[1], keepdims=1),
            node("Max", [p + "max", "tiny"], [p + "max_safe"]),
            node("Div", [p + "max_safe", "c127"], [p + "x_scale"]),
            node("Div", [x, p + "x_scale"], [p + "scaled"]),
            node("Round", [p + "scaled"], [p + "rounded"]),
            node("Add", [p + "rounded", "zp_f"], [p + "shifted"]),
            node("Cast", [p + "shifted"], [p + "x_u8"], to=TensorProto.UINT8),
            node("MatMulInteger", [p + "x_u8", f"{name}_q", "zp_u8"], [p + "acc"]),
            node("Cast", [p + "acc"], [p + "acc_f"], to=TensorProto.FLOAT),
            node("Mul", [p + "acc_f", p + "x_scale"], [p + "row_scaled"]),
            node("Mul", [p + "row_scaled", f"{name}_scale"], [out]),
        ]

    def member(p: str, h: str, c: str, v: str, log_probs: str, h_out: str, c_out: str) -> list:
        return [
            node("Gather", [p + "token_gates", "tokens"], [p + "input_gates"], axis=0),
            *matmul(h, p + "recurrent_kernel", p + "recurrent_gates"),
            node("Add", [p + "input_gates", p + "recurrent_gates"], [p + "gates"]),
            node("Split", [p + "gates", p + "gate_sizes"], [p + "gate_i", p + "gate_f", p + "gate_g", p + "gate_o"],
                 axis=1),  # Keras order
            node("Sigmoid", [p + "gate_i"], [p + "i"]),
            node("Sigmoid", [p + "gate_f"], [p + "f"]),
            node("Tanh", [p + "gate_g"], [p + "g"]),
            node("Sigmoid", [p + "gate_o"], [p + "o"]),
            node("Mul", [p + "f", c], [p + "f_c"]),
            node("Mul", [p + "i", p + "g"], [p + "i_g"]),
            node("Add", [p + "f_c", p + "i_g"], [c_out]),
            node("Tanh", [c_out], [p + "tanh_c"]),
            node("Mul", [p + "o", p + "tanh_c"], [h_out]),
            *matmul(h_out, p + "proj_kernel", p + "proj"),
            node("Add", [p + "proj", p + "proj_bias"], [p + "proj_b"]),
            node("Add", [p + "proj_b", v], [p + "merged"]),
            node("Relu", [p + "merged"], [p + "z"]),
            *matmul(p + "z", p + "logits_kernel", p + "logits_nb"),
            node("Add", [p + "logits_nb", p + "logits_bias"], [p + "logits"]),
            node("LogSoftmax", [p + "logits"], [log_probs], axis=1),
        ]  # fmt: skip

    if len(prefixes) == 1:
        nodes = member("", "h", "c", "v", "log_probs", "h_out", "c_out")
    else:
        consts |= {"h_sizes": np.array(hidden, np.int64), "e_sizes": np.array(embed, np.int64),
                   "log_members": np.float32(np.log(len(prefixes))), "axis0": np.array([0], np.int64)}  # fmt: skip
        nodes = [
            node("Split", ["h", "h_sizes"], [p + "h" for p in prefixes], axis=1),
            node("Split", ["c", "h_sizes"], [p + "c" for p in prefixes], axis=1),
            node("Split", ["v", "e_sizes"], [p + "v" for p in prefixes], axis=1),
        ]
        for p in prefixes:
            nodes += member(p, p + "h", p + "c", p + "v", p + "log_probs", p + "h_out", p + "c_out")
            nodes.append(node("Unsqueeze", [p + "log_probs", "axis0"], [p + "log_probs_1"]))
        nodes += [
            node("Concat", [p + "log_probs_1" for p in prefixes], ["members_log_probs"], axis=0),
            node("ReduceLogSumExp", ["members_log_probs"], ["sum_probs"], axes=[0], keepdims=0),
            node("Sub", ["sum_probs", "log_members"], ["log_probs"]),
            node("Concat", [p + "h_out" for p in prefixes], ["h_out"], axis=1),
            node("Concat", [p + "c_out" for p in prefixes], ["c_out"], axis=1),
        ]
    inits += [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()]
    # ONNX TopK: "the element with the lower index will appear first" among equal values, as search needs.
    nodes.append(node("TopK", ["log_probs", "k"], ["top_values", "top_ids"], axis=1, largest=1, sorted=1))

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
    if not in_memory_weights:  # the checker would look for external data on disk (the same graph otherwise)
        onnx.checker.check_model(model)
    return model


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _external_tensor(name: str, array: np.ndarray):
    """An initializer whose data is supplied at session creation (add_external_initializers)."""
    from onnx import TensorProto, helper

    t = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype), dims=array.shape)
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "in-memory"), ("offset", "0"), ("length", str(array.nbytes))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t


class OnnxDecoder:
    """StepDecoder running ``build_step_graph`` in onnxruntime; ``step_topk`` and ``step_with_topk`` feed the searches.

    decoder: the NumPy reference (``NumpyDecoder``, or any step decoder with ``graph_weights()`` whose state is
    (h, c, v) as the graph reads it); its ``initial_state`` is used as is.
    threads: intra-op threads (default: all cores, as for the encoder). precision: "fp32" or "int8".
    stop_spinning_after_run: see ``encoders.runtime.session_options``.
    execution_provider: auto, cpu, cuda or tensorrt (encoders/providers.py); ``provider`` is the one the
    session really got. On a GPU use fp32: onnxruntime's CUDA MatMulInteger is registered for int8 x int8
    only, so the uint8 activations of "int8" would send those nodes to the CPU with copies each step
    (read from onnxruntime's kernel registry, not measured here).
    Thread-safe (onnxruntime sessions are; all state is in the arguments).
    """

    def __init__(
        self,
        decoder: NumpyDecoder,
        threads: int | None = None,
        precision: Precision = "fp32",
        stop_spinning_after_run: bool = True,
        execution_provider: str = "cpu",
    ):
        import onnxruntime as ort

        from captioner.encoders.providers import is_gpu, resolve_providers, session_provider
        from captioner.encoders.runtime import session_options

        self.numpy = decoder
        self.config = getattr(decoder, "config", None)
        self.vocab_size = decoder.vocab_size
        self.precision = precision
        # The session reads these arrays in place: no serialised copy of the ~30 MB of weights at load.
        self._arrays = step_graph_arrays(decoder.graph_weights(), precision)  # kept alive for the session
        blob = build_step_graph(self._arrays, in_memory_weights=True).SerializeToString()
        providers = resolve_providers(execution_provider)
        # One set of OrtValues, shared by both sessions.
        values = [ort.OrtValue.ortvalue_from_numpy(a) for a in self._arrays.values()]

        def session(n_threads: int):
            opts = session_options(n_threads, stop_spinning_after_run)
            opts.add_external_initializers(list(self._arrays), values)
            return ort.InferenceSession(blob, sess_options=opts, providers=providers)

        threads = threads or os.cpu_count() or 1
        self.session = session(threads)
        self.provider = session_provider(self.session, providers, "decoder step")
        # A step of a few rows (one image's beams) runs faster on one thread than split over a pool (0.11 vs 0.14
        # ms for 3 rows on 2 cores); the same graph and weights, so the same numbers (tested).
        self._small = session(1) if threads > 1 and not is_gpu(self.provider) else self.session

    def initial_state(self, features: np.ndarray) -> tuple[np.ndarray, ...]:
        """features [B, F] -> (h0, c0, v): once per batch, in NumPy (the same code as NumpyDecoder)."""
        return self.numpy.initial_state(features)

    def _run(self, names: list[str], tokens: np.ndarray, state: tuple[np.ndarray, ...], k: int):
        h, c, v = state
        session = self._small if len(tokens) <= SINGLE_THREAD_ROWS else self.session
        feed = {
            "tokens": np.ascontiguousarray(tokens, dtype=np.int64).reshape(-1),
            "h": np.ascontiguousarray(h, dtype=np.float32),
            "c": np.ascontiguousarray(c, dtype=np.float32),
            "v": np.ascontiguousarray(v, dtype=np.float32),
            "k": np.array([k], dtype=np.int64),
        }
        return session.run(names, feed)

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

    def step_with_topk(
        self, tokens: np.ndarray, state: tuple[np.ndarray, ...], k: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
        """-> (log_probs [N, V], values [N, k], ids [N, k], new state): step's and step_topk's results from one run
        (the constrained search ranks each row's best and reads a few log-probabilities by id)."""
        k = max(1, min(int(k), self.vocab_size))
        names = ["log_probs", "top_values", "top_ids", "h_out", "c_out"]
        log_probs, values, ids, h, c = self._run(names, tokens, state, k)
        return log_probs, values, ids, (h, c, state[2])
