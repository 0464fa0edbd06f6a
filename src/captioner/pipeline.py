"""The training pipeline end to end: captions -> vocabulary -> features -> decoder -> dev scores -> bundle.

Every long step caches under ``cache_dir`` / ``run_dir`` and resumes: the encoder export, the features, the
Keras fit (BackupAndRestore). This module wires the layers; each step lives in its own module.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from captioner.data.flickr8k import load_flickr8k
from captioner.decode.options import DecodeOptions
from captioner.encoders.augment import PhotoView
from captioner.encoders.export import export_encoder
from captioner.encoders.features import extract_features
from captioner.encoders.providers import DEFAULT_EXECUTION_PROVIDER
from captioner.encoders.registry import get_encoder_spec
from captioner.encoders.runtime import OnnxEncoder
from captioner.model.config import TrainConfig

log = logging.getLogger(__name__)

DEFAULT_WORDNET = Path("/usr/share/wordnet")  # Debian's wordnet-base

# Model selection during training: greedy captions of the dev split scored by CIDEr (cheap: no Java).
SELECTION_OPTIONS = DecodeOptions(strategy="greedy", max_length=25)


def encoder_file(
    name: str, cache_dir: Path, weights: str | None = "imagenet", weights_dtype: str = "float32"
) -> Path:
    """The encoder's ONNX file under cache_dir, exported once."""
    get_encoder_spec(name)
    tag = "random" if weights is None else ("imagenet" if weights == "imagenet" else Path(weights).stem)
    suffix = "-fp16" if weights_dtype == "float16" else ""
    path = Path(cache_dir) / "encoders" / f"{name}-{tag}{suffix}.onnx"
    if not path.is_file():
        log.info("exporting %s to %s", name, path)
        export_encoder(name, path, weights, weights_dtype)
    return path


def dataset_features(
    dataset,
    encoder: OnnxEncoder,
    cache_dir: Path,
    splits,
    batch_size: int = 32,
    progress=True,
    augment_split=None,
    flip: bool = True,
    views: int = 0,
):
    """{image name: features [F]} for every available image of ``splits``, cached per encoder.

    augment_split: also extract, for each image of this split, the mirrored image's features (``flip``) and those
    of ``views`` random views (encoders/augment.py: PhotoView 1..views); its images then map to [1 + flip + views,
    F], view 0 the image itself.
    """
    names = sorted({n for s in splits for n in dataset.available(s)})
    root = Path(cache_dir) / "features" / encoder.name
    out = dict(
        zip(
            names,
            extract_features(names, dataset.image_dir, encoder, root, batch_size, progress),
            strict=True,
        )
    )
    if augment_split and (flip or views):
        augmented = dataset.available(augment_split)

        def cached(view: PhotoView | None) -> np.ndarray:  # None: the mirrored images
            folder = root / (f"view{view.number}-{augment_split}" if view else f"flip-{augment_split}")
            return extract_features(
                augmented, dataset.image_dir, encoder, folder, batch_size, progress, view is None, view
            )

        extra = [cached(None)] if flip else []
        extra += [cached(PhotoView(v)) for v in range(1, views + 1)]
        for i, name in enumerate(augmented):
            out[name] = np.stack([out[name], *(e[i] for e in extra)])
    return out


def make_score_fn(dataset, vocabulary_path: Path, options: DecodeOptions = SELECTION_OPTIONS):
    """score_fn for training.train: greedy-caption the dev features, return BLEU-4 and CIDEr."""
    from captioner.data.vocabulary import Vocabulary
    from captioner.decode.search import search
    from captioner.evaluation.metrics import compute_metrics

    def score(decoder, features: np.ndarray, names: list[str]) -> dict[str, float]:
        vocab = Vocabulary.load(vocabulary_path)
        hyps = search(decoder.step, decoder.initial_state(features), options, vocab.start_id, vocab.end_id)
        captions = {n: vocab.decode(h[0].tokens) for n, h in zip(names, hyps, strict=True)}
        metrics = compute_metrics({n: dataset.captions[n] for n in names}, captions, meteor=False)
        distinct = float(len(set(captions.values())))
        return {"BLEU-4": metrics["BLEU-4"], "CIDEr": metrics["CIDEr"], "distinct": distinct}

    return score


