"""API keys: the client sends ``X-API-Key: <key>``; the server stores only sha256 digests of accepted keys.

Digests come from ``CAPTIONER_API_KEYS_SHA256`` and/or ``CAPTIONER_API_KEYS_FILE`` (one hex digest per line,
``#`` comments). The file is re-read whenever its mtime or size changes, so keys rotate without a restart. A
missing or unreadable file accepts no key from it (fail closed).

Failed attempts are budgeted per client IP (``AuthFailureThrottle``): once a client has spent its budget, its
requests are refused before their key is even checked, so guessing keys is bounded.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from pathlib import Path

from captioner.hashing import sha256_hex
from captioner.service.ratelimit import Decision

log = logging.getLogger("captioner.service.security")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def hash_key(key: str) -> str:
    return sha256_hex(key)


def caller_id(key: str | None) -> str:
    """Who is calling, for per-caller state (rate limit buckets, cache namespaces): a digest of the key, never
    the key itself; "" without a key."""
    return "key:" + hash_key(key)[:24] if key else ""


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


class AuthFailureThrottle:
    """A token bucket per client IP that only failed API-key attempts spend (a rate limiter from ratelimit.py:
    in memory, or in Redis to share the budget across instances).

    ``refused(ip)`` is asked before the key is checked; ``failed(ip)`` spends one token. ``should_log(ip)`` is
    True at most once per ``log_every_s`` per client, so a brute-force run logs one line a minute, not one per try.
    """

    prefix = "authfail:ip:"

    def __init__(self, limiter, log_every_s: float = 60.0, max_clients: int = 10_000):
        self.limiter, self.log_every_s, self.max_clients = limiter, log_every_s, max_clients
        self._logged: OrderedDict[str, float] = OrderedDict()  # ip -> monotonic s of its last log line
        self._lock = threading.Lock()

    def refused(self, ip: str) -> Decision | None:
        """The refusing decision (its retry_after_s) if ``ip`` has no failures left, else None."""
        decision = self.limiter.peek(self.prefix + ip)
        return decision if decision is not None and not decision.allowed else None

    def failed(self, ip: str) -> None:
        self.limiter.hit(self.prefix + ip)

    def should_log(self, ip: str) -> bool:
        now = time.monotonic()
        with self._lock:
            last = self._logged.get(ip)
            if last is not None and now - last < self.log_every_s:
                return False
            self._logged[ip] = now
            self._logged.move_to_end(ip)
            while len(self._logged) > self.max_clients:
                self._logged.popitem(last=False)
        return True
