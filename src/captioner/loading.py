"""``captioner.load``: one call from files to a ready ``Captioner``, for a bundle or the original artefacts.

    import captioner
    engine = captioner.load()                              # the shipped bundle (models/default)
    engine = captioner.load("models/default")              # a bundle folder
    engine = captioner.load("original/")                   # caption_model.keras + tokenizer.pkl (+ weights/,
                                                           #   inception_v3.onnx) in one folder
    engine = captioner.load(model="caption_model.keras", tokenizer="tokenizer.pkl",
                            weights="weights/caption_model.weights.h5", encoder="inception_v3.onnx")
    engine.caption_files(["photo.jpg"])[0].caption

Neither format needs TensorFlow or Keras: bundles are read with h5py and JSON, the original with zipfile, h5py
and a restricted unpickler; both decode through the same step backends (model/backends.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from captioner.decode.captioner import Captioner
from captioner.decode.confidence import Calibration
from captioner.encoders.images import DEFAULT_MAX_PIXELS
from captioner.encoders.providers import DEFAULT_EXECUTION_PROVIDER
from captioner.encoders.runtime import OnnxEncoder
from captioner.errors import BundleError
from captioner.hashing import sha256_file
from captioner.model.backends import DecoderBackend, default_decoder_backend, session_providers, step_decoder
from captioner.model.bundle import ARCHITECTURE_ORIGINAL, MANIFEST_FILE, Bundle, load_bundle
from captioner.model.info import ModelInfo

# The names the original design gave its files, looked for in a folder of original artefacts.
ORIGINAL_MODEL_FILE = "caption_model.keras"
ORIGINAL_WEIGHTS_FILE = "weights/caption_model.weights.h5"
ORIGINAL_TOKENIZER_FILES = ("tokenizer.pkl", "tokenizer.json")
ORIGINAL_ENCODER_FILES = ("inception_v3.onnx", "encoder.onnx")


def load(
    path: str | Path | Bundle | None = None,
    *,
    model: str | Path | None = None,
    tokenizer: str | Path | None = None,
    weights: str | Path | None = None,
    encoder: str | Path | None = None,
    decoder_backend: DecoderBackend | None = None,
    threads: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    bundle_sha256: str | None = None,
    execution_provider: str = DEFAULT_EXECUTION_PROVIDER,
    ensemble: bool = True,
) -> Captioner:
    """A ready Captioner for ``path``: a bundle folder (default: the shipped one), or original artefacts.

    Original artefacts: a folder holding ``caption_model.keras`` and ``tokenizer.pkl`` (and, if present,
    ``weights/caption_model.weights.h5`` and ``inception_v3.onnx``), a ``.keras`` file, or the keyword paths
    ``model``/``tokenizer``/``weights``/``encoder``, which override what the folder holds.
    decoder_backend: "onnx-int8", "onnx" (fp32) or "numpy" (the reference); None: onnx-int8 when the encoder
    runs on the CPU, onnx on a GPU. threads: onnxruntime intra-op threads (None: all cores); max_pixels: the
    largest image ``Captioner.load`` decodes. bundle_sha256: a pinned bundle digest (any other bundle is
    refused). execution_provider: auto, cpu, cuda or tensorrt (encoders/providers.py), for every session.
    ensemble: decode with all of a bundle's decoders (its ensemble members, model/ensemble.py); False: the main one.
    Raises BundleError (a CaptionerError) when the files are missing, tampered or do not belong together.
    """
    if isinstance(path, Bundle) or (model is None and tokenizer is None and not _is_original(path)):
        if weights is not None or encoder is not None:
            raise BundleError("weights= and encoder= are for original artefacts; a bundle holds its own")
        return load_bundle_captioner(
            path, decoder_backend, threads, max_pixels, bundle_sha256, execution_provider, ensemble
        )
    if bundle_sha256 is not None:
        raise BundleError("bundle_sha256 pins a bundle; original artefacts have no bundle digest")
    folder = Path(path) if path is not None else None
    if folder is not None and folder.suffix == ".keras":
        model, folder = model or folder, folder.parent
    if folder is not None:
        model = model or folder / ORIGINAL_MODEL_FILE
        tokenizer = tokenizer or _first(folder, ORIGINAL_TOKENIZER_FILES)
        weights = weights or _existing(folder / ORIGINAL_WEIGHTS_FILE)
        encoder = encoder or _first(folder, ORIGINAL_ENCODER_FILES)
    if model is None or tokenizer is None:
        raise BundleError(
            "original artefacts need the model and the tokenizer: pass model= and tokenizer= "
            f"(or a folder with {ORIGINAL_MODEL_FILE} and {ORIGINAL_TOKENIZER_FILES[0]})"
        )
    return load_original_captioner(
        model, tokenizer, weights, encoder, decoder_backend, threads, max_pixels, execution_provider
    )


def load_bundle_captioner(
    bundle: str | Path | Bundle | None = None,
    decoder_backend: DecoderBackend | None = None,
    threads: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    bundle_sha256: str | None = None,
    execution_provider: str = DEFAULT_EXECUTION_PROVIDER,
    ensemble: bool = True,
) -> Captioner:
    """A Captioner for a bundle folder or a verified Bundle (default: the shipped one); ensemble: as for ``load``."""
    from captioner.model.ensemble import EnsembleDecoder
    from captioner.model.step import NumpyDecoder

    if not isinstance(bundle, Bundle) or bundle_sha256 is not None:
        bundle = load_bundle(bundle.path if isinstance(bundle, Bundle) else bundle, bundle_sha256)
    m = bundle.manifest
    if bundle.config is None:  # imported from the original design (captioner import-original)
        captioner = load_original_captioner(
            bundle.model_path, bundle.tokenizer_path, bundle.weights_path, bundle.encoder_path,
            decoder_backend, threads, max_pixels, execution_provider,
        )  # fmt: skip
        assert captioner.info is not None  # load_original_captioner always describes its model
        captioner.info = dataclasses.replace(
            captioner.info, format="bundle", version=bundle.version, path=str(bundle.path),
            metrics=m.get("metrics", {}), sha256=bundle.sha256,
        )  # fmt: skip
        return captioner
    encoder = OnnxEncoder(bundle.encoder_path, threads=threads, execution_provider=execution_provider)
    if encoder.feature_size != bundle.config.feature_size:
        raise BundleError(f"{bundle.path}: encoder and decoder feature sizes differ")
    main = NumpyDecoder.from_h5(bundle.config, bundle.weights_path)
    members = [NumpyDecoder.from_h5(bundle.config, p) for p in bundle.member_paths] if ensemble else []
    reference = EnsembleDecoder([main, *members]) if members else main
    decoder_backend = decoder_backend or default_decoder_backend(encoder.provider)
    decoder = step_decoder(reference, decoder_backend, threads, execution_provider)
    info = ModelInfo(
        format="bundle",
        version=bundle.decoder_version(ensemble),
        encoder=m["encoder"]["name"],
        vocab_size=m["vocab_size"],
        decoder_backend=decoder_backend,
        path=str(bundle.path),
        max_length=m.get("max_length"),
        metrics=m.get("metrics", {}),
        sha256=bundle.sha256,
        providers=session_providers(encoder, decoder),
        decoders=1 + len(members),
    )
    calibration = m.get("confidence_calibration")
    calibration = Calibration.from_dict(calibration) if calibration else None
    return Captioner(
        encoder, decoder, bundle.vocabulary, info, max_pixels, calibration, bundle.labels, bundle.consensus
    )


def load_original_captioner(
    model: str | Path,
    tokenizer: str | Path,
    weights: str | Path | None = None,
    encoder: str | Path | None = None,
    decoder_backend: DecoderBackend | None = None,
    threads: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    execution_provider: str = DEFAULT_EXECUTION_PROVIDER,
) -> Captioner:
    """A Captioner for the original design's artefacts (merge .keras [+ .weights.h5] + tokenizer.pkl), run by
    our engine: no TensorFlow or Keras is imported. encoder: an InceptionV3 ONNX file from
    ``captioner export-encoder inception_v3`` (the original format has none)."""
    from captioner.model.original import load_original
    from captioner.model.original.merge_step import OriginalStep

    if encoder is None:
        raise BundleError(
            "the original format has no encoder file: export one with "
            "'captioner export-encoder inception_v3 --out inception_v3.onnx' and pass it as the encoder"
        )
    onnx_encoder = OnnxEncoder(encoder, threads=threads, execution_provider=execution_provider)
    original = load_original(model, tokenizer, weights, feature_size=onnx_encoder.feature_size)
    decoder_backend = decoder_backend or default_decoder_backend(onnx_encoder.provider)
    core = step_decoder(original.reference, decoder_backend, threads, execution_provider)
    info = ModelInfo(
        format="original",
        version=sha256_file(Path(weights or model))[:12],
        encoder=onnx_encoder.name,
        vocab_size=original.reference.vocab_size,
        decoder_backend=decoder_backend,
        path=str(model),
        max_length=original.max_length,
        architecture=ARCHITECTURE_ORIGINAL,
        providers=session_providers(onnx_encoder, core),
    )
    step = OriginalStep(core, original.reference, original.max_length)
    return Captioner(onnx_encoder, step, original.vocabulary, info, max_pixels)


def _is_original(path: str | Path | None) -> bool:
    if path is None:
        return False
    path = Path(path)
    if path.suffix == ".keras":
        return True
    return path.is_dir() and not (path / MANIFEST_FILE).exists() and (path / ORIGINAL_MODEL_FILE).is_file()


def _existing(path: Path) -> Path | None:
    return path if path.is_file() else None


def _first(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)
