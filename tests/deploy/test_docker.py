"""deploy/ for real in Docker: the image built from deploy/Dockerfile, run as a user would, and the compose stack
(3 replicas + nginx + Redis) brought up with the compose file as it is.

No registry is needed: the base is Debian bookworm made by debootstrap (scripts/docker-base.sh, cached by its
recipe), Python packages come from a wheelhouse built on the host (scripts/docker-wheels.sh, no network inside the
build), and nginx and Redis are Debian's, built on the same base (deploy/offline/). Compose is whichever the
machine has: Debian's docker-compose 1.29 (v1) here, `docker compose` (v2) elsewhere.

  image    /readyz, a real photo captioned exactly as the host package captions it, HEALTHCHECK -> healthy, a
           non-root user, no TensorFlow, a read-only root filesystem, the size; `docker stop` drains a batch
  compose  3 replicas, a caption through nginx, one client's rate limit shared by the replicas (429s), one replica
           stopped under load with every request answered
Figures (sizes, build and start times) go to bench/results/docker.json. Everything created is removed after,
except the cached base image (and BuildKit's layer cache, which makes the next run fast).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import subprocess
import threading
import time
import uuid
from collections import Counter
from contextlib import ExitStack, suppress
from pathlib import Path

import pytest
from docker_helpers import (
    base_image,
    build,
    docker,
    docker_cli,
    health,
    image_size_mb,
    inspect,
    running_dockerd,
    wheelhouse,
)
from processes import REPO, ensure_binary, free_port, photo_jpeg, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.docker]

DEPLOY = REPO / "deploy"
RESULTS = REPO / "bench" / "results" / "docker.json"
RUN = uuid.uuid4().hex[:8]  # names every container, image and project of this run
BURST = 10  # the compose stack's rate-limit bucket in this test (1 token/s refill)


def chelsea_jpeg() -> bytes:
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def figures():
    out: dict = {}
    yield out
    if out:  # merged into the last run's figures: a run of one of the tests keeps the other's
        previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        RESULTS.write_text(json.dumps(previous | out, indent=2) + "\n")


@pytest.fixture(scope="module")
def images(tmp_path_factory, figures):
    """The daemon, the base, and the captioner image built from deploy/Dockerfile on it (removed after)."""
    with ExitStack() as cleanup:
        cleanup.enter_context(running_dockerd(tmp_path_factory.mktemp("dockerd") / "dockerd.log"))
        started = time.monotonic()
        base = base_image()
        figures["base_image"] = {
            "tag": base,
            "size_mb": image_size_mb(base),
            "ready_s": round(time.monotonic() - started, 1),
        }
        started = time.monotonic()
        wheelhouse()
        figures["wheelhouse_s"] = round(time.monotonic() - started, 1)
        tag = f"captioner-test:{RUN}"
        cleanup.callback(docker, "rmi", "-f", tag, check=False)
        figures["build_s"] = round(build(tag, DEPLOY / "Dockerfile", REPO, PYTHON_IMAGE=base), 1)
        figures["image_size_mb"] = image_size_mb(tag)
        # Also by id: the compose test rebuilds the tag (compose labels make it another image).
        cleanup.callback(docker, "rmi", "-f", inspect(tag)["Id"], check=False)
        yield {"base": base, "captioner": tag}


def caption(url: str, image: bytes, **headers):
    import httpx

    return httpx.post(
        url + "/generate-caption/",
        params={"strategy": "greedy"},
        files={"file": ("photo.jpg", image)},
        headers=headers,
        timeout=60,
    )


def slow_batch(url: str, sent: threading.Event, out: dict) -> None:
    """POST 16 large photos with beam search to /generate-captions/; ``sent`` is set once all of the body is on the
    wire."""
    import httpx

    batch = [("files", (f"b{k}.jpg", photo_jpeg((640, 480), seed=40 + k))) for k in range(16)]
    params = {"strategy": "beam", "beam_size": 5}
    request = httpx.Request("POST", url + "/generate-captions/", files=batch, params=params)
    body = request.read()

    def stream():
        yield body
        sent.set()

    headers = {"Content-Type": request.headers["Content-Type"], "Content-Length": str(len(body))}
    try:
        r = httpx.post(request.url, content=stream(), headers=headers, timeout=60)
        out["ended"] = time.monotonic()
        out["status"] = r.status_code
        out["items_ok"] = (
            sum(x.get("error") is None for x in r.json()["results"]) if r.status_code == 200 else 0
        )
    except httpx.HTTPError as exc:
        out["status"] = type(exc).__name__
        sent.set()


def test_image_serves_as_non_root_read_only_healthy_and_drains_on_stop(images, figures):
    import httpx

    from captioner.decode.options import DecodeOptions
    from captioner.loading import load

    name, port = f"captioner-test-{RUN}", free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    docker("run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp", "-p", f"127.0.0.1:{port}:8000",
           "-e", "CAPTIONER_THREADS=1", "-e", "CAPTIONER_MAX_BATCH_IMAGES=16",
           "-e", "CAPTIONER_MAX_UPLOAD_BUFFER_BYTES=268435456", images["captioner"])  # fmt: skip
    try:
        wait_until(lambda: httpx.get(url + "/readyz", timeout=2).status_code == 200, 180, "container /readyz")
        figures["container_ready_s"] = round(time.monotonic() - started, 1)

        # A real photo, captioned exactly as the host's package captions it with the same bundle.
        photo = chelsea_jpeg()
        r = caption(url, photo)
        assert r.status_code == 200, r.text
        host = load(REPO / "models" / "default", threads=1)
        options = DecodeOptions(strategy="greedy")
        expected = host.caption_images([host.load(photo)], options)[0].caption
        figures["chelsea_caption"] = r.json()["caption"]
        assert r.json()["caption"] == expected

        # Runs as the image's non-root user; no TensorFlow; the root filesystem is read-only, /tmp is not.
        assert inspect(name)["Config"]["User"] == "10001:10001"
        assert docker("exec", name, "id", "-u").stdout.strip() == "10001"
        no_tf = docker("exec", name, "python", "-c", "import tensorflow", check=False)
        assert no_tf.returncode != 0 and "No module named 'tensorflow'" in no_tf.stderr
        write = docker("exec", name, "touch", "/opt/venv/probe", check=False)
        assert write.returncode != 0 and "Read-only file system" in write.stderr
        assert docker("exec", name, "touch", "/tmp/probe", check=False).returncode == 0

        # The image's HEALTHCHECK (every 15 s) turns healthy.
        wait_until(lambda: health(name) == "healthy", 60, "HEALTHCHECK healthy")
        figures["healthy_s"] = round(time.monotonic() - started, 1)

        # docker stop (SIGTERM, then SIGKILL after -t) while a slow batch is in flight: it is answered in full,
        # and the server exits by itself (0), not by the SIGKILL (137).
        sent, out = threading.Event(), {}
        client = threading.Thread(target=slow_batch, args=(url, sent, out), daemon=True)
        client.start()
        assert sent.wait(30)
        wait_until(  # the batch is in inference: the request is the server's now
            lambda: "captioner_inference_inflight 1.0" in httpx.get(url + "/metrics", timeout=2).text,
            30,
            "the batch in flight",
        )
        stop_started = time.monotonic()
        docker("stop", "-t", "60", name, timeout=90)
        figures["stop_s"] = round(time.monotonic() - stop_started, 1)
        client.join(60)
        figures["drained_batch_s_after_sigterm"] = round(out.pop("ended", stop_started) - stop_started, 2)
        assert out == {"status": 200, "items_ok": 16}
        assert figures["drained_batch_s_after_sigterm"] > 0  # it was still running when the stop began
        assert inspect(name)["State"]["ExitCode"] == 0
    except BaseException:
        print(docker("logs", "--tail", "50", name, check=False).stdout)
        raise
    finally:
        docker("rm", "-f", name, check=False)


def compose_cli() -> list[str]:
    """`docker compose` (v2) when the docker CLI has it, else docker-compose (v1, installing Debian's)."""
    if subprocess.run([docker_cli(), "compose", "version"], capture_output=True).returncode == 0:
        return [docker_cli(), "compose"]
    return [ensure_binary("docker-compose", "docker-compose")]


def access_log_statuses(container: str) -> Counter:
    """status -> count over a replica's caption requests, from its JSON access log (docker logs)."""
    counts: Counter = Counter()
    logs = docker("logs", container, check=False)  # the container's stdout and stderr, replayed on both
    for line in (logs.stdout + logs.stderr).splitlines():
        with suppress(ValueError):
            entry = json.loads(line)
            if entry.get("logger") == "captioner.service.access" and "caption" in entry.get("path", ""):
                counts[entry["status"]] += 1
    return counts


def test_compose_stack_with_three_replicas_nginx_and_redis(images, figures, tmp_path):
    """deploy/compose.yaml as it is, plus an override with this test's keys, limits and port."""
    import httpx

    compose = compose_cli()
    figures["compose"] = subprocess.run([*compose, "version"], capture_output=True, text=True).stdout.split(
        "\n"
    )[0]
    nginx_image, redis_image = f"captioner-test-nginx:{RUN}", f"captioner-test-redis:{RUN}"
    # The rate limit is per API key: one key for the rate-limit phase, a fresh one for every other request.
    keys = ["test-key-limited", *(f"test-key-{i}" for i in range(60))]
    fresh_keys = iter(keys[1:])
    (tmp_path / "api_keys.sha256").write_text(
        "".join(hashlib.sha256(k.encode()).hexdigest() + "\n" for k in keys)
    )
    (tmp_path / "api_keys.sha256").chmod(0o644)  # read by the replicas' non-root user
    override = tmp_path / "compose.test.yaml"
    override.write_text(json.dumps({  # JSON is YAML
        "services": {"captioner": {"environment": {
            "CAPTIONER_RATE_LIMIT_PER_MINUTE": "60", "CAPTIONER_RATE_LIMIT_BURST": str(BURST),
            "CAPTIONER_THREADS": "1", "CAPTIONER_INFERENCE_WORKERS": "1",
        }}},
        "secrets": {"captioner_api_keys": {"file": str(tmp_path / "api_keys.sha256")}},
    }))  # fmt: skip
    port = free_port()
    env = {
        "PYTHON_IMAGE": images["base"], "CAPTIONER_IMAGE": images["captioner"], "NGINX_IMAGE": nginx_image,
        "REDIS_IMAGE": redis_image, "NGINX_HOST_PORT": str(port),
        # v1 builds through the docker CLI (BuildKit: reads deploy/Dockerfile.dockerignore), Debian's CLI first.
        "COMPOSE_DOCKER_CLI_BUILD": "1", "DOCKER_BUILDKIT": "1",
        "PATH": f"{Path(docker_cli()).parent}:" + os.environ["PATH"],
    }  # fmt: skip
    project = ["-p", f"captionertest{RUN}", "-f", str(DEPLOY / "compose.yaml"), "-f", str(override)]

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        result = subprocess.run([*compose, *project, *args], capture_output=True, text=True, timeout=timeout,
                                env=dict(os.environ, **env))  # fmt: skip
        assert result.returncode == 0, f"compose {args}: {result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result

    with ExitStack() as cleanup:
        for image, dockerfile in ((nginx_image, "nginx.Dockerfile"), (redis_image, "redis.Dockerfile")):
            cleanup.callback(docker, "rmi", "-f", image, check=False)
            build(
                image, DEPLOY / "offline" / dockerfile, DEPLOY / "offline", "host", BASE_IMAGE=images["base"]
            )
        started = time.monotonic()
        # The compose build path (build args from the variables); all cached from the image test's build.
        run("build", "captioner", timeout=900)
        figures["compose_build_s"] = round(time.monotonic() - started, 1)
        cleanup.callback(lambda: subprocess.run([*compose, *project, "down", "-v", "--remove-orphans", "-t", "10"],
                                                capture_output=True, timeout=300, env=dict(os.environ, **env)))  # fmt: skip
        started = time.monotonic()
        try:
            run("up", "-d", "--no-build", timeout=600)  # waits for Redis, then the replicas, to be healthy
            url = f"http://127.0.0.1:{port}"
            wait_until(
                lambda: httpx.get(url + "/readyz", timeout=2).status_code == 200, 120, "nginx -> /readyz"
            )
            figures["compose_up_s"] = round(time.monotonic() - started, 1)
            replicas = run("ps", "-q", "captioner").stdout.split()
            assert len(replicas) == 3, replicas  # deploy.replicas
            host_config = inspect(replicas[0])["HostConfig"]
            figures["compose_replica_limits"] = {
                "memory_bytes": host_config["Memory"], "nano_cpus": host_config["NanoCpus"],
                "memory_reservation_bytes": host_config["MemoryReservation"],
            }  # fmt: skip
            # deploy.resources: applied by v1 1.29 too, without --compatibility (a CPU reservation has no Docker
            # equivalent outside Swarm, in v1 or v2).
            assert (host_config["Memory"], host_config["NanoCpus"]) == (2**30, 2 * 10**9)
            assert host_config["ReadonlyRootfs"] and host_config["CapDrop"] == ["ALL"]
            assert host_config["SecurityOpt"] == ["no-new-privileges:true"]

            # A caption through nginx, with an API key (and refused without one).
            r = caption(url, chelsea_jpeg(), **{"X-API-Key": next(fresh_keys)})
            assert r.status_code == 200, r.text
            assert r.json()["caption"] == figures.get("chelsea_caption", r.json()["caption"])
            assert caption(url, chelsea_jpeg()).status_code == 401

            # One client's bucket is shared by the replicas: they admit ~BURST together, not 3 x BURST.
            base_jpeg = photo_jpeg((160, 120), seed=7)
            statuses = Counter()
            lock, numbers = threading.Lock(), itertools.count()

            def send(key: str, out: Counter) -> None:
                # The same pixels, a distinct JPEG comment: a distinct cache key, the same work.
                tagged = base_jpeg[:2] + b"\xff\xfe\x00\x06" + f"{next(numbers):04d}".encode() + base_jpeg[2:]
                try:
                    status = caption(url, tagged, **{"X-API-Key": key}).status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                with lock:
                    out[status] += 1

            t0 = time.monotonic()
            pool = [threading.Thread(target=send, args=(keys[0], statuses)) for _ in range(36)]
            for t in pool:
                t.start()
            for t in pool:
                t.join(60)
            refill = time.monotonic() - t0  # 1 token per second
            per_replica = {c[:12]: access_log_statuses(c)[429] for c in replicas}
            figures["compose_rate_limit"] = {"sent": 36, "statuses": dict(statuses), "burst": BURST,
                                             "seconds": round(refill, 1), "429_per_replica": per_replica}  # fmt: skip
            assert statuses[200] + statuses[429] == 36, statuses
            assert BURST <= statuses[200] <= BURST + refill + 1, figures["compose_rate_limit"]
            assert sum(n > 0 for n in per_replica.values()) >= 2, per_replica  # every replica enforces it

            # One replica stopped (docker stop: SIGTERM, drain) under load: every request still gets its 200.
            results = Counter()
            stopped = threading.Event()

            def load() -> None:
                for _ in range(12):
                    with lock:
                        key = next(fresh_keys)
                    send(key, results)

            def stopper() -> None:
                deadline = time.monotonic() + 120
                while sum(results.values()) < 6 and time.monotonic() < deadline:
                    time.sleep(0.05)
                docker("stop", "-t", "40", replicas[0], timeout=60)
                stopped.set()

            workers = [threading.Thread(target=load) for _ in range(3)] + [threading.Thread(target=stopper)]
            for t in workers:
                t.start()
            for t in workers:
                t.join(180)
            assert stopped.is_set()
            figures["compose_replica_stopped"] = dict(results)
            assert results == Counter({200: 36}), results
            assert inspect(replicas[0])["State"]["ExitCode"] == 0  # drained and exited, not killed
        except BaseException:
            print(run("logs", "--tail", "30", timeout=60).stdout[-6000:])
            raise
