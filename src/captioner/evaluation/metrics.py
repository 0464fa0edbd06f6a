"""Caption metrics: BLEU-1..4, METEOR, ROUGE-L and CIDEr from the standard COCO scorers (pycocoevalcap).

References and hypotheses are both normalised with ``normalize_caption`` (lowercase, letters-only words), so a
score never depends on case or punctuation. The scorers are the published COCO implementations, so numbers are
comparable with the literature up to tokenisation (COCO uses the Java PTB tokenizer; we use our normaliser).

METEOR runs ``meteor-1.5.jar`` (bundled with pycocoevalcap) in a Java subprocess. It is best effort: when Java
is missing or the subprocess fails or hangs, METEOR is left out of the result with a logged warning rather
than losing an evaluation run that has already captioned every image. Callers that need it check the key.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from captioner.data.text import normalize_caption

logger = logging.getLogger(__name__)

METRIC_NAMES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")

# Java loads a 60 MB paraphrase table (~6 s) before scoring; scoring itself takes ~1 ms per image. A run
# longer than this is a hung JVM, which would otherwise block readline() forever.
METEOR_TIMEOUT_S = 120.0
METEOR_TIMEOUT_PER_IMAGE_S = 0.05


class MeteorUnavailable(RuntimeError):
    """Java or the METEOR jar is missing, or the METEOR subprocess failed or timed out."""


@dataclass(frozen=True)
class Scores:
    """corpus: metric name -> corpus-level score. per_image: image id -> metric name -> that image's score."""

    corpus: dict[str, float]
    per_image: dict[str, dict[str, float]]


def compute_metrics(
    references: Mapping[str, Sequence[str]], hypotheses: Mapping[str, str], meteor: bool = True
) -> dict[str, float]:
    """Corpus-level BLEU-1..4, METEOR, ROUGE-L and CIDEr of one hypothesis per image against its references.

    references: image id -> raw reference captions (at least one). hypotheses: image id -> raw generated caption
    (may be empty). Both must have the same ids. meteor=False skips the Java scorer (saves ~6 s of start-up).
    Returns the keys of METRIC_NAMES in that order; METEOR is absent if it was skipped or unavailable.
    Raises ValueError on mismatched ids, an empty input or an image without usable references.
    """
    return score_captions(references, hypotheses, meteor=meteor).corpus


def score_captions(
    references: Mapping[str, Sequence[str]], hypotheses: Mapping[str, str], meteor: bool = True
) -> Scores:
    """Like compute_metrics, but also returns every metric per image (for galleries and error analysis)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    refs, hyps = _prepare(references, hypotheses)
    corpus: dict[str, float] = {}
    per_image: dict[str, dict[str, float]] = {key: {} for key in refs}

    def put(name: str, score: float, scores: Sequence[float]) -> None:
        corpus[name] = float(score)
        # pycocoevalcap returns per-image scores in the iteration order of the refs dict.
        for key, value in zip(refs, scores, strict=True):
            per_image[key][name] = float(value)

    bleu, bleu_per_image = Bleu(4).compute_score(refs, hyps, verbose=0)
    for n in range(4):
        put(f"BLEU-{n + 1}", bleu[n], bleu_per_image[n])
    if meteor:
        try:
            put("METEOR", *_meteor_score(refs, hyps))
        except MeteorUnavailable as exc:
            logger.warning("METEOR left out of the metrics: %s", exc)
    put("ROUGE-L", *Rouge().compute_score(refs, hyps))
    put("CIDEr", *Cider().compute_score(refs, hyps))
    order = {name: i for i, name in enumerate(METRIC_NAMES)}
    return Scores(
        corpus=dict(sorted(corpus.items(), key=lambda kv: order[kv[0]])),
        per_image={k: dict(sorted(v.items(), key=lambda kv: order[kv[0]])) for k, v in per_image.items()},
    )


def _prepare(
    references: Mapping[str, Sequence[str]], hypotheses: Mapping[str, str]
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Validate and normalise into the {id: [captions]} dicts every pycocoevalcap scorer takes."""
    if not references:
        raise ValueError("nothing to score: references and hypotheses are empty")
    missing = [k for k in references if k not in hypotheses]
    extra = [k for k in hypotheses if k not in references]
    if missing or extra:
        raise ValueError(
            "references and hypotheses must have the same image ids: "
            f"{len(missing)} without a hypothesis (e.g. {missing[:3]}), "
            f"{len(extra)} without references (e.g. {extra[:3]})"
        )
    refs: dict[str, list[str]] = {}
    hyps: dict[str, list[str]] = {}
    for key in sorted(references):
        captions = references[key]
        if isinstance(captions, str):
            raise ValueError(f"references[{key!r}] must be a list of captions, got a single string")
        # A reference that is only punctuation normalises to "" and would count as a caption of zero words.
        normalised = [text for text in map(normalize_caption, captions) if text]
        if not normalised:
            raise ValueError(
                f"image {key!r} has no non-empty reference caption; every image needs at least one"
            )
        hypothesis = hypotheses[key]
        if not isinstance(hypothesis, str):
            raise ValueError(f"hypotheses[{key!r}] must be a string, got {type(hypothesis).__name__}")
        refs[key] = normalised
        hyps[key] = [normalize_caption(hypothesis)]
    return refs, hyps


