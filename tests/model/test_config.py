"""Training and decoder settings: the defaults are the shipped model's recipe, and bad values are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from captioner.model.config import TrainConfig

REPO = Path(__file__).resolve().parents[2]


def test_train_config_defaults_are_the_shipped_models_recipe():
    manifest = json.loads((REPO / "models" / "default" / "manifest.json").read_text())
    assert TrainConfig().to_dict() == manifest["training"]["config"]


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"max_length": 2.5}, "max_length must be an integer >= 1"),
        ({"epochs": -1}, "epochs"),
        ({"dropout": 1.0}, "dropout must be in [0, 1)"),
        ({"label_smoothing": -0.1}, "label_smoothing"),
        ({"learning_rate": 0.0}, "learning_rate must be > 0"),
        ({"encoder_weights_dtype": "int8"}, "'float32' or 'float16'"),
        ({"limit_images": 0}, "limit_images"),
        ({"augment_views": -1}, "augment_views must be an integer >= 0"),
        ({"augment_views": 1.5}, "augment_views"),
        ({"scst_epochs": -1}, "scst_epochs"),
        ({"scst_epochs": 2, "scst_baseline": "best"}, "baseline"),
        ({"scst_epochs": 2, "scst_learning_rate": 0.0}, "ScstConfig.learning_rate"),
    ],
)
def test_train_config_refuses_bad_values(change, needle):
    with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace(")", r"\)")):
        TrainConfig(**change)


def test_train_config_round_trips():
    config = TrainConfig(batch_size=8, limit_images=10)
    assert TrainConfig.from_dict(config.to_dict()) == config
