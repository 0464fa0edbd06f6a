"""Self-describing model bundle: everything needed to caption images, in one folder.

    caption_model.keras               the Keras decoder (architecture + weights), for Keras users
    weights/caption_model.weights.h5  the same weights alone; what the NumPy step decoder reads (no TensorFlow)
    tokenizer.json                    the Vocabulary
    encoder.onnx                      the image encoder, with its preprocessing in the ONNX metadata
    labels.json                       optional: ImageNet class -> vocabulary words (model/labels.py)
    consensus.npz                     optional: training images' features and captions (model/consensus.py)
    weights/member<i>.weights.h5      optional: more decoders of the same shape and vocabulary (other seeds),
                                      float16-stored; the engine averages their probabilities (model/ensemble.py)
    manifest.json                     encoder, sizes, special tokens, metrics, versions, sha256 of every file
    README.md                         optional model card (not checksummed: it may be edited)

A bundle imported from the original design (``save_original_bundle``; ``decoder.architecture`` is
"original-merge") holds the original ``caption_model.keras``, its weights, and its tokenizer converted to
Keras's ``Tokenizer.to_json()`` format (no pickle).

``load_bundle`` verifies every checksum before anything is deserialised and refuses a tampered bundle.

The bundle's digest is the sha256 of ``manifest.json``'s bytes (``sha256sum manifest.json``): the manifest lists the
sha256 of every other file, so this one digest covers the whole bundle (the model card aside). Checksums alone only
catch accidents: whoever can write the folder can rewrite files and manifest consistently. Pinning the digest
(``load_bundle(path, expected_sha256=...)``; ``CAPTIONER_BUNDLE_SHA256``, ``--bundle-sha256``) makes any change,
consistent or not, refuse to load.
"""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from captioner.data.vocabulary import Vocabulary
from captioner.errors import BundleError
from captioner.hashing import sha256_file, sha256_hex
from captioner.model.config import DecoderConfig
from captioner.model.consensus import CONSENSUS_FILE, ConsensusMemory
from captioner.model.labels import LabelMap

if TYPE_CHECKING:
    from captioner.encoders.runtime import OnnxEncoder
    from captioner.model.original.tokenizer import OriginalVocabulary

log = logging.getLogger("captioner.model.bundle")

FORMAT = "captioner.bundle"
FORMAT_VERSION = 1
MODEL_FILE = "caption_model.keras"
WEIGHTS_FILE = "weights/caption_model.weights.h5"
TOKENIZER_FILE = "tokenizer.json"
ENCODER_FILE = "encoder.onnx"
MANIFEST_FILE = "manifest.json"
LABELS_FILE = "labels.json"  # optional; a bundle without it captions without the label constraint
REQUIRED_FILES = (WEIGHTS_FILE, TOKENIZER_FILE, ENCODER_FILE)
ARCHITECTURE_LSTM = "lstm"  # our decoder (model/decoder.py)
ARCHITECTURE_ORIGINAL = "original-merge"  # the original design's merge model (model/original/)

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")

