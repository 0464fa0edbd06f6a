"""Self-critical sequence training (Rennie et al. 2017, "Self-critical Sequence Training for Image Captioning").

After cross-entropy training, the decoder is fine-tuned with REINFORCE on a sentence-level reward (CIDEr-D,
supplied by the caller as ``reward_fn``): for each image, ``samples`` captions are drawn from the model itself
and each is pushed up or down by how much its reward beats a baseline,

    loss = - sum_i (r(w_i) - b_i) * sum_t log p(w_i,t | w_i,<t, image) / number of tokens

with b_i the reward of the model's own greedy caption of the same image (the "self-critical" baseline of the
paper; ``baseline="mean"`` uses the mean reward of the image's other samples instead, Luo 2020). Sampling and the
greedy captions run through the NumPy step decoder on the current weights (no dropout); the log-probabilities
that get the gradient are computed by teacher forcing through the Keras model, by default with its training
dropout on, as reference implementations sample in training mode: measured on Flickr8k dev (greedy CIDEr over
one epoch), without dropout the policy fits the training references and dev CIDEr falls (0.455 -> 0.439 after
two epochs), with dropout it rises (0.453 -> 0.463 after one). ``dropout=False`` gives the exact estimator.

Resumable: after every epoch the weights, the optimiser state and the history are written under ``run_dir``;
a rerun continues after the last finished epoch. The best epoch by the dev score (``score_fn``) is kept.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from captioner.model.config import DecoderConfig, ScstConfig
from captioner.model.step import NumpyDecoder

log = logging.getLogger(__name__)

# reward_fn(captions as word-id arrays without start/end, image index into the training images) -> rewards [N]
RewardFn = Callable[[Sequence[np.ndarray], np.ndarray], np.ndarray]
# score_fn(decoder, dev features [N, F], dev names) -> {"CIDEr": ..., ...}, as in training.py
ScoreFn = Callable[[NumpyDecoder, np.ndarray, list[str]], dict[str, float]]


def rollout(
    decoder: NumpyDecoder,
    features: np.ndarray,
    start_id: int,
    end_id: int,
    banned_ids: Sequence[int],
    max_length: int,
    rng: np.random.Generator | None,
) -> list[np.ndarray]:
    """One caption per row of features [N, F]: drawn from the model (rng given) or greedy (rng None).

    Returns word-id arrays that end with ``end_id``, or, for a caption that had not ended after ``max_length``
    words, those words alone: never a forced ``end_id`` the model did not choose (its gradient would push
    ``<end>`` down exactly where captions run long, and captions would grow without bound: seen in training).
    banned_ids (pad, start, unk) are never drawn.
    """
    n = len(features)
    state = decoder.initial_state(features)
    tokens = np.full(n, start_id, dtype=np.int64)
    out = np.full((n, max_length + 1), -1, dtype=np.int64)
    done = np.zeros(n, dtype=bool)
    banned = np.asarray(list(banned_ids), dtype=np.int64)
    for t in range(max_length + 1):
        log_probs, state = decoder.step(tokens, state)
        log_probs[:, banned] = -np.inf
        if rng is None:
            tokens = log_probs.argmax(axis=1)
        else:  # Gumbel-max: an exact draw from softmax(log_probs), vectorised over rows
            tokens = (log_probs - np.log(-np.log(rng.random(log_probs.shape)))).argmax(axis=1)
        out[~done, t] = tokens[~done]
        done |= tokens == end_id
        if done.all():
            break
    return [
        row[: int(np.argmax(row == end_id)) + 1] if (row == end_id).any() else row[:max_length] for row in out
    ]


def teacher_forcing_batch(
    captions: Sequence[np.ndarray], start_id: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) int32 [N, T]: start + caption[:-1] -> caption, padded with pad_id."""
    width = max(len(c) for c in captions)
    inputs = np.full((len(captions), width), pad_id, dtype=np.int32)
    targets = np.full((len(captions), width), pad_id, dtype=np.int32)
    inputs[:, 0] = start_id
    for i, c in enumerate(captions):
        targets[i, : len(c)] = c
        inputs[i, 1 : len(c)] = c[:-1]
    return inputs, targets


def advantages(rewards: np.ndarray, greedy_rewards: np.ndarray | None, samples: int) -> np.ndarray:
    """rewards [B * samples] (image-major) minus their baseline: the greedy caption's reward of the same image,
    or (greedy_rewards None) the mean of the image's other samples."""
    r = rewards.reshape(-1, samples)
    if greedy_rewards is not None:
        base = greedy_rewards[:, None]
    else:
        base = (r.sum(axis=1, keepdims=True) - r) / (samples - 1)
    return (r - base).reshape(-1)


