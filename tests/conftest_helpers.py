"""Builders shared by tests (importable; conftest.py holds the fixtures)."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_photo(size=(96, 64), seed=0) -> Image.Image:
    """A smooth random RGB image (gradients + blobs), JPEG-friendly."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    channels = [np.sin(xx * rng.uniform(2, 9) + yy * rng.uniform(2, 9) + rng.uniform(0, 6)) for _ in range(3)]
    arr = ((np.stack(channels, -1) + 1) * 127.5).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


REPO = Path(__file__).resolve().parents[1]
FLICKR8K = REPO.parent / "shared" / "data" / "flickr8k"

WORDS = ["dog", "cat", "man", "girl", "ball", "grass", "water", "snow", "runs", "jumps", "sits", "plays"]


def write_tiny_flickr8k(root: Path, n_train: int = 12, n_dev: int = 4) -> Path:
    """A Flickr8k folder in the original layout: token file, three split files, generated JPEGs."""
    root.mkdir(parents=True)
    (root / "Images").mkdir()
    names = [f"{1000 + i}_abc.jpg" for i in range(n_train + n_dev)]
    lines = []
    for i, name in enumerate(names):
        make_photo((64, 48), seed=i).save(root / "Images" / name)
        for k in range(5):
            a, b, c = WORDS[i % 4], WORDS[8 + (i + k) % 4], WORDS[4 + (i + 2 * k) % 4]
            lines.append(f"{name}#{k}\tA {a} {b} on the {c} .")
    (root / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    (root / "Flickr_8k.trainImages.txt").write_text("\n".join(names[:n_train]) + "\n")
    (root / "Flickr_8k.devImages.txt").write_text("\n".join(names[n_train:]) + "\n")
    (root / "Flickr_8k.testImages.txt").write_text("")
    return root


# -- a hostile HTTP server for the URL fetching tests --

BODY = b"\xff\xd8\xff\xe0 an image " * 100  # what /ok.jpg serves (the bytes only; fetch does not decode)
SECRET = b"SECRET"  # every hostile response carries it: it must never reach an error message
DRIP_S = 0.1


def _respond(conn: socket.socket, path: str, server: HostileServer) -> None:
    """Write the response for ``path``: /ok.jpg (server.body), /hop/N (N redirects then ok), /to/<path> (302 to the server's
    redirects[path]), or one hostile behaviour."""

    def drip(prefix: bytes, forever: bytes) -> None:
        conn.sendall(prefix)
        while not server.stopping.is_set():  # a byte every DRIP_S, forever
            conn.sendall(forever)
            time.sleep(DRIP_S)

    def redirect(location: str) -> None:
        conn.sendall(f"HTTP/1.1 302 Found {SECRET.decode()}\r\nLocation: {location}\r\n\r\n".encode())

    if path == "/ok.jpg":
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(server.body) + server.body)
    elif path.startswith("/hop/"):
        n = int(path.rsplit("/", 1)[1])
        redirect(f"/hop/{n - 1}") if n else _respond(conn, "/ok.jpg", server)
    elif path.startswith("/to/"):
        redirect(server.redirects[path[4:]])
    elif path == "/loop":
        redirect("/loop")
    elif path == "/drip-status":
        drip(b"", b"H")
    elif path == "/drip-headers":
        drip(b"HTTP/1.1 200 OK\r\nX-Slow: ", b"a")
    elif path == "/drip-body":
        drip(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n", b"x")
    elif path == "/bad-status":
        conn.sendall(SECRET + b" not http\r\n\r\n")
    elif path == "/many-headers":
        conn.sendall(b"HTTP/1.1 200 OK\r\n" + b"X-H: %s\r\n" % SECRET * 101 + b"\r\n" + BODY)
    elif path == "/long-line":
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Long: " + SECRET * 20_000 + b"\r\n\r\n")
    elif path == "/truncated":
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + SECRET)
    elif path == "/reason":
        conn.sendall(
            b"HTTP/1.1 500 %s\r\nX-Leak: %s\r\nContent-Length: 6\r\n\r\n%s" % (SECRET, SECRET, SECRET)
        )
    elif path == "/big-declared":
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n" + BODY)
    elif path == "/big-undeclared":
        conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n" + BODY * 100)
    elif path == "/close":
        pass  # closed without a response
    else:
        conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")


class HostileServer(socketserver.ThreadingTCPServer):
    """A raw HTTP server on 127.0.0.1 that records each request's (path, Host header)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        self.stopping = threading.Event()
        self.requests: list[tuple[str, str]] = []
        self.redirects: dict[str, str] = {}
        self.body = BODY  # what /ok.jpg serves
        super().__init__(("127.0.0.1", 0), _Handler)
        self.port = self.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]


class _Handler(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.settimeout(5)
        head = b""
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in head and len(head) < 65536 and (chunk := self.request.recv(4096)):
                head += chunk
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1]
            host = next((x.split(":", 1)[1].strip() for x in lines if x.lower().startswith("host:")), "")
            self.server.requests.append((path, host))
            _respond(self.request, path, self.server)


def build_tiny_bundle(out: Path, encoder_onnx: Path, vocabulary, seed: int = 0) -> Path:
    """A complete bundle folder: a random tiny decoder (weights ~N(0, 0.4) from ``seed``, large enough that
    different images get different captions) + the given encoder. Another seed: another model version."""
    import keras

    from captioner.model.bundle import save_bundle
    from captioner.model.config import DecoderConfig
    from captioner.model.decoder import build_decoder

    keras.utils.set_random_seed(seed)
    config = DecoderConfig(
        vocab_size=len(vocabulary), feature_size=1280, embed_dim=16, hidden_dim=24, max_length=12
    )
    model = build_decoder(config)
    rng = np.random.default_rng(seed)
    for w in model.weights:
        w.assign(rng.normal(0, 0.4, w.shape).astype("float32"))
    return save_bundle(out, model, vocabulary, config, encoder_onnx, metrics={"BLEU-4": 0.0})
