"""Experiment (issue 15): a learned reranker over the beam's candidates, judged by 2-fold cross-validation on dev.

Not product code. Picking the best of the beam's candidates by CIDEr-D against the dev references (an oracle)
would raise CIDEr a lot (models/default/README.md), so this asks whether features of each candidate can find it:
the model's score and log-probability, the length, the consensus with the 10 and 30 nearest training photos
(``ConsensusMemory.consensus``), a word detector's view of the caption (Fang et al. 2015: a linear multi-label
model from the pooled features to the caption words seen at least 20 times, trained on the training photos), and
whether the candidate is the model's first. A linear listwise model (softmax over an image's candidates against a
softmax of their CIDEr-D) is fitted on one half of dev and picks on the other half, and the other way round: an
upper bound for a reranker trained on training photos. Prints pycocoevalcap BLEU-4 / CIDEr of the served pick,
the model's first candidate, the consensus pick, the learned pick and the oracle.

    PYTHONPATH=src python scripts/experiments/rerank.py --data-root ../shared/data/flickr8k --work runs/rerank \
        [--bundle models/default] [--beam 3 5]

Encodes the training and dev photos once with the bundle's encoder (cached in <work>/encoded.npz; ~5 minutes on
2 cores) and trains the detector with torch (the train extra).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from captioner.data.cider import cider_d_corpus
from captioner.data.flickr8k import load_flickr8k
from captioner.data.text import normalize_caption
from captioner.decode.options import DecodeOptions
from captioner.evaluation.metrics import compute_metrics
from captioner.loading import load

# Words a detector is not asked about: they say nothing of what is in a photo.
STOP_WORDS = frozenset(
    {"a", "an", "the", "in", "on", "of", "with", "and", "is", "are", "at", "to", "its", "his", "her", "their",
     "while", "for", "from", "by", "into", "as", "it", "this"}
)  # fmt: skip
FEATURES = (
    "score",
    "log_prob",
    "length",
    "consensus_10",
    "consensus_30",
    "detector_cover",
    "detector_hit",
    "first",
)


def encode(captioner, dataset, names: list[str], path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features and ImageNet probabilities of ``names``, cached at ``path``."""
    if path.is_file():
        cached = np.load(path)
        if list(cached["names"]) == names:
            return cached["features"], cached["probs"]
    features, probs = [], []
    for i in range(0, len(names), 32):
        out = captioner.encoder.run([captioner.load(dataset.image_path(n)) for n in names[i : i + 32]])
        features.append(out.features)
        probs.append(out.imagenet_probs)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, names=np.array(names), features=np.concatenate(features), probs=np.concatenate(probs))
    return np.concatenate(features), np.concatenate(probs)


def word_detector(features: np.ndarray, captions: list[list[str]], vocabulary: list[str]):
    """(weights [F, W], bias [W], words): a linear multi-label model of which words the references use."""
    import torch

    counts: dict[str, int] = {}
    for refs in captions:
        for c in refs:
            for w in set(normalize_caption(c).split()):
                counts[w] = counts.get(w, 0) + 1
    words = [
        w for w in vocabulary if not w.startswith("<") and w not in STOP_WORDS and counts.get(w, 0) >= 20
    ]
    index = {w: i for i, w in enumerate(words)}
    target = np.zeros(
        (len(captions), len(words)), np.float32
    )  # the share of an image's references using a word
    for row, refs in enumerate(captions):
        for c in refs:
            for w in set(normalize_caption(c).split()):
                if w in index:
                    target[row, index[w]] += 1 / len(refs)
    torch.manual_seed(0)
    mean, std = features.mean(0), features.std(0) + 1e-6
    x, y = torch.tensor((features - mean) / std), torch.tensor(target)
    linear = torch.nn.Linear(x.shape[1], len(words))
    optimizer = torch.optim.Adam(linear.parameters(), lr=1e-3)
    for _ in range(300):
        for batch in torch.randperm(len(x)).split(500):
            logits = linear(torch.nn.functional.dropout(x[batch], 0.5))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y[batch])
            optimizer.zero_grad()
            (loss + 1e-4 * linear.weight.pow(2).sum()).backward()
            optimizer.step()
    weights = linear.weight.detach().numpy().T / std[:, None]
    return weights, linear.bias.detach().numpy() - mean @ weights, words


