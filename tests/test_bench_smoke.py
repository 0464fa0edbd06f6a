"""Smoke test of the benchmark (bench/): it runs end to end on tiny inputs, and its pieces measure the right thing.

Not a measurement: the numbers are not checked, only that every section is there and well-formed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

sys.path.insert(0, str(REPO))  # bench/ is a top-level folder, not part of the installed package


def test_quick_run_writes_every_section(tiny_bundle, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]))
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "bench", "--bundle", str(tiny_bundle), "--quick", "--out", str(out),
           "--work", str(tmp_path / "work")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "== targets" in proc.stdout

    result = json.loads((out / "quick.json").read_text())
    raw, summary = result["raw"], result["summary"]
    assert raw["machine"]["matmul_peak"]["gflops"] > 0 and raw["machine"]["cores"] >= 1
    engine = raw["bundle"]["engine"]
    assert engine["tensorflow_imported"] is False
    assert engine["cold_start_s"] > 0 and engine["peak_rss_mb"] > 0
    section = engine["blas_default"]
    for key in ("single_greedy", "single_beam3"):
        assert section[key]["latency_ms"]["p50"] > 0 and len(section[key]["captions"]) == len(raw["photos"])
    for key in ("batch8_beam3", "batch32_beam3", "batch32_greedy", "micro_batched_c8_beam3"):
        assert section[key]["throughput_img_s"] > 0
    assert 0 <= section["batch32_beam3"]["decoder_share"] <= 1
    assert raw["bundle"]["flops"]["gflops"] == pytest.approx(0.77, rel=0.05)  # EfficientNet-Lite0: 0.38 GMACs
    http = raw["bundle"]["http"]["as_shipped"]
    assert http["cold_start_s"] > 0 and http["process"]["libraries"]["tensorflow"] is False
    for level in http["levels"].values():
        assert level["ok"] == level["requests"] > 0 and level["latency_ms"]["p50"] > 0
    names = {t["name"] for t in summary["targets"]}
    assert any("HTTP throughput at concurrency 8" in n for n in names)
    assert any("peak RSS" in n for n in names)
    assert summary["bundle"]["encoder_efficiency"]["b1_best"]["fraction_of_peak"] > 0
    # The decoder backends, on the same encoder: the ONNX fp32 step answers exactly what the NumPy one does.
    backends = engine["decoder_backends"]
    assert set(backends) == {"numpy", "onnx", "onnx-int8"}
    assert backends["onnx"]["same_captions_as_numpy"] == 1.0
    for name, sec in backends.items():
        assert (
            0
            < sec["decoder_only_b32_beam3"]["step_ms_per_image"]
            <= sec["decoder_only_b32_beam3"]["ms_per_image"]
        )
        assert any(t["note"].startswith(f"decoder {name}") for t in summary["targets"])
    assert engine["decoder"] == "OnnxDecoder" and engine["onnxruntime_threads"] == os.cpu_count()
    assert raw["bundle"]["engine_spinning"]["keep_spinning"] is True
    assert summary["bundle"]["ort_spinning"]["stopped_vs_spinning_on_x"] > 0
    pytest.importorskip("matplotlib")
    assert (out / "quick.png").stat().st_size > 10_000


# -- the InceptionV3 comparison's pieces, on tiny sizes (the real ones take minutes) --

FEATURES, VOCAB, MAX_LENGTH, UNITS = 12, 40, 8, 16


@pytest.fixture(scope="module")
def merge_model():
    keras = pytest.importorskip("keras")
    from bench.baseline import build_merge_model, suppress_ids

    keras.utils.set_random_seed(0)
    model = build_merge_model(keras, FEATURES, VOCAB, MAX_LENGTH, units=UNITS)
    for layer in model.layers:  # weights big enough that the argmax changes from step to step
        layer.set_weights([np.random.default_rng(1).normal(0, 0.5, w.shape) for w in layer.get_weights()])
    suppress_ids(model, [0])
    return model


def test_original_loop_and_our_greedy_search_write_the_same_caption(merge_model, tmp_path):
    """bench.baseline's loop and the product's original-format step (read from the saved .keras) agree."""
    from bench.baseline import generate_desc
    from keras.src.legacy.preprocessing.text import Tokenizer

    from captioner.decode.options import DecodeOptions
    from captioner.decode.search import greedy_search
    from captioner.model.original.merge import read_merge_model
    from captioner.model.original.merge_step import MergeStepDecoder, OriginalStep

    tokenizer = Tokenizer()
    tokenizer.fit_on_texts([" ".join(["startseq", "endseq"] + [f"w{i}" for i in range(VOCAB - 3)])])
    assert len(tokenizer.word_index) + 1 == VOCAB
    merge_model.save(tmp_path / "caption_model.keras")
    reference = MergeStepDecoder.from_model(read_merge_model(tmp_path / "caption_model.keras"))
    decoder = OriginalStep(reference, reference, MAX_LENGTH)
    start, end = tokenizer.word_index["startseq"], tokenizer.word_index["endseq"]
    photos = np.random.default_rng(3).normal(0, 1, (2, FEATURES)).astype(np.float32)
    words = MAX_LENGTH + 2  # past the model's input length: pad_sequences truncates on both sides
    ours = greedy_search(
        decoder.step, decoder.initial_state(photos), DecodeOptions("greedy", max_length=words), start, end
    )
    for photo, hyps in zip(photos, ours, strict=True):
        text = generate_desc(merge_model, tokenizer, photo[None], MAX_LENGTH, max_words=words)
        tokens = [tokenizer.index_word[i] for i in hyps[0].tokens]
        if hyps[0].finished:
            tokens.append("endseq")
        assert text == " ".join(["startseq", *tokens])


def test_encoder_flops_and_quantised_copies(tiny_encoder_onnx, photo_files, tmp_path):
    from bench.__main__ import quantized_copies
    from bench.machine import encoder_flops

    from captioner.encoders.runtime import OnnxEncoder

    flops = encoder_flops(tiny_encoder_onnx)
    assert flops["nodes_without_shapes"] == 0 and flops["gmacs"] == pytest.approx(0.384, rel=0.02)
    made = quantized_copies(Path(tiny_encoder_onnx), tmp_path, photo_files)  # captioner.encoders.quantize
    assert set(made) == {"int8", "fp16"}
    for path in made.values():
        encoder = OnnxEncoder(path)  # the captioner metadata survived
        assert encoder.encode([]).shape == (0, 1280)


def test_tags_bench_compares_the_encoder_with_and_without_its_head(tiny_bundle, tmp_path):
    from bench import tags

    out = tmp_path / "tags.json"
    tags.main(["--bundle", str(tiny_bundle), "--repeats", "1", "--threads", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    for batch in ("batch_1", "batch_32"):
        row = report["results"][batch]
        assert row["features_max_abs_diff"] == 0.0  # the head is an extra branch: features untouched
        assert row["with_head_ms_median"] > 0 and row["without_head_ms_median"] > 0


def test_probe_bench_captions_every_photo_off_and_on(tiny_bundle, tmp_path, capsys):
    from bench import probe_objects

    from captioner.evaluation.probe import ISSUE_PHOTOS, PROBE

    out = tmp_path / "probe.json"
    probe_objects.main(["--bundle", str(tiny_bundle), "--out", str(out)])
    report = json.loads(out.read_text())
    assert [r["photo"] for r in report["photos"]] == [p.name for p in PROBE]
    assert set(report["issue_photos"]) == set(ISSUE_PHOTOS)
    assert {"off", "on", "on@0.1"} <= set(report["named_rate"])
    for row in report["photos"]:
        assert row["caption_off"] and row["caption_on"] and row["constraint_words"] is None  # no labels.json
        assert row["named_on"] == any(w in row["caption_on"].split() for w in row["object_words"])
    assert "skimage.chelsea" in capsys.readouterr().out


def test_recompression_bench_scores_the_files_and_each_resave(tiny_bundle, tmp_path):
    from bench import recompression

    from conftest_helpers import write_tiny_flickr8k

    root = write_tiny_flickr8k(tmp_path / "flickr", n_train=2, n_dev=3)
    out = tmp_path / "recompression.json"
    recompression.main(
        ["--bundle", f"tiny={tiny_bundle}", "--quality", "50", "--data", str(root), "--out", str(out)]
    )
    report = json.loads(out.read_text())
    rows = report["results"]["tiny"]
    assert report["n_images"] == 3 and {"files", "jpeg50"} <= rows.keys()
    assert rows["files"]["same_as_on_files"] == 1.0 and 0.0 <= rows["jpeg50"]["same_as_on_files"] <= 1.0
    assert {"BLEU-4", "CIDEr", "distinct"} <= rows["jpeg50"].keys()
    # a re-save really changes the bytes the captioner sees
    photo = sorted((root / "Images").iterdir())[0].read_bytes()
    assert recompression.resave(photo, 50) != photo
