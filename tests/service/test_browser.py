"""The web page end to end in headless Chromium, driven over the DevTools protocol: choose a photo through the
file input, see the caption appear, on a phone-sized viewport without horizontal scrolling; /docs and /redoc render
the API with no host but the server's reachable (every other name fails to resolve)."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import threading
import time

import pytest
from service_helpers import serve_in_thread, service_settings
from service_inputs import jpeg

pytestmark = pytest.mark.slow

CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-port=0",
    # Offline even on a connected machine: every host name but the test server's fails to resolve (no CDN).
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]


class Cdp:
    """A minimal synchronous DevTools client: send a command, wait for its reply (events are skipped)."""

    def __init__(self, ws_url: str):
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.ids = itertools.count(1)

    def __call__(self, method: str, **params) -> dict:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def eval(self, expression: str):
        return self("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")


@pytest.fixture
def live_server(tiny_bundle, service_captioner):
    from captioner.service.app import create_app

    with serve_in_thread(create_app(service_settings(tiny_bundle), captioner=service_captioner)) as url:
        yield url


@pytest.fixture
def browser(tmp_path):
    pytest.importorskip("websocket", reason="pip install websocket-client to drive Chromium")
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if binary is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    proc = subprocess.Popen(
        [binary, *CHROME_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    ws_url = None
    deadline = time.time() + 30
    while time.time() < deadline and ws_url is None:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        match = re.search(r"DevTools listening on (ws://\S+)", line)
        ws_url = match.group(1) if match else None
    if ws_url is None:
        proc.kill()
        pytest.skip("Chromium could not start headless here")
    # Keep draining stderr so that a chatty browser never blocks on a full pipe.
    threading.Thread(target=proc.stderr.read, daemon=True).start()
    import httpx

    port = int(re.search(r":(\d+)/", ws_url).group(1))
    pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json() if t["type"] == "page"]
    cdp = Cdp(pages[0]["webSocketDebuggerUrl"])
    yield cdp
    cdp.ws.close()
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def _wait_for(check, timeout_s=30.0):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    return check()


def test_upload_through_the_page_shows_the_caption(live_server, browser, tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(jpeg((160, 120), seed=5))
    browser("Emulation.setDeviceMetricsOverride", width=390, height=844, deviceScaleFactor=2, mobile=True)
    browser("Page.enable")
    browser("Page.navigate", url=live_server + "/")
    assert _wait_for(
        lambda: (
            browser.eval("document.readyState") == "complete"
            and browser.eval("!!document.getElementById('file')")
        )
    )
    root = browser("DOM.getDocument")["root"]["nodeId"]
    node = browser("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
    browser("DOM.setFileInputFiles", nodeId=node, files=[str(photo)])

    caption = _wait_for(lambda: browser.eval("document.getElementById('caption').textContent"))
    status = browser.eval("document.getElementById('status').textContent")
    assert caption, f"no caption appeared; status: {status!r}"
    assert "ms" in status and "error" not in browser.eval("document.getElementById('status').className")
    assert browser.eval("document.querySelectorAll('#candidates li').length") >= 1
    assert browser.eval("!document.getElementById('preview').hidden")
    assert browser.eval("document.getElementById('preview').src").startswith("blob:")
    assert browser.eval("document.documentElement.scrollWidth") <= 390  # no sideways scrolling on a phone

    import httpx

    direct = httpx.post(
        live_server + "/generate-caption/?strategy=beam&beam_size=3&n_best=3",
        files={"file": photo.read_bytes()},
    )
    assert direct.json()["caption"] == caption
    # Tags under the caption, as the API gives them (labels are set as text, never as markup), and the confidence.
    shown = browser.eval("[...document.querySelectorAll('#tags li')].map(li => li.textContent)")
    assert [t.rsplit(" ", 1)[0] for t in shown] == [t["label"] for t in direct.json()["tags"]]
    assert browser.eval("document.getElementById('confidence').textContent").startswith("confidence ")


def test_page_shows_the_servers_error(live_server, browser, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_bytes(b"just some text")
    browser("Page.navigate", url=live_server + "/")
    assert _wait_for(
        lambda: (
            browser.eval("document.readyState") == "complete"
            and browser.eval("!!document.getElementById('file')")
        )
    )
    root = browser("DOM.getDocument")["root"]["nodeId"]
    node = browser("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
    browser("DOM.setFileInputFiles", nodeId=node, files=[str(bad)])
    status = _wait_for(
        lambda: (
            "error" in (browser.eval("document.getElementById('status').className") or "")
            and browser.eval("document.getElementById('status').textContent")
        )
    )
    assert "not a supported image" in status


def test_docs_and_redoc_render_the_operations_offline(live_server, browser):
    browser("Page.navigate", url=live_server + "/docs")
    paths = _wait_for(
        lambda: browser.eval(
            "[...document.querySelectorAll('.opblock-summary-path')].map(e => e.dataset.path).join(' ')"
        )
    )
    assert "/generate-caption/" in (paths or "") and "/generate-captions/" in paths, paths
    browser("Page.navigate", url=live_server + "/redoc")
    text = _wait_for(
        lambda: (
            "Caption one image" in (browser.eval("document.body.innerText") or "")
            and browser.eval("document.body.innerText")
        )
    )
    assert text and "Caption several images" in text
