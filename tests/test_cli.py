"""The CLI: real commands on tiny data; every user error is one line on stderr and a non-zero exit."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from captioner.cli import main


def run(capsys, *args):
    code = main(list(map(str, args)))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    assert code != 0
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error:"), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def test_caption_prints_captions_and_json(capsys, tiny_bundle, photo_files):
    code, out, _ = run(capsys, "caption", *photo_files[:2], "--bundle", tiny_bundle)
    assert code == 0
    assert [line.split(":")[0] for line in out.strip().splitlines()] == [str(p) for p in photo_files[:2]]
    code, out, _ = run(capsys, "caption", photo_files[0], "--bundle", tiny_bundle, "--json", "--n-best", "2")
    assert code == 0
    record = json.loads(out)
    assert record["image"] == str(photo_files[0])
    assert len(record["candidates"]) == 2 and record["caption"] in {
        c["caption"] for c in record["candidates"]
    }
    assert record["model_version"]


def test_caption_missing_image(capsys, tiny_bundle, tmp_path):
    code, _, err = run(capsys, "caption", tmp_path / "nope.jpg", "--bundle", tiny_bundle)
    assert_one_line_error(code, err, "not found", "nope.jpg")


def test_caption_corrupt_image(capsys, tiny_bundle, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 50)
    code, _, err = run(capsys, "caption", bad, "--bundle", tiny_bundle)
    assert_one_line_error(code, err, "corrupt")
    text = tmp_path / "notes.jpg"
    text.write_text("hello, I am text")
    code, _, err = run(capsys, "caption", text, "--bundle", tiny_bundle)
    assert_one_line_error(code, err, "not a supported image")


def test_missing_and_mismatched_bundle(capsys, tiny_bundle, tmp_path, photo_files):
    code, _, err = run(capsys, "caption", photo_files[0], "--bundle", tmp_path / "missing")
    assert_one_line_error(code, err, "bundle not found")
    tampered = tmp_path / "tampered"
    shutil.copytree(tiny_bundle, tampered)
    tok = tampered / "tokenizer.json"
    tok.write_text(tok.read_text().replace("dog", "cat", 1))
    code, _, err = run(capsys, "caption", photo_files[0], "--bundle", tampered)
    assert_one_line_error(code, err, "checksum")
    code, _, err = run(capsys, "info", "--bundle", tampered)
    assert_one_line_error(code, err, "checksum")


def test_bad_options(capsys, tiny_bundle, photo_files):
    code, _, err = run(capsys, "caption", photo_files[0], "--bundle", tiny_bundle, "--beam-size", "99")
    assert_one_line_error(code, err, "beam_size")
    code, _, err = run(capsys, "caption", photo_files[0], "--bundle", tiny_bundle, "--strategy", "sample")
    assert_one_line_error(code, err, "strategy")


def _command(name: str):
    import typer.main

    from captioner.cli import app

    return typer.main.get_command(app).commands[name]


def test_train_flags_default_to_train_config():
    """One source for each setting: every training flag's default is TrainConfig's (the shipped recipe)."""
    from captioner.model.config import TrainConfig

    defaults = TrainConfig().to_dict()
    params = {p.name: p.default for p in _command("train").params}
    shared = set(params) & set(defaults)
    assert shared >= {"batch_size", "max_length", "epochs", "learning_rate", "encoder", "flip_augment"}
    assert {k: params[k] for k in shared} == {k: defaults[k] for k in shared}


def test_decode_flags_are_the_same_on_every_command():
    from captioner.decode.options import DecodeOptions

    expected = DecodeOptions().to_dict()
    for name in ("caption", "caption-dir", "evaluate"):
        params = {p.name: p for p in _command(name).params}
        for key in expected.keys() & params.keys():
            assert params[key].default == expected[key], (name, key)
            assert params[key].opts == [f"--{key.replace('_', '-')}"], (name, key)
    for name in ("caption", "evaluate"):
        backend = next(p for p in _command(name).params if p.name == "decoder_backend")
        assert backend.opts == ["--decoder-backend", "--decoder"]


def test_bad_training_setting_is_one_line(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--data-root", tmp_path, "--batch-size", "0")
    assert_one_line_error(code, err, "batch_size", ">= 1")
    code, _, err = run(capsys, "train", "--data-root", tmp_path, "--dropout", "1.5")
    assert_one_line_error(code, err, "dropout", "[0, 1)")


def test_decoder_backend_flag_and_its_old_name(capsys, tiny_bundle, photo_files):
    outs = []
    for flag in ("--decoder-backend", "--decoder"):
        code, out, err = run(capsys, "caption", photo_files[0], "--bundle", tiny_bundle, flag, "numpy")
        assert code == 0, err
        outs.append(out)
    assert outs[0] == outs[1]
    code, _, err = run(capsys, "caption", photo_files[0], "--bundle", tiny_bundle, "--decoder-backend", "gpu")
    assert code == 2 and "gpu" in err and "Traceback" not in err


def test_unknown_encoder_and_missing_data(capsys, tmp_path):
    code, _, err = run(capsys, "export-encoder", "resnet", "--out", tmp_path / "x.onnx")
    assert_one_line_error(code, err, "unknown encoder", "efficientnet_lite0")
    code, _, err = run(capsys, "train", "--data-root", tmp_path, "--encoder", "vgg16")
    assert_one_line_error(code, err, "unknown encoder")
    code, _, err = run(capsys, "evaluate", "--data-root", tmp_path / "nowhere")
    assert_one_line_error(code, err, "not found")
    code, _, err = run(capsys, "train", "--data-root", tmp_path / "nowhere", "--run-dir", tmp_path / "run")
    assert_one_line_error(code, err, "not found")


def test_info_prints_manifest(capsys, tiny_bundle):
    code, out, _ = run(capsys, "info", "--bundle", tiny_bundle)
    assert code == 0
    assert json.loads(out)["format"] == "captioner.bundle"


def test_python_dash_m_entry_point(tiny_bundle, photo_files):
    proc = subprocess.run(
        [sys.executable, "-m", "captioner", "caption", str(photo_files[0]), "--bundle", str(tiny_bundle), "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["caption"] is not None
    proc = subprocess.run(
        [sys.executable, "-m", "captioner", "caption", "/no/such.jpg", "--bundle", str(tiny_bundle)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_train_and_evaluate_end_to_end(capsys, tmp_path):
    """The whole pipeline on a tiny generated Flickr8k folder: export, features, train, bundle, evaluate."""
    from conftest_helpers import write_tiny_flickr8k

    root = write_tiny_flickr8k(tmp_path / "flickr")
    code, out, err = run(
        capsys, "train", "--data-root", root, "--run-dir", tmp_path / "run", "--cache-dir", tmp_path / "cache",
        "--encoder", "efficientnet_lite0", "--no-flip-augment", "--augment-views", "1",
        "--encoder-weights", "random", "--epochs", "2", "--batch-size", "8", "--hidden-dim", "16", "--embed-dim", "8", "--min-count", "1", "--max-length", "10", "--scst-epochs", "2",
    )  # fmt: skip
    assert code == 0, err
    bundle = tmp_path / "run" / "bundle"
    assert (tmp_path / "cache" / "features" / "efficientnet_lite0" / "view1-train" / "index.json").is_file()
    scst_stage = json.loads((bundle / "manifest.json").read_text())["training"]["scst"]
    assert scst_stage["epochs_run"] >= 1 and "dev_CIDEr" in scst_stage["dev_selection_scores"]
    files = json.loads((bundle / "manifest.json").read_text())["files"]
    assert {"consensus.npz", "labels.json"} <= files.keys()  # what decoding uses comes with the model
    assert (bundle / "manifest.json").is_file() and (bundle / "caption_model.keras").is_file()
    assert (bundle / "weights" / "caption_model.weights.h5").is_file()
    code, out, err = run(
        capsys, "evaluate", "--data-root", root, "--bundle", bundle, "--split", "dev",
        "--out-dir", tmp_path / "eval", "--no-meteor",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert set(report["metrics"]) >= {"BLEU-1", "BLEU-4", "CIDEr", "ROUGE-L"}
    assert (tmp_path / "eval" / "gallery.html").is_file()


def test_info_prints_the_bundle_digest_and_checks_a_pinned_one(capsys, tiny_bundle):
    from captioner.model.bundle import DEFAULT_BUNDLE, MANIFEST_FILE, sha256_file

    code, out, _ = run(capsys, "info")
    assert code == 0
    assert json.loads(out)["bundle_sha256"] == sha256_file(DEFAULT_BUNDLE / MANIFEST_FILE)
    digest = sha256_file(tiny_bundle / MANIFEST_FILE)
    code, out, _ = run(capsys, "info", "--bundle", tiny_bundle, "--bundle-sha256", digest)
    assert code == 0 and json.loads(out)["bundle_sha256"] == digest
    code, _, err = run(capsys, "info", "--bundle", tiny_bundle, "--bundle-sha256", "0" * 64)
    assert_one_line_error(code, err, "not the pinned bundle")
    code, _, err = run(capsys, "caption", "x.jpg", "--bundle", tiny_bundle, "--bundle-sha256", "0" * 64)
    assert_one_line_error(code, err, "not the pinned bundle")


def test_info_shows_the_providers_the_sessions_really_got(capsys, tiny_bundle):
    code, out, _ = run(capsys, "info", "--bundle", tiny_bundle, "--execution-provider", "cpu")
    assert code == 0
    runtime = json.loads(out)["runtime"]
    assert runtime["execution_provider"] == "cpu" and "CPUExecutionProvider" in runtime["available_providers"]
    assert runtime["providers"] == {"encoder": "CPUExecutionProvider", "decoder": "CPUExecutionProvider"}


def test_unavailable_execution_provider_is_one_line(capsys, tiny_bundle, photo_files):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime offers CUDA here")
    code, _, err = run(
        capsys, "caption", photo_files[0], "--bundle", tiny_bundle, "--execution-provider", "cuda"
    )
    assert_one_line_error(code, err, "setting says cuda", ".[gpu]")
    code, _, err = run(
        capsys, "caption", photo_files[0], "--bundle", tiny_bundle, "--execution-provider", "gpu"
    )
    assert_one_line_error(code, err, "auto, cpu, cuda, tensorrt")
    code, _, err = run(capsys, "serve", "--execution-provider", "cuda")
    assert_one_line_error(code, err, "setting says cuda")


def _original(tmp_path):
    pytest.importorskip("keras")
    from original_artefacts import write_original_artefacts

    return write_original_artefacts(tmp_path / "original")


def test_import_original_writes_a_checksummed_bundle_that_captions_like_the_artefacts(
    capsys, tmp_path, photo_files
):
    import captioner
    from captioner.errors import BundleError

    a = _original(tmp_path)
    out = tmp_path / "bundle"
    args = ["import-original", a["model_path"], a["tokenizer_path"], "--weights", a["weights_path"],
            "--encoder", a["encoder_path"], "--out", out]  # fmt: skip
    code, stdout, err = run(capsys, *args)
    assert code == 0, err
    assert "bundle written to" in stdout and not list(out.glob("*.pkl"))  # the tokenizer is JSON now
    imported = captioner.load(out, decoder_backend="onnx", threads=1)
    direct = captioner.load(a["model_path"].parent, decoder_backend="onnx", threads=1)
    assert imported.model_info.format == "bundle" and imported.model_info.architecture == "original-merge"
    assert [r.caption for r in imported.caption_files(photo_files)] == [
        r.caption for r in direct.caption_files(photo_files)
    ]
    code, _, err = run(capsys, *args)  # again: the first bundle is kept beside the new one
    assert code == 0, err
    assert len(list(tmp_path.glob("bundle.bak-*"))) == 1
    tokenizer = out / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text().replace("dog", "cat"))
    with pytest.raises(BundleError, match="does not match the checksum"):
        captioner.load(out)


def test_import_original_refuses_artefacts_that_do_not_belong_together(capsys, tmp_path, tiny_encoder_onnx):
    a = _original(tmp_path)
    code, _, err = run(
        capsys, "import-original", a["model_path"], a["tokenizer_path"], "--encoder", tiny_encoder_onnx,
        "--out", tmp_path / "bundle",
    )  # fmt: skip
    assert_one_line_error(code, err, "expects 16-d image features but the encoder gives 1280-d")
    assert not (tmp_path / "bundle").exists()


@pytest.mark.slow
def test_import_original_scores_the_bundle_with_a_data_root(capsys, tmp_path):
    from captioner.model.bundle import load_bundle
    from conftest_helpers import write_tiny_flickr8k

    a = _original(tmp_path)
    root = write_tiny_flickr8k(tmp_path / "flickr")
    code, _, err = run(
        capsys, "import-original", a["model_path"], a["tokenizer_path"], "--encoder", a["encoder_path"],
        "--out", tmp_path / "bundle", "--data-root", root, "--eval-dir", tmp_path / "eval", "--no-meteor",
    )  # fmt: skip
    assert code == 0, err
    scores = load_bundle(tmp_path / "bundle").manifest["metrics"]["scores"]
    assert {"BLEU-1", "BLEU-4", "CIDEr"} <= set(scores)


def test_build_labels_stores_a_checksummed_label_map_that_the_bundle_loads(capsys, tmp_path, tiny_bundle):
    from captioner.model.bundle import LABELS_FILE, load_bundle
    from conftest_helpers import write_tiny_flickr8k

    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    data = write_tiny_flickr8k(tmp_path / "flickr8k")
    # No WordNet here: lemmas (and their heads, unchecked) and the tiny training captions' co-occurrence.
    code, out, err = run(capsys, "build-labels", "--data-root", data, "--bundle", bundle)
    assert code == 0, err
    summary = json.loads(out)
    loaded = load_bundle(bundle)
    assert loaded.labels is not None and summary["classes_mapped"] == len(loaded.labels.words) > 0
    assert summary["file"] == str(bundle / LABELS_FILE) and LABELS_FILE in loaded.manifest["files"]
    assert set(loaded.labels.words[281]) == {
        "cat"
    }  # tabby, tabby cat -> cat (the tiny vocabulary's only cat)
    code, out, err = run(
        capsys,
        "caption",
        "--bundle",
        bundle,
        "--no-label-constraint",
        tmp_path / "flickr8k" / "Images" / "1000_abc.jpg",
    )
    assert code == 0, err


@pytest.mark.slow
def test_quantize_encoder_writes_a_loadable_int8_copy_of_the_bundle(
    capsys, tmp_path, tiny_bundle, photo_files
):
    import numpy as np

    import captioner
    from captioner.model.bundle import ENCODER_FILE, load_bundle, record_consensus, record_metrics
    from captioner.model.consensus import ConsensusMemory

    bundle_copy = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    float_engine = captioner.load(bundle_copy)
    images = [float_engine.load(p) for p in photo_files]
    a = float_engine.encoder.encode(images)
    record_consensus(bundle_copy, ConsensusMemory(a, [["a cat sits on a mat"]] * len(images), dims=None))
    record_metrics(bundle_copy, {"BLEU-4": 0.2}, split="dev")
    before = load_bundle(bundle_copy)
    folder = tmp_path / "calibration"
    folder.mkdir()
    for p in photo_files[1:]:
        shutil.copy(p, folder / p.name)
    out = tmp_path / "int8"
    code, stdout, err = run(
        capsys, "quantize-encoder", "--bundle", bundle_copy, "--out", out,
        "--calibration", photo_files[0], "--calibration", folder,
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(stdout)["calibration_images"] == len(photo_files)
    copy = load_bundle(out)  # checksums hold
    encoder = copy.manifest["encoder"]
    assert (
        encoder["weights_dtype"] == "int8"
        and encoder["quantised_from"] == before.manifest["files"][ENCODER_FILE]
    )
    assert copy.manifest["metrics"] == {} and copy.manifest["metrics_float_encoder"]["scores"] == {
        "BLEU-4": 0.2
    }
    assert copy.consensus is not None  # the float encoder's training features, said so
    assert copy.manifest["consensus"]["features_encoder_sha256"] == encoder["quantised_from"]
    assert load_bundle(bundle_copy).sha256 == before.sha256  # the source is untouched
    int8_engine = captioner.load(out)
    assert int8_engine.encoder.info["weights_dtype"] == "int8"
    b = int8_engine.encoder.encode(images)
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.min() > 0.9
    assert all(r.caption for r in int8_engine.caption_images(images))

    code, _, err = run(capsys, "quantize-encoder", "--bundle", bundle_copy, "--out", tmp_path / "x",
                       "--calibration", tmp_path / "missing")  # fmt: skip
    assert code != 0 and "not found" in err and not (tmp_path / "x").exists()
    code, _, err = run(capsys, "quantize-encoder", "--bundle", out, "--out", tmp_path / "y",
                       "--calibration", folder)  # fmt: skip
    assert code != 0 and "already int8" in err and not (tmp_path / "y").exists()
