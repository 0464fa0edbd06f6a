"""The one command-line program: ``captioner train|evaluate|caption|caption-dir|import-original|build-labels|export-encoder|info|serve|download``.

Flag names equal the keyword names of the functions they call. Every user error prints one line
(``error: ...``) and exits with status 2; no tracebacks.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

import typer

from captioner.decode.answer import AnswerOptions, present
from captioner.decode.options import (
    MAX_BEAM_SIZE,
    MAX_LENGTH_LIMIT,
    MAX_LENGTH_PENALTY,
    DecodeOptions,
)
from captioner.encoders.providers import DEFAULT_EXECUTION_PROVIDER
from captioner.errors import CaptionerError
from captioner.model.backends import DecoderBackend
from captioner.model.config import TrainConfig

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Image captioning: train on Flickr8k, evaluate, caption images, serve a REST API.",
)

BundleOpt = Annotated[
    Path | None, typer.Option("--bundle", help="Model bundle folder (default: the shipped models/default).")
]
BundleSha256Opt = Annotated[
    str | None,
    typer.Option(help="Refuse the bundle unless its digest (bundle_sha256 of 'captioner info') is this one."),
]
ProviderOpt = Annotated[
    str,
    typer.Option(
        "--execution-provider", help="onnxruntime provider: auto (CUDA if offered), cpu, cuda or tensorrt."
    ),
]

# The decoding flags, declared once for every command that captions; defaults from DecodeOptions, which also
# validates them (one-line error), so the bounds below are only its constants, named in the help.
_DECODE = DecodeOptions()
StrategyOpt = Annotated[str, typer.Option(help="greedy or beam.")]
BeamSizeOpt = Annotated[int, typer.Option(help=f"Beam width (1-{MAX_BEAM_SIZE}).")]
MaxLengthOpt = Annotated[int, typer.Option(help=f"Most words per caption (1-{MAX_LENGTH_LIMIT}).")]
LengthPenaltyOpt = Annotated[
    float, typer.Option(help=f"alpha in score = log_prob / length**alpha (0-{MAX_LENGTH_PENALTY:g}).")
]
NBestOpt = Annotated[int, typer.Option(help="Captions returned per image (<= beam size; 1 for greedy).")]
LabelConstraintOpt = Annotated[
    bool,
    typer.Option(
        help="When the encoder's top ImageNet class is confident, the caption must name it with a word of the "
        "bundle's label map (labels.json)."
    ),
]
LabelConstraintMinProbOpt = Annotated[
    float, typer.Option(help="Least word mass (class probability) that triggers the label constraint (0-1].")
]
LabelConstraintMaxScoreDropOpt = Annotated[
    float,
    typer.Option(
        help="Keep a caption made to name the object only if it scores at most this below the plain one."
    ),
]
LabelConstraintAlwaysProbOpt = Annotated[
    float, typer.Option(help="From this word mass keep the named caption whatever its score (0-1].")
]
FeatureCacheOpt = Annotated[
    Path | None,
    typer.Option(
        help="Feature cache of the bundle's encoder over the sorted train+dev photos (the training pipeline's "
        "CACHE_DIR/features/ENCODER; only read). Default: run the encoder on the training photos."
    ),
]
TrainingPhotosOpt = Annotated[Path, typer.Option(help="Flickr8k folder: its training captions and photos.")]
ConsensusNeighboursOpt = Annotated[
    int,
    typer.Option(
        help="Consensus reranking: choose among the beam's captions by agreement with the captions of this many "
        "nearest training photos (the bundle's consensus.npz; 0: off)."
    ),
]
ConsensusWeightOpt = Annotated[
    float, typer.Option(help="Weight of the model's own score beside the consensus in that choice (0-10).")
]
DecoderBackendOpt = Annotated[
    DecoderBackend | None,
    typer.Option(
        "--decoder-backend",
        "--decoder",  # the flag's first name, kept for the scripts that use it
        help="Decoder step: onnx-int8 (int8 matmuls), onnx (float32, the trained model exactly) or numpy "
        "(default: onnx-int8 on the CPU, onnx on a GPU).",
    ),
]
TagsTopKOpt = Annotated[int, typer.Option(help="Most ImageNet tags per image (0-20; 0: none).")]
TagsMinProbOpt = Annotated[float, typer.Option(help="Leave out tags less probable than this (0-1).")]
GenderNeutralOpt = Annotated[
    bool, typer.Option("--gender-neutral", help="person/child/they instead of man/woman/boy/girl/he/she.")
]
_ANSWER = AnswerOptions()


def _options(given: dict[str, Any]) -> DecodeOptions:
    """DecodeOptions from a command's parameters (its ``locals()``): every field the command has a flag for;
    the others keep their defaults. Flags and fields share their names."""
    return DecodeOptions(**{f.name: given[f.name] for f in fields(DecodeOptions) if f.name in given})


@app.command()
def caption(
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    tags_top_k: TagsTopKOpt = _ANSWER.tags_top_k,
    tags_min_prob: TagsMinProbOpt = _ANSWER.tags_min_prob,
    gender_neutral: GenderNeutralOpt = False,
    bundle: BundleOpt = None,
    strategy: StrategyOpt = _DECODE.strategy,
    beam_size: BeamSizeOpt = _DECODE.beam_size,
    max_length: MaxLengthOpt = _DECODE.max_length,
    length_penalty: LengthPenaltyOpt = _DECODE.length_penalty,
    n_best: NBestOpt = _DECODE.n_best,
    label_constraint: LabelConstraintOpt = _DECODE.label_constraint,
    label_constraint_min_prob: LabelConstraintMinProbOpt = _DECODE.label_constraint_min_prob,
    label_constraint_max_score_drop: LabelConstraintMaxScoreDropOpt = _DECODE.label_constraint_max_score_drop,
    label_constraint_always_prob: LabelConstraintAlwaysProbOpt = _DECODE.label_constraint_always_prob,
    consensus_neighbours: ConsensusNeighboursOpt = _DECODE.consensus_neighbours,
    consensus_weight: ConsensusWeightOpt = _DECODE.consensus_weight,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object per image.")] = False,
    decoder_backend: DecoderBackendOpt = None,
    bundle_sha256: BundleSha256Opt = None,
    execution_provider: ProviderOpt = DEFAULT_EXECUTION_PROVIDER,
) -> None:
    """Caption image files with a bundle (or a folder of original artefacts)."""
    from captioner.loading import load

    options = _options(locals())
    answer = AnswerOptions(tags_top_k, tags_min_prob, gender_neutral)
    captioner = load(
        bundle,
        decoder_backend=decoder_backend,
        bundle_sha256=bundle_sha256,
        execution_provider=execution_provider,
    )
    for path in images:
        result = present(captioner.caption_files([path], options)[0], answer)
        if json_output:
            typer.echo(
                json.dumps({"image": str(path), **result.to_dict(), "model_version": captioner.version})
            )
        elif n_best > 1:
            typer.echo(f"{path}:")
            for c in result.candidates:
                typer.echo(f"  {c.score:8.3f}  {c.caption}")
        else:
            typer.echo(f"{path}: {result.caption}")


@app.command("caption-dir")
def caption_dir_cmd(
    source: Annotated[
        Path, typer.Argument(help="A folder (searched recursively) or a text file of image paths/URLs.")
    ],
    out: Annotated[Path, typer.Option(help="JSONL results, one line per image; an existing file resumes.")],
    bundle: BundleOpt = None,
    strategy: StrategyOpt = _DECODE.strategy,
    beam_size: BeamSizeOpt = _DECODE.beam_size,
    max_length: MaxLengthOpt = _DECODE.max_length,
    length_penalty: LengthPenaltyOpt = _DECODE.length_penalty,
    n_best: NBestOpt = _DECODE.n_best,
    label_constraint: LabelConstraintOpt = _DECODE.label_constraint,
    label_constraint_min_prob: LabelConstraintMinProbOpt = _DECODE.label_constraint_min_prob,
    label_constraint_max_score_drop: LabelConstraintMaxScoreDropOpt = _DECODE.label_constraint_max_score_drop,
    label_constraint_always_prob: LabelConstraintAlwaysProbOpt = _DECODE.label_constraint_always_prob,
    consensus_neighbours: ConsensusNeighboursOpt = _DECODE.consensus_neighbours,
    consensus_weight: ConsensusWeightOpt = _DECODE.consensus_weight,
    batch_size: Annotated[int, typer.Option(help="Images per engine batch (and per fsync).")] = 32,
    threads: Annotated[int | None, typer.Option(help="onnxruntime threads (all; 1 per replica).")] = None,
    ray: Annotated[bool, typer.Option(help="Run on a new local Ray instance.")] = False,
    ray_address: Annotated[str | None, typer.Option(help="A Ray cluster: auto or ray://host:10001.")] = None,
    workers: Annotated[int, typer.Option(help="Model replicas on Ray.")] = 2,
    max_download_bytes: Annotated[int, typer.Option(help="Largest image fetched from a URL.")] = 20_971_520,
    download_timeout_s: Annotated[
        float, typer.Option(help="Wall-clock limit for one URL (DNS, connect, redirects, whole body).")
    ] = 20.0,
    max_redirects: Annotated[
        int, typer.Option(help="Redirects followed per URL (each target re-checked).")
    ] = 5,
    allow_private_urls: Annotated[
        bool,
        typer.Option(help="Also fetch URLs on loopback, private, link-local and other non-public addresses."),
    ] = False,
    retry_errors: Annotated[
        bool, typer.Option(help="Resume: remove the error lines of --out and try those images again.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
    execution_provider: ProviderOpt = DEFAULT_EXECUTION_PROVIDER,
    tags_top_k: TagsTopKOpt = _ANSWER.tags_top_k,
    tags_min_prob: TagsMinProbOpt = _ANSWER.tags_min_prob,
    gender_neutral: GenderNeutralOpt = False,
) -> None:
    """Caption every image under a folder (or in a list of paths/URLs) into a resumable JSONL file."""
    from captioner.caption_dir import caption_dir

    options = _options(locals())
    summary = caption_dir(
        source, out, bundle=bundle, options=options, batch_size=batch_size, threads=threads, ray=ray,
        ray_address=ray_address, workers=workers, max_download_bytes=max_download_bytes,
        download_timeout_s=download_timeout_s, max_redirects=max_redirects, allow_private_urls=allow_private_urls,
        retry_errors=retry_errors, progress=progress, execution_provider=execution_provider,
        answer=AnswerOptions(tags_top_k, tags_min_prob, gender_neutral),
    )  # fmt: skip
    typer.echo(json.dumps(summary))


@app.command()
def evaluate(
    data_root: Annotated[Path, typer.Option(help="Flickr8k folder (captions, split files, images).")],
    split: Annotated[str, typer.Option(help="train, dev or test.")] = "dev",
    out_dir: Annotated[Path, typer.Option(help="Where report.json, captions.jsonl, gallery.html go.")] = Path(
        "runs/eval"
    ),
    bundle: BundleOpt = None,
    image_dir: Annotated[Path | None, typer.Option(help="Image folder if not under data_root.")] = None,
    strategy: StrategyOpt = _DECODE.strategy,
    beam_size: BeamSizeOpt = _DECODE.beam_size,
    max_length: MaxLengthOpt = _DECODE.max_length,
    length_penalty: LengthPenaltyOpt = _DECODE.length_penalty,
    label_constraint: LabelConstraintOpt = _DECODE.label_constraint,
    label_constraint_min_prob: LabelConstraintMinProbOpt = _DECODE.label_constraint_min_prob,
    label_constraint_max_score_drop: LabelConstraintMaxScoreDropOpt = _DECODE.label_constraint_max_score_drop,
    label_constraint_always_prob: LabelConstraintAlwaysProbOpt = _DECODE.label_constraint_always_prob,
    consensus_neighbours: ConsensusNeighboursOpt = _DECODE.consensus_neighbours,
    consensus_weight: ConsensusWeightOpt = _DECODE.consensus_weight,
    limit: Annotated[int | None, typer.Option(help="Only the first N images.")] = None,
    meteor: Annotated[bool, typer.Option(help="Compute METEOR (Java).")] = True,
    batch_size: int = 32,
    record: Annotated[bool, typer.Option(help="Store the scores in the bundle's manifest.")] = False,
    decoder_backend: DecoderBackendOpt = None,
    execution_provider: ProviderOpt = DEFAULT_EXECUTION_PROVIDER,
) -> None:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr on a split; writes a JSON report and an HTML gallery."""
    from captioner.data.flickr8k import load_flickr8k
    from captioner.evaluation.evaluate import evaluate as run_evaluation
    from captioner.loading import load

    dataset = load_flickr8k(data_root, image_dir)
    options = _options(locals())
    captioner = load(bundle, decoder_backend=decoder_backend, execution_provider=execution_provider)
    report = run_evaluation(
        captioner, dataset, split, options, out_dir, limit=limit, batch_size=batch_size, meteor=meteor
    )
    typer.echo(json.dumps(report["metrics"], indent=2))
    if record:
        from captioner.model.bundle import record_metrics

        info = captioner.info
        assert info is not None  # load() always describes the bundle it loaded
        record_metrics(
            info.path, report["metrics"], split=split, images=report["num_images"],
            options=options.to_dict(), scorer="pycocoevalcap, 5 references, captions normalised by normalize_caption",
            decoder_backend=info.decoder_backend,
        )  # fmt: skip
    typer.echo(f"report: {out_dir / 'report.json'}  gallery: {out_dir / 'gallery.html'}")


