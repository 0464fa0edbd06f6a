"""Constrained beam search: captions that must contain one word of a given set, NumPy only.

Anderson et al. 2017, "Guided Open Vocabulary Image Captioning with Constrained Beam Search" (EMNLP), in its
simplest form: one disjunctive constraint per image ("one of {cat, cats, kitten}"), so the paper's finite-state
machine has two states and each constrained image keeps two beams of ``beam_size`` hypotheses:

    unmet  no word of the set yet; may not end (its end token is ruled out)
    met    at least one word of the set; the only source of finished captions

Each step, a met beam draws its candidates from the met rows (any token) and from the unmet rows (only the set's
words, which move a hypothesis from unmet to met); the unmet beam from the unmet rows (any token but the set's and
the end). Both beams of every constrained image and the single beam of every unconstrained one go through one
``step`` call per time step.

An image without a constraint has only the met beam from the start and is searched exactly as ``beam_search``
does (same candidates, ties, early stop, cut at max_length; tested). A met beam differs in one rule: any of its
rows may end (not only among the beam best candidates), since newcomers from the unmet beam would otherwise crowd
its ends out. A constrained image that has no finished met hypothesis when max_length is reached (the set's words
are banned, blocked or impossible) gets the plain search's result instead. Greedy options search one hypothesis per
beam.

By default (``keep_named``) an image whose plain caption already holds a word of its set keeps it: two beams rank
met hypotheses differently from one, and a caption that already names the object should not change for the
constraint's sake (on Flickr8k dev it cost BLEU-4 and CIDEr). So the plain search runs first, then only the
other constrained images are searched again, with the constraint, as one batch; each stops as soon as it cannot
come within ``max_score_drop`` of its plain score. (Running both in the same step calls, each constrained image
as a twin of its plain copy, was 5% faster at batch 8 but slower at batch 1 and above batch 8: a twin cannot
stop before its plain copy has ended.)

Each step needs every row's best tokens (as ``step_topk`` gives them) and a few log-probabilities by id (the
set's words, the end token), so ``step_with_topk`` returns both; without it the log-probabilities of ``step``
are ranked here. ``step_topk`` serves a plain search alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence

import numpy as np

from captioner.decode.options import DecodeOptions
from captioner.decode.search import (
    Hypothesis,
    State,
    StepFn,
    TopkStepFn,
    best_candidates,
    check_state,
    drop_excluded,
    excluded_ids,
    keep_best,
    make_hypothesis,
    repeat_blocked,
    search,
    state_rows,
    stop_divisor,
    take_live,
    topk_rows,
)

# (tokens, state, k) -> (log_probs [N, V], each row's k best log-probs [N, k] and their ids, new state)
FullTopkStepFn = Callable[[np.ndarray, State, int], tuple[np.ndarray, np.ndarray, np.ndarray, State]]


def constrained_search(
    step: StepFn,
    state: State,
    options: DecodeOptions,
    start_id: int,
    end_id: int,
    constraints: Sequence[Collection[int] | None],
    step_topk: TopkStepFn | None = None,
    banned: tuple[int, ...] = (),
    no_repeat_ngram: int = 0,
    keep_named: bool = True,
    max_score_drop: Sequence[float] | None = None,
    step_with_topk: FullTopkStepFn | None = None,
) -> list[list[Hypothesis]]:
    """Beam search in which image i's captions contain a word of ``constraints[i]`` (token ids; None or empty:
    no constraint).

    step, state, options, start_id, end_id, step_topk, banned, no_repeat_ngram: as for ``search.beam_search``.
    The set's banned ids, the end and the start token are dropped from it first (they can never be shown).
    keep_named: an image whose plain best caption already holds a word of the set keeps the plain search's
    result (then its other n-best may not). False: every constrained image gets the constrained search.
    max_score_drop: per image, how much lower than the plain search's best score the constrained best may score
    and still replace it (inf: always); None: always. A caption the model finds far less likely than its own best
    is often worse, not just more specific.
    step_with_topk: (tokens, state, k) -> (log_probs [N, V], each row's k best values and ids as step_topk gives
    them, new state), one decoder call (``OnnxDecoder.step_with_topk``); None: ``step``, ranked here.
    Returns B lists of up to options.n_best hypotheses, best score first: ones holding a word of the set (finished,
    or cut at max_length as in beam_search), or the plain search's when no such hypothesis finished.
    """
    batch = state_rows(state)
    if len(constraints) != batch:
        raise ValueError(
            f"{len(constraints)} constraints for {batch} images: give one per image (None: none)"
        )
    excluded = {start_id, end_id, *banned}
    sets = [None if c is None else sorted({int(w) for w in c} - excluded) or None for c in constraints]
    if max_score_drop is not None and len(max_score_drop) != batch:
        raise ValueError(f"{len(max_score_drop)} max_score_drop values for {batch} images")
    todo = [i for i, s in enumerate(sets) if s is not None]
    if not todo:
        return search(step, state, options, start_id, end_id, step_topk, banned, no_repeat_ngram)
    full_step = step_with_topk or _ranked(step)
    if not keep_named and max_score_drop is None:
        # No plain result needed: unconstrained images get the met beam alone, i.e. beam_search.
        kept, finished = _two_beam_search(
            full_step, state, options, start_id, end_id, sets, banned, no_repeat_ngram
        )
        fallback = [i for i in todo if not finished[i]]
        if fallback:
            sub = tuple(np.take(a, fallback, axis=0) for a in state)
            again = search(step, sub, options, start_id, end_id, step_topk, banned, no_repeat_ngram)
            for i, hyps in zip(fallback, again, strict=True):
                kept[i] = hyps
        return kept
    # The plain search first, then only the constrained images that still need it, each stopping as soon as it
    # cannot come within its drop of the plain score.
    out = search(step, state, options, start_id, end_id, step_topk, banned, no_repeat_ngram)
    rows = [i for i in todo if not (keep_named and _names(out[i], sets[i] or []))]
    if not rows:
        return out
    drops = [math.inf if max_score_drop is None else float(max_score_drop[i]) for i in rows]
    floors = np.array([out[i][0].score - d if out[i] else -np.inf for i, d in zip(rows, drops, strict=True)])
    kept, finished = _two_beam_search(
        full_step, tuple(np.take(a, rows, axis=0) for a in state), options, start_id, end_id,
        [sets[i] for i in rows], banned, no_repeat_ngram, floors,
    )  # fmt: skip
    for j, (i, d) in enumerate(zip(rows, drops, strict=True)):
        if finished[j] and _within(out[i], kept[j], d):
            out[i] = kept[j]
    return out


def _ranked(step: StepFn) -> FullTopkStepFn:
    """step_with_topk from a step that gives every log-probability: its top-k ranked in NumPy."""

    def step_with_topk(tokens: np.ndarray, state: State, k: int):
        log_probs, new_state = step(tokens, state)
        log_probs = np.asarray(log_probs)
        if log_probs.ndim != 2:
            raise ValueError(f"step returned log_probs of shape {log_probs.shape}; expected (N, V)")
        return (log_probs, *topk_rows(log_probs, k), new_state)

    return step_with_topk


def _names(hyps: list[Hypothesis], words: list[int]) -> bool:
    """Whether the best of ``hyps`` holds a word of ``words``."""
    return bool(hyps) and not set(hyps[0].tokens).isdisjoint(words)


def _within(plain: list[Hypothesis], constrained: list[Hypothesis], drop: float) -> bool:
    """Whether the constrained best scores at most ``drop`` below the plain best."""
    return not plain or (bool(constrained) and plain[0].score - constrained[0].score <= drop)


def _two_beam_search(
    step: FullTopkStepFn,
    state: State,
    options: DecodeOptions,
    start_id: int,
    end_id: int,
    sets: list[list[int] | None],
    banned: tuple[int, ...],
    no_repeat_ngram: int,
    floors: np.ndarray | None = None,
) -> tuple[list[list[Hypothesis]], np.ndarray]:
    """The search proper: (B lists of hypotheses as beam_search's, bool [B]: whether a met hypothesis finished;
    one cut at max_length may still outscore it, as in beam_search). floors: per image, a score below which its
    result is of no use (it stops once nothing kept or to come can reach it); None: none.

    Rows are grouped by beam: an unmet and a met beam per constrained image, a met beam per other image, R rows
    each (1 at the first step, then beam_size), group-major. Rows that hold no hypothesis (the met beam before any
    word of the set, beams with fewer live candidates than rows) ride along with log_prob -inf and never win a
    candidate."""
    batch = state_rows(state)
    beam = 1 if options.strategy == "greedy" else options.beam_size
    n_best, max_length, alpha = options.n_best, options.max_length, float(options.length_penalty)
    if floors is not None and not np.isfinite(floors).any():
        floors = None
    kept: list[list[Hypothesis]] = [[] for _ in range(batch)]
    finished = np.zeros(batch, dtype=bool)
    # Groups: (image, met?) in image order, the unmet beam first.
    g_image = np.array([i for i, s in enumerate(sets) for _ in range(1 if s is None else 2)], dtype=np.int64)
    g_met = np.array([m for s in sets for m in ((True,) if s is None else (False, True))])
    constrained = np.array([s is not None for s in sets])
    width = max(len(s) for s in sets if s is not None)
    set_ids = np.full((batch, width), end_id, dtype=np.int64)  # [B, W]: each set, padded with the end token
    for i, s in enumerate(sets):
        set_ids[i, : len(s or ())] = s or ()
    lp = np.where(g_met & np.array([sets[i] is not None for i in g_image]), -np.inf, 0.0)[:, None]  # [G, R]
    words = np.zeros((len(g_image), 1, 0), dtype=np.int64)  # [G, R, t]
    tokens = np.full(len(g_image), start_id, dtype=np.int64)
    state = tuple(np.take(a, g_image, axis=0) for a in state)
    k = 2 * beam  # each met row adds at most one end candidate, so the top 2*beam hold beam live ones
    end_banned = end_id in banned
    for t in range(max_length):
        n_groups, rows = lp.shape
        n_rows = n_groups * rows
        blocked = repeat_blocked(words.reshape(n_rows, t), no_repeat_ngram)
        # Enough of each row's best to keep k after ruling out the banned, the blocked, the end and the set.
        ask = k + len(banned) + (0 if blocked is None else blocked.shape[1]) + 1 + width
        log_probs, values, ids, state = _checked(step, tokens, state, n_rows, ask, end_id)
        if t == 0 and set_ids.max() >= log_probs.shape[1]:  # the vocabulary size, known from the first step
            raise ValueError(
                f"a constraint's token id is outside the step's vocabulary of {log_probs.shape[1]}"
            )
        from_unmet = g_met & constrained[g_image]
        # Every row of a constrained image's met beam may end (see below): its end log-probs, offered apart.
        met_rows = (np.flatnonzero(from_unmet)[:, None] * rows + np.arange(rows)[None, :]).reshape(-1)
        end_lp = lp.reshape(-1)[met_rows] + log_probs[met_rows, end_id].astype(np.float64)
        if end_banned:
            end_lp[:] = -np.inf
        src_row, row, tok, step_lp = _candidates(
            log_probs, values, ids, g_image, g_met, from_unmet, set_ids, end_id, k, banned, blocked
        )
        running = np.where(src_row >= 0, lp.reshape(-1)[np.maximum(src_row, 0)], -np.inf)  # [G, S]
        cand_src, cand_tok, cand_lp = best_candidates(running, row, tok, step_lp, k)  # [G, k], best first
        # The global row of each candidate.
        cand_row = np.take_along_axis(np.maximum(src_row, 0), cand_src, axis=1)
        # From here as in beam_search, per beam instead of per image.
        is_end, live_before, n_live, parent, token, new_lp = take_live(
            cand_row, cand_tok, cand_lp, end_id, beam
        )
        flat_words = words.reshape(n_rows, t)
        # Finished: as in beam_search, an end among an image's beam best candidates; but every row of a constrained
        # image's met beam may end (newcomers from the unmet beam would crowd its ends out of the beam best).
        ends = [
            (g_image[g], cand_row[g, j], cand_lp[g, j])
            for g, j in zip(*np.nonzero(is_end & (live_before < beam)), strict=True)
        ]
        ends += [(g_image[r // rows], r, x) for r, x in zip(met_rows, end_lp, strict=True) if np.isfinite(x)]
        length = t + 1
        for image, r, lp_end in ends:
            finished[image] = True
            image_kept, lp_end = kept[image], float(lp_end)
            score = lp_end if alpha == 0.0 else lp_end / length**alpha
            if len(image_kept) < n_best or score > image_kept[-1].score:
                keep_best(image_kept, make_hypothesis(flat_words[r], lp_end, True, alpha), n_best)
        # An image stops when no live hypothesis of either beam can beat its n_best-th (as in beam_search).
        images, first = np.unique(g_image, return_index=True)
        # As in beam_search: the best live log_prob over the divisor of the stop's bound.
        best_live = np.maximum.reduceat(new_lp[:, 0], first) / stop_divisor(options, t + 1)
        any_live = np.maximum.reduceat(n_live, first) > 0
        worst = np.array([kept[m][-1].score if len(kept[m]) >= n_best else -np.inf for m in images.tolist()])
        stays = np.zeros(batch, dtype=bool)
        stays[images[any_live & ~((worst > -np.inf) & (best_live <= worst))]] = True
        if floors is not None:
            # Nothing kept or to come reaches the image's floor: its result would be dropped.
            best = np.array([kept[m][0].score if kept[m] else -np.inf for m in images.tolist()])
            stays[images[(best < floors[images]) & (best_live < floors[images])]] = False
        going = stays[g_image]  # per group
        words = np.concatenate([flat_words[parent], token[:, :, None]], axis=2)
        if t == max_length - 1:  # cut: live met hypotheses become unfinished candidates
            for g, j in zip(*np.nonzero((going & g_met)[:, None] & np.isfinite(new_lp)), strict=True):
                keep_best(kept[g_image[g]], make_hypothesis(words[g, j], new_lp[g, j], False, alpha), n_best)
            break
        if not going.any():
            break
        state = tuple(np.take(a, parent[going].reshape(-1), axis=0) for a in state)
        g_image, g_met = g_image[going], g_met[going]
        words, lp, tokens = words[going], new_lp[going], token[going].reshape(-1)
    return kept, finished


def _checked(
    step: FullTopkStepFn, tokens: np.ndarray, state: State, n_rows: int, k: int, end_id: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, State]:
    """step_with_topk's results, their shapes checked, so a broken decoder fails here, not rows later."""
    log_probs, values, ids, new_state = step(tokens, state, k)
    log_probs, values, ids = np.asarray(log_probs), np.asarray(values), np.asarray(ids)
    if log_probs.ndim != 2 or log_probs.shape[0] != n_rows:
        raise ValueError(
            f"step returned log_probs of shape {log_probs.shape} for {n_rows} tokens; expected ({n_rows}, V)"
        )
    if values.shape != ids.shape or values.shape != (n_rows, min(k, log_probs.shape[1])):
        raise ValueError(f"step returned top-k values {values.shape} and ids {ids.shape} for {n_rows} tokens")
    if not 0 <= end_id < log_probs.shape[1]:
        raise ValueError(f"end_id {end_id} is outside the step's vocabulary of {log_probs.shape[1]} tokens")
    if np.isnan(values).any():
        raise ValueError("step returned NaN log-probabilities")
    check_state(new_state, n_rows)
    return log_probs, values, ids.astype(np.int64, copy=False), new_state


