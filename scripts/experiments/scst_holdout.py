"""Experiment (issue 15): self-critical training on training photos the cross-entropy stage never saw.

Not product code. SCST on the shipped model's own training photos raised their reward while dev CIDEr fell: the
cross-entropy model already fits those references far better than dev's (models/default/README.md). The issue
suggests holding out part of train; this run does that: the cross-entropy stage of ``captioner train
--limit-images N`` saw the first N training photos, SCST (``captioner.model.scst``, CIDEr-D reward with the
document frequencies of all training references) runs on the others, and the dev greedy scores of every epoch are
recorded by SCST's own selection.

    captioner train --data-root ../shared/data/flickr8k --run-dir runs/ce5000 --cache-dir CACHE --limit-images 5000 \
        [the default recipe's other flags, models/default/README.md]
    PYTHONPATH=src python scripts/experiments/scst_holdout.py --data-root ../shared/data/flickr8k \
        --run-dir runs/ce5000 --cache-dir CACHE --out runs/ce5000/scst-mean [--epochs 6] [--lr 2e-5] [--baseline mean]

Resumable (SCST's state under --out); prints and writes <out>/state.json with the per-epoch history.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from captioner.data.cider import CiderD, WordIds
from captioner.data.flickr8k import load_flickr8k
from captioner.data.text import normalize_caption
from captioner.encoders.runtime import OnnxEncoder
from captioner.model.config import ScstConfig, TrainConfig
from captioner.model.scst import scst
from captioner.model.training import train
from captioner.pipeline import dataset_features, encoder_file, make_score_fn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument(
        "--run-dir", type=Path, required=True, help="a finished 'captioner train --limit-images'"
    )
    parser.add_argument("--cache-dir", type=Path, default=Path("cache"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--baseline", choices=["greedy", "mean"], default="mean")
    args = parser.parse_args()

    config = TrainConfig.from_dict(json.loads((args.run_dir / "run_config.json").read_text())["train"])
    if not config.limit_images:
        raise SystemExit("the run's cross-entropy stage saw every training photo: nothing is held out")
    dataset = load_flickr8k(args.data_root)
    encoder = OnnxEncoder(
        encoder_file(config.encoder, args.cache_dir, "imagenet", config.encoder_weights_dtype)
    )
    flip = config.train_split if config.flip_augment else None
    splits = [config.train_split, config.dev_split]
    features = dataset_features(dataset, encoder, args.cache_dir, splits, progress=False, flip_split=flip)
    score_fn = make_score_fn(dataset, args.run_dir / "vocabulary.json")
    # The finished cross-entropy stage is reused, not retrained.
    model, result = train(dataset, features, args.run_dir, config, score_fn=score_fn, progress=False)
    vocab, size = result.vocabulary, result.decoder_config.feature_size
    train_names = [n for n in dataset.available(config.train_split) if n in features]
    held_out = train_names[config.limit_images :]
    dev_names = [n for n in dataset.available(config.dev_split) if n in features]
    words = WordIds()
    cider = CiderD([[words(normalize_caption(c)) for c in dataset.captions[n]] for n in train_names])
    refs = [[words(normalize_caption(c)) for c in dataset.captions[n]] for n in held_out]

    def reward(captions, image_index):
        return cider([words(vocab.decode(c)) for c in captions], [refs[i] for i in image_index])

    def views(names):
        return np.stack([np.reshape(features[n], (-1, size)) for n in names]).astype(np.float32)

    print(
        f"cross-entropy: best epoch {result.best_epoch}, {result.best_scores}; SCST on {len(held_out)} photos"
    )
    special = {"pad": vocab.pad_id, "start": vocab.start_id, "end": vocab.end_id, "unk": vocab.unk_id}
    scst_config = ScstConfig(
        epochs=args.epochs,
        learning_rate=args.lr,
        baseline=args.baseline,
        patience=args.epochs,
        seed=config.seed,
    )
    state = scst(
        model, result.decoder_config, views(held_out), reward, special, args.out, scst_config, score_fn,
        views(dev_names)[:, 0], dev_names, progress=False,
    )  # fmt: skip
    print(json.dumps(state["history"], indent=1))


if __name__ == "__main__":
    main()
