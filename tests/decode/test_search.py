"""Search strategies driven by fake step functions: no model, exact answers by brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from captioner.decode.options import DecodeOptions
from captioner.decode.search import Hypothesis, beam_search, greedy_search, search, topk_rows
from captioner.errors import OptionsError
from fake_steps import END, START, log_softmax, opts
from fake_steps import HistoryStep as _HistoryStep


def markov_tables(seed: int, n_images: int, vocab: int) -> np.ndarray:
    """[images, previous token, next token] log-probs; the start token is never generated."""
    logits = np.random.default_rng(seed).normal(scale=2.0, size=(n_images, vocab, vocab))
    logits[..., START] = -np.inf
    return log_softmax(logits)


class MarkovStep:
    """log_probs[row] = tables[image of row, previous token]; the state carries each row's image index."""

    def __init__(self, tables: np.ndarray) -> None:
        self.tables = tables
        self.calls: list[int] = []  # rows per call

    def initial_state(self, images: list[int]) -> tuple[np.ndarray, ...]:
        return (np.asarray(images, dtype=np.int64),)

    def __call__(self, tokens, state):
        (image,) = state
        assert tokens.dtype == np.int64 and tokens.shape == image.shape
        self.calls.append(len(tokens))
        return self.tables[image, tokens], state

    def log_prob(self, image: int, tokens: tuple[int, ...], finished: bool) -> float:
        seq = [START, *tokens, END]
        total = 0.0  # same order and precision as the search, so the sums match exactly
        for t in range(len(tokens) + int(finished)):
            total += float(self.tables[image, seq[t], seq[t + 1]])
        return total


def HistoryStep(vocab: int, max_length: int, seed: int = 0) -> _HistoryStep:  # noqa: N802 - the fake's name
    """fake_steps.HistoryStep, checking that its calls are one search's."""
    return _HistoryStep(vocab, max_length, seed, one_search=True)


def brute_force(fake, image: int, vocab: int, options: DecodeOptions) -> list[Hypothesis]:
    """Every caption the search could return, best first: finished ones under max_length words, cut ones at it."""
    words = [w for w in range(vocab) if w not in (START, END)]
    alpha = options.length_penalty
    out = []
    for n in range(options.max_length + 1):
        finished = n < options.max_length
        for tokens in itertools.product(words, repeat=n):
            lp = fake.log_prob(image, tokens, finished)
            length = n + int(finished)
            out.append(Hypothesis(tokens, lp, lp / length**alpha, finished))
    return sorted(out, key=lambda h: -h.score)


def run(strategy, fake, images: list[int], options: DecodeOptions):
    return strategy(fake, fake.initial_state(images), options, START, END)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("alpha", [0.0, 0.7, 2.0])