_TRAIN = TrainConfig()  # the flags' defaults: the recipe of the shipped models/default


@app.command()
def train(
    data_root: Annotated[Path, typer.Option(help="Flickr8k folder (captions, split files, images).")],
    run_dir: Annotated[
        Path, typer.Option(help="Run folder: checkpoints, history, vocabulary; resumes.")
    ] = Path("runs/train"),
    out: Annotated[
        Path | None, typer.Option(help="Bundle folder to export (default: RUN_DIR/bundle).")
    ] = None,
    cache_dir: Annotated[Path, typer.Option(help="Encoder ONNX files and feature caches.")] = Path("cache"),
    encoder: Annotated[
        str, typer.Option(help="inception_v3, efficientnet_lite0 or efficientnet_lite2.")
    ] = _TRAIN.encoder,
    encoder_weights: Annotated[
        str, typer.Option(help="imagenet, a local weights file, or 'random' (tests only).")
    ] = "imagenet",
    image_dir: Annotated[Path | None, typer.Option(help="Image folder if not under data_root.")] = None,
    epochs: Annotated[int, typer.Option(help="Most epochs (early stopping may end sooner).")] = _TRAIN.epochs,
    batch_size: Annotated[int, typer.Option(help="Captions per training batch.")] = _TRAIN.batch_size,
    hidden_dim: Annotated[int, typer.Option(help="LSTM units.")] = _TRAIN.hidden_dim,
    embed_dim: Annotated[
        int, typer.Option(help="Word embedding and image projection size.")
    ] = _TRAIN.embed_dim,
    dropout: Annotated[
        float, typer.Option(help="Dropout on embeddings and LSTM output, [0, 1).")
    ] = _TRAIN.dropout,
    feature_dropout: Annotated[
        float, typer.Option(help="Dropout on the encoder's pooled features, [0, 1).")
    ] = _TRAIN.feature_dropout,
    learning_rate: Annotated[
        float, typer.Option(help="Adam's initial learning rate.")
    ] = _TRAIN.learning_rate,
    min_count: Annotated[
        int, typer.Option(help="Words seen fewer times in training captions become <unk>.")
    ] = _TRAIN.min_count,
    max_length: Annotated[
        int, typer.Option(help="Longest training caption in words (longer ones are cut).")
    ] = _TRAIN.max_length,
    patience: Annotated[
        int, typer.Option(help="Epochs without a better dev score before stopping.")
    ] = _TRAIN.patience,
    seed: Annotated[int, typer.Option(help="Random seed (weights, shuffling, dropout).")] = _TRAIN.seed,
    flip_augment: Annotated[
        bool, typer.Option(help="Also train on mirrored-image features.")
    ] = _TRAIN.flip_augment,
    augment_views: Annotated[
        int,
        typer.Option(
            help="Also train on this many random views per photo (crop, colour, JPEG re-save); 0: none."
        ),
    ] = _TRAIN.augment_views,
    label_smoothing: Annotated[float, typer.Option(help="Label smoothing, [0, 1).")] = _TRAIN.label_smoothing,
    encoder_weights_dtype: Annotated[
        str, typer.Option(help="float32, or float16 for a half-size encoder file (compute stays float32).")
    ] = _TRAIN.encoder_weights_dtype,
    limit_images: Annotated[int | None, typer.Option(help="Use only N training images (smoke runs).")] = None,
    scst_epochs: Annotated[
        int,
        typer.Option(help="Self-critical (CIDEr-D reward) fine-tuning epochs after cross-entropy; 0: none."),
    ] = _TRAIN.scst_epochs,
    scst_learning_rate: Annotated[
        float, typer.Option(help="SCST's Adam learning rate.")
    ] = _TRAIN.scst_learning_rate,
    scst_samples: Annotated[int, typer.Option(help="SCST captions drawn per image.")] = _TRAIN.scst_samples,
    scst_baseline: Annotated[
        str,
        typer.Option(
            help="SCST reward baseline: greedy (the model's greedy caption) or mean (other samples)."
        ),
    ] = _TRAIN.scst_baseline,
    execution_provider: Annotated[
        str,
        typer.Option(
            "--execution-provider", help="Feature extraction's provider: auto, cpu, cuda, tensorrt."
        ),
    ] = DEFAULT_EXECUTION_PROVIDER,
    wordnet_dir: Annotated[
        Path | None,
        typer.Option(
            help="WordNet 3.0 folder for the label map (default /usr/share/wordnet: apt-get install wordnet-base)."
        ),
    ] = None,
) -> None:
    """Train the LSTM decoder on Flickr8k and export a bundle (the defaults train models/default again)."""
    from captioner.encoders.registry import get_encoder_spec
    from captioner.pipeline import train_pipeline

    get_encoder_spec(encoder)  # fail fast, before TensorFlow loads
    try:
        config = TrainConfig(
            encoder=encoder, epochs=epochs, batch_size=batch_size, hidden_dim=hidden_dim, embed_dim=embed_dim,
            dropout=dropout, feature_dropout=feature_dropout, learning_rate=learning_rate, min_count=min_count,
            max_length=max_length, patience=patience, seed=seed, flip_augment=flip_augment,
            augment_views=augment_views, label_smoothing=label_smoothing,
            encoder_weights_dtype=encoder_weights_dtype, limit_images=limit_images,
            scst_epochs=scst_epochs, scst_learning_rate=scst_learning_rate, scst_samples=scst_samples,
            scst_baseline=scst_baseline,
        )  # fmt: skip
    except ValueError as exc:
        raise CaptionerError(f"{exc} (see captioner train --help)") from None
    weights = None if encoder_weights == "random" else encoder_weights
    path = train_pipeline(
        data_root, run_dir, config, cache_dir, out, weights, image_dir, execution_provider=execution_provider,
        wordnet_dir=wordnet_dir,
    )  # fmt: skip
    typer.echo(f"bundle written to {path}")