# The bundle that ships in the repository; every command uses it unless told otherwise.
DEFAULT_BUNDLE = Path(__file__).resolve().parents[3] / "models" / "default"


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("captioner", "keras", "tensorflow-cpu", "onnxruntime", "onnx", "numpy", "torch"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


@dataclass(frozen=True)
class Bundle:
    """A verified bundle folder: paths, manifest, and the parsed small parts."""

    path: Path
    manifest: dict
    config: DecoderConfig | None  # None for an original-merge bundle (its sizes are in its .keras file)
    vocabulary: Vocabulary | OriginalVocabulary
    sha256: str  # of manifest.json's bytes: the one digest that covers every file (see the module docstring)
    labels: LabelMap | None = None  # labels.json, when the bundle has one
    consensus: ConsensusMemory | None = None  # consensus.npz, when the bundle has one
    members: tuple[str, ...] = ()  # the ensemble's other decoders' weights files (manifest "ensemble")

    @property
    def architecture(self) -> str:
        """ARCHITECTURE_LSTM or ARCHITECTURE_ORIGINAL."""
        return self.manifest["decoder"].get("architecture", ARCHITECTURE_LSTM)

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_FILE

    @property
    def encoder_path(self) -> Path:
        return self.path / ENCODER_FILE

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def tokenizer_path(self) -> Path:
        return self.path / TOKENIZER_FILE

    @property
    def member_paths(self) -> list[Path]:
        """The weights files of the ensemble's other members (empty: one decoder)."""
        return [self.path / name for name in self.members]

    @property
    def version(self) -> str:
        """Short model version: the first 12 hex digits of the weights' sha256 (changes with any retrain), or
        with ensemble members, of the sha256 of all their digests in order."""
        return self.decoder_version(ensemble=True)

    def decoder_version(self, ensemble: bool) -> str:
        """``version`` of the decoders that caption: all of them, or (ensemble False) the main one only."""
        files = self.manifest["files"]
        if not self.members or not ensemble:
            return files[WEIGHTS_FILE][:12]
        return sha256_hex(" ".join(files[n] for n in (WEIGHTS_FILE, *self.members)).encode())[:12]


def _manifest_head(encoder: OnnxEncoder) -> dict:
    """The manifest's format, creation time and encoder section (every bundle writer starts with these)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "encoder": {
            "name": encoder.name,
            "input_size": encoder.preprocessing.size,
            "preprocessing": encoder.preprocessing.to_dict(),
            "feature_size": encoder.feature_size,
            "weights": encoder.info.get("weights"),
        },
    }


def save_bundle(
    out_dir: str | Path,
    model,
    vocabulary: Vocabulary,
    config: DecoderConfig,
    encoder_onnx: str | Path,
    metrics: dict | None = None,
    training: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write a bundle folder from a trained Keras decoder; returns its path (written atomically)."""
    from captioner.encoders.runtime import OnnxEncoder
    from captioner.model.decoder import build_decoder

    out_dir = Path(out_dir)
    feature_size = OnnxEncoder(encoder_onnx, threads=1).feature_size
    if feature_size != config.feature_size:
        raise BundleError(
            f"encoder gives {feature_size}-d features but the decoder expects {config.feature_size}"
        )
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "weights").mkdir(parents=True)
    # A fresh, uncompiled copy: the trained model carries its optimizer (Adam's two moments per weight would
    # triple both files), which serving never needs.
    clean = build_decoder(config)
    try:
        clean.set_weights(model.get_weights())
    except ValueError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BundleError(f"the model does not match the decoder config: {exc}") from None
    clean.save(tmp / MODEL_FILE)
    clean.save_weights(tmp / WEIGHTS_FILE)
    vocabulary.save(tmp / TOKENIZER_FILE)
    shutil.copyfile(encoder_onnx, tmp / ENCODER_FILE)
    encoder = OnnxEncoder(tmp / ENCODER_FILE, threads=1)
    files = [MODEL_FILE, *REQUIRED_FILES]
    manifest = {
        **_manifest_head(encoder),
        "decoder": config.to_dict(),
        "max_length": config.max_length,
        "special_tokens": {
            "pad": [vocabulary.pad_id, "<pad>"],
            "start": [vocabulary.start_id, "<start>"],
            "end": [vocabulary.end_id, "<end>"],
            "unk": [vocabulary.unk_id, "<unk>"],
        },
        "vocab_size": len(vocabulary),
        "metrics": metrics or {},
        "training": training or {},
        "versions": _versions(),
        "files": {name: sha256_file(tmp / name) for name in files},
        **(extra or {}),
    }
    _finish(tmp, out_dir, manifest)
    return out_dir


