"""Train the LSTM decoder on cached image features with teacher forcing over whole sequences.

The run folder holds everything needed to resume or inspect a run:
    run_config.json        the TrainConfig and DecoderConfig
    vocabulary.json        built from the training captions
    checkpoints/best.weights.h5, last.weights.h5
    backup/                Keras BackupAndRestore state (an interrupted fit resumes from its last epoch)
    history.csv            per-epoch loss, val_loss and the dev scores of ``score_fn``
Model selection and early stopping use the dev split: its loss, or a caption score when ``score_fn`` is given.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from captioner.data.dataset import build_sequences
from captioner.data.flickr8k import Flickr8k
from captioner.data.vocabulary import Vocabulary
from captioner.errors import DataError
from captioner.model.config import DecoderConfig, TrainConfig
from captioner.model.step import NumpyDecoder

log = logging.getLogger(__name__)

# score_fn(decoder, dev_features [N, F], dev_names) -> {"CIDEr": .., "BLEU-4": ..}
ScoreFn = Callable[[NumpyDecoder, np.ndarray, list[str]], dict[str, float]]


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    decoder_config: DecoderConfig
    vocabulary: Vocabulary
    best_epoch: int
    best_scores: dict[str, float]
    seconds: float


def numpy_decoder_from_model(model, config: DecoderConfig) -> NumpyDecoder:
    """A NumpyDecoder over the current weights of a Keras model built by ``build_decoder``."""

    def get(layer: str, i: int) -> np.ndarray:
        return keras.ops.convert_to_numpy(model.get_layer(layer).weights[i])

    w = {"embedding": get("embedding", 0)}
    for name in ("image_proj", "init_h", "init_c", "lstm_proj", "logits"):
        w[f"{name}/kernel"], w[f"{name}/bias"] = get(name, 0), get(name, 1)
    w["lstm/kernel"], w["lstm/recurrent_kernel"], w["lstm/bias"] = (get("lstm", i) for i in range(3))
    return NumpyDecoder(config, w)


def training_device() -> str:
    """The device Keras (TensorFlow backend) trains on: the first visible GPU, else "CPU". tensorflow-cpu (the
    train extra) never sees a GPU; a GPU needs the tensorflow build with CUDA (see the README)."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return f"{gpus[0].name} ({len(gpus)} GPU visible)" if gpus else "CPU (no GPU visible to TensorFlow)"


