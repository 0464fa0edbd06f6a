"""Download an image by URL safely: the one place caption-dir touches the network.

    download(url, policy=DownloadPolicy()) -> bytes        # raises DownloadError, never anything else

What it guarantees, for URLs from lists nobody vetted (server-side request forgery, slow or hostile servers):

- http and https only; no credentials in the URL.
- The host is resolved once; every address it resolves to must be public (not loopback, private, shared, link-local,
  multicast, reserved or unspecified, also when spelled as IPv4-mapped, -compatible, 6to4 or NAT64 IPv6) unless
  ``policy.allow_private``. The socket is opened to an address that was checked, so a second DNS answer cannot
  swap in another host; TLS still verifies the certificate against the host name of the URL (SNI, Host header).
- Redirects are followed here, at most ``policy.max_redirects``, each target checked like the first URL.
- ``policy.timeout_s`` bounds the whole download (DNS, connect, TLS, every redirect, status line, headers, body):
  each socket read waits at most the time left, and the clock is checked after every read, so a server that
  drips a byte at a time is cut off at the deadline.
- ``policy.max_bytes`` is checked against Content-Length before reading and enforced while reading.
- Error messages are written here: the status code is the only thing a server can put into them (no reason
  phrase, header value, body or redirect target), so a results file cannot be used to exfiltrate responses.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass

from captioner import __version__
from captioner.errors import CaptionerError, ImageError

MiB = 1024 * 1024
REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class DownloadError(ImageError):
    """An image URL was refused or could not be fetched (address, scheme, HTTP status, timeout, size, protocol)."""


@dataclass(frozen=True)
class DownloadPolicy:
    """Limits for one URL. max_bytes: largest body; timeout_s: wall-clock seconds for the whole download, redirects
    included; max_redirects: redirects followed; allow_private: also fetch from non-public addresses."""

    max_bytes: int = 20 * MiB
    timeout_s: float = 20.0
    max_redirects: int = 5
    allow_private: bool = False

    def __post_init__(self):
        if self.max_bytes < 1 or not self.timeout_s > 0 or self.max_redirects < 0:
            raise CaptionerError(
                f"download limits: max_download_bytes must be >= 1 (got {self.max_bytes}), download_timeout_s > 0 "
                f"(got {self.timeout_s}), max_redirects >= 0 (got {self.max_redirects})"
            )


def download(
    url: str, policy: DownloadPolicy = DownloadPolicy(), ssl_context: ssl.SSLContext | None = None
) -> bytes:
    """The body of ``url`` (a 2xx response after at most ``policy.max_redirects`` redirects).

    ssl_context: for https (default: the system's CAs, hostname checked). Raises DownloadError whose message starts
    with ``url`` and says what was refused or what failed.
    """
    deadline = time.monotonic() + policy.timeout_s
    current, hop = url, 0
    try:
        for hop in range(policy.max_redirects + 1):
            status, location, body = _get(current, policy, deadline, ssl_context)
            if status // 100 == 2:
                return body
            if status not in REDIRECTS:
                raise DownloadError(f"HTTP {status}")
            if location is None:
                raise DownloadError(f"HTTP {status} redirect without a Location")
            if hop == policy.max_redirects:
                raise DownloadError(f"more than {policy.max_redirects} redirects (--max-redirects)")
            try:
                current = urllib.parse.urljoin(current, location)
            except ValueError:
                raise DownloadError(f"HTTP {status} redirect to an invalid URL") from None
        raise AssertionError("unreachable")
    except DownloadError as exc:
        where = f"after {hop} redirect{'s' * (hop > 1)}: " if hop else ""
        raise DownloadError(f"{url}: {where}{exc}") from None
    except TimeoutError:
        raise DownloadError(f"{url}: download took longer than {policy.timeout_s:g} s") from None
    except ssl.SSLError as exc:  # reason is OpenSSL's short code (CERTIFICATE_VERIFY_FAILED), not server text
        raise DownloadError(f"{url}: TLS error {exc.reason or type(exc).__name__}") from None
    except http.client.HTTPException as exc:  # before OSError: RemoteDisconnected is both
        raise DownloadError(f"{url}: {_protocol_error(exc)}") from None
    except OSError as exc:  # refused, reset, unreachable: the local errno text
        raise DownloadError(f"{url}: connection failed: {exc.strerror or type(exc).__name__}") from None


def _get(url: str, policy: DownloadPolicy, deadline: float, ssl_context) -> tuple[int, str | None, bytes]:
    """One GET on a fresh connection to a checked address: (status, Location or None, body if 2xx else b"")."""
    parts, host = _parse(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = _resolve(host, port, deadline)
    for address in addresses:
        if not policy.allow_private and (why := refusal(address)):
            raise DownloadError(
                f"refused address {address} ({why}); pass --allow-private-urls to fetch from private networks"
            )
    sock = _connect(addresses, port, deadline)
    try:
        if parts.scheme == "https":
            sock.settimeout(_left(deadline))
            context = ssl_context or ssl.create_default_context()
            # Connected to the checked address; the certificate is still checked against the URL's host.
            sock = context.wrap_socket(sock, server_hostname=host)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        target = urllib.parse.quote(target, safe="!#$%&'()*+,/:;=?@[]~")  # non-ASCII -> %XX; escapes kept
        host_header = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            host_header += f":{parts.port}"
        request = (
            f"GET {target} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: captioner/{__version__}\r\n"
            "Accept: image/*\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n"
        )
        sock.settimeout(_left(deadline))
        sock.sendall(request.encode("ascii"))
        # typeshed asks for a socket; HTTPResponse only calls makefile("rb"), which _DeadlineSocket provides.
        response = http.client.HTTPResponse(_DeadlineSocket(sock, deadline), method="GET")  # type: ignore[arg-type]
        response.begin()
        if response.status // 100 != 2:
            return response.status, response.getheader("Location"), b""
        declared = response.length  # None: chunked, or until the server closes
        if declared is not None and declared > policy.max_bytes:
            raise DownloadError(f"{declared:,} bytes is over the {policy.max_bytes:,} byte limit")
        chunks, size = [], 0
        while chunk := response.read(_CHUNK):
            chunks.append(chunk)
            size += len(chunk)
            if size > policy.max_bytes:
                raise DownloadError(f"more than the {policy.max_bytes:,} byte limit")
        if declared is not None and size < declared:  # read(amt) returns short at EOF instead of raising
            raise DownloadError(f"connection closed after {size:,} of {declared:,} body bytes")
        return response.status, None, b"".join(chunks)
    finally:
        sock.close()


def _parse(url: str) -> tuple[urllib.parse.SplitResult, str]:
    """The URL's parts and its host in ASCII (IDNA), or DownloadError for a URL that is not fetched."""
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise DownloadError("the URL contains whitespace or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number in 0-65535
    except ValueError:
        raise DownloadError("not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise DownloadError("only http:// and https:// URLs are fetched")
    if not parts.hostname:
        raise DownloadError("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise DownloadError("credentials in URLs are not supported")
    try:
        host = parts.hostname if parts.hostname.isascii() else parts.hostname.encode("idna").decode("ascii")
    except UnicodeError:
        raise DownloadError("the host name is not valid") from None
    return parts, host


def _resolve(host: str, port: int, deadline: float) -> list[str]:
    """The host's addresses, looked up once (in a thread, so that a slow resolver cannot outlast the deadline)."""
    result: dict = {}

    def lookup():
        try:
            result["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            result["error"] = exc

    thread = threading.Thread(target=lookup, daemon=True, name="captioner-resolve")
    thread.start()
    thread.join(_left(deadline))
    if thread.is_alive():
        raise TimeoutError
    if "error" in result:
        raise DownloadError(
            f"cannot resolve the host ({getattr(result['error'], 'strerror', None) or 'invalid'})"
        )
    addresses = list(dict.fromkeys(info[4][0] for info in result["infos"]))
    if not addresses:
        raise DownloadError("the host has no address")
    return addresses


def refusal(address: str) -> str | None:
    """Why ``address`` is not a public internet address (loopback, private, ...), or None if it is public.
    IPv6 forms that embed an IPv4 address (mapped, compatible, 6to4, NAT64) are judged by that address too."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 scope id ("fe80::1%eth0")
    candidates = []  # embedded IPv4 first, so that ::ffff:127.0.0.1 is called loopback
    if ip.version == 6:
        if ip.ipv4_mapped:
            candidates.append(ip.ipv4_mapped)
        if ip.sixtofour:
            candidates.append(ip.sixtofour)
        if int(ip) >> 32 == 0 and int(ip) > 1:  # IPv4-compatible ::a.b.c.d (deprecated)
            candidates.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip in _NAT64:
            candidates.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    for c in [*candidates, ip]:
        for name in ("unspecified", "loopback", "link_local", "multicast", "private", "reserved"):
            if getattr(c, f"is_{name}"):
                return name.replace("_", "-")
        if not c.is_global:  # e.g. 100.64.0.0/10 (carrier-grade NAT)
            return "not globally routable"
    return None


def _connect(addresses: list[str], port: int, deadline: float) -> socket.socket:
    """A TCP connection to the first of the (already checked) addresses that answers."""
    error: OSError = ConnectionError("no address")
    for address in addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(_left(deadline))
            sock.connect((address, port))
            return sock
        except OSError as exc:
            sock.close()
            if isinstance(exc, TimeoutError):
                raise
            error = exc
    raise error


def _left(deadline: float) -> float:
    """Seconds until the deadline; TimeoutError once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


class _DeadlineSocket:
    """What http.client.HTTPResponse needs of a socket (``makefile``), reading through ``_DeadlineReader``."""

    def __init__(self, sock: socket.socket, deadline: float):
        self._reader = _DeadlineReader(sock, deadline)

    def makefile(self, mode: str):
        return io.BufferedReader(self._reader)


class _DeadlineReader(io.RawIOBase):
    """Socket reads that each wait at most until the deadline and fail once it has passed (slow drips)."""

    def __init__(self, sock: socket.socket, deadline: float):
        self._sock, self._deadline = sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self._sock.settimeout(_left(self._deadline))
        n = self._sock.recv_into(buffer)
        _left(self._deadline)
        return n


def _protocol_error(exc: http.client.HTTPException) -> str:
    """A description of a malformed response that quotes none of it."""
    if isinstance(exc, http.client.IncompleteRead):
        return f"connection closed in the middle of the body (after {len(exc.partial):,} bytes of a chunk)"
    if isinstance(exc, http.client.LineTooLong):
        return "malformed HTTP response (a line longer than 65,536 bytes)"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the server closed the connection without a response"
    if isinstance(exc, http.client.BadStatusLine):
        return "malformed HTTP response (bad status line)"
    if str(exc).startswith("got more than"):
        return "malformed HTTP response (more than 100 headers)"
    return f"malformed HTTP response ({type(exc).__name__})"
