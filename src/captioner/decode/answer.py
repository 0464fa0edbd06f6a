"""What an answer shows of a CaptionResult: how many tags, from which probability, gender-neutral wording.

These options shape a finished result and never change decoding, so a cached result serves every combination:
the engine keeps the MAX_TAGS_TOP_K most probable tags and the model's own wording; ``present`` applies the
options. Shared by the CLI, caption-dir and the service.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from captioner.decode.captioner import Candidate, CaptionResult
from captioner.decode.neutral import neutralize
from captioner.encoders.imagenet import MAX_TAGS_TOP_K, select_tags
from captioner.errors import OptionsError

DEFAULT_TAGS_TOP_K = 5
DEFAULT_TAGS_MIN_PROB = 0.05


@dataclass(frozen=True)
class AnswerOptions:
    """tags_top_k: most ImageNet tags per image (0..MAX_TAGS_TOP_K; 0: none). tags_min_prob: drop tags below
    this probability (0..1). gender_neutral: rewrite gendered person words (decode/neutral.py)."""

    tags_top_k: int = DEFAULT_TAGS_TOP_K
    tags_min_prob: float = DEFAULT_TAGS_MIN_PROB
    gender_neutral: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.tags_top_k, int) or not 0 <= self.tags_top_k <= MAX_TAGS_TOP_K:
            raise OptionsError(
                f"tags_top_k must be an integer from 0 to {MAX_TAGS_TOP_K}, got {self.tags_top_k!r}"
            )
        if not 0.0 <= float(self.tags_min_prob) <= 1.0:
            raise OptionsError(f"tags_min_prob must be between 0 and 1, got {self.tags_min_prob!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def present(result: CaptionResult, options: AnswerOptions = AnswerOptions()) -> CaptionResult:
    """``result`` as the answer shows it: tags cut to the options, captions rewritten if gender_neutral."""
    tags = (
        None if result.tags is None else select_tags(result.tags, options.tags_top_k, options.tags_min_prob)
    )
    if not options.gender_neutral:
        return replace(result, tags=tags)
    candidates: dict[str, Candidate] = {}
    for c in result.candidates:  # two captions may read the same once rewritten: keep the better one
        candidates.setdefault(neutralize(c.caption), replace(c, caption=neutralize(c.caption)))
    return replace(
        result, caption=neutralize(result.caption), candidates=tuple(candidates.values()), tags=tags
    )