def _finish(tmp: Path, out_dir: Path, manifest: dict) -> None:
    """Write the manifest into ``tmp`` and move it to ``out_dir``, keeping what was there as a backup."""
    (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    if (out_dir / "README.md").is_file():
        shutil.copyfile(out_dir / "README.md", tmp / "README.md")
    backup = backup_path(out_dir) if out_dir.exists() else None
    if backup is not None:
        out_dir.rename(backup)
        log.warning("%s existed: kept it as %s", out_dir, backup)
    tmp.rename(out_dir)


def backup_path(out_dir: Path) -> Path:
    """A free name beside ``out_dir`` for its backup: ``<name>.bak-<UTC YYYYmmdd-HHMMSS>[-n]``."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    candidate = out_dir.with_name(f"{out_dir.name}.bak-{stamp}")
    n = 1
    while candidate.exists():
        candidate, n = out_dir.with_name(f"{out_dir.name}.bak-{stamp}-{n}"), n + 1
    return candidate


def save_original_bundle(
    out_dir: str | Path,
    model_path: str | Path,
    tokenizer_path: str | Path,
    encoder_onnx: str | Path,
    weights_path: str | Path | None = None,
) -> Path:
    """Write a bundle folder from the original design's artefacts (checked first: they must load and fit the
    encoder); returns its path. The tokenizer is stored as ``Tokenizer.to_json()`` JSON, never as a pickle."""
    import zipfile

    from captioner.encoders.runtime import OnnxEncoder
    from captioner.model.original import load_original

    out_dir, model_path = Path(out_dir), Path(model_path)
    encoder = OnnxEncoder(encoder_onnx, threads=1)
    original = load_original(model_path, tokenizer_path, weights_path, feature_size=encoder.feature_size)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "weights").mkdir(parents=True)
    shutil.copyfile(model_path, tmp / MODEL_FILE)
    if weights_path is not None:
        shutil.copyfile(weights_path, tmp / WEIGHTS_FILE)
    else:  # the .keras file's own weights (already checked by load_original)
        with zipfile.ZipFile(model_path) as archive:
            (tmp / WEIGHTS_FILE).write_bytes(archive.read("model.weights.h5"))
    vocabulary = original.vocabulary
    (tmp / TOKENIZER_FILE).write_text(json.dumps(vocabulary.to_keras_json()) + "\n")
    shutil.copyfile(encoder_onnx, tmp / ENCODER_FILE)
    files = [MODEL_FILE, *REQUIRED_FILES]
    manifest = {
        **_manifest_head(encoder),
        "decoder": {
            "architecture": ARCHITECTURE_ORIGINAL,
            "feature_size": original.model.feature_size,
            "max_length": original.max_length,
            "vocab_size": original.model.vocab_size,
        },
        "max_length": original.max_length,
        "special_tokens": {
            "pad": [0, None],
            "start": [vocabulary.start_id, vocabulary.start_word],
            "end": [vocabulary.end_id, vocabulary.end_word],
            "unk": [vocabulary.unk_id, vocabulary.oov_token],
        },
        "vocab_size": len(vocabulary),
        "metrics": {},
        "source": {
            "model": {"name": model_path.name, "sha256": sha256_file(model_path)},
            "weights": None
            if weights_path is None
            else {"name": Path(weights_path).name, "sha256": sha256_file(Path(weights_path))},
            "tokenizer": {"name": Path(tokenizer_path).name, "sha256": sha256_file(Path(tokenizer_path))},
        },
        "versions": _versions(),
        "files": {name: sha256_file(tmp / name) for name in files},
    }
    _finish(tmp, out_dir, manifest)
    return out_dir


def load_bundle(path: str | Path | None = None, expected_sha256: str | None = None) -> Bundle:
    """Verify and read a bundle folder (default: the shipped ``models/default``). Raises BundleError.

    expected_sha256: the bundle digest (hex sha256 of manifest.json) the caller trusts; any other manifest, and so
    any changed file, is refused before anything is parsed. None: only the manifest's own checksums are checked.
    """
    path = Path(path) if path is not None else DEFAULT_BUNDLE
    if expected_sha256 is not None:
        expected_sha256 = check_sha256(expected_sha256)
    if not path.is_dir():
        raise BundleError(f"model bundle not found: {path} (expected a folder with {MANIFEST_FILE})")
    try:
        raw = (path / MANIFEST_FILE).read_bytes()  # hashed and parsed from the same bytes
    except FileNotFoundError:
        raise BundleError(f"{path} is not a model bundle: {MANIFEST_FILE} is missing") from None
    bundle_sha256 = sha256_hex(raw)
    if expected_sha256 is not None and bundle_sha256 != expected_sha256:
        raise BundleError(
            f"{path} is not the pinned bundle: its sha256 is {bundle_sha256}, the pinned one is {expected_sha256}. "
            "If the bundle was changed on purpose (re-exported, metrics recorded), pin the new digest that "
            "'captioner info' prints (CAPTIONER_BUNDLE_SHA256 or --bundle-sha256); otherwise restore the bundle "
            "from a trusted copy"
        )
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path / MANIFEST_FILE} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path / MANIFEST_FILE} is not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{path} has bundle format version {manifest.get('format_version')}; this captioner reads version "
            f"{FORMAT_VERSION}: re-export it with this version"
        )
    files = manifest.get("files", {})
    for name in REQUIRED_FILES:
        if name not in files:
            raise BundleError(f"{path / MANIFEST_FILE} lists no checksum for {name}")
    for name, digest in files.items():
        file = path / name
        if not file.is_file():
            raise BundleError(f"{path} is incomplete: {name} is missing")
        if sha256_file(file) != digest:
            raise BundleError(
                f"{file} does not match the checksum in {MANIFEST_FILE}: the bundle was modified or corrupted; "
                "re-export or re-download it"
            )
    if not isinstance(manifest.get("decoder"), dict):
        raise BundleError(f"{path / MANIFEST_FILE} has no decoder section")
    if manifest["decoder"].get("architecture") == ARCHITECTURE_ORIGINAL:
        from captioner.model.original.tokenizer import safe_load_tokenizer

        # Sizes and their agreement are checked when the model is read (model/original/).
        return Bundle(path, manifest, None, safe_load_tokenizer(path / TOKENIZER_FILE), bundle_sha256)
    try:
        config = DecoderConfig.from_dict(manifest["decoder"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{path / MANIFEST_FILE} has an invalid decoder section: {exc}") from None
    vocabulary = Vocabulary.load(path / TOKENIZER_FILE)
    if len(vocabulary) != config.vocab_size:
        raise BundleError(
            f"{path}: the tokenizer has {len(vocabulary)} tokens but the decoder was built for {config.vocab_size}"
        )
    labels = None
    if LABELS_FILE in files:
        labels = LabelMap.load(path / LABELS_FILE)
        if labels.vocabulary_sha256 != files[TOKENIZER_FILE]:
            raise BundleError(
                f"{path / LABELS_FILE} was built for another vocabulary than {TOKENIZER_FILE}: rebuild it with "
                "'captioner build-labels'"
            )
    consensus = None
    if CONSENSUS_FILE in files:
        built_for = manifest.get("consensus", {}).get("encoder_sha256")
        if built_for != files.get(ENCODER_FILE):
            raise BundleError(
                f"{path / CONSENSUS_FILE} holds features of another encoder than {ENCODER_FILE}: rebuild it with "
                "'captioner build-consensus'"
            )
        try:
            consensus = ConsensusMemory.load(path / CONSENSUS_FILE)
        except (ValueError, KeyError, OSError) as exc:
            raise BundleError(f"{path / CONSENSUS_FILE} is not a consensus memory: {exc}") from None
    members = tuple(manifest.get("ensemble", {}).get("members", ()))
    unlisted = [name for name in members if name not in files]
    if unlisted:
        raise BundleError(f"{path / MANIFEST_FILE} names ensemble members without a checksum: {unlisted}")
    return Bundle(path, manifest, config, vocabulary, bundle_sha256, labels, consensus, members)


def check_sha256(value: str) -> str:
    """A bundle digest as lowercase hex, or BundleError saying what a digest looks like."""
    digest = value.strip().lower()
    if not _SHA256_HEX.match(digest):
        raise BundleError(
            f"{value!r} is not a bundle digest: expected 64 hex digits, as printed by 'captioner info' "
            "(bundle_sha256) or by 'sha256sum manifest.json'"
        )
    return digest


def _replace_manifest(path: Path, manifest: dict) -> None:
    """Write a bundle's new manifest.json atomically (a reader sees the old one or the new one, never half)."""
    tmp = path / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(path / MANIFEST_FILE)