def _meteor_jar() -> Path:
    from pycocoevalcap.meteor import meteor

    return Path(meteor.__file__).with_name(meteor.METEOR_JAR)


def _meteor_command(jar: Path) -> list[str]:
    # The exact command pycocoevalcap uses (-norm: METEOR's own lowercasing/tokenising), with an absolute jar.
    return ["java", "-jar", "-Xmx2G", str(jar), "-", "-", "-stdio", "-l", "en", "-norm"]


def _meteor_score(refs: dict[str, list[str]], hyps: dict[str, list[str]]) -> tuple[float, list[float]]:
    """Run pycocoevalcap's Meteor.compute_score in a subprocess we own: always killed, never hanging."""
    from pycocoevalcap.meteor.meteor import Meteor

    jar = _meteor_jar()
    if not jar.is_file() or not (jar.parent / "data" / "paraphrase-en.gz").is_file():
        raise MeteorUnavailable(
            f"the METEOR jar or its paraphrase data is missing next to {jar}; reinstall pycocoevalcap"
        )
    command = _meteor_command(jar)
    if shutil.which(command[0]) is None:
        raise MeteorUnavailable(
            f"{command[0]!r} is not on PATH; install a Java runtime (8 or newer) or pass meteor=False"
        )

    class OwnedMeteor(Meteor):
        # Upstream pipes stderr without reading it (a chatty JVM fills the pipe and blocks), and its __del__
        # takes a lock that a failed compute_score never releases (a hang at garbage collection). Here stderr
        # goes to a file we can quote, and close() is idempotent and lock-free.
        def __init__(self, stderr: IO[bytes]) -> None:
            self.lock = threading.Lock()
            self.meteor_p = subprocess.Popen(
                command, cwd=jar.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr
            )

        def close(self) -> None:
            process = getattr(self, "meteor_p", None)
            if process is None:
                return
            process.kill()
            process.wait()
            for stream in (process.stdin, process.stdout):
                with contextlib.suppress(OSError):
                    stream.close()

        __del__ = close

    timeout_s = METEOR_TIMEOUT_S + METEOR_TIMEOUT_PER_IMAGE_S * len(refs)
    timed_out = threading.Event()
    with tempfile.TemporaryFile() as stderr:
        try:
            scorer = OwnedMeteor(stderr)
        except OSError as exc:
            raise MeteorUnavailable(f"cannot start {' '.join(command[:2])}: {exc}") from exc

        def kill() -> None:
            # Killing the JVM makes the blocked readline() return b"", so compute_score fails instead of hanging.
            timed_out.set()
            scorer.meteor_p.kill()

        watchdog = threading.Timer(timeout_s, kill)
        watchdog.daemon = True
        watchdog.start()
        try:
            score, scores = scorer.compute_score(refs, hyps)
        except (OSError, ValueError) as exc:  # broken pipe, or float("") after the JVM died
            if timed_out.is_set():
                raise MeteorUnavailable(
                    f"the METEOR subprocess did not answer within {timeout_s:.0f} s"
                ) from exc
            stderr.seek(0)
            detail = stderr.read()[-1000:].decode(errors="replace").strip() or "no error output"
            raise MeteorUnavailable(f"the METEOR subprocess failed ({exc!r}); Java said: {detail}") from exc
        finally:
            watchdog.cancel()
            scorer.close()
    return score, scores