def scst(
    model: keras.Model,
    decoder_config: DecoderConfig,
    train_features: np.ndarray,
    reward_fn: RewardFn,
    special_ids: dict[str, int],
    run_dir: str | Path,
    config: ScstConfig = ScstConfig(),
    score_fn: ScoreFn | None = None,
    dev_features: np.ndarray | None = None,
    dev_names: list[str] | None = None,
    progress: bool = True,
) -> dict:
    """Fine-tune ``model`` (built by ``build_decoder``, cross-entropy weights loaded) in place; returns the summary.

    train_features: [N, F] or [N, K, F] (K views, e.g. image and mirrored image: one drawn per image per epoch).
    special_ids: {"pad", "start", "end", "unk"} token ids. With score_fn, the dev score after each epoch selects
    the best epoch (its weights are loaded into ``model`` at the end) and stops after ``patience`` epochs
    without improvement; monitored key "CIDEr".
    """
    import tensorflow as tf
    from tqdm import tqdm

    from captioner.model.training import numpy_decoder_from_model

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    feats = train_features if train_features.ndim == 3 else train_features[:, None, :]
    n_images = len(feats)
    start_id, end_id, pad_id = special_ids["start"], special_ids["end"], special_ids["pad"]
    banned = (pad_id, start_id, special_ids["unk"])
    optimizer = keras.optimizers.Adam(config.learning_rate, clipnorm=5.0)
    optimizer.build(model.trainable_variables)
    state_path = run_dir / "state.json"
    state: dict[str, Any] = {
        "epoch": 0,
        "best_epoch": 0,
        "best_score": None,
        "history": [],
        "config": config.to_dict(),
    }
    if state_path.is_file():
        state = json.loads(state_path.read_text())
        model.load_weights(str(run_dir / "last.weights.h5"))
        saved = np.load(run_dir / "optimizer.npz")
        for i, var in enumerate(optimizer.variables):
            var.assign(saved[f"v{i}"])
        log.info("SCST resumes after epoch %d", state["epoch"])
    elif score_fn is not None and dev_features is not None and dev_names is not None:
        scores = score_fn(numpy_decoder_from_model(model, decoder_config), dev_features, dev_names)
        state["history"].append({"epoch": 0, **{f"dev_{k}": v for k, v in scores.items()}})
        state["best_score"] = scores["CIDEr"]
        model.save_weights(str(run_dir / "best.weights.h5"))
        log.info("SCST starts from dev %s", scores)

    variables = model.trainable_variables

    @tf.function(reduce_retracing=True)
    def update(features, inputs, targets, adv):
        with tf.GradientTape() as tape:
            logits = model([features, inputs], training=config.dropout)
            log_probs = tf.nn.log_softmax(logits, axis=-1)
            token_lp = tf.gather(log_probs, targets, axis=2, batch_dims=2)
            mask = tf.cast(tf.not_equal(targets, pad_id), tf.float32)
            loss = -tf.reduce_sum(token_lp * mask * adv[:, None]) / tf.maximum(tf.reduce_sum(mask), 1.0)
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        return loss

    stale = state["epoch"] - state["best_epoch"]
    for epoch in range(state["epoch"] + 1, config.epochs + 1):
        if score_fn is not None and stale >= config.patience:
            log.info("SCST stops: no better dev score for %d epochs", stale)
            break
        rng = np.random.default_rng([config.seed, epoch])
        order = rng.permutation(n_images)
        views = rng.integers(feats.shape[1], size=n_images)
        start = time.perf_counter()
        sums = {"reward": 0.0, "greedy": 0.0, "loss": 0.0, "batches": 0}
        batches = range(0, n_images, config.batch_images)
        for s in tqdm(batches, disable=not progress, desc=f"scst epoch {epoch}", unit="batch"):
            idx = order[s : s + config.batch_images]
            f = feats[idx, views[idx]].astype(np.float32)
            decoder = numpy_decoder_from_model(model, decoder_config)
            f_rep = np.repeat(f, config.samples, axis=0)
            idx_rep = np.repeat(idx, config.samples)
            sampled = rollout(decoder, f_rep, start_id, end_id, banned, config.max_length, rng)
            rewards = reward_fn([c[c != end_id] for c in sampled], idx_rep)
            greedy_rewards = None
            if config.baseline == "greedy":
                greedy = rollout(decoder, f, start_id, end_id, banned, config.max_length, None)
                greedy_rewards = reward_fn([c[c != end_id] for c in greedy], idx)
                sums["greedy"] += float(greedy_rewards.mean())
            adv = advantages(rewards, greedy_rewards, config.samples).astype(np.float32)
            inputs, targets = teacher_forcing_batch(sampled, start_id, pad_id)
            loss = update(f_rep, inputs, targets, adv)
            sums["reward"] += float(rewards.mean())
            sums["loss"] += float(loss)
            sums["batches"] += 1
        k = max(sums["batches"], 1)
        record = {
            "epoch": epoch,
            "seconds": round(time.perf_counter() - start, 1),
            "sample_reward": sums["reward"] / k,
            "greedy_reward": sums["greedy"] / k if config.baseline == "greedy" else None,
            "loss": sums["loss"] / k,
        }
        model.save_weights(str(run_dir / "last.weights.h5"))
        if score_fn is not None and dev_features is not None and dev_names is not None:
            scores = score_fn(numpy_decoder_from_model(model, decoder_config), dev_features, dev_names)
            record.update({f"dev_{k}": v for k, v in scores.items()})
            if state["best_score"] is None or scores["CIDEr"] > state["best_score"]:
                state["best_score"], state["best_epoch"] = scores["CIDEr"], epoch
                model.save_weights(str(run_dir / "best.weights.h5"))
        else:
            state["best_epoch"] = epoch
            model.save_weights(str(run_dir / "best.weights.h5"))
        stale = epoch - state["best_epoch"]
        np.savez(run_dir / "optimizer.npz", **{f"v{i}": v.numpy() for i, v in enumerate(optimizer.variables)})
        state["epoch"] = epoch
        state["history"].append(record)
        state_path.write_text(json.dumps(state, indent=1))  # last: a crash before it redoes the epoch
        print(f"scst epoch {epoch}: " + ", ".join(f"{k} {v}" for k, v in record.items()), flush=True)
    model.load_weights(str(run_dir / "best.weights.h5"))
    return state
