"""The one command-line program: ``captioner train|evaluate|caption|export-encoder|info|serve|download``.

Flag names equal the keyword names of the functions they call. Every user error prints one line
(``error: ...``) and exits with status 2; no tracebacks.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from captioner.decode.answer import AnswerOptions, present
from captioner.decode.captioner import DEFAULT_DECODER_BACKEND
from captioner.decode.options import DecodeOptions
from captioner.errors import CaptionerError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Image captioning: train on Flickr8k, evaluate, caption images, serve a REST API.",
)

BundleOpt = Annotated[
    Path | None, typer.Option("--bundle", help="Model bundle folder (default: the shipped models/default).")
]
Strategy = Annotated[str, typer.Option(help="greedy or beam.")]
BeamSize = Annotated[int, typer.Option(help="Beam width (1-10).")]
MaxLength = Annotated[int, typer.Option(help="Most words per caption (1-64).")]
LengthPenalty = Annotated[float, typer.Option(help="alpha in score = log_prob / length**alpha.")]
NBest = Annotated[int, typer.Option(help="Captions returned per image (<= beam size).")]
DecoderOpt = Annotated[str, typer.Option(help="Decoder step: onnx-int8 (default), onnx (fp32) or numpy.")]
TagsTopK = Annotated[int, typer.Option(help="Most ImageNet tags per image (0-20; 0: none).")]
TagsMinProb = Annotated[float, typer.Option(help="Leave out tags less probable than this (0-1).")]
GenderNeutral = Annotated[
    bool, typer.Option("--gender-neutral", help="person/child/they instead of man/woman/boy/girl/he/she.")
]


_DEFAULT = DecodeOptions()
_ANSWER = AnswerOptions()


def _options(strategy: str, beam_size: int, max_length: int, length_penalty: float, n_best: int):
    return DecodeOptions(
        strategy=strategy,  # type: ignore[arg-type]
        beam_size=beam_size,
        max_length=max_length,
        length_penalty=length_penalty,
        n_best=n_best,
    )


@app.command()
def caption(
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    tags_top_k: TagsTopK = _ANSWER.tags_top_k,
    tags_min_prob: TagsMinProb = _ANSWER.tags_min_prob,
    gender_neutral: GenderNeutral = False,
    bundle: BundleOpt = None,
    strategy: Strategy = _DEFAULT.strategy,
    beam_size: BeamSize = _DEFAULT.beam_size,
    max_length: MaxLength = _DEFAULT.max_length,
    length_penalty: LengthPenalty = _DEFAULT.length_penalty,
    n_best: NBest = 1,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object per image.")] = False,
    decoder: DecoderOpt = DEFAULT_DECODER_BACKEND,
) -> None:
    """Caption image files with a bundle."""
    from captioner.decode.captioner import Captioner

    options = _options(strategy, beam_size, max_length, length_penalty, n_best)
    answer = AnswerOptions(tags_top_k, tags_min_prob, gender_neutral)
    captioner = Captioner.from_bundle(bundle, decoder_backend=decoder)
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
    strategy: Strategy = _DEFAULT.strategy,
    beam_size: BeamSize = _DEFAULT.beam_size,
    max_length: MaxLength = _DEFAULT.max_length,
    length_penalty: LengthPenalty = _DEFAULT.length_penalty,
    n_best: NBest = 1,
    batch_size: Annotated[int, typer.Option(help="Images per engine batch (and per fsync).")] = 32,
    threads: Annotated[int | None, typer.Option(help="onnxruntime threads (all; 1 per replica).")] = None,
    ray: Annotated[bool, typer.Option(help="Run on a new local Ray instance.")] = False,
    ray_address: Annotated[str | None, typer.Option(help="A Ray cluster: auto or ray://host:10001.")] = None,
    workers: Annotated[int, typer.Option(help="Model replicas on Ray.")] = 2,
    max_download_bytes: Annotated[int, typer.Option(help="Largest image fetched from a URL.")] = 20_971_520,
    download_timeout_s: Annotated[float, typer.Option(help="Longest download of one URL.")] = 20.0,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
    tags_top_k: TagsTopK = _ANSWER.tags_top_k,
    tags_min_prob: TagsMinProb = _ANSWER.tags_min_prob,
    gender_neutral: GenderNeutral = False,
) -> None:
    """Caption every image under a folder (or in a list of paths/URLs) into a resumable JSONL file."""
    from captioner.batch import caption_dir

    options = _options(strategy, beam_size, max_length, length_penalty, n_best)
    summary = caption_dir(
        source, out, bundle=bundle, options=options, batch_size=batch_size, threads=threads, ray=ray,
        ray_address=ray_address, workers=workers, max_download_bytes=max_download_bytes,
        download_timeout_s=download_timeout_s, progress=progress,
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
    strategy: Strategy = _DEFAULT.strategy,
    beam_size: BeamSize = _DEFAULT.beam_size,
    max_length: MaxLength = _DEFAULT.max_length,
    length_penalty: LengthPenalty = _DEFAULT.length_penalty,
    limit: Annotated[int | None, typer.Option(help="Only the first N images.")] = None,
    meteor: Annotated[bool, typer.Option(help="Compute METEOR (Java).")] = True,
    batch_size: int = 32,
    record: Annotated[bool, typer.Option(help="Store the scores in the bundle's manifest.")] = False,
    decoder: DecoderOpt = DEFAULT_DECODER_BACKEND,
) -> None:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr on a split; writes a JSON report and an HTML gallery."""
    from captioner.data.flickr8k import load_flickr8k
    from captioner.decode.captioner import Captioner
    from captioner.evaluation.evaluate import evaluate as run_evaluation

    dataset = load_flickr8k(data_root, image_dir)
    options = _options(strategy, beam_size, max_length, length_penalty, 1)
    captioner = Captioner.from_bundle(bundle, decoder_backend=decoder)
    report = run_evaluation(
        captioner, dataset, split, options, out_dir, limit=limit, batch_size=batch_size, meteor=meteor
    )
    typer.echo(json.dumps(report["metrics"], indent=2))
    if record:
        from captioner.model.bundle import record_metrics

        record_metrics(
            captioner.info["path"], report["metrics"], split=split, images=report["num_images"],
            options=options.to_dict(), scorer="pycocoevalcap, 5 references, captions normalised by normalize_caption",
            decoder_backend=decoder,
        )  # fmt: skip
    typer.echo(f"report: {out_dir / 'report.json'}  gallery: {out_dir / 'gallery.html'}")


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
    encoder: Annotated[str, typer.Option(help="inception_v3, efficientnet_lite0 or efficientnet_lite2.")] = (
        "efficientnet_lite0"
    ),
    encoder_weights: Annotated[
        str, typer.Option(help="imagenet, a local weights file, or 'random' (tests only).")
    ] = "imagenet",
    image_dir: Annotated[Path | None, typer.Option(help="Image folder if not under data_root.")] = None,
    epochs: int = 30,
    batch_size: int = 128,
    hidden_dim: int = 512,
    embed_dim: int = 256,
    dropout: float = 0.5,
    feature_dropout: float = 0.5,
    learning_rate: float = 2e-3,
    min_count: int = 5,
    max_length: int = 22,
    patience: int = 3,
    seed: int = 1234,
    flip_augment: Annotated[bool, typer.Option(help="Also train on mirrored-image features.")] = False,
    label_smoothing: float = 0.0,
    encoder_weights_dtype: Annotated[
        str, typer.Option(help="float32, or float16 for a half-size encoder file (compute stays float32).")
    ] = "float32",
    limit_images: Annotated[int | None, typer.Option(help="Use only N training images (smoke runs).")] = None,
) -> None:
    """Train the LSTM decoder on Flickr8k and export a bundle."""
    from captioner.encoders.registry import get_encoder_spec
    from captioner.model.config import TrainConfig
    from captioner.pipeline import train_pipeline

    get_encoder_spec(encoder)  # fail fast, before TensorFlow loads
    config = TrainConfig(
        encoder=encoder, epochs=epochs, batch_size=batch_size, hidden_dim=hidden_dim, embed_dim=embed_dim,
        dropout=dropout, feature_dropout=feature_dropout, learning_rate=learning_rate, min_count=min_count, max_length=max_length,
        patience=patience, seed=seed, flip_augment=flip_augment, label_smoothing=label_smoothing,
        encoder_weights_dtype=encoder_weights_dtype, limit_images=limit_images,
    )  # fmt: skip
    weights = None if encoder_weights == "random" else encoder_weights
    path = train_pipeline(data_root, run_dir, config, cache_dir, out, weights, image_dir)
    typer.echo(f"bundle written to {path}")


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
def info(bundle: BundleOpt = None) -> None:
    """Verify a bundle and print its manifest."""
    from captioner.model.bundle import load_bundle

    typer.echo(json.dumps(load_bundle(bundle).manifest, indent=2))


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (env HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (env PORT).")] = None,
) -> None:
    """Run the REST service (settings from the environment; see the README)."""
    from captioner.service.app import main as serve_main
    from captioner.service.settings import Settings

    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValueError as exc:  # pydantic's ValidationError: name the setting and what is expected
        raise CaptionerError(f"invalid service settings: {exc}".replace("\n", " ")) from None
    serve_main(settings)


@app.command()
def download(dest: Annotated[Path, typer.Argument(help="Folder to download Flickr8k into.")]) -> None:
    """Download the original Flickr8k release (needs internet)."""
    from captioner.data.flickr8k import download_flickr8k

    typer.echo(f"Flickr8k in {download_flickr8k(dest)}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app, turning user errors into one line on stderr and exit status 2."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
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
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            return exc.exit_code
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
