"""Does the caption name what is in the photo? The object probe (evaluation/probe.py) with the label constraint off
and on (at the default threshold and a few others), captioned by the bundle as served.

    python -m bench.probe_objects [--bundle models/default] [--out bench/results/probe_objects.json]

Each photo goes through what an upload goes through (PNG bytes -> Captioner.load -> caption_images). Per photo:
the caption off / on, the top ImageNet class and its probability, the constraint's words and their word mass,
whether those words name the object at all ("recognised": the most the constraint can do), whether the caption
names the photo's object and which of its subjects it names; the named rate (photos whose object word is in the
vocabulary) per setting ("on@T": label_constraint_min_prob T, the other settings at their defaults).
"""

from __future__ import annotations

import argparse
import io
import json
from dataclasses import replace
from pathlib import Path

from captioner.decode.options import DecodeOptions
from captioner.evaluation.probe import ISSUE_PHOTOS, PROBE, load_photos, named_rate

THRESHOLDS = (0.1, 0.2, 0.3, 0.5, 0.7)


def run(bundle: Path | None = None) -> dict:
    from captioner.loading import load

    captioner = load(bundle)
    vocabulary = set(captioner.vocabulary.tokens)  # type: ignore[attr-defined]
    photos = {}
    for name, image in load_photos().items():
        buf = io.BytesIO()
        image.save(buf, "PNG")
        photos[name] = captioner.load(buf.getvalue())
    names = list(photos)
    default = DecodeOptions()
    settings = {"off": replace(default, label_constraint=False), "on": default}
    settings |= {f"on@{t:g}": replace(default, label_constraint_min_prob=t) for t in THRESHOLDS}
    captions: dict[str, dict[str, str]] = {}
    for key, options in settings.items():
        results = captioner.caption_images([photos[n] for n in names], options)
        captions[key] = {n: r.caption for n, r in zip(names, results, strict=True)}
    encoded = captioner.encoder.run([photos[n] for n in names])
    picked = captioner.label_constraints(encoded.imagenet_probs, default) or [None] * len(names)
    results = captioner.caption_images([photos[n] for n in names], default)
    rows = []
    for name, result, pick in zip(names, results, picked, strict=True):
        probe = next(p for p in PROBE if p.name == name)
        top = result.tags[0] if result.tags else None
        rows.append({
            "photo": name,
            "object_words": sorted(probe.object_words),
            "counted": probe.counts(vocabulary),
            "top_class": top.label if top else None,
            "top_prob": round(top.probability, 4) if top else None,
            "constraint_words": [captioner.vocabulary.decode([i]) for i in pick[0]] if pick else None,
            "constraint_word_mass": round(pick[1], 4) if pick else None,
            # Whether the head's words name the object at all: the most the constraint can do.
            "recognised": bool(pick) and bool({captioner.vocabulary.decode([i]) for i in pick[0]} & probe.object_words),
            "caption_off": captions["off"][name],
            "caption_on": captions["on"][name],
            "named_off": probe.named(captions["off"][name]),
            "named_on": probe.named(captions["on"][name]),
            "subjects": [s for s, _ in probe.subjects],
            "subjects_named_off": probe.subjects_named(captions["off"][name]),
            "subjects_named_on": probe.subjects_named(captions["on"][name]),
        })  # fmt: skip
    recognised = [r for r in rows if r["counted"] and r["recognised"]]
    return {
        "bundle": captioner.info.to_dict() if captioner.info else None,
        "recognised_by_the_head": {
            "photos": len(recognised),
            "named_off": sum(r["named_off"] for r in recognised),
            "named_on": sum(r["named_on"] for r in recognised),
        },
        "options": default.to_dict(),
        "named_rate": {key: named_rate(c, vocabulary) for key, c in captions.items()},
        "photos": rows,
        "issue_photos": [r["photo"] for r in rows if r["photo"] in ISSUE_PHOTOS],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("bench/results/probe_objects.json"))
    args = parser.parse_args(argv)
    report = run(args.bundle)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    for row in report["photos"]:
        print(f"{row['photo']:26} {row['top_class'] or '-':>18} {row['top_prob'] or 0:5.2f}  "
              f"{'+' if row['named_off'] else '-'}{'+' if row['named_on'] else '-'}  {row['caption_on']}")  # fmt: skip
    print(json.dumps(report["named_rate"], indent=1))


if __name__ == "__main__":
    main()
