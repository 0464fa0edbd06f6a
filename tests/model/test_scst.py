"""Self-critical training: sampling, baselines, the update's direction, and resuming."""

from __future__ import annotations

import json

import numpy as np
import pytest

from captioner.model.config import DecoderConfig, ScstConfig
from captioner.model.scst import advantages, rollout, scst, teacher_forcing_batch

START, END, PAD, UNK = 1, 2, 0, 3


class ChainDecoder:
    """Fake step decoder: the next-token distribution depends only on the previous token (a Markov chain)."""

    def __init__(self, table: np.ndarray):
        with np.errstate(divide="ignore"):  # zero-probability tokens: -inf
            self.table = np.log(table / table.sum(axis=1, keepdims=True)).astype(np.float32)
        self.vocab_size = table.shape[1]

    def initial_state(self, features):
        return (np.zeros((len(features), 1), np.float32),)

    def step(self, tokens, state):
        return self.table[tokens].copy(), state


def _table(v: int = 6) -> np.ndarray:
    t = np.full((v, v), 1.0)
    t[START] = [0, 0, 1, 5, 3, 1]  # after <start>: <unk> most probable (banned), then 4, then <end> and 5
    t[4] = [0, 0, 1, 0, 0, 2]
    t[5] = [0, 0, 3, 0, 1, 0]
    return t


def test_greedy_rollout_follows_the_most_probable_allowed_token():
    d = ChainDecoder(_table())
    (cap,) = rollout(d, np.zeros((1, 2)), START, END, (PAD, START, UNK), 10, None)
    assert cap.tolist() == [4, 5, END]  # <unk> (most probable first token) is never chosen


def test_sampling_draws_from_the_model_distribution_and_never_a_banned_token():
    d = ChainDecoder(_table())
    caps = rollout(d, np.zeros((20000, 2)), START, END, (PAD, START, UNK), 10, np.random.default_rng(0))
    first = np.array([c[0] for c in caps])
    assert not np.isin(first, [PAD, START, UNK]).any()
    allowed = np.array([0, 0, 1, 0, 3, 1], float)
    freq = np.bincount(first, minlength=6) / len(first)
    np.testing.assert_allclose(freq, allowed / allowed.sum(), atol=0.015)
    ended = [c[-1] == END and (c[:-1] != END).all() for c in caps]
    assert all(e or (len(c) == 10 and END not in c) for e, c in zip(ended, caps, strict=True))
    assert np.mean(ended) > 0.9


def test_a_caption_that_never_ends_is_cut_at_max_length_without_a_forced_end():
    t = np.full((6, 6), 1.0)
    t[:, END] = 1e-9
    caps = rollout(ChainDecoder(t), np.zeros((3, 2)), START, END, (PAD, START, UNK), 4, None)
    assert [len(c) for c in caps] == [4, 4, 4] and not any(END in c for c in caps)
    t = np.full((6, 6), 1e-9)
    t[START, 5] = t[5, END] = 1.0  # one word, then <end>: allowed after max_length words
    (cap,) = rollout(ChainDecoder(t), np.zeros((1, 2)), START, END, (PAD, START, UNK), 1, None)
    assert cap.tolist() == [5, END]


def test_advantages_against_greedy_and_against_the_other_samples():
    r = np.array([1.0, 2.0, 3.0, 0.0, 0.0, 6.0])  # two images, three samples each
    np.testing.assert_allclose(advantages(r, np.array([2.0, 1.0]), 3), [-1, 0, 1, -1, -1, 5])
    mean = advantages(r, None, 3)
    np.testing.assert_allclose(mean, [-1.5, 0, 1.5, -3, -3, 6])
    np.testing.assert_allclose(mean.reshape(2, 3).sum(axis=1), 0)


def test_teacher_forcing_batch_shifts_by_one_and_pads():
    inputs, targets = teacher_forcing_batch([np.array([7, 8, END]), np.array([END])], START, PAD)
    assert inputs.tolist() == [[START, 7, 8], [START, PAD, PAD]]
    assert targets.tolist() == [[7, 8, END], [END, PAD, PAD]]


REWARDED = 5  # the toy reward: the share of a caption's words that are this word


def _reward(captions, image_index):
    return np.array([float(np.mean(c == REWARDED)) if len(c) else 0.0 for c in captions])


@pytest.fixture(scope="module")
def tiny():
    import keras

    from captioner.model.decoder import build_decoder

    keras.utils.set_random_seed(0)
    config = DecoderConfig(vocab_size=8, feature_size=4, embed_dim=8, hidden_dim=16, max_length=6)
    features = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    return config, build_decoder, features


SPECIAL = {"pad": PAD, "start": START, "end": END, "unk": UNK}


def test_training_raises_the_reward_of_the_model_own_samples(tiny, tmp_path):
    config, build, features = tiny
    model = build(config)
    conf = ScstConfig(epochs=12, batch_images=8, samples=4, learning_rate=3e-2, max_length=5, baseline="mean")
    state = scst(model, config, features, _reward, SPECIAL, tmp_path, conf, progress=False)
    rewards = [r["sample_reward"] for r in state["history"]]
    assert np.mean(rewards[-3:]) > rewards[0] + 0.2
    from captioner.model.training import numpy_decoder_from_model

    greedy = rollout(
        numpy_decoder_from_model(model, config), features, START, END, (PAD, START, UNK), 5, None
    )
    assert np.mean([REWARDED in c for c in greedy]) > 0.5


def test_greedy_baseline_runs_and_logs_its_reward(tiny, tmp_path):
    config, build, features = tiny
    conf = ScstConfig(epochs=1, batch_images=8, samples=2, max_length=5, baseline="greedy")
    state = scst(build(config), config, features, _reward, SPECIAL, tmp_path, conf, progress=False)
    assert state["history"][-1]["greedy_reward"] is not None


def test_a_rerun_resumes_after_the_last_finished_epoch(tiny, tmp_path):
    config, build, features = tiny
    one = ScstConfig(epochs=1, batch_images=8, samples=2, max_length=5, baseline="mean")
    model = build(config)
    scst(model, config, features, _reward, SPECIAL, tmp_path, one, progress=False)
    after_one = [w.copy() for w in model.get_weights()]
    two = ScstConfig(epochs=2, batch_images=8, samples=2, max_length=5, baseline="mean")
    fresh = build(config)  # as a new process would: the resumed run loads the saved weights and optimiser
    state = scst(fresh, config, features, _reward, SPECIAL, tmp_path, two, progress=False)
    assert [r["epoch"] for r in state["history"]] == [1, 2]
    assert json.loads((tmp_path / "state.json").read_text())["epoch"] == 2
    assert any(not np.allclose(a, b) for a, b in zip(after_one, fresh.get_weights(), strict=True))
    again = scst(build(config), config, features, _reward, SPECIAL, tmp_path, two, progress=False)
    assert [r["epoch"] for r in again["history"]] == [1, 2]  # nothing left to do


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match="baseline"):
        ScstConfig(baseline="best")
    with pytest.raises(ValueError, match="samples >= 2"):
        ScstConfig(baseline="mean", samples=1)
    with pytest.raises(ValueError, match="learning_rate"):
        ScstConfig(learning_rate=0)
