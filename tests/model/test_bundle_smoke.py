from captioner import loading
from captioner.decode.options import DecodeOptions


def test_tiny_bundle_captions(tiny_bundle, photo_files):
    cap = loading.load(tiny_bundle)
    res = cap.caption_files(photo_files, DecodeOptions(beam_size=3, n_best=2))
    assert len(res) == len(photo_files)
    assert all(len(r.candidates) >= 1 for r in res)
