"""CLI and caption-dir answers: tags, confidence and --gender-neutral (tiny random-weight bundle)."""

from __future__ import annotations

import json

from captioner.cli import main
from captioner.decode.neutral import neutralize


def run(capsys, *args):
    code = main(list(map(str, args)))
    out, err = capsys.readouterr()
    return code, out, err


def test_caption_json_has_tags_and_confidence(capsys, tiny_bundle, photo_files):
    code, out, _ = run(
        capsys, "caption", photo_files[0], "--bundle", tiny_bundle, "--json", "--tags-top-k", "3",
        "--tags-min-prob", "0",
    )  # fmt: skip
    assert code == 0
    record = json.loads(out)
    assert 0 <= record["confidence"] <= 1 and len(record["tags"]) == 3
    assert {"label", "probability", "class_id"} == set(record["tags"][0])


def test_gender_neutral_flag(capsys, tiny_bundle, photo_files):
    args = ["caption", *photo_files, "--bundle", tiny_bundle, "--json", "--n-best", "3"]
    code, plain, _ = run(capsys, *args)
    assert code == 0
    code, neutral, _ = run(capsys, *args, "--gender-neutral")
    assert code == 0
    for a, b in zip(plain.splitlines(), neutral.splitlines(), strict=True):
        assert json.loads(b)["caption"] == neutralize(json.loads(a)["caption"])


def test_out_of_range_tags_top_k_is_one_line_error(capsys, tiny_bundle, photo_files):
    code, _, err = run(capsys, "caption", photo_files[0], "--bundle", tiny_bundle, "--tags-top-k", "50")
    assert code != 0 and err.strip().startswith("error:") and "tags_top_k" in err
    assert len(err.strip().splitlines()) == 1


def test_caption_dir_records_carry_tags_confidence_and_neutral_wording(
    capsys, tiny_bundle, photo_files, tmp_path
):
    out = tmp_path / "out.jsonl"
    code, _, _ = run(
        capsys, "caption-dir", photo_files[0].parent, "--out", out, "--bundle", tiny_bundle, "--no-progress",
        "--tags-top-k", "2", "--tags-min-prob", "0", "--gender-neutral",
    )  # fmt: skip
    assert code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == len(photo_files)
    for r in records:
        assert len(r["tags"]) == 2 and 0 <= r["confidence"] <= 1
        assert r["caption"] == neutralize(r["caption"]) and "timings_ms" not in r