def self_critical_stage(
    dataset, features, model, result, run_dir: Path, config: TrainConfig, score_fn, progress,
    names: list[str] | None = None, out_dir: Path | None = None,
):  # fmt: skip
    """Fine-tune the cross-entropy ``model`` in place by SCST with a CIDEr-D reward (document frequencies of all
    the training photos' references); resumes under ``out_dir`` (default run_dir/scst). Returns the manifest's
    summary of the stage.

    names: the training photos SCST runs on; default: those of the cross-entropy stage (the first
    ``config.limit_images`` when set). scripts/experiments/scst_holdout.py passes the others: photos whose
    references the cross-entropy stage never fitted."""
    from captioner.data.cider import CiderD, WordIds
    from captioner.data.text import normalize_caption
    from captioner.model.scst import scst

    vocab = result.vocabulary
    feature_size = result.decoder_config.feature_size
    all_train = [n for n in dataset.available(config.train_split) if n in features]
    if names is None:
        names = all_train[: config.limit_images] if config.limit_images else all_train
    dev_names = [n for n in dataset.available(config.dev_split) if n in features]
    words = WordIds()
    train_refs = {n: [words(normalize_caption(c)) for c in dataset.captions[n]] for n in all_train}
    cider = CiderD(list(train_refs.values()))
    refs = [train_refs[n] for n in names]

    def reward(captions, image_index):
        return cider([words(vocab.decode(c)) for c in captions], [refs[i] for i in image_index])

    def views(photos):
        return np.stack([np.reshape(features[n], (-1, feature_size)) for n in photos]).astype(np.float32)

    special = {"pad": vocab.pad_id, "start": vocab.start_id, "end": vocab.end_id, "unk": vocab.unk_id}
    state = scst(
        model, result.decoder_config, views(names), reward, special, out_dir or run_dir / "scst",
        config.scst_config(), score_fn, views(dev_names)[:, 0], dev_names, progress,
    )  # fmt: skip
    seconds = sum(r.get("seconds", 0.0) for r in state["history"])
    return {
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "dev_selection_scores": next((r for r in state["history"] if r["epoch"] == state["best_epoch"]), {}),
        "seconds": round(seconds, 1),
        "reward": "CIDEr-D, document frequencies of the training references",
    }


def train_pipeline(
    data_root: str | Path,
    run_dir: str | Path,
    config: TrainConfig = TrainConfig(),
    cache_dir: str | Path = "cache",
    out: str | Path | None = None,
    encoder_weights: str | None = "imagenet",
    image_dir: str | Path | None = None,
    progress: bool = True,
    execution_provider: str = DEFAULT_EXECUTION_PROVIDER,
    wordnet_dir: str | Path | None = None,
) -> Path:
    """Train a decoder on a Flickr8k folder and export a bundle (to ``out``, default run_dir/bundle) with its
    consensus memory and label map (wordnet_dir: see ``decoding_parts``).

    execution_provider: where feature extraction's encoder runs (encoders/providers.py: auto picks CUDA when
    onnxruntime offers it). The decoder trains wherever TensorFlow puts it (a visible GPU, else the CPU).
    """
    from captioner.model.bundle import save_bundle
    from captioner.model.training import train

    run_dir, cache_dir = Path(run_dir), Path(cache_dir)
    dataset = load_flickr8k(data_root, image_dir)
    onnx_path = encoder_file(config.encoder, cache_dir, encoder_weights, config.encoder_weights_dtype)
    encoder = OnnxEncoder(onnx_path, execution_provider=execution_provider)
    log.info("feature extraction runs on %s", encoder.provider)
    features = dataset_features(
        dataset, encoder, cache_dir, [config.train_split, config.dev_split], progress=progress,
        augment_split=config.train_split, flip=config.flip_augment, views=config.augment_views,
    )  # fmt: skip
    score_fn = make_score_fn(dataset, run_dir / "vocabulary.json")
    model, result = train(dataset, features, run_dir, config, score_fn=score_fn, progress=progress)
    scst_summary = (
        self_critical_stage(dataset, features, model, result, run_dir, config, score_fn, progress)
        if config.scst_epochs
        else None
    )
    training = {
        "config": replace(config).to_dict(),
        "best_epoch": result.best_epoch,
        "dev_selection_scores": result.best_scores,
        "train_seconds": round(result.seconds, 1),
        "train_images": len(dataset.available(config.train_split)),
        "data": "Flickr8k (Hodosh, Young & Hockenmaier 2013, JAIR 47:853-899)",
    }
    if scst_summary is not None:
        training["scst"] = scst_summary
    path = save_bundle(
        out or run_dir / "bundle",
        model,
        result.vocabulary,
        result.decoder_config,
        onnx_path,
        training=training,
    )
    decoding_parts(path, dataset, cache_dir / "features" / encoder.name, wordnet_dir, progress)
    return path


def decoding_parts(path: Path, dataset, features_dir: Path, wordnet_dir, progress):
    """Add what decoding uses beside the decoder to a new bundle: the consensus memory (training photos'
    features and captions) and the label map (WordNet from wordnet_dir, default /usr/share/wordnet if present)."""
    from captioner.model.bundle import record_consensus, record_labels
    from captioner.model.consensus import build_bundle_consensus
    from captioner.model.labelling import build_bundle_labels

    # Both read the training photos' features from the cache this run wrote (features_dir).
    memory = build_bundle_consensus(path, dataset.root, features_dir, dataset.image_dir, progress=progress)
    record_consensus(path, memory)
    wordnet = Path(wordnet_dir) if wordnet_dir is not None else DEFAULT_WORDNET
    found = wordnet.is_dir()
    if not found:
        log.warning(
            "no WordNet at %s: the label map uses the class names and the training captions only", wordnet
        )
    labels = build_bundle_labels(
        path, dataset.root, features_dir, wordnet if found else None, image_dir=dataset.image_dir,
        progress=progress,
    )  # fmt: skip
    record_labels(path, labels)
