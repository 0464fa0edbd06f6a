"""Training on cached features: run folder contents, learning, reproducibility, resume and model selection."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from captioner.data.flickr8k import Flickr8k
from captioner.data.vocabulary import Vocabulary
from captioner.decode.captioner import Captioner
from captioner.decode.options import DecodeOptions
from captioner.model.config import TrainConfig
from captioner.model.training import numpy_decoder_from_model, train

# Each image's caption is fully determined by its one-hot feature vector: a task a tiny decoder can learn.
TOY = {
    "img0.jpg": "a dog runs on the grass",
    "img1.jpg": "a cat sits on a mat",
    "img2.jpg": "two birds fly over water",
    "img3.jpg": "the man rides a red bike",
}
NAMES = list(TOY)
FAST = dict(epochs=2, batch_size=4, hidden_dim=16, embed_dim=8, min_count=1, max_length=8)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Flickr8k:
    root = tmp_path_factory.mktemp("flickr")
    image_dir = root / "Images"
    image_dir.mkdir()
    for name in NAMES:
        (image_dir / name).write_bytes(b"\xff\xd8\xff not decoded: training reads cached features only")
    return Flickr8k(
        root=root,
        image_dir=image_dir,
        captions={n: [c] * 5 for n, c in TOY.items()},  # 5 identical references, like Flickr8k's count
        splits={"train": NAMES, "dev": NAMES[:2], "test": []},
    )


@pytest.fixture(scope="module")
def features() -> dict[str, np.ndarray]:
    return {n: np.eye(len(NAMES), dtype=np.float32)[i] * 3 for i, n in enumerate(NAMES)}


def read_history(run_dir) -> list[dict[str, str]]:
    with open(run_dir / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def fast_run(dataset, features, tmp_path_factory):
    """(model, result) of a 2-epoch run with the default seed."""
    run_dir = tmp_path_factory.mktemp("fast_run")
    return train(dataset, features, run_dir, TrainConfig(**FAST), progress=False)


def test_run_folder_holds_everything(fast_run):
    model, result = fast_run
    tmp_path = result.run_dir
    config = json.loads((tmp_path / "run_config.json").read_text())
    assert config["train"]["epochs"] == 2 and config["train"]["hidden_dim"] == 16
    assert config["decoder"] == result.decoder_config.to_dict()
    assert result.decoder_config.feature_size == len(NAMES) and result.decoder_config.hidden_dim == 16
    vocab = Vocabulary.load(tmp_path / "vocabulary.json")
    assert vocab == result.vocabulary and "bike" in vocab and len(vocab) == result.decoder_config.vocab_size
    assert (tmp_path / "checkpoints" / "best.weights.h5").is_file()
    assert (tmp_path / "checkpoints" / "last.weights.h5").is_file()
    history = read_history(tmp_path)
    assert [row["epoch"] for row in history] == ["0", "1"]
    assert {"loss", "val_loss"} <= history[0].keys()
    assert json.loads((tmp_path / "result.json").read_text())["best_epoch"] == result.best_epoch
    assert 1 <= result.best_epoch <= 2 and "val_loss" in result.best_scores


def test_learns_a_learnable_task(dataset, features, tmp_path):
    config = TrainConfig(**dict(FAST, epochs=15, dropout=0.0, learning_rate=0.03, patience=15))
    model, result = train(dataset, features, tmp_path, config, progress=False)
    losses = [float(row["loss"]) for row in read_history(tmp_path)]
    assert losses[-1] < 0.2 * losses[0], losses
    captioner = Captioner(None, numpy_decoder_from_model(model, result.decoder_config), result.vocabulary)
    feats = np.stack([features[n] for n in NAMES])
    captions = [
        r.caption for r in captioner.decode_features(feats, DecodeOptions(strategy="greedy", max_length=8))
    ]
    assert captions == [TOY[n] for n in NAMES]


def test_same_seed_same_weights(dataset, features, tmp_path, fast_run):
    first = fast_run[0].get_weights()
    again, _ = train(dataset, features, tmp_path / "same", TrainConfig(**FAST), progress=False)
    for a, b in zip(first, again.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    other, _ = train(dataset, features, tmp_path / "other", TrainConfig(**FAST, seed=8), progress=False)
    assert any(not np.allclose(a, b) for a, b in zip(first, other.get_weights(), strict=True))


def test_existing_vocabulary_is_kept(dataset, features, tmp_path):
    """Resuming a run must not rebuild the vocabulary under its checkpoint."""
    kept = Vocabulary(["zebra", "dog", "runs", "grass"])
    kept.save(tmp_path / "vocabulary.json")
    _, result = train(dataset, features, tmp_path, TrainConfig(**dict(FAST, epochs=1)), progress=False)
    assert result.vocabulary == kept
    assert Vocabulary.load(tmp_path / "vocabulary.json") == kept
    assert result.decoder_config.vocab_size == len(kept)


def test_score_fn_selects_the_best_epoch(dataset, features, tmp_path):
    cider = iter([0.1, 0.9, 0.3, 0.2])
    seen = []

    def score_fn(decoder, dev_features, dev_names):
        assert dev_names == NAMES[:2] and dev_features.shape == (2, len(NAMES))
        seen.append({k: v.copy() for k, v in decoder.w.items()})
        return {"CIDEr": next(cider), "BLEU-4": 0.05}

    config = TrainConfig(**dict(FAST, epochs=4, patience=10))
    model, result = train(dataset, features, tmp_path, config, score_fn=score_fn, progress=False)
    assert len(seen) == 4
    assert result.best_epoch == 2
    assert result.best_scores["dev_CIDEr"] == pytest.approx(0.9)
    history = read_history(tmp_path)
    assert [float(row["dev_CIDEr"]) for row in history] == pytest.approx([0.1, 0.9, 0.3, 0.2])
    # The returned model holds the weights of epoch 2, not of the last epoch.
    best = numpy_decoder_from_model(model, result.decoder_config).w
    for name, value in seen[1].items():
        np.testing.assert_array_equal(best[name], value, err_msg=name)
    assert not np.array_equal(best["logits/kernel"], seen[3]["logits/kernel"])


def test_augmented_views_are_drawn_at_random_per_caption():
    from captioner.model.training import LengthBuckets

    feats = np.stack([np.stack([np.full(3, 10 * i), np.full(3, 10 * i + 1)]) for i in range(4)]).astype(
        np.float32
    )
    targets = np.array([[5, 2, 0]] * 40, np.int32)
    data = LengthBuckets(feats, np.arange(40, dtype=np.int32) % 4, targets, targets, 8, shuffle=True, seed=0)
    seen = set()
    for i in range(len(data)):
        (x_feats, _), _ = data[i]
        seen |= {int(v) % 10 for v in x_feats[:, 0]}
    assert seen == {0, 1}  # both the image and its mirrored view are used
    dev = LengthBuckets(
        feats[:, :1], np.arange(40, dtype=np.int32) % 4, targets, targets, 8, shuffle=False, seed=0
    )
    assert all(int(v) % 10 == 0 for i in range(len(dev)) for v in dev[i][0][0][:, 0])


def test_trains_with_mirrored_views(dataset, features, tmp_path):
    views = {n: np.stack([f, f[::-1]]) for n, f in features.items()}
    _, result = train(dataset, views, tmp_path, TrainConfig(**FAST, flip_augment=True), progress=False)
    assert result.decoder_config.feature_size == len(NAMES) and "val_loss" in result.best_scores


def test_a_finished_run_is_reused_and_a_changed_one_is_not(dataset, features, tmp_path):
    """Rerunning the train command after its cross-entropy stage finished goes straight on (e.g. to SCST)."""
    first, done = train(dataset, features, tmp_path, TrainConfig(**FAST), progress=False)
    rows = len(read_history(tmp_path))
    again, reused = train(dataset, features, tmp_path, TrainConfig(**FAST, scst_epochs=3), progress=False)
    assert len(read_history(tmp_path)) == rows  # no epoch was trained again
    assert reused.best_epoch == done.best_epoch and reused.best_scores == done.best_scores
    for a, b in zip(first.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    train(dataset, features, tmp_path, TrainConfig(**dict(FAST, epochs=3)), progress=False)
    assert len(read_history(tmp_path)) > rows  # a different cross-entropy recipe trains


def test_the_scst_stage_trains_on_the_photos_it_is_given(dataset, features, tmp_path, monkeypatch):
    """pipeline.self_critical_stage on held-out photos (scripts/experiments/scst_holdout.py): the cross-entropy
    stage saw the first two training photos; SCST gets the other two, their features, a reward against their own
    references, and the folder it is given. (scst itself is replaced here: this tests the stage's wiring.)"""
    import captioner.model.scst as scst_module
    from captioner.pipeline import self_critical_stage

    # Held-out captions made of the words the first two photos' captions teach (the vocabulary's).
    captions = ["a dog runs fast", "a cat sits still", "a dog sits still", "a cat runs fast"]
    toy = dict(zip(NAMES, captions, strict=True))
    dataset = Flickr8k(
        root=dataset.root,
        image_dir=dataset.image_dir,
        captions={n: [c] * 5 for n, c in toy.items()},
        splits={"train": NAMES, "dev": NAMES[:2], "test": []},
    )
    config = TrainConfig(**FAST, limit_images=2, scst_epochs=1)
    model, result = train(dataset, features, tmp_path / "run", config, progress=False)
    seen = {}

    def fake_scst(model, decoder_config, train_features, reward_fn, special, run_dir, *args):
        seen.update(features=train_features, reward=reward_fn, run_dir=run_dir)
        return {"best_epoch": 0, "epoch": 0, "history": []}

    monkeypatch.setattr(scst_module, "scst", fake_scst)
    held_out = NAMES[2:]
    out = tmp_path / "scst"
    self_critical_stage(
        dataset, features, model, result, tmp_path / "run", config, None, False, held_out, out
    )
    assert seen["run_dir"] == out
    np.testing.assert_array_equal(seen["features"][:, 0], np.stack([features[n] for n in held_out]))
    vocab = result.vocabulary
    own = [np.array(vocab.encode(toy[n])) for n in held_out]
    rewards = seen["reward"](own + own[::-1], np.array([0, 1, 0, 1]))
    assert (
        rewards[0] > rewards[2] and rewards[1] > rewards[3]
    )  # each photo's own caption scores, the other's not
    # Without names: the cross-entropy stage's photos.
    self_critical_stage(dataset, features, model, result, tmp_path / "run", config, None, False)
    np.testing.assert_array_equal(seen["features"][:, 0], np.stack([features[n] for n in NAMES[:2]]))
    assert seen["run_dir"] == tmp_path / "run" / "scst"
