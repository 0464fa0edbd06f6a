"""The original design, written faithfully as the baseline: TensorFlow/Keras, one request at a time.

Per request (as the tutorial captioner and its Flask/FastAPI wrappers did it):
  1. ``load_img(path, target_size=(299, 299))`` -> ``img_to_array`` -> ``preprocess_input`` -> InceptionV3
     ``model.predict`` -> 2048-d features;
  2. ``generate_desc``: for each word, ``texts_to_sequences`` of the text so far, ``pad_sequences`` to max_length,
     ``model.predict`` of the merge model over the whole padded prefix, ``argmax``, a linear ``word_for_id``
     search of the tokenizer, append; stop at ``endseq``.
The one deviation: the loop runs ``max_words`` times instead of ``max_length``, and the random-weight decoder
never predicts ``endseq`` (its bias is -50), so both sides do exactly ``max_words`` decoder steps per caption
whatever the random weights would say (Flickr8k captions average ~11 words).

Also builds the shared artefacts (``build``): random-weight InceptionV3 (seeded) saved as ``.weights.h5``, the merge
model (``caption_model.keras``, which our engine reads through ``captioner.load``) and a Keras
Tokenizer fitted on the Flickr8k training captions (``tokenizer.pkl``).

Runs in its own process (it imports TensorFlow, which must never be loaded where our engine is timed):
    python -m bench.baseline build DIR [--quick]
    python -m bench.baseline run DIR --photos a.jpg b.jpg ... --max-words 12 --out baseline.json
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np

from bench.timing import percentiles, rss_peak_mb

UNITS, EMBED = 256, 256  # the tutorial's sizes
SEED = 0
NEVER = -50.0  # output bias of padding and endseq: never the argmax, exp(-50) ~ 2e-22


def build_merge_model(keras, feature_size: int, vocab_size: int, max_length: int, units: int = UNITS):
    """The tutorial's merge architecture (define_model), layer for layer: ``captioner.model.original.merge``'s
    copy, the one the original-format loader is tested with."""
    from captioner.model.original.merge import build_merge_model as merge_model

    return merge_model(keras, feature_size, vocab_size, max_length, units)


def suppress_ids(model, ids: list[int]) -> None:
    """Set the output bias of ``ids`` to NEVER (random weights would otherwise stop or pad at random steps)."""
    out = model.layers[-1]
    kernel, bias = out.get_weights()
    bias[ids] = NEVER
    out.set_weights([kernel, bias])


def training_captions(limit_words: int | None = None) -> list[str]:
    """Flickr8k training captions wrapped in startseq/endseq (the tutorial's cleaning), or synthetic words."""
    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k"
    try:
        from captioner.data.flickr8k import load_flickr8k
        from captioner.data.text import normalize_caption

        data = load_flickr8k(root)
        train = data.splits["train"]
        captions = [normalize_caption(c) for name in train for c in data.captions[name]]
        # The tutorial kept words longer than one letter ("a" is dropped too); do the same.
        captions = [" ".join(w for w in c.split() if len(w) > 1) for c in captions]
    except Exception:  # noqa: BLE001 - no data set on this machine: a synthetic vocabulary of the same size
        rng = np.random.default_rng(SEED)
        words = [f"w{i}" for i in range(limit_words or 7578)]
        captions = [" ".join(rng.choice(words, 11)) for _ in range(30000)] + [" ".join(words)]
    return [f"startseq {c} endseq" for c in captions]


def build(out: Path, quick: bool = False) -> dict:
    """Write the artefacts both sides share into ``out``; returns meta.json's content."""
    import keras
    from keras.src.legacy.preprocessing.text import Tokenizer  # Keras 3 still ships the original class here

    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(SEED)
    captions = training_captions(limit_words=300 if quick else None)
    tokenizer = Tokenizer()
    tokenizer.fit_on_texts(captions)
    vocab_size = len(tokenizer.word_index) + 1
    max_length = max(len(c.split()) for c in captions) if not quick else 16
    max_length = min(max_length, 34)  # the tutorial's Flickr8k max_length
    (out / "tokenizer.pkl").write_bytes(pickle.dumps(tokenizer))

    feature_size = 2048
    if not quick:
        encoder = keras.applications.InceptionV3(
            weights=None, include_top=False, pooling="avg", input_shape=(299, 299, 3)
        )
        encoder.save_weights(out / "inception_v3.weights.h5")
        feature_size = int(encoder.outputs[0].shape[-1])
    model = build_merge_model(keras, feature_size, vocab_size, max_length)
    suppress_ids(model, [0, tokenizer.word_index["endseq"]])
    model.save(out / "caption_model.keras")
    meta = {
        "vocab_size": vocab_size,
        "max_length": max_length,
        "feature_size": feature_size,
        "units": UNITS,
        "seed": SEED,
        "suppressed": ["<pad>", "endseq"],
        "keras": keras.__version__,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


# -- the original generation loop, verbatim (but for max_words) --


def word_for_id(integer, tokenizer):
    for word, index in tokenizer.word_index.items():
        if index == integer:
            return word
    return None


def generate_desc(model, tokenizer, photo, max_length, max_words=None):
    from keras.utils import pad_sequences

    in_text = "startseq"
    for _ in range(max_words or max_length):
        sequence = tokenizer.texts_to_sequences([in_text])[0]
        sequence = pad_sequences([sequence], maxlen=max_length)
        yhat = model.predict([photo, sequence], verbose=0)
        yhat = np.argmax(yhat)
        word = word_for_id(yhat, tokenizer)
        if word is None:
            break
        in_text += " " + word
        if word == "endseq":
            break
    return in_text


def extract_features(filename, model):
    from keras.applications.inception_v3 import preprocess_input
    from keras.utils import img_to_array, load_img

    image = load_img(filename, target_size=(299, 299))
    image = img_to_array(image)
    image = image.reshape((1, image.shape[0], image.shape[1], image.shape[2]))
    image = preprocess_input(image)
    return model.predict(image, verbose=0)


def run(artefacts: Path, photos: list[str], max_words: int, started: float) -> dict:
    """Caption ``photos`` one at a time; per-request timings, captions, features, cold start and peak RSS."""
    import keras

    meta = json.loads((artefacts / "meta.json").read_text())
    encoder = keras.applications.InceptionV3(
        weights=None, include_top=False, pooling="avg", input_shape=(299, 299, 3)
    )
    encoder.load_weights(artefacts / "inception_v3.weights.h5")
    model = keras.models.load_model(artefacts / "caption_model.keras")
    with open(artefacts / "tokenizer.pkl", "rb") as f:
        tokenizer = pickle.load(f)  # noqa: S301 - our own file; the original did exactly this
    loaded = time.time()
    max_length = meta["max_length"]

    requests = []
    for k, photo in enumerate([photos[0], *photos]):  # the first is a warm-up, not counted
        t0 = time.perf_counter()
        features = extract_features(photo, encoder)
        t1 = time.perf_counter()
        text = generate_desc(model, tokenizer, features, max_length, max_words)
        t2 = time.perf_counter()
        if k == 0:
            first_request_s = t2 - t0
            continue
        words = text.split()[1:]
        requests.append(
            {
                "photo": Path(photo).name,
                "encoder_ms": (t1 - t0) * 1000,
                "decoder_ms": (t2 - t1) * 1000,
                "total_ms": (t2 - t0) * 1000,
                "caption": " ".join(w for w in words if w != "endseq"),
                "ids": [tokenizer.word_index[w] for w in words],
                "features": features[0].tolist(),
            }
        )
    # The same weights through our preprocessing, so the engine can check its ONNX encoder against this model.
    from captioner.encoders.images import load_and_preprocess
    from captioner.encoders.registry import get_encoder_spec

    x = load_and_preprocess(photos[0], get_encoder_spec("inception_v3").preprocessing)
    reference = encoder.predict(x[None], verbose=0)[0]
    totals = np.array([r["total_ms"] for r in requests])
    return {
        "side": "baseline",
        "design": "Keras model.predict per request + per word over the padded prefix (TensorFlow)",
        "tensorflow": __import__("tensorflow").__version__,
        "keras": keras.__version__,
        "n_images": len(requests),
        "max_words": max_words,
        "cold_start_s": loaded - started,
        "first_request_s": first_request_s,
        "peak_rss_mb": rss_peak_mb(),
        "latency_ms": percentiles(totals),
        "throughput_img_s": 1000.0 / float(totals.mean()),
        "encoder_ms_mean": float(np.mean([r["encoder_ms"] for r in requests])),
        "decoder_ms_mean": float(np.mean([r["decoder_ms"] for r in requests])),
        "decoder_ms_per_word": float(np.mean([r["decoder_ms"] for r in requests])) / max_words,
        "requests": requests,
        "reference_features": {"photo": Path(photos[0]).name, "features": reference.tolist()},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("dir", type=Path)
    b.add_argument("--quick", action="store_true")
    r = sub.add_parser("run")
    r.add_argument("dir", type=Path)
    r.add_argument("--photos", nargs="+", required=True)
    r.add_argument("--max-words", type=int, default=12)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--started", type=float, default=None, help="time.time() when the parent spawned us")
    args = parser.parse_args(argv)
    if args.command == "build":
        print(json.dumps(build(args.dir, args.quick)))
    else:
        result = run(args.dir, args.photos, args.max_words, args.started or time.time())
        args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())
