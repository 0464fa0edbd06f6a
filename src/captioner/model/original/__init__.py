"""The original design's artefacts, served by our engine without TensorFlow or Keras.

The original (the classic Keras "merge" captioner) shipped ``caption_model.keras``, optionally
``weights/caption_model.weights.h5``, and ``tokenizer.pkl`` (a pickled Keras ``Tokenizer``), with InceptionV3
pooled features (2048-d, 299x299, ``x / 127.5 - 1``). ``tokenizer.py`` reads the tokenizer safely, ``merge.py``
the model (zipfile + h5py), ``merge_step.py`` runs it one token at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from captioner.errors import BundleError
from captioner.model.original.merge import MergeModel, read_merge_model
from captioner.model.original.merge_step import MergeStepDecoder
from captioner.model.original.tokenizer import OriginalVocabulary, safe_load_tokenizer

__all__ = ["OriginalModel", "load_original"]


@dataclass(frozen=True)
class OriginalModel:
    """An original model ready to decode: the NumPy reference step, its vocabulary and its sizes."""

    reference: MergeStepDecoder
    vocabulary: OriginalVocabulary
    model: MergeModel

    @property
    def max_length(self) -> int:
        return self.model.max_length


def load_original(
    model_path: str | Path,
    tokenizer_path: str | Path,
    weights_path: str | Path | None = None,
    feature_size: int | None = None,
) -> OriginalModel:
    """Read ``caption_model.keras`` (+ ``weights_path``) and ``tokenizer.pkl`` and check they belong together.

    feature_size: the width of the caller's encoder (2048 for InceptionV3); the model's feature input must match.
    Raises BundleError for missing, unsafe or mismatched artefacts.
    """
    vocabulary = safe_load_tokenizer(tokenizer_path)
    model = read_merge_model(model_path, weights_path)
    if feature_size is not None and model.feature_size != feature_size:
        raise BundleError(
            f"{model_path} expects {model.feature_size}-d image features but the encoder gives {feature_size}-d; "
            "use the encoder the model was trained with (the tutorial used InceptionV3, 2048-d)"
        )
    size, words = model.vocab_size, len(vocabulary.word_index) + 1
    if size != len(vocabulary) and not (vocabulary.num_words and size == words):
        raise BundleError(
            f"{model_path} scores {size} ids but the tokenizer has {words} (len(word_index) + 1"
            f"{f', num_words={vocabulary.num_words}' if vocabulary.num_words else ''}); "
            "the model and tokenizer.pkl come from different training runs"
        )
    if size != len(
        vocabulary
    ):  # the tutorial sized the softmax len(word_index) + 1 even with a num_words cap
        vocabulary = replace(vocabulary, size=size)
    return OriginalModel(MergeStepDecoder.from_model(model), vocabulary, model)
