"""Decoding options: one frozen, validated value object shared by the CLI, evaluation and the service."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

from captioner.errors import OptionsError

Strategy = Literal["greedy", "beam"]

# Hard limits: the service exposes these options to the internet, so every one is bounded.
MAX_BEAM_SIZE = 10
MAX_LENGTH_LIMIT = 64
MAX_LENGTH_PENALTY = 5.0
MAX_NO_REPEAT_NGRAM = 8
MAX_CONSENSUS_NEIGHBOURS = 50
MAX_CONSENSUS_WEIGHT = 10.0
MAX_SCORE_DROP = 10.0  # label_constraint_max_score_drop; scores are mean log-probabilities, about -0.3 to -3


@dataclass(frozen=True)
class DecodeOptions:
    """How to turn decoder log-probabilities into captions.

    strategy: "greedy" (argmax each step) or "beam" (beam search).
    beam_size: hypotheses kept per image for beam search (1..MAX_BEAM_SIZE).
    max_length: most words in a caption, excluding the start/end tokens (1..MAX_LENGTH_LIMIT).
    length_penalty: alpha in score = log_prob / length**alpha; 0 ranks by raw log-probability.
    n_best: how many finished hypotheses to return per image (1..beam_size; 1 for greedy).
    no_repeat_ngram: n (2..MAX_NO_REPEAT_NGRAM): no caption repeats n words in a row ("a red shirt and a red
    shirt"); 0: no such rule. 3 removed every repeated trigram on dev at no cost in the scores.
    label_constraint: name what the encoder's ImageNet head sees (decode/constraint.py, model/labels.py): when the
    word mass of the head's classes that the model's label map names (tabby 0.4 + tiger cat 0.3 -> "cat" 0.7)
    reaches label_constraint_min_prob and the plain caption holds none of those words, the caption is searched
    again, required to hold one ("a cat ..."). The constrained caption replaces the plain one when its score is at
    most label_constraint_max_score_drop below the plain one's, or whatever its score when the mass reaches
    label_constraint_always_prob. False, or a model without a label map or ImageNet head: plain search.
    exact_stop: beam search only. True: an image's search goes on while any live hypothesis could still beat its
    n_best-th finished one at some length up to max_length (the same captions as searching to max_length);
    False: while one could if it ended at the next step (Hugging Face's ``early_stopping=False``). On Flickr8k dev
    False decodes ~20% faster at batch 4 and changes 5 of 1,000 captions, at equal scores (models/default/README.md).
    consensus_neighbours: k of consensus reranking (model/consensus.py; beam search only): the beam's candidates
    are reordered by CIDEr-D against the captions of the k training images nearest to the photo, plus
    consensus_weight times the model's own score; 0, or a model without a consensus memory: the beam's order.
    """

    # Defaults chosen on the Flickr8k dev split with the shipped model (beam 3 with alpha 0.7 gave the best BLEU-4;
    # see models/default/README.md).
    strategy: Strategy = "beam"
    beam_size: int = 3
    max_length: int = 30
    length_penalty: float = 0.7
    n_best: int = 1
    no_repeat_ngram: int = 3
    exact_stop: bool = False
    label_constraint: bool = True
    label_constraint_min_prob: float = 0.1
    label_constraint_max_score_drop: float = 0.3
    label_constraint_always_prob: float = 0.5
    consensus_neighbours: int = 10
    consensus_weight: float = 0.2

    def __post_init__(self) -> None:
        if self.strategy not in ("greedy", "beam"):
            raise OptionsError(f"strategy must be 'greedy' or 'beam', got {self.strategy!r}")
        if not isinstance(self.beam_size, int) or not 1 <= self.beam_size <= MAX_BEAM_SIZE:
            raise OptionsError(
                f"beam_size must be an integer from 1 to {MAX_BEAM_SIZE}, got {self.beam_size!r}"
            )
        if not isinstance(self.max_length, int) or not 1 <= self.max_length <= MAX_LENGTH_LIMIT:
            raise OptionsError(
                f"max_length must be an integer from 1 to {MAX_LENGTH_LIMIT}, got {self.max_length!r}"
            )
        if not 0.0 <= float(self.length_penalty) <= MAX_LENGTH_PENALTY:
            raise OptionsError(
                f"length_penalty must be between 0 and {MAX_LENGTH_PENALTY:g}, got {self.length_penalty!r}"
            )
        width = 1 if self.strategy == "greedy" else self.beam_size
        if not isinstance(self.n_best, int) or not 1 <= self.n_best <= width:
            raise OptionsError(
                f"n_best must be an integer from 1 to {width} (the beam size; 1 for greedy), got {self.n_best!r}"
            )

        if not isinstance(self.no_repeat_ngram, int) or not (
            self.no_repeat_ngram == 0 or 2 <= self.no_repeat_ngram <= MAX_NO_REPEAT_NGRAM
        ):
            raise OptionsError(
                f"no_repeat_ngram must be 0 (off) or an integer from 2 to {MAX_NO_REPEAT_NGRAM}, "
                f"got {self.no_repeat_ngram!r}"
            )

        if not isinstance(self.exact_stop, bool):
            raise OptionsError(f"exact_stop must be true or false, got {self.exact_stop!r}")
        if not isinstance(self.label_constraint, bool):
            raise OptionsError(f"label_constraint must be true or false, got {self.label_constraint!r}")
        for name in ("label_constraint_min_prob", "label_constraint_always_prob"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, int | float) and 0.0 < value <= 1.0):
                raise OptionsError(f"{name} must be a probability above 0 and at most 1, got {value!r}")
        drop = self.label_constraint_max_score_drop
        if isinstance(drop, bool) or not (isinstance(drop, int | float) and 0.0 <= drop <= MAX_SCORE_DROP):
            raise OptionsError(
                f"label_constraint_max_score_drop must be between 0 and {MAX_SCORE_DROP:g}, got {drop!r}"
            )

        k = self.consensus_neighbours
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= MAX_CONSENSUS_NEIGHBOURS:
            raise OptionsError(
                f"consensus_neighbours must be 0 (off) or an integer up to {MAX_CONSENSUS_NEIGHBOURS}, got {k!r}"
            )
        if not 0.0 <= float(self.consensus_weight) <= MAX_CONSENSUS_WEIGHT:
            raise OptionsError(
                f"consensus_weight must be between 0 and {MAX_CONSENSUS_WEIGHT:g}, got {self.consensus_weight!r}"
            )

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # flat: asdict's deep copy costs ~60 us
