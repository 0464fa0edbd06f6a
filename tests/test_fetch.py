"""Downloading by URL: refused addresses and schemes (no connection made), redirects re-checked and capped, one DNS
lookup, TLS against the URL's host, and hostile servers on loopback (drips, bad status lines, truncated bodies,
101 headers) that each end as one DownloadError that quotes nothing of the response."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time

import pytest

import captioner.fetch
from captioner.errors import CaptionerError
from captioner.fetch import DownloadError, DownloadPolicy, download, refusal
from conftest_helpers import BODY, SECRET

LOCAL = DownloadPolicy(timeout_s=2.0, allow_private=True)  # the test servers are on loopback


@pytest.fixture
def no_connection(monkeypatch):
    """Fail the test if a socket is connected."""

    def refuse(*args, **kwargs):
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr(captioner.fetch, "_connect", refuse)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://localhost/x.jpg", "loopback"),
        ("http://127.1/x.jpg", "loopback"),
        ("http://2130706433/x.jpg", "loopback"),
        ("http://0x7f000001/x.jpg", "loopback"),
        ("http://0177.0.0.1/x.jpg", "loopback"),
        ("HTTP://127.0.0.1:8080/x.jpg", "loopback"),
        ("http://0.0.0.0/x.jpg", "unspecified"),
        ("http://[::]/x.jpg", "unspecified"),
        ("http://[::1]/x.jpg", "loopback"),
        ("http://[::ffff:127.0.0.1]/x.jpg", "loopback"),
        ("http://[::ffff:7f00:1]/x.jpg", "loopback"),
        ("https://[::127.0.0.1]/x.jpg", "loopback"),
        ("http://10.1.2.3/x.jpg", "private"),
        ("http://192.168.0.1/x.jpg", "private"),
        ("http://[::ffff:192.168.0.1]/x.jpg", "private"),
        ("http://[fd00::1]/x.jpg", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[fe80::1]/x.jpg", "link-local"),
        ("http://224.0.0.1/x.jpg", "multicast"),
        ("http://100.64.0.1/x.jpg", "not globally routable"),
    ],
)
def test_non_public_addresses_are_refused_without_connecting(url, why, no_connection):
    with pytest.raises(DownloadError, match="refused address") as caught:
        download(url)
    assert f"({why})" in str(caught.value) and "--allow-private-urls" in str(caught.value)


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/x.jpg", "file:///etc/passwd", "data:image/png;base64,iVBORw0KGgo=", "gopher://x/1",
     "http://user:pw@example.com/x.jpg", "http://example.com/a b.jpg", "http://example.com:99999/x.jpg", "http:///x"],
)  # fmt: skip
def test_other_urls_are_refused_without_connecting(url, no_connection):
    with pytest.raises(DownloadError):
        download(url)


def test_public_addresses_pass():
    assert refusal("93.184.216.34") is None and refusal("2606:4700:4700::1111") is None
    assert (
        refusal("::ffff:10.0.0.1") == "private" and refusal("2002:a00:1::") == "private"
    )  # 6to4 of 10.0.0.1


def test_loopback_is_fetched_only_when_allowed(hostile):
    with pytest.raises(DownloadError, match=r"refused address 127\.0\.0\.1 \(loopback\)"):
        download(f"{hostile.base}/ok.jpg")
    assert hostile.requests == []
    assert download(f"{hostile.base}/ok.jpg", LOCAL) == BODY


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/bad-status", "bad status line"),
        ("/many-headers", "more than 100 headers"),
        ("/long-line", "longer than 65,536 bytes"),
        ("/truncated", "connection closed after 6 of 1,000 body bytes"),
        ("/reason", "HTTP 500"),
        ("/missing.jpg", "HTTP 404"),
        ("/close", "closed the connection without a response"),
        ("/big-declared", "1,000,000,000 bytes is over the 100,000 byte limit"),
        ("/big-undeclared", "more than the 100,000 byte limit"),
    ],
)
def test_hostile_responses_are_one_error_that_quotes_nothing(hostile, path, message):
    with pytest.raises(DownloadError) as caught:
        download(hostile.base + path, DownloadPolicy(max_bytes=100_000, timeout_s=2.0, allow_private=True))
    assert message in str(caught.value)
    assert SECRET.decode() not in str(caught.value)


@pytest.mark.parametrize("path", ["/drip-status", "/drip-headers", "/drip-body"])
def test_the_deadline_holds_against_a_slow_drip(hostile, path):
    started = time.monotonic()
    with pytest.raises(DownloadError, match="took longer than 0.5 s"):
        download(hostile.base + path, DownloadPolicy(timeout_s=0.5, allow_private=True))
    # Each drip goes on forever with a byte every 0.1 s: only a whole-download deadline ends it.
    assert time.monotonic() - started < 3


def test_the_deadline_covers_a_slow_dns_lookup(monkeypatch, no_connection):
    def slow_lookup(*args, **kwargs):
        time.sleep(2)
        return []

    monkeypatch.setattr(socket, "getaddrinfo", slow_lookup)
    with pytest.raises(DownloadError, match="took longer than 0.3 s"):
        download("http://images.example/x.jpg", DownloadPolicy(timeout_s=0.3))


def test_redirects_are_followed_and_capped(hostile):
    assert download(f"{hostile.base}/hop/3", DownloadPolicy(max_redirects=3, allow_private=True)) == BODY
    assert hostile.paths() == ["/hop/3", "/hop/2", "/hop/1", "/hop/0"]
    with pytest.raises(DownloadError, match="more than 2 redirects"):
        download(f"{hostile.base}/hop/3", DownloadPolicy(max_redirects=2, allow_private=True))
    with pytest.raises(DownloadError, match="more than 5 redirects"):
        download(f"{hostile.base}/loop", LOCAL)
    assert hostile.paths()[-6:] == ["/loop"] * 6


@pytest.fixture
def public_test_server(hostile, monkeypatch):
    """Pretend the test server's address (127.0.0.1) is a public one; every other address is judged as usual."""
    real = captioner.fetch.refusal
    monkeypatch.setattr(captioner.fetch, "refusal", lambda a: None if a == "127.0.0.1" else real(a))
    return hostile


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("http://127.0.0.2:{port}/ok.jpg", "refused address 127.0.0.2 (loopback)"),
        ("http://[::1]:{port}/ok.jpg", "refused address ::1 (loopback)"),
        ("http://10.0.0.7/ok.jpg", "refused address 10.0.0.7 (private)"),
        ("http://169.254.169.254/latest/meta-data/", "refused address 169.254.169.254 (link-local)"),
        ("ftp://127.0.0.1:{port}/ok.jpg", "only http:// and https:// URLs are fetched"),
        ("file:///etc/passwd", "only http:// and https:// URLs are fetched"),
    ],
)
def test_every_redirect_target_is_checked(public_test_server, target, message):
    server = public_test_server
    server.redirects["x"] = target.format(port=server.port)
    assert download(f"{server.base}/hop/1") == BODY  # a public server's own redirects are followed
    with pytest.raises(DownloadError) as caught:
        download(f"{server.base}/to/x")
    assert str(caught.value).startswith(f"{server.base}/to/x: after 1 redirect: {message}")
    assert server.paths()[-1] == "/to/x"  # nothing was asked of the refused target