def train(
    dataset: Flickr8k,
    features: dict[str, np.ndarray],
    run_dir: str | Path,
    config: TrainConfig = TrainConfig(),
    score_fn: ScoreFn | None = None,
    monitor: str = "CIDEr",
    progress: bool = True,
):
    """Train a decoder; returns (keras model with the best weights, TrainResult).

    features: image name -> pooled features [F], or [K, F] for K views (view 0 the image itself, the others
        augmentations such as the mirrored image; training draws a random view per caption per epoch).
    monitor: the key of ``score_fn``'s result to maximise (ignored without score_fn: val_loss is minimised).
    """
    from captioner.model.decoder import build_decoder

    run_dir = Path(run_dir)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.seed)

    train_names = [n for n in dataset.available(config.train_split) if n in features]
    if config.limit_images:
        train_names = train_names[: config.limit_images]
    dev_names = [n for n in dataset.available(config.dev_split) if n in features]
    if not train_names or not dev_names:
        raise DataError(
            f"no {config.train_split if not train_names else config.dev_split} images with features in "
            f"{dataset.image_dir}: check the image folder"
        )
    vocab_path = run_dir / "vocabulary.json"
    if vocab_path.is_file():  # resuming: the vocabulary must not change under the checkpoint
        vocab = Vocabulary.load(vocab_path)
    else:
        vocab = Vocabulary.build(
            (c for n in train_names for c in dataset.captions[n]), min_count=config.min_count
        )
        vocab.save(vocab_path)
    feature_size = int(np.shape(next(iter(features.values())))[-1])
    dconf = DecoderConfig(
        vocab_size=len(vocab),
        feature_size=feature_size,
        embed_dim=config.embed_dim,
        hidden_dim=config.hidden_dim,
        dropout=config.dropout,
        max_length=config.max_length,
        feature_dropout=config.feature_dropout,
    )
    run_config = {"train": config.to_dict(), "decoder": dconf.to_dict()}
    result_path = run_dir / "result.json"
    if result_path.is_file() and _same_cross_entropy_run(run_dir / "run_config.json", run_config):
        # This run's cross-entropy stage already finished: reuse it (a rerun of the command resumes after it).
        done = json.loads(result_path.read_text())
        model = build_decoder(dconf)
        model.load_weights(str(run_dir / "checkpoints" / "best.weights.h5"))
        log.info("cross-entropy stage already done (best epoch %d): reusing %s", done["best_epoch"], run_dir)
        return model, TrainResult(
            run_dir, dconf, vocab, done["best_epoch"], done["best_scores"], float(done["seconds"])
        )
    (run_dir / "run_config.json").write_text(json.dumps(run_config, indent=2))

    def batches(names: list[str], shuffle: bool, seed: int) -> LengthBuckets:
        seqs = build_sequences(names, dataset.captions, vocab, config.max_length)
        # [images, views, F]: view 0 is the image itself, others are augmentations (mirrored).
        feats = np.stack([np.reshape(features[n], (-1, feature_size)) for n in names]).astype(np.float32)
        if not shuffle:
            feats = feats[:, :1]
        return LengthBuckets(
            feats, seqs.image_index, seqs.inputs, seqs.targets, config.batch_size, shuffle, seed
        )

    train_data = batches(train_names, True, config.seed)
    dev_data = batches(dev_names, False, config.seed)
    dev_features = np.stack([np.reshape(features[n], (-1, feature_size))[0] for n in dev_names]).astype(
        np.float32
    )
    log.info(
        "training on %d captions of %d images, vocabulary %d", train_data.rows, len(train_names), len(vocab)
    )
    log.info("TensorFlow trains on %s", training_device())

    model = build_decoder(dconf)
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate, clipnorm=5.0),
        loss=MaskedCaptionLoss(vocab.pad_id, config.label_smoothing),
    )
    callbacks: list = [keras.callbacks.BackupAndRestore(str(run_dir / "backup"))]
    if score_fn is not None:
        callbacks.append(_DevScore(score_fn, dconf, dev_features, dev_names, monitor))
        stop_on, mode = f"dev_{monitor}", "max"
    else:
        stop_on, mode = "val_loss", "min"
    callbacks += [
        keras.callbacks.ReduceLROnPlateau(monitor=stop_on, mode=mode, factor=0.5, patience=1, min_lr=1e-5),
        keras.callbacks.ModelCheckpoint(
            str(run_dir / "checkpoints" / "best.weights.h5"), monitor=stop_on, mode=mode,
            save_best_only=True, save_weights_only=True,
        ),
        keras.callbacks.ModelCheckpoint(str(run_dir / "checkpoints" / "last.weights.h5"), save_weights_only=True),
        keras.callbacks.EarlyStopping(monitor=stop_on, mode=mode, patience=config.patience),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
    ]  # fmt: skip
    start = time.perf_counter()
    history = model.fit(
        train_data.tf_dataset(),
        validation_data=dev_data.tf_dataset(),
        epochs=config.epochs,
        shuffle=False,  # LengthBuckets shuffles
        callbacks=callbacks,
        verbose=1 if progress else 0,
    )
    seconds = time.perf_counter() - start
    model.load_weights(str(run_dir / "checkpoints" / "best.weights.h5"))
    values = history.history.get(stop_on, [])
    best = int(np.argmax(values) if mode == "max" else np.argmin(values)) if values else 0
    best_scores = {k: float(v[best]) for k, v in history.history.items() if len(v) > best}
    result = TrainResult(run_dir, dconf, vocab, best + 1, best_scores, seconds)
    (run_dir / "result.json").write_text(
        json.dumps({"best_epoch": best + 1, "best_scores": best_scores, "seconds": seconds}, indent=2)
    )
    return model, result


def _same_cross_entropy_run(path: Path, run_config: dict) -> bool:
    """Whether run_config.json at path describes the same cross-entropy stage (SCST settings may differ)."""
    if not path.is_file():
        return False
    saved = json.loads(path.read_text())

    def ce(c: dict) -> dict:
        return {
            "train": {k: v for k, v in c.get("train", {}).items() if not k.startswith("scst_")},
            "decoder": c.get("decoder"),
        }

    return ce(saved) == ce(run_config)