def _candidates(
    log_probs: np.ndarray,
    values: np.ndarray,
    ids: np.ndarray,
    g_image: np.ndarray,
    g_met: np.ndarray,
    from_unmet: np.ndarray,
    set_ids: np.ndarray,
    end_id: int,
    k: int,
    banned: tuple[int, ...],
    blocked: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each beam's candidates: (src_row int [G, 2R], then flat (source, token, log_prob) as ``best_candidates``
    reads them, source = beam * 2R + its source index).

    log_probs: [G * R, V], beam-major; values, ids: each row's best, ranked (TopK's order). g_met: [G], the met
    beams; from_unmet: [G], the met beams of constrained images (their unmet beam is the group just before).
    set_ids: [B, W], each image's set padded with the end token. blocked: as repeat_blocked gives it, or None.
    Sources 0..R-1 of a beam are its own rows, each with its k best tokens but the banned and the blocked: a met
    beam's any token (a constrained image's met beam not the end: the caller offers every such end apart), an
    unmet beam's neither the set's words nor the end. Sources R..2R-1 of a constrained image's met beam are its
    unmet rows with the set's words; those of other beams are -1 (no row). Own rows come first, so an
    unconstrained image's candidates rank exactly as in beam_search (equal sums: lower row, then lower token)."""
    n_groups = len(g_image)
    rows = log_probs.shape[0] // max(n_groups, 1)
    own = np.arange(n_groups)[:, None] * rows + np.arange(rows)[None, :]  # [G, R]
    src_row = np.concatenate([own, np.where(from_unmet[:, None], own - rows, -1)], axis=1)
    excluded = excluded_ids(ids, banned, blocked)
    no_end = np.repeat(~g_met | from_unmet, rows)  # rows that may not end here
    excluded |= no_end[:, None] & (ids == end_id)
    unmet = np.flatnonzero(np.repeat(~g_met, rows))
    if unmet.size:  # an unmet row's set words move a hypothesis to the met beam (below), not within its own
        words = set_ids[g_image[unmet // rows]]  # [U, W]
        excluded[unmet] |= (ids[unmet][:, :, None] == words[:, None, :]).any(axis=2)
    values, ids = drop_excluded(values, ids, excluded, k)
    row = np.repeat(np.arange(len(ids)), ids.shape[1])
    source = (row // rows) * 2 * rows + row % rows
    # The unmet rows' set words are candidates of the met beam after them.
    met = np.flatnonzero(from_unmet)
    unmet_rows = own[met - 1][:, :, None]  # [Gm, R, 1]
    set_tok = np.broadcast_to(set_ids[g_image[met]][:, None, :], (len(met), rows, set_ids.shape[1]))
    set_lp = log_probs[unmet_rows, set_tok]  # [Gm, R, W]
    if blocked is not None:
        hit = (set_tok[:, :, :, None] == blocked[unmet_rows[:, :, 0]][:, :, None, :]).any(axis=3)
        set_lp = np.where(hit, -np.inf, set_lp)
    set_source = np.broadcast_to((met * 2 * rows + rows)[:, None, None] + np.arange(rows)[None, :, None],
                                 set_tok.shape)  # fmt: skip
    keep = np.isfinite(set_lp) & (set_tok != end_id)
    return (
        src_row,
        np.concatenate([source, set_source[keep]]),
        np.concatenate([ids.reshape(-1), set_tok[keep]]),
        np.concatenate([values.reshape(-1), set_lp[keep]]),
    )