def test_connects_to_the_address_that_was_checked(hostile, monkeypatch):
    """A second DNS answer (rebinding) would point elsewhere: only the first lookup is used."""
    answers = [("127.0.0.1", "first"), ("203.0.113.9", "second")]  # 203.0.113.0/24: TEST-NET-3, never reached
    calls = []

    def lookup(host, port, *args, **kwargs):
        calls.append(host)
        address = answers[min(len(calls), 2) - 1][0]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    assert download(f"http://images.example:{hostile.port}/ok.jpg", LOCAL) == BODY
    assert calls == ["images.example"]
    assert hostile.requests == [("/ok.jpg", f"images.example:{hostile.port}")]  # Host: the URL's host


@pytest.fixture
def tls_server(tmp_path, hostile):
    """The hostile server behind TLS with a self-signed certificate for images.example: (port, client context)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=images.example",
         "-addext", "subjectAltName=DNS:images.example"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    hostile.socket = server_context.wrap_socket(hostile.socket, server_side=True)
    return hostile.port, ssl.create_default_context(cafile=str(cert))


def test_https_checks_the_certificate_against_the_urls_host(tls_server, monkeypatch):
    port, client_context = tls_server
    real_lookup = socket.getaddrinfo
    monkeypatch.setattr(
        socket,
        "getaddrinfo",
        lambda host, *a, **k: real_lookup("127.0.0.1" if host == "images.example" else host, *a, **k),
    )
    url = f"https://images.example:{port}/ok.jpg"
    assert download(url, LOCAL, ssl_context=client_context) == BODY
    with pytest.raises(DownloadError, match="TLS error CERTIFICATE_VERIFY_FAILED"):
        download(f"https://127.0.0.1:{port}/ok.jpg", LOCAL, ssl_context=client_context)  # not the cert's name
    with pytest.raises(DownloadError, match="TLS error CERTIFICATE_VERIFY_FAILED"):
        download(url, LOCAL)  # the system's CAs do not know this certificate


def test_invalid_policies_are_refused():
    for bad in ({"max_bytes": 0}, {"timeout_s": 0}, {"max_redirects": -1}):
        with pytest.raises(CaptionerError, match="download limits"):
            DownloadPolicy(**bad)
