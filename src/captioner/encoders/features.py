"""Feature extraction over a collection of images: batched, with progress, cached on disk and resumable.

The cache is a folder: ``features.npy`` (float32 [N, F], written in place as a memory map), ``done.npy``
(bool [N]) and ``index.json`` (image names, encoder file sha256). Rerunning with the same names and encoder
computes only the rows not yet done, so an interrupted run picks up where it stopped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from captioner.encoders.augment import PhotoView
from captioner.encoders.images import load_and_preprocess, load_image, preprocess
from captioner.encoders.runtime import OnnxEncoder
from captioner.errors import DataError, ImageError
from captioner.hashing import sha256_file, sha256_hex


def extract_features(
    names: Sequence[str],
    image_dir: str | Path,
    encoder: OnnxEncoder,
    cache_dir: str | Path,
    batch_size: int = 32,
    progress: bool = True,
    flip: bool = False,
    view: PhotoView | None = None,
) -> np.ndarray:
    """Features float32 [len(names), encoder.feature_size] for image_dir/name, computed once and cached.

    flip: features of the horizontally mirrored images; view: of each image's ``view`` (encoders/augment.py),
    seeded by its name (training-time augmentations).
    An unreadable image raises DataError naming it (training on a silently zeroed row would be worse).
    """
    from tqdm import tqdm

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    index = {
        "encoder": encoder.name,
        "encoder_sha256": sha256_file(encoder.path),
        "names_sha256": sha256_hex("\n".join(names)),
        "count": len(names),
        "feature_size": encoder.feature_size,
        **({"flip": True} if flip else {}),
        **({"view": view.to_dict()} if view is not None else {}),
    }
    index_path, feat_path, done_path = (
        cache_dir / "index.json",
        cache_dir / "features.npy",
        cache_dir / "done.npy",
    )
    fresh = not (index_path.is_file() and json.loads(index_path.read_text()) == index and feat_path.is_file())
    if fresh:
        feats = np.lib.format.open_memmap(
            feat_path, mode="w+", dtype=np.float32, shape=(len(names), encoder.feature_size)
        )
        done = np.zeros(len(names), dtype=bool)
        np.save(done_path, done)
        index_path.write_text(json.dumps(index, indent=1))
    else:
        feats = np.load(feat_path, mmap_mode="r+")
        done = np.load(done_path)
    todo = np.flatnonzero(~done)
    image_dir = Path(image_dir)
    spec = encoder.preprocessing

    def load(i: int) -> np.ndarray:
        try:
            if view is not None:
                image = load_image(image_dir / names[i], draft_size=spec.size, resize=spec.resize)
                x = preprocess(view(image, names[i]), spec)
            else:
                x = load_and_preprocess(image_dir / names[i], spec)
            return (
                np.ascontiguousarray(x[..., ::-1] if spec.layout == "NCHW" else x[:, ::-1, :]) if flip else x
            )
        except ImageError as exc:
            raise DataError(f"cannot extract features for {names[i]}: {exc}") from None

    # One thread decodes the next batch while onnxruntime runs the current one.
    with (
        ThreadPoolExecutor(max_workers=1) as pool,
        tqdm(
            total=len(names),
            initial=len(names) - len(todo),
            disable=not progress,
            desc=f"features[{encoder.name}{'-flip' if flip else ''}{f'-view{view.number}' if view else ''}]",
            unit="img",
        ) as bar,
    ):
        batches = [todo[s : s + batch_size] for s in range(0, len(todo), batch_size)]
        pending = pool.submit(lambda b: np.stack([load(i) for i in b]), batches[0]) if batches else None
        for k, rows in enumerate(batches):
            assert pending is not None  # submitted before the loop, then one round ahead
            arrays = pending.result()
            if k + 1 < len(batches):
                pending = pool.submit(lambda b: np.stack([load(i) for i in b]), batches[k + 1])
            feats[rows] = encoder.encode_arrays(arrays)
            done[rows] = True
            feats.flush()
            np.save(done_path, done)  # after the rows are on disk: a crash never marks unwritten rows done
            bar.update(len(rows))
    return np.asarray(feats)