@app.command("import-original")
def import_original_cmd(
    model: Annotated[Path, typer.Argument(help="The original caption_model.keras.")],
    tokenizer: Annotated[Path, typer.Argument(help="The original tokenizer.pkl (or its to_json() export).")],
    out: Annotated[
        Path, typer.Option(help="Bundle folder to write (an existing one is kept as OUT.bak-<time>).")
    ],
    encoder: Annotated[
        Path,
        typer.Option(
            help="The ONNX encoder the model was trained with (captioner export-encoder inception_v3)."
        ),
    ],
    weights: Annotated[
        Path | None, typer.Option(help="weights/caption_model.weights.h5, if the model had one.")
    ] = None,
    data_root: Annotated[
        Path | None, typer.Option(help="Flickr8k folder: also score the bundle (as 'evaluate --record').")
    ] = None,
    image_dir: Annotated[Path | None, typer.Option(help="Image folder if not under data_root.")] = None,
    split: Annotated[str, typer.Option(help="Split to score on.")] = "dev",
    eval_dir: Annotated[Path, typer.Option(help="Report and gallery of the scoring.")] = Path(
        "runs/import-original"
    ),
    limit: Annotated[int | None, typer.Option(help="Score only the first N images.")] = None,
    meteor: Annotated[bool, typer.Option(help="Compute METEOR (Java).")] = True,
    decoder_backend: DecoderBackendOpt = None,
) -> None:
    """Turn the original design's artefacts (.keras + tokenizer.pkl [+ .weights.h5]) into a checksummed bundle."""
    from captioner.model.bundle import save_original_bundle

    path = save_original_bundle(out, model, tokenizer, encoder, weights)
    typer.echo(f"bundle written to {path}")
    if data_root is not None:
        evaluate(
            data_root=data_root, split=split, bundle=path, out_dir=eval_dir, image_dir=image_dir,
            strategy=_DECODE.strategy, beam_size=_DECODE.beam_size, max_length=_DECODE.max_length,
            length_penalty=_DECODE.length_penalty, limit=limit,
            meteor=meteor, batch_size=32, record=True, decoder_backend=decoder_backend,
            execution_provider=DEFAULT_EXECUTION_PROVIDER,
        )  # fmt: skip


