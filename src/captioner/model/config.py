"""Typed settings of the decoder and of a training run, stored with the model. No I/O here."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class DecoderConfig:
    """Shape of the LSTM decoder; with the weights, all that is needed to rebuild it.

    vocab_size: V, including the 4 special tokens. feature_size: F of the encoder's pooled vector.
    embed_dim: E, word embedding and image projection size. hidden_dim: H, LSTM units.
    max_length: most words in a training caption (sequences are max_length + 1 long with start/end).
    """

    vocab_size: int
    feature_size: int
    embed_dim: int = 256
    hidden_dim: int = 512
    dropout: float = 0.5
    max_length: int = 30
    feature_dropout: float = 0.5  # dropout on the encoder's pooled features (training only)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "feature_size", "embed_dim", "hidden_dim", "max_length"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"DecoderConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("dropout", "feature_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"DecoderConfig.{name} must be in [0, 1), got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DecoderConfig:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass(frozen=True)
class TrainConfig:
    """One training run: data, encoder, optimisation and early stopping. Saved as run_config.json.

    The defaults are the recipe of the shipped models/default (its manifest's ``training.config``), so
    ``captioner train --data-root DIR`` trains that model again. The CLI's flags take their defaults from here.
    """

    encoder: str = "efficientnet_lite2"
    encoder_weights_dtype: str = "float16"  # "float16": half-size encoder file (compute stays float32)
    min_count: int = 5  # words seen fewer times in the training captions become <unk>
    max_length: int = 22  # longer training captions are cut (words, without start/end)
    embed_dim: int = 256
    hidden_dim: int = 512
    dropout: float = 0.5
    feature_dropout: float = 0.25
    batch_size: int = 64
    epochs: int = 20
    learning_rate: float = 1e-3
    label_smoothing: float = 0.0
    patience: int = 4  # epochs without a better dev score before stopping
    seed: int = 1234
    train_split: str = "train"
    dev_split: str = "dev"
    flip_augment: bool = True  # also train on features of mirrored images (a random view per caption)
    augment_views: int = 0  # and of this many random views per photo (encoders/augment.py)
    limit_images: int | None = None  # use only the first N training images (smoke runs)
    # Self-critical sequence training after cross-entropy (model/scst.py); scst_epochs 0 skips it.
    scst_epochs: int = 0  # the shipped model has none: SCST did not beat it on dev (models/default/README.md)
    scst_learning_rate: float = 2e-5
    scst_samples: int = 5  # captions drawn per image per update
    scst_baseline: str = "mean"  # "greedy" (Rennie et al.) or "mean" (the other samples' mean reward)

    def __post_init__(self) -> None:
        counts = ("min_count", "max_length", "embed_dim", "hidden_dim", "batch_size", "epochs", "patience")
        for name in counts:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be an integer >= 1, got {value!r}")
        for name in ("dropout", "feature_dropout", "label_smoothing"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"TrainConfig.{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"TrainConfig.learning_rate must be > 0, got {self.learning_rate!r}")
        if self.encoder_weights_dtype not in ("float32", "float16"):
            raise ValueError(
                f"TrainConfig.encoder_weights_dtype must be 'float32' or 'float16', got {self.encoder_weights_dtype!r}"
            )
        if not isinstance(self.augment_views, int) or self.augment_views < 0:
            raise ValueError(f"TrainConfig.augment_views must be an integer >= 0, got {self.augment_views!r}")
        if not isinstance(self.scst_epochs, int) or self.scst_epochs < 0:
            raise ValueError(f"TrainConfig.scst_epochs must be an integer >= 0, got {self.scst_epochs!r}")
        if self.scst_epochs:
            self.scst_config()  # validates the SCST fields
        limit = self.limit_images
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ValueError(f"TrainConfig.limit_images must be None or an integer >= 1, got {limit!r}")

    def scst_config(self) -> ScstConfig:
        """The ScstConfig of this run's SCST stage (ValueError if its fields are invalid, or scst_epochs is 0)."""
        return ScstConfig(
            epochs=self.scst_epochs, learning_rate=self.scst_learning_rate, samples=self.scst_samples,
            baseline=self.scst_baseline, seed=self.seed,
        )  # fmt: skip

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass(frozen=True)
class ScstConfig:
    """epochs: passes over the training images. batch_images: images per update; samples: captions drawn per
    image. learning_rate: Adam's (fine-tuning: ~100x below cross-entropy's). max_length: most words sampled.
    baseline: "greedy" (the paper's) or "mean" (the other samples' mean reward). dropout: whether the update's
    forward pass uses the decoder's training dropout. patience: epochs without a better dev score before stopping."""

    epochs: int = 15
    batch_images: int = 32
    samples: int = 5
    learning_rate: float = 2e-5
    max_length: int = 20
    baseline: str = "greedy"
    dropout: bool = True  # the update runs the decoder with its training dropout (regularises; see scst.py)
    patience: int = 3
    seed: int = 1234

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_images", "samples", "max_length", "patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ScstConfig.{name} must be an integer >= 1, got {value!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"ScstConfig.learning_rate must be > 0, got {self.learning_rate!r}")
        if self.baseline not in ("greedy", "mean"):
            raise ValueError(f"ScstConfig.baseline must be 'greedy' or 'mean', got {self.baseline!r}")
        if self.baseline == "mean" and self.samples < 2:
            raise ValueError("ScstConfig.baseline='mean' needs samples >= 2")

    def to_dict(self) -> dict:
        return asdict(self)
