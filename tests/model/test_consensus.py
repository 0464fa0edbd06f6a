"""Consensus reranking: the memory, its file, its place in a bundle, and what it does to a Captioner's answers."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from captioner.decode.options import DecodeOptions
from captioner.errors import BundleError, OptionsError
from captioner.model.consensus import CONSENSUS_FILE, ConsensusMemory

CAPTIONS = [
    ["a cat sits on a mat", "a cat is sitting on a mat", "the cat sits"],
    ["a dog runs on the grass", "a brown dog runs"],
    ["two birds fly over the water", "birds over water"],
]


def _features(n_images: int = 3, dims: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.eye(n_images, dims) * 5 + rng.normal(0, 0.1, (n_images, dims))


def test_neighbours_are_the_most_similar_memory_images_first():
    memory = ConsensusMemory(_features(), CAPTIONS, dims=None)
    query = np.array([[0.1, 4.0, 0.0, 0, 0, 0, 0, 0], [3.0, 0.0, 2.0, 0, 0, 0, 0, 0]])
    assert memory.neighbours(query, 2).tolist() == [[1, 0], [0, 2]]
    assert memory.neighbours(query, 10).shape == (2, 3)  # k beyond the memory: all of it


def test_leave_one_out_never_finds_the_query_photo_itself():
    memory = ConsensusMemory(_features(), CAPTIONS, dims=None)
    own = _features()[1:2]  # memory image 1, queried as if it were a new photo
    assert memory.neighbours(own, 1).tolist() == [[1]]
    view = memory.leave_one_out()
    assert view.neighbours(own, 2)[0, 0] != 1 and 1 not in view.neighbours(own, 2)[0, :2]
    near = own + np.random.default_rng(5).normal(0, 0.5, own.shape)  # a similar photo, not the same one
    assert view.neighbours(near, 1).tolist() == [[1]]
    assert memory.neighbours(own, 1).tolist() == [[1]]  # the memory itself is unchanged


def test_rerank_prefers_the_candidate_the_neighbours_agree_with_unless_the_model_weighs_more():
    memory = ConsensusMemory(_features(), CAPTIONS, dims=None)
    query = _features()[:1]
    candidates = [["a dog runs on the grass", "a cat sits on a mat"]]
    scores = [[-0.5, -2.0]]  # the model prefers the dog
    assert memory.rerank(query, candidates, scores, k=1, weight=0.2) == [[1, 0]]
    assert memory.rerank(query, candidates, scores, k=1, weight=10.0) == [[0, 1]]
    agreement = memory.consensus(query, candidates, k=1)[0]
    assert agreement[1] > 1.0 > agreement[0] >= 0.0


def test_a_saved_memory_loads_to_the_same_answers(tmp_path):
    features = _features(dims=16)
    memory = ConsensusMemory(features, CAPTIONS, dims=2)
    assert memory.components.shape == (16, 2)
    loaded = ConsensusMemory.load(memory.save(tmp_path / CONSENSUS_FILE))
    query = features + np.random.default_rng(1).normal(0, 0.2, features.shape)
    candidates = [["a cat on a mat", "a dog"], ["a brown dog runs", "the water"], ["birds fly", "a cat"]]
    assert loaded.neighbours(query, 2).tolist() == memory.neighbours(query, 2).tolist()
    for a, b in zip(
        loaded.consensus(query, candidates, 2), memory.consensus(query, candidates, 2), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    assert loaded.captions == memory.captions


def test_a_memory_whose_parts_disagree_is_refused(tmp_path):
    path = ConsensusMemory(_features(), CAPTIONS, dims=None).save(tmp_path / CONSENSUS_FILE)
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["caption_counts"] = arrays["caption_counts"][:2]
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="caption counts"):
        ConsensusMemory.load(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="feature rows"):
        ConsensusMemory(_features()[:2], CAPTIONS)


def test_options_bound_the_reranking():
    with pytest.raises(OptionsError, match="consensus_neighbours"):
        DecodeOptions(consensus_neighbours=51)
    with pytest.raises(OptionsError, match="consensus_weight"):
        DecodeOptions(consensus_weight=-1)


@pytest.fixture
def bundle_copy(tmp_path, tiny_bundle):
    return shutil.copytree(tiny_bundle, tmp_path / "bundle")


def _own_memory(engine, photo_files, options):
    """A memory whose 'training photos' are the test photos, captioned with the model's own second choices."""
    from captioner.encoders.images import load_image

    images = [load_image(p) for p in photo_files]
    encoded = engine.encoder.run(images)
    results = engine.decode_features(encoded.features, options)
    seconds = [r.candidates[-1].caption for r in results]
    return ConsensusMemory(encoded.features, [[c] * 5 for c in seconds], dims=None), results, encoded


def test_a_bundle_carries_its_memory_and_reranking_chooses_among_the_models_own_captions(
    bundle_copy, photo_files
):
    import captioner
    from captioner.model.bundle import load_bundle, record_consensus

    plain = DecodeOptions(beam_size=3, n_best=3, consensus_neighbours=0, label_constraint=False)
    engine = captioner.load(bundle_copy)
    assert engine.consensus is None
    memory, results, encoded = _own_memory(engine, photo_files, plain)
    record_consensus(bundle_copy, memory)
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    assert CONSENSUS_FILE in manifest["files"] and manifest["consensus"]["images"] == len(photo_files)
    assert load_bundle(bundle_copy).consensus is not None

    engine = captioner.load(bundle_copy)
    reranked = engine.decode_features(
        encoded.features, DecodeOptions(beam_size=3, consensus_neighbours=1, label_constraint=False)
    )
    for before, after in zip(results, reranked, strict=True):
        assert after.caption in [c.caption for c in before.candidates]  # never a memory caption put in
        assert after.caption == before.candidates[-1].caption  # the one its nearest photo agrees with
    off = engine.decode_features(encoded.features, DecodeOptions(beam_size=3, consensus_neighbours=0))
    assert [r.caption for r in off] == [r.caption for r in results]


def test_a_memory_of_another_encoder_is_refused(bundle_copy, photo_files):
    from captioner.model.bundle import MANIFEST_FILE, load_bundle, record_consensus

    with pytest.raises(BundleError, match="1280"):
        record_consensus(bundle_copy, ConsensusMemory(_features(), CAPTIONS, dims=None))
    import captioner

    engine = captioner.load(bundle_copy)
    memory, _, _ = _own_memory(engine, photo_files, DecodeOptions(beam_size=2, n_best=2))
    record_consensus(bundle_copy, memory)
    manifest = json.loads((bundle_copy / MANIFEST_FILE).read_text())
    manifest["consensus"]["encoder_sha256"] = "0" * 64
    (bundle_copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="another encoder"):
        load_bundle(bundle_copy)
