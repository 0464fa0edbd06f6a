"""API keys: the client sends ``X-API-Key: <key>``; the server stores only sha256 digests of accepted keys.

Digests come from ``CAPTIONER_API_KEYS_SHA256`` and/or ``CAPTIONER_API_KEYS_FILE`` (one hex digest per line,
``#`` comments). The file is re-read whenever its mtime or size changes, so keys rotate without a restart. A
missing or unreadable file accepts no key from it (fail closed).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import threading
from pathlib import Path

log = logging.getLogger("captioner.service.security")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class ApiKeys:
    def __init__(self, digests: list[str], file: Path | None = None):
        self.static = tuple(digests)
        self.file = file
        self._file_digests: tuple[str, ...] = ()
        self._stamp: tuple[int, int] | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.static) or self.file is not None

    def _reload(self) -> None:
        if self.file is None:
            return
        try:
            st = os.stat(self.file)
        except OSError as exc:
            if self._stamp is not None or not self._file_digests:
                log.error(
                    "cannot read CAPTIONER_API_KEYS_FILE %s (%s): no key from it is accepted", self.file, exc
                )
            self._file_digests, self._stamp = (), None
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        with self._lock:
            digests = []
            for n, line in enumerate(
                Path(self.file).read_text(encoding="utf-8", errors="replace").splitlines(), 1
            ):
                line = line.split("#", 1)[0].strip().lower()
                if not line:
                    continue
                if _DIGEST.match(line):
                    digests.append(line)
                else:
                    log.error("%s line %d is not a sha256 hex digest; ignored", self.file, n)
            self._file_digests, self._stamp = tuple(digests), stamp
            log.info("loaded %d API key digests from %s", len(digests), self.file)

    def check(self, key: str | None) -> bool:
        """True if ``key`` hashes to an accepted digest. Compares against every digest in constant time each."""
        if not key:
            return False
        self._reload()
        digest = hash_key(key)
        ok = False
        for accepted in (*self.static, *self._file_digests):
            ok |= hmac.compare_digest(digest, accepted)
        return ok