def record_metrics(path: str | Path, metrics: dict, **details) -> None:
    """Store evaluation results in a bundle's manifest. This changes the bundle's digest (Bundle.sha256)."""
    path = Path(path)
    bundle = load_bundle(path)  # refuse to annotate a tampered bundle
    manifest = dict(bundle.manifest, metrics={"scores": metrics, **details})
    _replace_manifest(path, manifest)


def record_labels(path: str | Path, labels: LabelMap) -> Path:
    """Store a label map in a bundle as LABELS_FILE, checksummed in its manifest (with a short summary under
    "labels"). This changes the bundle's digest (Bundle.sha256). Returns the file's path."""
    path = Path(path)
    bundle = load_bundle(path)  # refuse to extend a tampered bundle
    if labels.vocabulary_sha256 != bundle.manifest["files"][TOKENIZER_FILE]:
        raise BundleError(f"the label map was built for another vocabulary than {path / TOKENIZER_FILE}")
    file = labels.save(path / LABELS_FILE)
    files = dict(bundle.manifest["files"], **{LABELS_FILE: sha256_file(file)})
    summary = {
        "classes": len(labels.words),
        **{k: labels.provenance[k] for k in ("sources",) if k in labels.provenance},
    }
    manifest = dict(bundle.manifest, files=files, labels=summary)
    _replace_manifest(path, manifest)
    return file


