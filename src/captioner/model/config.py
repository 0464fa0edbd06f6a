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
    """One training run: data, encoder, optimisation and early stopping. Saved as run_config.json."""

    encoder: str = "efficientnet_lite0"
    encoder_weights_dtype: str = "float32"  # "float16": half-size encoder file (compute stays float32)
    min_count: int = 5
    max_length: int = 30
    embed_dim: int = 256
    hidden_dim: int = 512
    dropout: float = 0.5
    feature_dropout: float = 0.5
    batch_size: int = 64
    epochs: int = 30
    learning_rate: float = 2e-3
    label_smoothing: float = 0.0
    patience: int = 3
    seed: int = 1234
    train_split: str = "train"
    dev_split: str = "dev"
    flip_augment: bool = False  # also train on features of mirrored images (a random view per caption)
    limit_images: int | None = None  # use only the first N training images (smoke runs)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})
