"""Experiment (issue 15): self-critical training on training photos the cross-entropy stage never saw.

Not product code. SCST on the shipped model's own training photos raised their reward while dev CIDEr fell: the
cross-entropy model already fits those references far better than dev's (models/default/README.md). The issue
suggests holding out part of train; this run does that: the cross-entropy stage of ``captioner train
--limit-images N`` saw the first N training photos, and the pipeline's own SCST stage
(``pipeline.self_critical_stage``: CIDEr-D reward, document frequencies of all training references) runs on the
others; SCST records the dev greedy scores of every epoch.

    captioner train --data-root ../shared/data/flickr8k --run-dir runs/ce5000 --cache-dir CACHE --limit-images 5000 \
        [the default recipe's other flags, models/default/README.md]
    PYTHONPATH=src python scripts/experiments/scst_holdout.py --data-root ../shared/data/flickr8k \
        --run-dir runs/ce5000 --cache-dir CACHE --out runs/ce5000/scst-mean [--epochs 6] [--lr 2e-5] [--baseline mean]

Resumable (SCST's state under --out); prints the per-epoch history (also in <out>/state.json).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from captioner.data.flickr8k import load_flickr8k
from captioner.encoders.runtime import OnnxEncoder
from captioner.model.config import TrainConfig
from captioner.model.training import train
from captioner.pipeline import dataset_features, encoder_file, make_score_fn, self_critical_stage


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
    features = dataset_features(dataset, encoder, args.cache_dir, splits, progress=False, augment_split=flip)
    score_fn = make_score_fn(dataset, args.run_dir / "vocabulary.json")
    # The finished cross-entropy stage is reused, not retrained.
    model, result = train(dataset, features, args.run_dir, config, score_fn=score_fn, progress=False)
    held_out = [n for n in dataset.available(config.train_split) if n in features][config.limit_images :]
    print(
        f"cross-entropy: best epoch {result.best_epoch}, {result.best_scores}; SCST on {len(held_out)} photos"
    )
    scst_config = replace(
        config, scst_epochs=args.epochs, scst_learning_rate=args.lr, scst_baseline=args.baseline
    )
    self_critical_stage(
        dataset, features, model, result, args.run_dir, scst_config, score_fn, False, held_out, args.out
    )
    print(json.dumps(json.loads((args.out / "state.json").read_text())["history"], indent=1))


if __name__ == "__main__":
    main()
