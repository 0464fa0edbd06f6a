"""Search strategies: turn a step function into captions, NumPy only.

The strategies see token ids and log-probabilities, nothing else: a ``step(tokens, state)`` callable
supplies the model, so they are tested with fake steps and work with any decoder backend.

Both strategies are batched: every live row of every image (for beam search, every beam) goes through
one ``step`` call per time step. Rows of images that are done are dropped from the batch with
``np.take(axis=0)``, so later steps get fewer rows, never more than ``B * beam_size``.

A decoder may also supply ``step_topk(tokens, state, k)``, which returns only each row's k best
log-probabilities and their token ids (best first, equal values in ascending id order) instead of the whole
[N, V] matrix: the searches then never sort or scan the vocabulary themselves (``model.onnx_step`` does the
top-k inside its graph). Both forms give the same hypotheses: an image's k best continuations are always among
its rows' own k best.

Conventions shared by both strategies:

* ``Hypothesis.tokens`` holds word ids only (no start, no end token).
* A hypothesis is *finished* when the decoder chose ``end_id``; its ``log_prob`` includes the end
  token's log-probability. A hypothesis that reaches ``max_length`` words without ``end_id`` is cut
  there and returned as is (``finished=False``, no end term): ``step`` is called at most
  ``max_length`` times.
* ``length`` in the score counts the log-probability terms summed into ``log_prob``: the words, plus
  one for the end token when finished. So score = log_prob / length**length_penalty, length >= 1.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from captioner.decode.options import DecodeOptions

State = tuple[np.ndarray, ...]
StepFn = Callable[[np.ndarray, State], tuple[np.ndarray, State]]
TopkStepFn = Callable[[np.ndarray, State, int], tuple[np.ndarray, np.ndarray, State]]


@dataclass(frozen=True)
class Hypothesis:
    """One candidate caption as token ids.

    tokens: word ids, without start/end tokens.
    log_prob: sum of the chosen tokens' log-probabilities (including the end token when finished).
    score: log_prob / length**length_penalty, the value hypotheses are ranked by.
    finished: True when the decoder produced the end token, False when cut at max_length.
    """

    tokens: tuple[int, ...]
    log_prob: float
    score: float
    finished: bool = True


def search(
    step: StepFn,
    state: State,
    options: DecodeOptions,
    start_id: int,
    end_id: int,
    step_topk: TopkStepFn | None = None,
    banned: tuple[int, ...] = (),
    no_repeat_ngram: int = 0,
) -> list[list[Hypothesis]]:
    """Run the strategy named by ``options.strategy``; see greedy_search and beam_search.

    banned: token ids never chosen (e.g. <unk>, <pad>, <start>: words a caption cannot show; a search that
    picked <unk> and had it dropped from the text would leave "holding a" where "holding a <unk>" was meant).
    no_repeat_ngram: n > 1 -> no hypothesis contains the same n words twice ("a red shirt and a red shirt");
    0: no such rule."""
    if options.strategy == "greedy":
        return greedy_search(step, state, options, start_id, end_id, step_topk, banned, no_repeat_ngram)
    return beam_search(step, state, options, start_id, end_id, step_topk, banned, no_repeat_ngram)


def greedy_search(
    step: StepFn,
    state: State,
    options: DecodeOptions,
    start_id: int,
    end_id: int,
    step_topk: TopkStepFn | None = None,
    banned: tuple[int, ...] = (),
    no_repeat_ngram: int = 0,
) -> list[list[Hypothesis]]:
    """Pick the most likely token at each step (ties: the lowest id), never a ``banned`` one nor one that would
    repeat an n-gram of the caption (``no_repeat_ngram``).

    step: (tokens int64 [N], state) -> (log_probs float [N, V], new state); every state array has the
        row as axis 0.
    state: initial state for B images, arrays with leading dim B.
    step_topk: optional (tokens, state, k) -> (values [N, k], ids [N, k], new state), used instead of step.
    Returns B lists, each with exactly one Hypothesis.
    """
    batch = state_rows(state)
    max_length, alpha = options.max_length, float(options.length_penalty)
    words = np.zeros((batch, max_length), dtype=np.int64)
    lengths = np.zeros(batch, dtype=np.int64)
    log_prob = np.zeros(batch, dtype=np.float64)
    finished = np.zeros(batch, dtype=bool)
    active = np.arange(batch)  # image index of each row still decoding
    tokens = np.full(batch, start_id, dtype=np.int64)
    for t in range(max_length):
        if active.size == 0:
            break
        blocked = repeat_blocked(words[active, :t], no_repeat_ngram)
        _, best, lp, state = _expand(step, step_topk, tokens, state, active.size, 1, end_id, banned, blocked)
        log_prob[active] += lp.astype(np.float64)
        ended = best == end_id
        finished[active[ended]] = True
        going = np.flatnonzero(~ended)
        words[active[going], t] = best[going]
        lengths[active[going]] += 1
        active, tokens = active[going], best[going]
        state = tuple(np.take(a, going, axis=0) for a in state)
    return [
        [make_hypothesis(words[i, : lengths[i]], log_prob[i], bool(finished[i]), alpha)] for i in range(batch)
    ]


def beam_search(
    step: StepFn,
    state: State,
    options: DecodeOptions,
    start_id: int,
    end_id: int,
    step_topk: TopkStepFn | None = None,
    banned: tuple[int, ...] = (),
    no_repeat_ngram: int = 0,
) -> list[list[Hypothesis]]:
    """Beam search with ``options.beam_size`` live hypotheses per image; ``banned`` tokens are never chosen, nor
    tokens that would repeat an n-gram of their hypothesis (``no_repeat_ngram``).

    The first step runs one row per image (beam_size copies of the start token would only yield
    duplicates); later steps run beam_size rows per still-active image, image-major.
    An image stops when it has n_best finished hypotheses and no live one can still beat the n_best-th
    (``stop_divisor``: with options.exact_stop at any length up to max_length, otherwise if it ended at the next
    step), or when it reaches max_length words, where the live beams join the candidates unfinished.

    step, state, step_topk: as for greedy_search; log-probabilities must be <= 0 for the bound to hold.
    Returns B lists of up to options.n_best distinct hypotheses, best score first. Fewer only when the
    step gives -inf to so many tokens that fewer distinct finite-probability captions exist.
    """
    batch = state_rows(state)
    if batch == 0:
        return []
    beam, n_best = options.beam_size, options.n_best
    max_length, alpha = options.max_length, float(options.length_penalty)
    kept: list[list[Hypothesis]] = [[] for _ in range(batch)]  # best n_best so far, sorted
    images = np.arange(batch)  # image index of each active image
    words = np.zeros((batch, 1, 0), dtype=np.int64)  # [images, rows per image, t]
    log_prob = np.zeros((batch, 1), dtype=np.float64)  # [images, rows per image]
    tokens = np.full(batch, start_id, dtype=np.int64)
    for t in range(max_length):
        n_images, rows = log_prob.shape
        # Each row adds at most one end candidate, so the top 2*beam always hold beam live candidates.
        k = 2 * beam
        blocked = repeat_blocked(words.reshape(n_images * rows, t), no_repeat_ngram)
        row, tok, lp, state = _expand(
            step, step_topk, tokens, state, n_images * rows, k, end_id, banned, blocked
        )
        cand_src, cand_tok, cand_lp = best_candidates(log_prob, row, tok, lp, k)  # [I, k] each, best first
        is_end, live_before, n_live, parent, token, new_lp = take_live(
            cand_src, cand_tok, cand_lp, end_id, beam
        )
        length = t + 1  # the words so far plus the end token
        for i, j in zip(*np.nonzero(is_end & (live_before < beam)), strict=True):
            image_kept, lp_ij = kept[images[i]], float(cand_lp[i, j])
            score = lp_ij if alpha == 0.0 else lp_ij / length**alpha
            if len(image_kept) < n_best or score > image_kept[-1].score:  # else keep_best would drop it
                keep_best(image_kept, make_hypothesis(words[i, cand_src[i, j]], lp_ij, True, alpha), n_best)
        worst = np.array([kept[m][-1].score if len(kept[m]) >= n_best else -np.inf for m in images.tolist()])
        done = (worst > -np.inf) & (new_lp[:, 0] / stop_divisor(options, t + 1) <= worst)
        going = (n_live > 0) & ~done
        words = np.concatenate([words[np.arange(n_images)[:, None], parent], token[:, :, None]], axis=2)
        if t == max_length - 1:  # cut: the live beams become unfinished candidates
            for i, j in zip(*np.nonzero(going[:, None] & np.isfinite(new_lp)), strict=True):
                keep_best(kept[images[i]], make_hypothesis(words[i, j], new_lp[i, j], False, alpha), n_best)
            break
        if not going.any():
            break
        # One gather per state array both reorders beams and drops finished images.
        rows_idx = (np.flatnonzero(going)[:, None] * rows + parent[going]).reshape(-1)
        state = tuple(np.take(a, rows_idx, axis=0) for a in state)
        images, words, log_prob, tokens = images[going], words[going], new_lp[going], token[going].reshape(-1)
    return kept


def stop_divisor(options: DecodeOptions, words: int) -> float:
    """What the bound that stops a beam search divides a live hypothesis' log_prob (<= 0) by, the hypothesis
    having ``words`` words: with ``options.exact_stop`` the largest divisor any of its future scores can have
    (max_length terms; dividing more only raises a negative score), so no hypothesis that could still win is
    given up; otherwise the divisor it would have if it ended at the next step at no further loss (Hugging Face's
    ``early_stopping=False``): one that could still win only by growing longer is given up."""
    length = options.max_length if options.exact_stop else min(words + 1, options.max_length)
    return float(length) ** float(options.length_penalty)


def take_live(
    cand_src: np.ndarray, cand_tok: np.ndarray, cand_lp: np.ndarray, end_id: int, beam: int
) -> tuple[np.ndarray, ...]:
    """Walk each group's candidates best first (vectorised): an end token finishes a hypothesis, any other token
    extends one, until ``beam`` live ones are found.

    cand_src, cand_tok, cand_lp: [G, k] each, best first (source row, token, summed log-prob; -inf: none).
    Returns (is_end [G, k], live_before [G, k]: live candidates ranked above each one, n_live [G], and the new
    beam's parent, token and log-prob, [G, beam] each). Unused slots copy slot 0 with -inf log-prob: they ride
    along but never win a candidate.
    """
    valid = np.isfinite(cand_lp)
    is_end = valid & (cand_tok == end_id)
    live = valid & ~is_end
    live_before = np.cumsum(live, axis=1) - live
    taken = live & (live_before < beam)
    n_live = taken.sum(axis=1)
    slot = np.argsort(~taken, axis=1, kind="stable")[:, :beam]  # the taken columns first, in rank order
    groups = np.arange(len(slot))[:, None]
    parent, token, new_lp = cand_src[groups, slot], cand_tok[groups, slot], cand_lp[groups, slot]
    unused = np.arange(beam)[None, :] >= n_live[:, None]
    parent = np.where(unused, parent[:, :1], parent)
    token = np.where(unused, token[:, :1], token)
    new_lp = np.where(unused, -np.inf, new_lp)
    return is_end, live_before, n_live, parent, token, new_lp


def make_hypothesis(words: np.ndarray, log_prob: float, finished: bool, alpha: float) -> Hypothesis:
    length = len(words) + int(finished)  # number of log-prob terms in log_prob, always >= 1
    log_prob = float(log_prob)
    score = log_prob if alpha == 0.0 else log_prob / length**alpha
    return Hypothesis(tuple(int(w) for w in words), log_prob, score, finished)


def keep_best(kept: list[Hypothesis], hyp: Hypothesis, n_best: int) -> None:
    """Insert hyp into kept (sorted by score, best first; ties keep the earlier one) and trim to n_best."""
    pos = len(kept)
    while pos > 0 and kept[pos - 1].score < hyp.score:
        pos -= 1
    if pos < n_best:
        kept.insert(pos, hyp)
        del kept[n_best:]


def best_candidates(
    log_prob: np.ndarray, row: np.ndarray, tok: np.ndarray, step_lp: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The k best continuations of each image, best first: (row in image, token, log_prob), each [I, k].

    log_prob: float64 [I, R], the running sums of the R rows of each image. row, tok, step_lp: flat candidate
    lists from ``_expand`` (each row's own best tokens, ties included). Equal sums rank by lower row, then
    lower token: the order of a stable sort of all I x R*V sums, cut to k. Missing or impossible candidates
    have log_prob -inf (and rank last).
    """
    n_images, rows = log_prob.shape
    lp = log_prob.reshape(-1)[row] + step_lp.astype(np.float64)
    image, src = np.divmod(row, rows)
    order = np.lexsort((tok, src, -lp, image))  # by image, then best sum, then lower row, then lower token
    image = image[order]
    rank = np.arange(order.size) - np.searchsorted(image, image)  # position within its image
    top = order[rank < k]
    at = (image[rank < k], rank[rank < k])
    out_src = np.zeros((n_images, k), np.int64)
    out_tok = np.zeros((n_images, k), np.int64)
    out_lp = np.full((n_images, k), -np.inf)
    out_src[at], out_tok[at], out_lp[at] = src[top], tok[top], lp[top]
    return out_src, out_tok, out_lp


def _expand(
    step: StepFn,
    step_topk: TopkStepFn | None,
    tokens: np.ndarray,
    state: State,
    n_rows: int,
    k: int,
    end_id: int,
    banned: tuple[int, ...] = (),
    blocked: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, State]:
    """One decoder step -> (row, token, log_prob, new state): each row's k best tokens as flat arrays.

    With ``step_topk`` exactly min(k, V) per row, as the decoder ranked them; with ``step`` every token at least
    as likely as the row's k-th best (ties included: the caller's sort breaks them), found by a partition, not
    a sort of the vocabulary. Either way, the k best continuations of any group of rows are among them.
    ``banned`` tokens get -inf first, and so does ``blocked[row]`` (int [n_rows, m], -1 padded) in its row
    (with ``step_topk``: k + len(banned) + m are asked for and the excluded ones dropped).
    """
    n_blocked = 0 if blocked is None else blocked.shape[1]
    if step_topk is not None:
        values, ids, new_state = step_topk(tokens, state, k + len(banned) + n_blocked)
        values, ids = np.asarray(values), np.asarray(ids)
        if (banned or n_blocked) and values.ndim == 2 and values.shape == ids.shape and len(ids) == n_rows:
            values, ids = drop_excluded(values, ids, excluded_ids(ids, banned, blocked), k)
        if values.ndim != 2 or values.shape != ids.shape or values.shape[0] != n_rows:
            raise ValueError(
                f"step_topk returned values {values.shape} and ids {ids.shape} for {n_rows} tokens; "
                f"expected two arrays of shape ({n_rows}, k)"
            )
        if np.isnan(values).any():
            raise ValueError("step returned NaN log-probabilities")
        check_state(new_state, n_rows)
        width = values.shape[1]
        return (
            np.repeat(np.arange(n_rows), width),
            ids.reshape(-1).astype(np.int64),
            values.reshape(-1),
            new_state,
        )
    log_probs, new_state = checked_step(step, tokens, state, n_rows, end_id)
    if banned or n_blocked:
        log_probs = log_probs.copy()
        log_probs[:, list(banned)] = -np.inf
        if blocked is not None:
            rows, cols = np.nonzero(blocked >= 0)
            log_probs[rows, blocked[rows, cols]] = -np.inf
    vocab = log_probs.shape[1]
    if k == 1:  # exactly one per row: the lowest id among ties (argmax's rule, as TopK's)
        row, tok = np.arange(n_rows), log_probs.argmax(axis=1)
    elif k < vocab:
        kth = np.partition(log_probs, vocab - k, axis=1)[:, vocab - k]
        row, tok = np.nonzero(log_probs >= kth[:, None])
    else:
        row, tok = np.divmod(np.arange(log_probs.size), vocab)
    return row, tok, log_probs[row, tok], new_state


def excluded_ids(ids: np.ndarray, banned: tuple[int, ...], blocked: np.ndarray | None) -> np.ndarray:
    """bool, the shape of ``ids`` [N, k]: which ids are ``banned``, or in their row's ``blocked`` (int [N, m],
    -1 padded; None: none)."""
    table = _banned_table(tuple(banned))  # a table lookup: np.isin costs more than the step's matmul
    excluded = table[np.minimum(ids, table.size - 1)]
    if blocked is not None:
        excluded |= (ids[:, :, None] == blocked[:, None, :]).any(axis=2)
    return excluded


def drop_excluded(
    values: np.ndarray, ids: np.ndarray, excluded: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ids that are not ``excluded``, in their given order, cut to k: (values, ids), [N, min(k, width)]
    each. A row with fewer than that many left is padded with excluded ones, their values -inf."""
    keep = np.argsort(excluded, axis=1, kind="stable")[:, : min(k, ids.shape[1])]
    rows = np.arange(len(ids))[:, None]
    return np.where(excluded[rows, keep], -np.inf, values[rows, keep]), ids[rows, keep]


def topk_rows(log_probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's min(k, V) best log-probs and their ids, [N, k] each, as onnxruntime's TopK gives them: best
    first, equal values in ascending id order. A partition finds the candidates; only they are sorted."""
    n_rows, vocab = log_probs.shape
    k = max(1, min(int(k), vocab))
    if k < vocab:
        kth = np.partition(log_probs, vocab - k, axis=1)[:, vocab - k]
        row, tok = np.nonzero(log_probs >= kth[:, None])
    else:
        row, tok = np.divmod(np.arange(log_probs.size), vocab)
    value = log_probs[row, tok]
    order = np.lexsort((tok, -value, row))  # nonzero's order is row-major; ties: the lower id first
    row, tok, value = row[order], tok[order], value[order]
    first = np.arange(row.size) - np.searchsorted(row, row) < k
    return value[first].reshape(n_rows, k), tok[first].reshape(n_rows, k)


@functools.lru_cache(maxsize=64)
def _banned_table(banned: tuple[int, ...]) -> np.ndarray:
    """bool [max(banned) + 2]: True at the banned ids; the last entry (False) stands for every larger id."""
    table = np.zeros(max(banned, default=-1) + 2, dtype=bool)
    table[[b for b in banned if b >= 0]] = True
    return table


def repeat_blocked(history: np.ndarray, n: int) -> np.ndarray | None:
    """For each row of ``history`` (int [R, t], the words so far), the tokens that would complete an n-gram the
    row already holds, i.e. follow an earlier occurrence of its last n-1 words: int [R, m], -1 padded, or None
    when there are none (n < 2, or fewer than n words so far)."""
    rows, t = history.shape
    if n < 2 or t < n or rows == 0:
        return None
    # The n-grams so far begin at 0 .. starts - 1; word j + n - 1 follows the (n-1)-gram at j. match [R, starts]:
    # that (n-1)-gram equals the last n-1 words, compared word by word.
    starts = t - n + 1
    match = history[:, :starts] == history[:, starts : starts + 1]
    for i in range(1, n - 1):
        match &= history[:, i : starts + i] == history[:, starts + i : starts + i + 1]
    if not match.any():
        return None
    width = int(match.sum(axis=1).max())
    out = np.full((rows, width), -1, dtype=np.int64)
    r, j = np.nonzero(match)
    slot = np.arange(r.size) - np.searchsorted(r, r)  # position among its row's matches
    out[r, slot] = history[r, j + n - 1]
    return out


def state_rows(state: State) -> int:
    if not isinstance(state, tuple) or not state:
        raise ValueError("state must be a non-empty tuple of arrays whose axis 0 is the image (batch) axis")
    return int(np.shape(state[0])[0])


def checked_step(
    step: StepFn, tokens: np.ndarray, state: State, n_rows: int, end_id: int
) -> tuple[np.ndarray, State]:
    """Call step and check the shapes it returns, so a broken decoder fails here, not rows later."""
    log_probs, new_state = step(tokens, state)
    log_probs = np.asarray(log_probs)
    if log_probs.ndim != 2 or log_probs.shape[0] != n_rows:
        raise ValueError(
            f"step returned log_probs of shape {log_probs.shape} for {n_rows} tokens; expected ({n_rows}, V)"
        )
    if not 0 <= end_id < log_probs.shape[1]:
        raise ValueError(f"end_id {end_id} is outside the step's vocabulary of {log_probs.shape[1]} tokens")
    if np.isnan(log_probs).any():
        raise ValueError("step returned NaN log-probabilities")
    check_state(new_state, n_rows)
    return log_probs, new_state


def check_state(new_state: State, n_rows: int) -> None:
    if not isinstance(new_state, tuple) or any(np.shape(a)[:1] != (n_rows,) for a in new_state):
        shapes = [np.shape(a) for a in new_state] if isinstance(new_state, tuple) else type(new_state)
        raise ValueError(
            f"step must return the new state as a tuple of arrays with {n_rows} rows on axis 0, got {shapes}"
        )