@app.command("build-labels")
def build_labels_cmd(
    data_root: TrainingPhotosOpt,
    bundle: BundleOpt = None,
    features: FeatureCacheOpt = None,
    wordnet_dir: Annotated[
        Path | None,
        typer.Option(
            help="WordNet 3.0 database folder (Debian: apt-get install wordnet-base -> /usr/share/wordnet); "
            "without it only the lemmas and co-occurrence are used."
        ),
    ] = None,
    image_dir: Annotated[Path | None, typer.Option(help="Image folder if not under data_root.")] = None,
) -> None:
    """Build the bundle's label map (ImageNet class -> vocabulary words) from WordNet and the Flickr8k training
    captions, and store it in the bundle as labels.json (checksummed; the bundle's digest changes)."""
    from captioner.model.bundle import record_labels
    from captioner.model.labelling import build_bundle_labels

    labels = build_bundle_labels(bundle, data_root, features, wordnet_dir, image_dir=image_dir)
    path = record_labels(_bundle_path(bundle), labels)
    examples = {
        labels.names[c]: list(labels.words[c])
        for c in sorted(labels.words)[:: max(len(labels.words) // 8, 1)]
    }
    typer.echo(json.dumps({"file": str(path), "classes_mapped": len(labels.words),
                           "sources": labels.provenance["sources"], "examples": examples}, indent=2))  # fmt: skip


@app.command("build-consensus")
def build_consensus_cmd(
    data_root: TrainingPhotosOpt,
    bundle: BundleOpt = None,
    features: FeatureCacheOpt = None,
    dims: Annotated[int, typer.Option(help="Principal components of the features kept (0: all).")] = 256,
    image_dir: Annotated[Path | None, typer.Option(help="Image folder if not under data_root.")] = None,
) -> None:
    """Build the bundle's consensus memory (its training photos' features and captions, for consensus reranking)
    and store it in the bundle as consensus.npz (checksummed; the bundle's digest changes)."""
    from captioner.model.bundle import record_consensus
    from captioner.model.consensus import build_bundle_consensus

    memory = build_bundle_consensus(bundle, data_root, features, image_dir, dims or None)
    path = record_consensus(_bundle_path(bundle), memory)
    typer.echo(json.dumps({"file": str(path), "images": memory.size, "dims": int(memory.components.shape[1]),
                           "bytes": path.stat().st_size}, indent=2))  # fmt: skip


def _bundle_path(bundle: Path | None) -> Path:
    from captioner.model.bundle import DEFAULT_BUNDLE

    return bundle if bundle is not None else DEFAULT_BUNDLE


@app.command("quantize-encoder")
def quantize_encoder_cmd(
    out: Annotated[Path, typer.Option(help="Folder to write the bundle with the int8 encoder to.")],
    calibration: Annotated[
        list[Path],
        typer.Option(
            help="Calibration photos: files or folders (repeatable). A few dozen varied photos like those you "
            "serve; the first --max-calibration of them (in the order given, each folder sorted) are used."
        ),
    ],
    bundle: BundleOpt = None,
    max_calibration: Annotated[int, typer.Option(min=1, help="Most calibration photos used.")] = 128,
    float_head_convs: Annotated[
        int, typer.Option(min=0, help="The encoder's first convolutions kept in float32 (0: none).")
    ] = 3,
    seven_bit_weights: Annotated[
        bool,
        typer.Option(help="7-bit weights, for CPUs without VNNI (int16 sums cannot saturate; less exact)."),
    ] = False,
) -> None:
    """Write a copy of the bundle whose encoder runs in int8: 1.8-1.9x faster at batch 1 and ~2.2x at batch 32
    on a 2-core VNNI CPU; the shipped bundle's dev BLEU-4 moves by -0.003 to -0.006, CIDEr by 0 to -0.003 (as
    served; bench/README.md). Serve it with CAPTIONER_BUNDLE_PATH=OUT."""
    from captioner.caption_dir import discover_images
    from captioner.model.bundle import save_int8_bundle

    photos: list[Path] = []
    for source in calibration:
        if source.is_dir():
            photos += [Path(path) for _, path in discover_images(source)]
        elif source.is_file():
            photos.append(source)
        else:
            raise CaptionerError(f"calibration photo or folder not found: {source}")
    if not photos:
        raise CaptionerError(
            "no calibration photos found: pass photos or folders of photos with --calibration"
        )
    photos = photos[:max_calibration]
    path = save_int8_bundle(
        _bundle_path(bundle), out, photos, float_head_convs=float_head_convs, seven_bit_weights=seven_bit_weights,
    )  # fmt: skip
    typer.echo(json.dumps({"bundle": str(path), "calibration_images": len(photos),
                           "encoder_bytes": (path / "encoder.onnx").stat().st_size}, indent=2))  # fmt: skip


@app.command("export-encoder")
def export_encoder_cmd(
    name: Annotated[str, typer.Argument(help="inception_v3, efficientnet_lite0 or efficientnet_lite2.")],
    out: Annotated[Path, typer.Option(help="ONNX file to write.")],
    weights: Annotated[str, typer.Option(help="imagenet, a local weights file, or 'random'.")] = "imagenet",
) -> None:
    """Export an encoder to one ONNX file (used for feature extraction and serving alike)."""
    from captioner.encoders.export import export_encoder
    from captioner.encoders.registry import get_encoder_spec

    get_encoder_spec(name)
    if weights not in ("imagenet", "random") and not Path(weights).is_file():
        raise CaptionerError(f"weights file not found: {weights} (use imagenet, random or a file)")
    path = export_encoder(name, out, None if weights == "random" else weights)
    typer.echo(f"wrote {path}")


@app.command()
def info(
    bundle: BundleOpt = None,
    bundle_sha256: BundleSha256Opt = None,
    execution_provider: ProviderOpt = DEFAULT_EXECUTION_PROVIDER,
) -> None:
    """Verify a bundle and print its manifest, headed by bundle_sha256 (the digest to pin: sha256 of
    manifest.json), plus "runtime": the providers its sessions really run on."""
    from captioner.encoders.providers import available_providers
    from captioner.loading import load
    from captioner.model.bundle import load_bundle

    loaded = load_bundle(bundle, expected_sha256=bundle_sha256)
    info = load(loaded, execution_provider=execution_provider).info
    runtime = {
        "execution_provider": execution_provider,
        "available_providers": available_providers(),
        "providers": dict(info.providers) if info else {},
        "decoder_backend": info.decoder_backend if info else None,
    }
    typer.echo(json.dumps({"bundle_sha256": loaded.sha256, **loaded.manifest, "runtime": runtime}, indent=2))


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (env HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (env PORT).")] = None,
    bundle_sha256: Annotated[
        str | None, typer.Option(help="Pinned bundle digest (env CAPTIONER_BUNDLE_SHA256).")
    ] = None,
    execution_provider: Annotated[
        str | None,
        typer.Option(
            "--execution-provider", help="auto, cpu, cuda or tensorrt (env CAPTIONER_EXECUTION_PROVIDER)."
        ),
    ] = None,
) -> None:
    """Run the REST service (settings from the environment; see the README)."""
    from captioner.service.app import main as serve_main
    from captioner.service.settings import Settings

    given = {
        "host": host,
        "port": port,
        "bundle_sha256": bundle_sha256,
        "execution_provider": execution_provider,
    }
    overrides: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValueError as exc:  # pydantic's ValidationError: name the setting and what is expected
        raise CaptionerError(f"invalid service settings: {exc}".replace("\n", " ")) from None
    from captioner.encoders.providers import resolve_providers

    resolve_providers(settings.execution_provider)  # an explicit cuda without CUDA: one line, before startup
    serve_main(settings)


@app.command()
def download(dest: Annotated[Path, typer.Argument(help="Folder to download Flickr8k into.")]) -> None:
    """Download the original Flickr8k release (needs internet)."""
    from captioner.data.flickr8k import download_flickr8k

    typer.echo(f"Flickr8k in {download_flickr8k(dest)}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app, turning user errors into one line on stderr and exit status 2."""
    from captioner.encoders.runtime import limit_blas_threads

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    limit_blas_threads()  # this process runs onnxruntime: NumPy's BLAS threads would fight its threads
    try:
        app(args=argv, standalone_mode=False)
    except CaptionerError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        return int(code or 0)
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 1
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except Exception as exc:
        # Usage errors arrive here in non-standalone mode: click's ClickException, or that of the copy of click
        # that newer typer versions carry (not click's class): both have show() and exit_code.
        show, exit_code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(exit_code, int):
            show()
            return exit_code
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
