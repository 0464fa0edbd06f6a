"""Constrained beam search driven by fake step functions: exact answers by brute force."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest

from captioner.decode.constraint import constrained_search
from captioner.decode.options import DecodeOptions
from captioner.decode.search import Hypothesis, beam_search, search
from fake_steps import END, START, HistoryStep, opts


def run(fake, images, options, constraints, **kwargs):
    return constrained_search(fake, fake.initial_state(images), options, START, END, constraints, **kwargs)


OPTIONS = [
    opts(beam_size=3, max_length=6),
    opts(beam_size=4, max_length=7, n_best=3, length_penalty=0.7),
    opts(beam_size=2, max_length=5, n_best=2, length_penalty=2.0, no_repeat_ngram=2),
    opts(beam_size=1, max_length=6),
    opts(strategy="greedy", max_length=6),
]


@pytest.mark.parametrize("options", OPTIONS + [replace(o, exact_stop=False) for o in OPTIONS[1:3]])
@pytest.mark.parametrize("banned", [(), (4,)])
def test_images_without_a_constraint_get_exactly_the_plain_search(options, banned):
    # keep_named=False: every image, constrained or not, goes through the two-beam search in the same step calls.
    fake = HistoryStep(vocab=9, max_length=options.max_length, seed=3)
    constraints = [None, {5}, None, {6, 7}, None]
    got = run(fake, list(range(5)), options, constraints, banned=banned, no_repeat_ngram=options.no_repeat_ngram,
              keep_named=False)  # fmt: skip
    plain = search(fake, fake.initial_state(list(range(5))), options, START, END, banned=banned,
                   no_repeat_ngram=options.no_repeat_ngram)  # fmt: skip
    for image in (0, 2, 4):
        assert got[image] == plain[image]
    # ... and the constrained ones are decoded in the same step calls (never more rows than both beams).
    width = 1 if options.strategy == "greedy" else options.beam_size
    assert max(fake.calls) <= (3 + 2 * 2) * width


@pytest.mark.parametrize("options", OPTIONS[:3])
def test_no_constraint_at_all_is_the_plain_search(options):
    fake = HistoryStep(vocab=8, max_length=options.max_length, seed=1)
    got = run(fake, [0, 1], options, [None, set()])
    assert got == beam_search(fake, fake.initial_state([0, 1]), options, START, END)


@pytest.mark.parametrize("keep_named", [True, False])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("options", OPTIONS)
def test_the_word_appears_in_every_caption_even_when_the_model_avoids_it(seed, options, keep_named):
    rare = (5, 6, 7)  # logit -8 where the others are N(0, 2): a plain search never says them
    fake = HistoryStep(vocab=10, max_length=options.max_length, seed=seed, rare=rare)
    constraints = [{5}, {6, 7}, {7, 8}, {3}]
    results = run(
        fake,
        [0, 1, 2, 3],
        options,
        constraints,
        no_repeat_ngram=options.no_repeat_ngram,
        keep_named=keep_named,
    )
    images = fake.initial_state([0, 1, 2, 3])
    plain = search(fake, images, options, START, END, no_repeat_ngram=options.no_repeat_ngram)
    assert not any(set(h.tokens) & {5, 6, 7} for hyps in plain[:2] for h in hyps)  # the fake does avoid them
    for image, (hyps, words) in enumerate(zip(results, constraints, strict=True)):
        assert 1 <= len(hyps) <= options.n_best
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
        if keep_named and set(plain[image][0].tokens) & words:
            assert hyps == plain[image]  # already named: the plain search's captions, all of them
        # Otherwise every caption holds a word of the set (only met hypotheses are kept).
        for h in hyps if not keep_named or hyps != plain[image] else hyps[:1]:
            assert set(h.tokens) & words, (image, h)
            assert START not in h.tokens and END not in h.tokens
            assert h.log_prob == pytest.approx(fake.log_prob(image, h.tokens, h.finished), abs=1e-9)
            length = len(h.tokens) + int(h.finished)
            assert h.score == pytest.approx(h.log_prob / length**options.length_penalty, rel=1e-12)


def brute_force_with_word(fake, image: int, words: set[int], vocab: int, options: DecodeOptions):
    """Every finished caption of fewer than max_length words that holds a word of ``words``, best first."""
    alphabet = [w for w in range(vocab) if w not in (START, END)]
    out = []
    for n in range(1, options.max_length):
        for tokens in itertools.product(alphabet, repeat=n):
            if set(tokens) & words:
                lp = fake.log_prob(image, tokens, True)
                out.append(Hypothesis(tokens, lp, lp / (n + 1) ** options.length_penalty, True))
    return sorted(out, key=lambda h: -h.score)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("alpha", [0.0, 0.7, 2.0])
@pytest.mark.parametrize(("vocab", "words"), [(6, {4}), (6, {2, 5}), (5, {3})])
def test_a_wide_beam_finds_the_best_caption_that_holds_the_word(seed, alpha, vocab, words):
    # 3-4 words and captions of at most 2 words (the fake ends every caption there): each beam of 10 holds every
    # prefix, so the search is exhaustive and must return the brute-force optimum, in order.
    max_length = 3
    fake = HistoryStep(vocab, max_length, seed, end_at=2)
    options = opts(beam_size=10, max_length=max_length, length_penalty=alpha, n_best=5)
    (got,) = run(fake, [0], options, [words], keep_named=False)
    expected = brute_force_with_word(fake, 0, words, vocab, options)[:5]
    assert [h.tokens for h in got] == [h.tokens for h in expected]
    assert [h.score for h in got] == pytest.approx([h.score for h in expected], rel=1e-9)


def test_a_narrow_beam_still_holds_the_word_and_scores_no_better_than_the_optimum():
    fake = HistoryStep(7, 4, seed=9, end_at=3)
    options = opts(beam_size=2, max_length=4, length_penalty=0.7)
    (got,) = run(fake, [0], options, [{6}], keep_named=False)
    best = brute_force_with_word(fake, 0, {6}, 7, options)[0]
    assert 6 in got[0].tokens and got[0].score <= best.score + 1e-9


@pytest.mark.parametrize("options", OPTIONS[:3])
def test_an_impossible_word_falls_back_to_the_plain_search(options):
    fake = HistoryStep(vocab=8, max_length=options.max_length, seed=2)
    images = [0, 1, 2]
    # 6 banned, 1 the end token, 0 the start token: nothing of these sets can be shown.
    got = run(fake, images, options, [{6}, {END, START}, {5}], banned=(6,))
    plain = search(fake, fake.initial_state(images), options, START, END, banned=(6,))
    assert got[0] == plain[0] and got[1] == plain[1]
    assert 5 in got[2][0].tokens


def test_a_word_that_never_fits_before_max_length_falls_back():
    # The fake ends every caption after 1 word; word 4 is -inf at the first position: no met caption can finish.
    class NoFirst(HistoryStep):
        def row(self, image, history):
            out = super().row(image, history)
            if len(history) == 1:
                out = out.copy()
                out[4] = -np.inf
            return out

    fake = NoFirst(vocab=7, max_length=4, seed=0, end_at=1)
    options = opts(beam_size=3, max_length=4)
    (got,) = run(fake, [0], options, [{4}])
    assert got == beam_search(fake, fake.initial_state([0]), options, START, END)[0]


def with_topk(fake):
    """The fake as step_with_topk (each row's best ranked by a stable sort, as onnxruntime's TopK ranks them)."""
    calls = []

    def step_with_topk(tokens, state, k):
        log_probs, new_state = fake(tokens, state)
        calls.append(k)
        ids = np.argsort(-log_probs, axis=1, kind="stable")[:, :k]
        return log_probs, np.take_along_axis(log_probs, ids, axis=1), ids, new_state

    return step_with_topk, calls


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("keep_named", [True, False])
def test_a_step_that_ranks_its_rows_gives_the_same_captions(options, keep_named):
    fake = HistoryStep(vocab=10, max_length=options.max_length, seed=6, rare=(5, 6))
    constraints = [None, {5}, {6, 2}, {3}]
    kwargs = dict(banned=(4,), no_repeat_ngram=options.no_repeat_ngram, keep_named=keep_named)
    want = run(fake, [0, 1, 2, 3], options, constraints, **kwargs)
    step_with_topk, calls = with_topk(fake)
    assert run(fake, [0, 1, 2, 3], options, constraints, step_with_topk=step_with_topk, **kwargs) == want
    assert calls  # it was used, not the plain step


@pytest.mark.parametrize("options", OPTIONS)
def test_a_hopeless_constrained_search_stops_early_and_changes_nothing(options):
    # With max_score_drop each constrained search stops once it cannot come within its drop of the plain score:
    # the same captions as searching to the end and then comparing, in fewer rows (with the exact stop of OPTIONS;
    # the default stop bounds the floor as loosely as it bounds the search).
    rows = {"bounded": 0, "unbounded": 0}
    for seed in range(4):
        fake = HistoryStep(vocab=10, max_length=options.max_length, seed=seed, rare=(5, 6, 7))
        images = list(range(6))
        constraints = [{5}, None, {6, 7}, {5, 2}, {7}, {6}]
        drops = [0.5, 0.5, 3.0, 0.1, math.inf, 0.0]
        kwargs = dict(no_repeat_ngram=options.no_repeat_ngram)
        plain = search(fake, fake.initial_state(images), options, START, END, **kwargs)
        fake.calls.clear()
        unbounded = run(fake, images, options, constraints, **kwargs)
        rows["unbounded"] += sum(fake.calls)
        fake.calls.clear()
        got = run(fake, images, options, constraints, max_score_drop=drops, **kwargs)
        rows["bounded"] += sum(fake.calls)
        for i, drop in enumerate(drops):
            within = not unbounded[i] or plain[i][0].score - unbounded[i][0].score <= drop
            assert got[i] == (unbounded[i] if within else plain[i])
        assert got != unbounded and got != plain  # the drops decide here
    assert rows["bounded"] <= rows["unbounded"]
    if (
        options.length_penalty <= 1
    ):  # with alpha 2 the bound on future scores (max_length**2) is too loose to stop
        assert rows["bounded"] < rows["unbounded"]


def test_one_constraint_per_image():
    fake = HistoryStep(vocab=6, max_length=4)
    with pytest.raises(ValueError, match="one per image"):
        run(fake, [0, 1], opts(), [{3}])


def test_a_named_caption_replaces_the_plain_one_only_within_the_allowed_score_drop():
    fake = HistoryStep(vocab=10, max_length=6, seed=5, rare=(5,))
    options = opts(beam_size=3, max_length=6, length_penalty=0.7)
    images = [0, 1, 2]
    plain = search(fake, fake.initial_state(images), options, START, END)
    named = run(fake, images, options, [{5}] * 3)
    drops = [p[0].score - n[0].score for p, n in zip(plain, named, strict=True)]
    assert all(d > 0 for d in drops)  # the rare word costs score
    allowed = [drops[0] + 1e-9, drops[1] - 1e-9, float("inf")]
    got = run(fake, images, options, [{5}] * 3, max_score_drop=allowed)
    assert got == [named[0], plain[1], named[2]]
    with pytest.raises(ValueError, match="max_score_drop"):
        run(fake, images, options, [{5}] * 3, max_score_drop=[1.0])


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("label_constraint", "yes"),
        ("label_constraint_min_prob", 0.0),
        ("label_constraint_min_prob", 1.5),
        ("label_constraint_min_prob", True),
        ("label_constraint_always_prob", -0.1),
        ("label_constraint_max_score_drop", -1.0),
        ("label_constraint_max_score_drop", 11.0),
    ],
)
def test_label_constraint_options_are_validated(name, bad):
    from captioner.errors import OptionsError

    with pytest.raises(OptionsError, match=name):
        DecodeOptions(**{name: bad})
    assert (
        DecodeOptions(label_constraint=False, label_constraint_min_prob=1.0).to_dict()["label_constraint"]
        is False
    )