def candidate_features(
    captioner, features, probs, detector, beam: int
) -> tuple[list[list[str]], list[np.ndarray]]:
    """Each image's beam candidates (label constraint as served, no consensus reranking) and their features."""
    weights, bias, words = detector
    index = {w: i for i, w in enumerate(words)}
    options = replace(DecodeOptions(), beam_size=beam, n_best=beam, consensus_neighbours=0)
    texts, rows = [], []
    for i in range(0, len(features), 32):
        f, p = features[i : i + 32], probs[i : i + 32]
        results = captioner.decode_features(f, options, p)
        candidates = [[c.caption for c in r.candidates] for r in results]
        near = captioner.consensus.consensus(f, candidates, 10)
        wide = captioner.consensus.consensus(f, candidates, 30)
        word_prob = 1 / (1 + np.exp(-(f @ weights + bias)))
        for j, r in enumerate(results):
            top5 = float(np.sort(word_prob[j])[-5:].sum())
            image_rows = []
            for k, c in enumerate(r.candidates):
                ids = [index[w] for w in set(c.caption.split()) if w in index]
                cover = float(np.mean(np.log(word_prob[j, ids] + 1e-6))) if ids else -5.0
                hit = float(word_prob[j, ids].sum()) / (top5 + 1e-6) if ids else 0.0
                image_rows.append(
                    [c.score, c.log_prob, len(c.caption.split()), near[j][k], wide[j][k], cover, hit, k == 0]
                )
            texts.append(candidates[j])
            rows.append(np.array(image_rows, np.float64))
    return texts, rows


def fit_listwise(
    x: list[np.ndarray], cider: list[np.ndarray], l2: float = 1e-2, steps: int = 300, lr: float = 0.05
):
    """Linear weights (on standardised features) of a softmax over each image's candidates fitted to a softmax of
    their CIDEr-D (temperature 0.1); full-batch gradient descent."""
    stacked = np.concatenate(x)
    mean, std = stacked.mean(0), stacked.std(0) + 1e-9
    w = np.zeros(stacked.shape[1])
    for _ in range(steps):
        grad = np.zeros_like(w)
        for xi, ci in zip(x, cider, strict=True):
            z = (xi - mean) / std
            s = z @ w
            p = np.exp(s - s.max())
            t = np.exp(10 * (ci - ci.max()))
            grad += z.T @ (p / p.sum() - t / t.sum())
        w -= lr * (grad / len(x) + l2 * w)
    return w, mean, std


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True, help="a folder for the encoded photos")
    parser.add_argument("--bundle", type=Path, default=None, help="default: the shipped model")
    parser.add_argument("--beam", type=int, nargs="+", default=[3, 5])
    args = parser.parse_args()

    dataset = load_flickr8k(args.data_root)
    captioner = load(args.bundle)
    train, dev = sorted(dataset.available("train")), sorted(dataset.available("dev"))
    train_features, _ = encode(captioner, dataset, train, args.work / "encoded-train.npz")
    dev_features, dev_probs = encode(captioner, dataset, dev, args.work / "encoded-dev.npz")
    refs = {n: dataset.captions[n] for n in dev}
    detector = word_detector(
        train_features, [dataset.captions[n] for n in train], captioner.vocabulary.tokens
    )

    served = {}
    for i in range(0, len(dev), 32):
        results = captioner.decode_features(dev_features[i : i + 32], DecodeOptions(), dev_probs[i : i + 32])
        served.update((n, r.caption) for n, r in zip(dev[i : i + 32], results, strict=True))
    halves = np.random.default_rng(0).permutation(len(dev)) < len(dev) // 2
    for beam in args.beam:
        texts, x = candidate_features(captioner, dev_features, dev_probs, detector, beam)
        cider = [np.zeros(len(t)) for t in texts]
        for j in range(beam):  # each candidate's CIDEr-D against its photo's references
            _, per_image = cider_d_corpus(
                refs, {n: t[min(j, len(t) - 1)] for n, t in zip(dev, texts, strict=True)}
            )
            for i, n in enumerate(dev):
                if j < len(texts[i]):
                    cider[i][j] = per_image[n]
        learned = {}
        for held_out in (True, False):
            fit = [i for i in range(len(dev)) if halves[i] != held_out]
            w, mean, std = fit_listwise([x[i] for i in fit], [cider[i] for i in fit])
            print(
                f"beam {beam}, fitted on one half: "
                + ", ".join(f"{f} {v:+.3f}" for f, v in zip(FEATURES, w, strict=True))
            )
            for i in np.flatnonzero(halves == held_out):
                learned[dev[i]] = texts[i][int(np.argmax(((x[i] - mean) / std) @ w))]
        picks = {
            "served (beam 3, consensus)": served,
            "the model's first": {n: t[0] for n, t in zip(dev, texts, strict=True)},
            "consensus 10 + 0.2 score": {
                n: t[int(np.argmax(xi[:, 3] + 0.2 * xi[:, 0]))]
                for n, t, xi in zip(dev, texts, x, strict=True)
            },
            "learned (2-fold)": learned,
            "oracle": {n: t[int(np.argmax(c))] for n, t, c in zip(dev, texts, cider, strict=True)},
        }
        for name, captions in picks.items():
            m = compute_metrics(refs, captions, meteor=False)
            print(
                f"beam {beam} {name}: BLEU-4 {m['BLEU-4']:.4f} CIDEr {m['CIDEr']:.4f} distinct {len(set(captions.values()))}"
            )


if __name__ == "__main__":
    main()