@pytest.mark.parametrize(("vocab", "max_length"), [(4, 4), (5, 3)])
def test_wide_beam_finds_the_brute_force_optimum(seed, alpha, vocab, max_length):
    # 2 words and 4 steps (or 3 words and 3 steps): the beam of 10 holds every live prefix but the
    # last, where a cut costs nothing because all last-step candidates have the same length.
    fake = HistoryStep(vocab, max_length, seed)
    options = opts("beam", beam_size=10, max_length=max_length, length_penalty=alpha, n_best=10)
    (got,) = run(beam_search, fake, [0], options)
    expected = brute_force(fake, 0, vocab, options)[:10]
    assert [h.tokens for h in got] == [h.tokens for h in expected]
    assert [h.finished for h in got] == [h.finished for h in expected]
    assert [h.score for h in got] == pytest.approx([h.score for h in expected], rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_greedy_is_stepwise_argmax(seed):
    tables = markov_tables(seed, n_images=3, vocab=6)
    fake = MarkovStep(tables)
    options = opts("greedy", max_length=8)
    got = run(greedy_search, fake, [0, 1, 2], options)
    for image in range(3):
        tokens, prev, lp = [], START, 0.0
        while len(tokens) < options.max_length:
            nxt = int(np.argmax(tables[image, prev]))
            lp += float(tables[image, prev, nxt])
            if nxt == END:
                break
            tokens.append(nxt)
            prev = nxt
        finished = nxt == END
        assert got[image] == [Hypothesis(tuple(tokens), lp, lp, finished)]


@pytest.mark.parametrize("seed", range(6))
def test_beam_of_one_equals_greedy(seed):
    fake = MarkovStep(markov_tables(seed, n_images=4, vocab=7))
    greedy = run(greedy_search, fake, [0, 1, 2, 3], opts("greedy", max_length=10))
    beam = run(beam_search, fake, [0, 1, 2, 3], opts("beam", beam_size=1, max_length=10))
    assert beam == greedy


@pytest.mark.parametrize("alpha", [0.0, 1.0])
@pytest.mark.parametrize("fake_kind", ["markov", "history"])
def test_batched_equals_one_image_at_a_time(fake_kind, alpha):
    def make():
        if fake_kind == "markov":
            return MarkovStep(markov_tables(5, n_images=4, vocab=6))
        return HistoryStep(vocab=6, max_length=6, seed=5)

    for strategy, options in [
        (greedy_search, opts("greedy", max_length=6, length_penalty=alpha)),
        (beam_search, opts("beam", beam_size=4, max_length=6, length_penalty=alpha, n_best=3)),
    ]:
        batched = run(strategy, make(), [0, 1, 2, 3], options)
        single = [run(strategy, make(), [i], options)[0] for i in range(4)]
        assert batched == single


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_n_best_are_distinct_sorted_and_their_log_probs_replay(alpha):
    fake = HistoryStep(vocab=8, max_length=7, seed=11)
    options = opts("beam", beam_size=6, max_length=7, length_penalty=alpha, n_best=6)
    results = run(beam_search, fake, [0, 1, 2], options)
    for image, hyps in enumerate(results):
        assert len(hyps) == 6
        assert len({h.tokens for h in hyps}) == 6
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
        for h in hyps:
            assert START not in h.tokens and END not in h.tokens
            assert h.log_prob == fake.log_prob(image, h.tokens, h.finished)
            length = len(h.tokens) + int(h.finished)
            assert h.score == pytest.approx(h.log_prob / length**alpha, rel=1e-12)


@pytest.mark.parametrize(
    "options",
    [
        opts("greedy", max_length=5),
        opts("beam", beam_size=3, max_length=5, n_best=3),
        opts("beam", beam_size=3, max_length=5, n_best=2, length_penalty=1.0),
    ],
)
def test_max_length_cuts_without_end_token(options):
    tables = markov_tables(3, n_images=2, vocab=6)
    tables[..., END] = -np.inf  # the decoder never ends: every caption is cut
    fake = MarkovStep(tables)
    results = search(fake, fake.initial_state([0, 1]), options, START, END)
    assert len(fake.calls) == options.max_length
    for image, hyps in enumerate(results):
        assert len(hyps) == options.n_best
        for h in hyps:
            assert len(h.tokens) == options.max_length and not h.finished
            assert h.log_prob == fake.log_prob(image, h.tokens, finished=False)


@pytest.mark.parametrize("seed", range(4))
def test_captions_never_exceed_max_length(seed):
    fake = MarkovStep(markov_tables(seed, n_images=3, vocab=6))
    options = opts("beam", beam_size=5, max_length=3, n_best=5)
    for hyps in run(beam_search, fake, [0, 1, 2], options):
        assert all(len(h.tokens) <= 3 for h in hyps)
        assert all(h.finished for h in hyps if len(h.tokens) < 3)


class TrieStep:
    """Log-probs given per prefix (a dict); anything not listed costs -20. State carries the history."""

    def __init__(self, table: dict[tuple[int, ...], dict[int, float]], vocab: int) -> None:
        self.table, self.vocab = table, vocab

    def __call__(self, tokens, state):
        (history,) = state
        history = [(*h, int(tok)) for h, tok in zip(history, tokens, strict=True)]
        log_probs = np.full((len(tokens), self.vocab), -20.0, dtype=np.float32)
        for row, h in enumerate(history):
            for tok, lp in self.table.get(h[1:], {}).items():  # h[0] is START
                log_probs[row, tok] = lp
        state_array = np.empty(len(history), dtype=object)
        state_array[:] = history
        return log_probs, (state_array,)


def test_length_penalty_prefers_the_longer_caption():
    # "a" then end: log-prob log(.5) + log(.3) = -1.90, length 2.
    # "b b b" then end: log(.5) + 0 + 0 + log(.1) = -3.00, length 4.
    a, b = 2, 3
    table = {
        (): {a: np.log(0.5), b: np.log(0.5)},
        (a,): {END: np.log(0.3)},
        (b,): {b: 0.0},
        (b, b): {b: 0.0},
        (b, b, b): {END: np.log(0.1)},
    }
    step = TrieStep(table, vocab=4)
    initial = np.empty(1, dtype=object)
    initial[0] = ()

    def best(alpha: float) -> Hypothesis:
        options = opts("beam", beam_size=2, max_length=6, length_penalty=alpha)
        return beam_search(step, (initial,), options, START, END)[0][0]

    assert best(0.0).tokens == (a,)
    assert best(0.0).score == pytest.approx(np.log(0.5) + np.log(0.3), rel=1e-6)
    assert best(1.0).tokens == (b, b, b)
    assert best(1.0).score == pytest.approx((np.log(0.5) + np.log(0.1)) / 4, rel=1e-6)


def test_the_default_stop_gives_up_a_caption_that_could_only_win_by_growing_longer():
    # "c" then end: log(.9), length 2, score -0.026 with alpha 2. "c a" (log .1) can only win by growing:
    # "c a b b b b b b b b" then end (11 terms, nothing more lost): -2.30 / 121 = -0.019.
    c, a, b = 4, 2, 3
    table = {(): {c: 0.0}, (c,): {END: np.log(0.9), a: np.log(0.1)}}
    table.update({(c, a, *[b] * n): {b: 0.0} for n in range(8)})
    table[(c, a, *[b] * 8)] = {END: 0.0}
    initial = np.empty(1, dtype=object)
    initial[0] = ()
    calls = []

    def step(tokens, state):
        calls.append(len(tokens))
        return TrieStep(table, vocab=5)(tokens, state)

    def best(exact_stop: bool) -> Hypothesis:
        calls.clear()
        options = opts("beam", beam_size=1, max_length=12, length_penalty=2.0, exact_stop=exact_stop)
        return beam_search(step, (initial,), options, START, END)[0][0]

    assert best(exact_stop=True).tokens == (c, a, *[b] * 8)
    assert len(calls) == 11
    # Heuristic: at step 2 "c a" ending next (-2.30 / 9) could not beat "c" (-0.026): the search stops there.
    assert best(exact_stop=False).tokens == (c,)
    assert len(calls) == 2


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("alpha", [0.0, 0.7, 2.0])
def test_the_default_stop_never_runs_longer_than_the_exact_one(seed, alpha):
    # The heuristic bound divides by less than the exact one, so it stops at the same step or sooner; with alpha 0
    # both divide by 1 and give the same captions.
    rows = {}
    for exact in (True, False):
        fake = HistoryStep(vocab=6, max_length=7, seed=seed)
        options = opts("beam", beam_size=3, max_length=7, n_best=2, length_penalty=alpha, exact_stop=exact)
        got = run(beam_search, fake, [0, 1, 2], options)
        rows[exact] = (sum(fake.calls), got)
    assert rows[False][0] <= rows[True][0]
    if alpha == 0.0:
        assert rows[False] == rows[True]


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_one_batched_step_call_per_time_step(strategy):
    beam_size, n_images, max_length = 4, 5, 9
    fake = HistoryStep(vocab=7, max_length=max_length, seed=3)
    options = opts(strategy, beam_size=beam_size, max_length=max_length)
    run(search, fake, list(range(n_images)), options)
    width = 1 if strategy == "greedy" else beam_size
    assert 1 <= len(fake.calls) <= max_length + 1
    assert fake.calls[0] == n_images  # one row per image on the first step, not beam_size copies
    assert all(n <= n_images * width for n in fake.calls)
    assert all(n % width == 0 for n in fake.calls[1:])


def test_finished_images_leave_the_batch():
    tables = markov_tables(7, n_images=2, vocab=6)
    tables[0, START] = log_softmax(np.array([-np.inf, 50.0, 0, 0, 0, 0]))  # image 0 ends at once
    tables[1, :, END] = -np.inf  # image 1 never ends
    for options, width in [
        (opts("greedy", max_length=6), 1),
        (opts("beam", beam_size=3, max_length=6), 3),
    ]:
        fake = MarkovStep(tables)
        results = run(search, fake, [0, 1], options)
        assert results[0][0].tokens == () and results[0][0].finished
        assert len(results[1][0].tokens) == 6
        assert fake.calls == [2] + [width] * 5


def test_ties_break_deterministically_toward_lower_ids():
    # Uniform over ids 1..3 with end_id 3: the lowest ids win every tie, beams in order.
    def uniform(tokens, state):
        log_probs = np.full((len(tokens), 4), np.log(1 / 3), dtype=np.float32)
        log_probs[:, 0] = -np.inf
        return log_probs, state

    state = (np.zeros(2),)
    greedy = greedy_search(uniform, state, opts("greedy", max_length=3), 0, 3)
    assert [h.tokens for h in greedy[0]] == [(1, 1, 1)]
    options = opts("beam", beam_size=3, max_length=3, n_best=3)
    first = beam_search(uniform, state, options, 0, 3)
    assert first == beam_search(uniform, state, options, 0, 3)
    # alpha 0 favours short captions; equal scores keep the order found: () , (1,), then (1, 1).
    assert [h.tokens for h in first[0]] == [(), (1,), (1, 1)]
    assert first[0] == first[1]


def test_search_dispatches_on_strategy():
    fake = MarkovStep(markov_tables(1, n_images=2, vocab=6))
    greedy = opts("greedy", max_length=5)
    beam = opts("beam", beam_size=3, max_length=5, n_best=2)
    assert run(search, fake, [0, 1], greedy) == run(greedy_search, fake, [0, 1], greedy)
    assert run(search, fake, [0, 1], beam) == run(beam_search, fake, [0, 1], beam)


def test_empty_batch_gives_empty_result():
    fake = MarkovStep(markov_tables(0, n_images=1, vocab=5))
    for strategy in (greedy_search, beam_search):
        assert run(strategy, fake, [], opts("beam", beam_size=2)) == []
    assert fake.calls == []


def _ok(tokens, state):
    return np.zeros((len(tokens), 5), dtype=np.float32) - 1.6, state


@pytest.mark.parametrize(
    ("bad_step", "message"),
    [
        (lambda tokens, state: (np.zeros((len(tokens) + 1, 5)), state), "shape"),
        (lambda tokens, state: (np.zeros(len(tokens)), state), "shape"),
        (lambda tokens, state: (np.zeros((len(tokens), 5)), (np.zeros(len(tokens) + 1),)), "state"),
        (lambda tokens, state: (np.zeros((len(tokens), 5)), list(state)), "state"),
        (lambda tokens, state: (np.zeros((len(tokens), 1)), state), "end_id"),
        (lambda tokens, state: (np.full((len(tokens), 5), np.nan), state), "NaN"),
    ],
)
@pytest.mark.parametrize("strategy", [greedy_search, beam_search])
def test_wrong_step_output_raises_value_error(strategy, bad_step, message):
    with pytest.raises(ValueError, match=message):
        strategy(bad_step, (np.zeros(3),), opts("beam", beam_size=2), START, END)


@pytest.mark.parametrize("state", [(), [np.zeros(2)], np.zeros(2)])
def test_state_must_be_a_tuple_of_arrays(state):
    with pytest.raises(ValueError, match="state"):
        beam_search(_ok, state, opts(), START, END)


def topk_of(step):
    """A step_topk over a full step: each row's k best by a stable sort (ties: lower id first), as TopK does."""

    def step_topk(tokens, state, k):
        log_probs, new_state = step(tokens, state)
        ids = np.argsort(-log_probs, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(log_probs, ids, axis=1), ids, new_state

    return step_topk


@pytest.mark.parametrize("use_topk", [False, True], ids=["full-step", "topk-step"])
def test_best_candidates_match_a_stable_full_sort(use_topk):
    # Both candidate paths (partition of the full log-probs, or each row's top-k from the decoder) must pick
    # exactly what a stable argsort of all sums would, ties and -inf included (integer log-probs: many ties).
    from captioner.decode.search import _expand, best_candidates

    rng = np.random.default_rng(0)
    for _ in range(300):
        images, rows, vocab = int(rng.integers(1, 4)), int(rng.integers(1, 4)), int(rng.integers(2, 40))
        k = int(rng.integers(1, rows * vocab + 1))
        log_prob = rng.integers(-4, 1, size=(images, rows)).astype(np.float64)
        log_probs = rng.integers(-3, 1, size=(images * rows, vocab)).astype(np.float32)
        log_probs[rng.random(log_probs.shape) < 0.2] = -np.inf
        step = lambda tokens, state, lp=log_probs: (lp, state)  # noqa: E731
        tokens, state = np.zeros(images * rows, np.int64), (np.zeros(images * rows),)
        row, tok, lp, _ = _expand(
            step, topk_of(step) if use_topk else None, tokens, state, images * rows, k, END
        )
        src, tok, lp = best_candidates(log_prob, row, tok, lp, k)
        assert src.shape == tok.shape == lp.shape == (images, k)
        got = [
            [
                (int(s), int(t), float(x))
                for s, t, x in zip(src[i], tok[i], lp[i], strict=True)
                if np.isfinite(x)
            ]
            for i in range(images)
        ]
        full = (log_prob[:, :, None] + log_probs.astype(np.float64).reshape(images, rows, vocab)).reshape(
            images, -1
        )
        for i in range(images):
            order = np.argsort(-full[i], kind="stable")[:k]
            order = order[np.isfinite(full[i, order])]  # impossible continuations are never candidates
            assert [src * vocab + t for src, t, _ in got[i]] == order.tolist()
            assert [x for _, _, x in got[i]] == full[i, order].tolist()


@pytest.mark.parametrize("integer_tables", [False, True], ids=["real", "ties"])
@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_topk_step_gives_the_same_hypotheses_as_the_full_step(strategy, integer_tables):
    for seed in range(20):
        tables = markov_tables(seed, 3, 9)
        if integer_tables:  # equal log-probs everywhere: only the tie rules decide
            tables = np.where(np.isfinite(tables), np.round(tables), tables).astype(np.float32)
        step = MarkovStep(tables)
        options = opts(strategy, beam_size=1 if strategy == "greedy" else 3, max_length=6, length_penalty=0.7)
        full = search(step, step.initial_state([0, 1, 2]), options, START, END)
        topk = search(step, step.initial_state([0, 1, 2]), options, START, END, step_topk=topk_of(step))
        assert topk == full


def test_topk_step_output_is_checked():
    def bad(tokens, state, k):
        return np.zeros((len(tokens), k)), np.zeros((len(tokens), k + 1), np.int64), state

    with pytest.raises(ValueError, match="step_topk returned"):
        beam_search(_ok, (np.zeros(3),), opts("beam", beam_size=2), START, END, step_topk=bad)


def test_banned_tokens_are_never_chosen_and_the_rest_is_the_brute_force_optimum():
    """A banned token (e.g. <unk>) is never in a caption; the best captions without it are still found."""
    vocab, max_length, banned = 5, 3, (2,)
    for seed in range(3):
        fake = HistoryStep(vocab, max_length, seed)
        options = opts("beam", beam_size=10, max_length=max_length, length_penalty=0.7, n_best=5)
        (got,) = beam_search(fake, fake.initial_state([0]), options, START, END, banned=banned)
        allowed = [h for h in brute_force(fake, 0, vocab, options) if not set(h.tokens) & set(banned)]
        assert [h.tokens for h in got] == [h.tokens for h in allowed[:5]]
        fresh = HistoryStep(vocab, max_length, seed)  # a fake serves one search (it counts its calls)
        (greedy,) = greedy_search(fresh, fresh.initial_state([0]), opts("greedy", max_length=3), START, END,
                                  banned=banned)  # fmt: skip
        assert 2 not in greedy[0].tokens


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_banned_tokens_give_the_same_hypotheses_with_the_topk_step(strategy):
    for seed in range(10):
        tables = markov_tables(seed, 3, 9)
        step = MarkovStep(tables)
        options = opts(strategy, beam_size=1 if strategy == "greedy" else 3, max_length=6, length_penalty=0.7)
        banned = (3, 5)
        full = search(step, step.initial_state([0, 1, 2]), options, START, END, banned=banned)
        topk = search(step, step.initial_state([0, 1, 2]), options, START, END, step_topk=topk_of(step),
                      banned=banned)  # fmt: skip
        assert topk == full
        assert all(not set(h.tokens) & set(banned) for hyps in full for h in hyps)
        unbanned = search(step, step.initial_state([0, 1, 2]), options, START, END)
        assert any(set(h.tokens) & set(banned) for hyps in unbanned for h in hyps) or seed  # banning mattered


def _repeats(tokens: tuple[int, ...], n: int) -> bool:
    grams = [tokens[i : i + n] for i in range(len(tokens) - n + 1)]
    return len(grams) != len(set(grams))


@pytest.mark.parametrize("n", [2, 3])
def test_no_repeated_ngram_and_otherwise_the_brute_force_optimum(n):
    vocab, max_length = 4, 5
    for seed in range(3):
        fake = HistoryStep(vocab, max_length, seed)
        options = opts(
            "beam", beam_size=10, max_length=max_length, length_penalty=0.7, n_best=3, no_repeat_ngram=n
        )
        (got,) = beam_search(fake, fake.initial_state([0]), options, START, END, no_repeat_ngram=n)
        allowed = [h for h in brute_force(fake, 0, vocab, options) if not _repeats(h.tokens, n)]
        assert [h.tokens for h in got] == [h.tokens for h in allowed[:3]]


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_no_repeated_ngram_gives_the_same_hypotheses_with_the_topk_step(strategy):
    blocked_something = False
    for seed in range(10):
        step = MarkovStep(markov_tables(seed, 3, 6))  # few words and long captions: repeats are likely
        options = opts(
            strategy, beam_size=1 if strategy == "greedy" else 3, max_length=12, length_penalty=0.7
        )
        full = search(step, step.initial_state([0, 1, 2]), options, START, END, no_repeat_ngram=2)
        topk = search(step, step.initial_state([0, 1, 2]), options, START, END, step_topk=topk_of(step),
                      no_repeat_ngram=2)  # fmt: skip
        assert topk == full
        assert not any(_repeats(h.tokens, 2) for hyps in full for h in hyps)
        free = search(step, step.initial_state([0, 1, 2]), options, START, END)
        blocked_something |= any(_repeats(h.tokens, 2) for hyps in free for h in hyps)
    assert blocked_something  # the rule had something to do


def test_exact_stop_is_validated():
    assert DecodeOptions().exact_stop is False and DecodeOptions(exact_stop=True).exact_stop is True
    for bad in (1, "yes", None):
        with pytest.raises(OptionsError, match="exact_stop"):
            DecodeOptions(exact_stop=bad)


def test_no_repeat_ngram_is_validated():
    assert DecodeOptions().no_repeat_ngram == 3 and DecodeOptions(no_repeat_ngram=0).no_repeat_ngram == 0
    for bad in (1, -1, 9, 2.5):
        with pytest.raises(OptionsError, match="no_repeat_ngram"):
            DecodeOptions(no_repeat_ngram=bad)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_repeat_blocked_lists_exactly_the_tokens_that_would_repeat_an_ngram(n):
    from captioner.decode.search import repeat_blocked

    def brute(row: np.ndarray) -> list[int]:
        t = len(row)
        if n < 2 or t < n:
            return []
        last = tuple(row[t - n + 1 :])
        return sorted(int(row[j + n - 1]) for j in range(t - n + 1) if tuple(row[j : j + n - 1]) == last)

    rng = np.random.default_rng(n)
    found = 0
    for _ in range(400):
        history = rng.integers(0, 3, (int(rng.integers(1, 5)), int(rng.integers(0, 12))))
        blocked = repeat_blocked(history, n)
        want = [brute(row) for row in history]
        got = (
            [[] for _ in history]
            if blocked is None
            else [sorted(int(x) for x in b if x >= 0) for b in blocked]
        )
        assert got == want
        found += sum(map(len, want))
    assert found > 0 or n == 1  # the random histories do repeat n-grams


@pytest.mark.parametrize("k", [1, 3, 7, 9, 20])
def test_topk_rows_ranks_as_onnxruntime_topk(k):
    # Few distinct values, so that ties cut across the k-th place: TopK takes the lower ids first.
    rng = np.random.default_rng(k)
    log_probs = rng.integers(0, 4, size=(6, 9)).astype(np.float32) - 5
    log_probs[0, :] = -np.inf
    log_probs[1, 2] = -np.inf
    values, ids = topk_rows(log_probs, k)
    want = np.argsort(-log_probs, axis=1, kind="stable")[:, : min(k, 9)]
    np.testing.assert_array_equal(ids, want)
    np.testing.assert_array_equal(values, np.take_along_axis(log_probs, want, axis=1))
