"""Bundles describe themselves, rebuild from the folder alone and refuse to load when tampered with."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import captioner
from captioner import loading
from captioner.decode.options import DecodeOptions
from captioner.errors import BundleError
from captioner.model.bundle import (
    ENCODER_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    load_bundle,
    save_bundle,
    sha256_file,
)
from captioner.model.config import DecoderConfig


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    """A private copy of the tiny bundle that a test may damage."""
    return shutil.copytree(tiny_bundle, tmp_path / "bundle")


def edit_manifest(bundle, **changes):
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    manifest.update(changes)
    (bundle / MANIFEST_FILE).write_text(json.dumps(manifest))
    return manifest


def test_manifest_describes_the_bundle(tiny_bundle, tiny_vocabulary):
    bundle = load_bundle(tiny_bundle)
    m = bundle.manifest
    assert m["format"] == "captioner.bundle" and m["format_version"] == 1
    assert m["encoder"]["name"] == "efficientnet_lite0"
    assert m["encoder"]["input_size"] == 224 and m["encoder"]["feature_size"] == 1280
    assert m["encoder"]["preprocessing"]["layout"] == "NCHW"
    assert m["max_length"] == 12 and m["decoder"]["hidden_dim"] == 24
    assert m["special_tokens"] == {
        "pad": [0, "<pad>"],
        "start": [1, "<start>"],
        "end": [2, "<end>"],
        "unk": [3, "<unk>"],
    }
    assert m["vocab_size"] == len(tiny_vocabulary)
    assert m["metrics"] == {"BLEU-4": 0.0}
    assert {"python", "keras", "numpy", "onnxruntime"} <= m["versions"].keys()
    assert set(m["files"]) == {MODEL_FILE, WEIGHTS_FILE, TOKENIZER_FILE, ENCODER_FILE}
    for name, digest in m["files"].items():
        assert sha256_file(tiny_bundle / name) == digest
    assert bundle.config == DecoderConfig.from_dict(m["decoder"])
    assert bundle.vocabulary == tiny_vocabulary
    assert bundle.version == m["files"][WEIGHTS_FILE][:12]


def test_save_refuses_an_encoder_of_the_wrong_feature_size(tiny_bundle, tiny_encoder_onnx, tmp_path):
    import keras

    bundle = load_bundle(tiny_bundle)
    model = keras.saving.load_model(bundle.model_path)
    wrong = DecoderConfig(**dict(bundle.config.to_dict(), feature_size=2048))
    with pytest.raises(BundleError, match="1280-d features but the decoder expects 2048"):
        save_bundle(tmp_path / "b", model, bundle.vocabulary, wrong, tiny_encoder_onnx)
    assert not (tmp_path / "b").exists()


def keras_greedy(
    model, features: np.ndarray, start_id: int, end_id: int, max_length: int, banned: tuple[int, ...] = ()
) -> list[list[int]]:
    """The slow reference: rerun the Keras model over the whole prefix for every word; never pick ``banned``."""
    import keras

    out = []
    for f in features:
        tokens = [start_id]
        while len(tokens) <= max_length:
            logits = keras.ops.convert_to_numpy(
                model((f[None], np.array([tokens], np.int32)), training=False)
            )
            last = logits[0, -1].copy()
            last[list(banned)] = -np.inf
            nxt = int(last.argmax())
            if nxt == end_id:
                break
            tokens.append(nxt)
        out.append(tokens[1:])
    return out


def test_captioner_agrees_with_the_keras_model(tiny_bundle, photo_files):
    import keras

    # fp32 step: the trained model exactly (the int8 default may word near-ties differently).
    captioner = loading.load(tiny_bundle, threads=1, decoder_backend="onnx")
    vocab = captioner.vocabulary
    model = keras.saving.load_model(tiny_bundle / MODEL_FILE)
    photos = captioner.encoder.encode([captioner.load(p) for p in photo_files])
    # The tiny decoder says much the same of every generated photo; random features make captions differ.
    random = np.random.default_rng(0).normal(0, 1, (4, photos.shape[1])).astype(np.float32)
    for features in (photos, random):
        # keras_greedy has no repeated-n-gram rule: compare under the same rules.
        options = DecodeOptions(strategy="greedy", max_length=12, no_repeat_ngram=0)
        results = captioner.decode_features(features, options)
        expected = keras_greedy(
            model, features, vocab.start_id, vocab.end_id, max_length=12, banned=vocab.never_generated
        )
        assert [r.candidates[0].caption for r in results] == [vocab.decode(t) for t in expected]
    assert len({r.caption for r in results}) > 1


def test_keras_file_loads_without_custom_objects_and_matches_the_weights(tiny_bundle):
    import keras

    from captioner.model.decoder import build_decoder

    bundle = load_bundle(tiny_bundle)
    plain = keras.saving.load_model(bundle.model_path)
    rebuilt = build_decoder(bundle.config)
    rebuilt.load_weights(bundle.weights_path)
    rng = np.random.default_rng(0)
    features = rng.normal(0, 1, (3, bundle.config.feature_size)).astype(np.float32)
    tokens = rng.integers(0, bundle.config.vocab_size, (3, 6)).astype(np.int32)
    a = keras.ops.convert_to_numpy(plain((features, tokens), training=False))
    b = keras.ops.convert_to_numpy(rebuilt((features, tokens), training=False))
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("name", [WEIGHTS_FILE, ENCODER_FILE, TOKENIZER_FILE])
def test_one_changed_byte_is_a_checksum_error(bundle_copy, name):
    path = bundle_copy / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum"):
        load_bundle(bundle_copy)
    with pytest.raises(BundleError, match="checksum"):
        loading.load(bundle_copy)


def test_missing_file_is_refused(bundle_copy):
    (bundle_copy / WEIGHTS_FILE).unlink()
    with pytest.raises(BundleError, match=r"incomplete.*caption_model.weights.h5"):
        load_bundle(bundle_copy)


def test_missing_folder_or_manifest_is_refused(bundle_copy, tmp_path):
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nowhere")
    (bundle_copy / MANIFEST_FILE).unlink()
    with pytest.raises(BundleError, match="manifest.json is missing"):
        load_bundle(bundle_copy)


def test_manifest_must_be_json(bundle_copy):
    (bundle_copy / MANIFEST_FILE).write_text("{ not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle_copy)


def test_manifest_of_another_format_is_refused(bundle_copy):
    edit_manifest(bundle_copy, format="something.else")
    with pytest.raises(BundleError, match="not a captioner.bundle manifest"):
        load_bundle(bundle_copy)


def test_other_format_version_is_refused(bundle_copy):
    edit_manifest(bundle_copy, format_version=2)
    with pytest.raises(BundleError, match="format version 2"):
        load_bundle(bundle_copy)


def test_manifest_without_a_required_checksum_is_refused(bundle_copy):
    manifest = json.loads((bundle_copy / MANIFEST_FILE).read_text())
    del manifest["files"][ENCODER_FILE]
    (bundle_copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="no checksum for encoder.onnx"):
        load_bundle(bundle_copy)


def test_tokenizer_of_the_wrong_size_is_refused(bundle_copy, tiny_vocabulary):
    from captioner.data.vocabulary import Vocabulary

    words = [t for t in tiny_vocabulary.tokens if not t.startswith("<")]
    Vocabulary([*words, "zebra"]).save(bundle_copy / TOKENIZER_FILE)
    manifest = json.loads((bundle_copy / MANIFEST_FILE).read_text())
    manifest["files"][TOKENIZER_FILE] = sha256_file(
        bundle_copy / TOKENIZER_FILE
    )  # a consistent but wrong bundle
    (bundle_copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="tokenizer has .* tokens but the decoder was built for"):
        load_bundle(bundle_copy)


# -- the bundle digest: one sha256 that covers the manifest and so every file --


def test_bundle_digest_is_the_sha256_of_the_manifest(bundle_copy):
    bundle = load_bundle(bundle_copy)
    assert bundle.sha256 == sha256_file(bundle_copy / MANIFEST_FILE)
    assert load_bundle(bundle_copy, expected_sha256=bundle.sha256.upper()).sha256 == bundle.sha256
    engine = captioner.load(bundle_copy, bundle_sha256=bundle.sha256)
    assert engine.model_info.sha256 == bundle.sha256


def test_consistently_rewritten_bundle_is_refused_when_pinned(bundle_copy):
    """Checksums alone cannot catch an edit that also fixes the manifest; the pinned digest does."""
    pinned = load_bundle(bundle_copy).sha256
    edit_manifest(bundle_copy, metrics={"BLEU-4": 0.99})
    assert load_bundle(bundle_copy).manifest["metrics"] == {"BLEU-4": 0.99}  # unpinned: nothing notices
    with pytest.raises(BundleError, match=r"not the pinned bundle.*captioner info"):
        load_bundle(bundle_copy, expected_sha256=pinned)
    with pytest.raises(BundleError, match="not the pinned bundle"):
        captioner.load(bundle_copy, bundle_sha256=pinned)


def test_a_replaced_file_with_a_fixed_manifest_is_refused_when_pinned(bundle_copy, tiny_vocabulary):
    pinned = load_bundle(bundle_copy).sha256
    (bundle_copy / TOKENIZER_FILE).write_text((bundle_copy / TOKENIZER_FILE).read_text() + " ")
    manifest = json.loads((bundle_copy / MANIFEST_FILE).read_text())
    manifest["files"][TOKENIZER_FILE] = sha256_file(bundle_copy / TOKENIZER_FILE)
    (bundle_copy / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    load_bundle(bundle_copy)
    with pytest.raises(BundleError, match="not the pinned bundle"):
        load_bundle(bundle_copy, expected_sha256=pinned)


def test_a_malformed_pinned_digest_says_what_a_digest_is(bundle_copy):
    with pytest.raises(BundleError, match="64 hex digits.*captioner info"):
        load_bundle(bundle_copy, expected_sha256="abc123")


def test_saving_over_a_bundle_keeps_the_old_one_as_a_backup(tiny_bundle, tiny_encoder_onnx, tmp_path):
    """train --out / import-original --out over an existing bundle: the previous one stays, checksums intact."""
    import keras

    bundle = load_bundle(tiny_bundle)
    model = keras.saving.load_model(bundle.model_path)
    out = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    (out / "notes.txt").write_text("mine")
    save_bundle(out, model, bundle.vocabulary, bundle.config, tiny_encoder_onnx)
    backups = sorted(tmp_path.glob("bundle.bak-*"))
    assert len(backups) == 1 and (backups[0] / "notes.txt").read_text() == "mine"
    assert load_bundle(backups[0]).manifest == bundle.manifest
    assert load_bundle(out).config == bundle.config
    save_bundle(out, model, bundle.vocabulary, bundle.config, tiny_encoder_onnx)  # same second: a new name
    assert len(list(tmp_path.glob("bundle.bak-*"))) == 2