@keras.saving.register_keras_serializable(package="captioner")
class MaskedCaptionLoss(keras.losses.Loss):
    """Cross-entropy over whole sequences: padding positions carry no loss, optional label smoothing.

    y_true int [B, T] token ids (pad_id where the caption has ended), y_pred float [B, T, V] logits.
    Averaged over real tokens, so long and short captions weigh by their length, as teacher forcing should.
    """

    def __init__(self, pad_id: int = 0, label_smoothing: float = 0.0, name: str = "masked_caption_loss"):
        super().__init__(name=name, reduction="sum")
        self.pad_id, self.label_smoothing = int(pad_id), float(label_smoothing)

    def call(self, y_true, y_pred):
        ops = keras.ops
        y_true = ops.cast(y_true, "int32")
        log_probs = ops.log_softmax(y_pred, axis=-1)
        nll = -ops.squeeze(ops.take_along_axis(log_probs, ops.expand_dims(y_true, -1), axis=-1), -1)
        if self.label_smoothing:
            # Spread label_smoothing of the target mass uniformly over the vocabulary.
            nll = (1 - self.label_smoothing) * nll - self.label_smoothing * ops.mean(log_probs, axis=-1)
        mask = ops.cast(ops.not_equal(y_true, self.pad_id), nll.dtype)
        return ops.sum(nll * mask) / ops.maximum(ops.sum(mask), 1.0)

    def get_config(self):
        return {"pad_id": self.pad_id, "label_smoothing": self.label_smoothing, "name": self.name}


class LengthBuckets:
    """Batches of captions of similar length, each padded only to its own longest caption.

    Flickr8k captions average 11 words but run to 30+; padding every batch to max_length would spend most
    LSTM steps on padding. Rows are shuffled each epoch, sorted by length inside windows of 50 batches, cut into
    batches, and the batch order shuffled again. Widths are rounded up to a multiple of 4 so TensorFlow
    traces only a handful of shapes.
    """

    def __init__(self, feats, image_index, inputs, targets, batch_size, shuffle, seed):
        self.feats, self.image_index, self.inputs, self.targets = feats, image_index, inputs, targets
        self.lengths = (targets != 0).sum(axis=1)
        self.batch_size, self.shuffle = batch_size, shuffle
        self.rng = np.random.default_rng(seed)
        self.rows = len(targets)
        self._plan()

    def _plan(self) -> None:
        order = self.rng.permutation(self.rows) if self.shuffle else np.arange(self.rows)
        window = self.batch_size * 50
        chunks = []
        for s in range(0, self.rows, window):
            part = order[s : s + window]
            part = part[np.argsort(self.lengths[part], kind="stable")]
            chunks += [part[i : i + self.batch_size] for i in range(0, len(part), self.batch_size)]
        if self.shuffle:
            chunks = [chunks[i] for i in self.rng.permutation(len(chunks))]
        self.plan = chunks

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i):
        rows = self.plan[i]
        width = min(self.inputs.shape[1], -(-int(self.lengths[rows].max()) // 4) * 4)
        images = self.image_index[rows]
        views = (
            self.rng.integers(self.feats.shape[1], size=len(rows))
            if self.shuffle
            else np.zeros(len(rows), int)
        )
        x = (self.feats[images, views], self.inputs[rows, :width])
        return x, self.targets[rows, :width]

    def tf_dataset(self):
        """A tf.data.Dataset over one epoch's plan, re-planned (reshuffled) each time it is iterated."""
        import tensorflow as tf

        def generate():
            if self.shuffle:
                self._plan()
            for i in range(len(self.plan)):
                yield self[i]

        F = self.feats.shape[2]
        signature = (
            (tf.TensorSpec((None, F), tf.float32), tf.TensorSpec((None, None), tf.int32)),
            tf.TensorSpec((None, None), tf.int32),
        )
        dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
        # A known length lets Keras show progress and end epochs without probing for the end of the data.
        return dataset.apply(tf.data.experimental.assert_cardinality(len(self.plan))).prefetch(2)


class _DevScore(keras.callbacks.Callback):
    """After each epoch, caption the dev images with the NumPy step decoder and log dev_<metric> values."""

    def __init__(
        self, score_fn: ScoreFn, config: DecoderConfig, features: np.ndarray, names: list[str], monitor: str
    ):
        super().__init__()
        self.score_fn, self.config, self.features, self.names, self.monitor = (
            score_fn,
            config,
            features,
            names,
            monitor,
        )

    def on_epoch_end(self, epoch, logs=None):
        scores = self.score_fn(numpy_decoder_from_model(self.model, self.config), self.features, self.names)
        if logs is not None:
            logs.update({f"dev_{k}": float(v) for k, v in scores.items()})
        print(f"\nepoch {epoch + 1}: " + ", ".join(f"dev {k} {v:.4f}" for k, v in scores.items()), flush=True)