def record_consensus(path: str | Path, memory: ConsensusMemory) -> Path:
    """Store a consensus memory in a bundle as CONSENSUS_FILE, checksummed in its manifest (with a summary under
    "consensus"). Its features must come from the bundle's encoder. Changes the bundle's digest. Returns the file."""
    path = Path(path)
    bundle = load_bundle(path)  # refuse to extend a tampered bundle
    feature_size = bundle.manifest["encoder"]["feature_size"]
    if memory.mean.shape != (feature_size,):
        raise BundleError(
            f"the consensus memory has {memory.mean.shape[0]}-d features, the bundle's encoder gives {feature_size}"
        )
    file = memory.save(path / CONSENSUS_FILE)
    files = dict(bundle.manifest["files"], **{CONSENSUS_FILE: sha256_file(file)})
    summary = {
        "images": memory.size,
        "captions": int(memory.caption_count.sum()),
        "dims": int(memory.components.shape[1]),
        "encoder_sha256": files[ENCODER_FILE],
    }
    manifest = dict(bundle.manifest, files=files, consensus=summary)
    _replace_manifest(path, manifest)
    return file


def save_int8_bundle(
    src: str | Path,
    out_dir: str | Path,
    calibration_images: Sequence[str | Path | bytes],
    **quantisation: Any,
) -> Path:
    """Write a copy of the bundle ``src`` whose encoder is an int8 copy of its own (``encoders.quantize``; options
    such as ``float_head_convs`` or ``seven_bit_weights`` pass through) to ``out_dir`` (atomically); returns it.

    The manifest says what changed: the encoder section's ``weights_dtype`` is "int8", ``quantised_from`` the float
    encoder's sha256, ``calibration_images`` their number. The consensus memory keeps the float encoder's training
    features (``consensus.features_encoder_sha256``): the int8 features' cosine with the float ones is >= 0.98
    on photos unlike any calibration photo (bench/results/int8_encoder.json). The recorded metrics were measured
    with the float encoder: they move to ``metrics_float_encoder`` (record the copy's own with ``captioner
    evaluate --bundle OUT --record``).
    """
    from captioner.encoders.quantize import quantize_encoder

    bundle = load_bundle(src)  # never derive from a tampered bundle
    if bundle.config is None:
        raise BundleError(f"{bundle.path} is in the original format: quantise its encoder file instead")
    if "quantised_from" in bundle.manifest["encoder"]:
        raise BundleError(f"{bundle.path}'s encoder is already int8: quantise the float bundle it came from")
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(bundle.path, tmp, ignore=shutil.ignore_patterns(MANIFEST_FILE, "README.md"))
    try:
        quantize_encoder(bundle.encoder_path, tmp / ENCODER_FILE, "int8", calibration_images, **quantisation)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest = dict(bundle.manifest)
    float_sha256, int8_sha256 = manifest["files"][ENCODER_FILE], sha256_file(tmp / ENCODER_FILE)
    manifest["files"] = dict(manifest["files"], **{ENCODER_FILE: int8_sha256})
    manifest["encoder"] = dict(
        manifest["encoder"],
        weights_dtype="int8",
        quantised_from=float_sha256,
        calibration_images=len(calibration_images),
    )
    if "consensus" in manifest:
        manifest["consensus"] = dict(
            manifest["consensus"], encoder_sha256=int8_sha256, features_encoder_sha256=float_sha256
        )
    if manifest.get("metrics"):
        manifest["metrics_float_encoder"], manifest["metrics"] = manifest["metrics"], {}
    manifest["created"] = datetime.now(UTC).isoformat(timespec="seconds")
    _finish(tmp, out_dir, manifest)
    return out_dir


def record_ensemble(path: str | Path, weights: list[str | Path], **details) -> list[Path]:
    """Add decoders to a bundle as ensemble members: ``weights/member<i>.weights.h5`` (i from 1), each a Keras
    ``.weights.h5`` of a decoder of the bundle's config and vocabulary (another seed), stored in float16 (half
    the size; computed in float32), checksummed in the manifest; "ensemble" lists them (with ``details``).
    Replaces the bundle's members, if any; an empty list removes them. Changes the bundle's digest."""
    from captioner.model.step import NumpyDecoder

    path = Path(path)
    bundle = load_bundle(path)  # refuse to extend a tampered bundle
    if bundle.config is None:
        raise BundleError("ensembles are for bundles of our LSTM decoder, not imported original models")
    for source in weights:
        NumpyDecoder.from_h5(bundle.config, source)  # refuses a decoder of another shape, before any change
    contents = [_read_as_float16(Path(source)) for source in weights]  # read first: a source may be a member
    files = {k: v for k, v in bundle.manifest["files"].items() if k not in bundle.members}
    for old in bundle.member_paths:
        old.unlink(missing_ok=True)
    names = []
    for i, content in enumerate(contents, start=1):
        name = f"weights/member{i}.weights.h5"
        _write_h5(content, path / name)
        files[name] = sha256_file(path / name)
        names.append(name)
    manifest = {k: v for k, v in bundle.manifest.items() if k != "ensemble"}
    manifest["files"] = files
    if names:
        manifest["ensemble"] = {"members": names, "dtype": "float16", **details}
    _replace_manifest(path, manifest)
    return [path / n for n in names]


def _read_as_float16(source: Path) -> dict:
    """An HDF5 weights file's groups (None) and datasets (arrays, floating-point ones as float16), by path."""
    import h5py
    import numpy as np

    content: dict = {}
    with h5py.File(source, "r") as f:

        def read(name: str, item) -> None:
            if isinstance(item, h5py.Dataset):
                data = np.asarray(item[()])
                content[name] = data.astype(np.float16) if np.issubdtype(data.dtype, np.floating) else data
            else:
                content[name] = None

        f.visititems(read)
    return content


def _write_h5(content: dict, target: Path) -> None:
    """Write ``_read_as_float16``'s groups and datasets to ``target`` (atomically)."""
    import h5py

    tmp = target.with_name(target.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        for name, data in content.items():
            if data is None:
                f.require_group(name)
            else:
                f.create_dataset(name, data=data)
    tmp.replace(target)
