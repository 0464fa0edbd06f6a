"""deploy/ checked without Docker or a cluster (neither runs here): every YAML parses, the probes and health checks
name routes the app really has, the settings they set are real settings with valid values, the Dockerfile runs as
a non-root user with a /livez HEALTHCHECK and no TensorFlow, and the nginx template passes ``nginx -t``."""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from processes import REPO, render_nginx

from captioner.service.app import create_app
from captioner.service.settings import Settings

# PyYAML belongs in the 'test' extra; until it is there, say why these checks did not run.
yaml = pytest.importorskip("yaml", reason="PyYAML is not installed: pip install pyyaml")

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
# Variables the service reads that are not Settings fields (none: uvicorn's FORWARDED_ALLOW_IPS is an alias of
# forwarded_allow_ips).
NON_SETTINGS_ENV: set[str] = set()


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def k8s_objects() -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for p in sorted(K8S.glob("*.yaml")) for d in documents(p)}


@pytest.fixture(scope="module")
def routes() -> set[str]:
    """The app's documented paths (probes and health endpoints are all in its OpenAPI schema)."""
    return set(create_app(Settings(_env_file=None)).openapi()["paths"])


def env_field(name: str) -> str | None:
    """The Settings field an environment variable sets (prefix or alias), or None."""
    for field, info in Settings.model_fields.items():
        aliases = getattr(info.validation_alias, "choices", None) or []
        if name == f"CAPTIONER_{field.upper()}" or name in aliases:
            return field
    return None


def test_every_yaml_parses_and_names_its_kind():
    files = sorted(DEPLOY.rglob("*.yaml"))
    assert {p.name for p in files} >= {"compose.yaml", "deployment.yaml", "service.yaml", "hpa.yaml",
                                        "configmap.yaml", "secret.yaml", "redis.yaml"}  # fmt: skip
    for path in files:
        docs = documents(path)
        assert docs, path
        if path.parent == K8S:
            for doc in docs:
                assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], path
                assert doc["metadata"].get("namespace", "captioner") == "captioner", path


def test_deployment_probes_resources_and_security(routes):
    objects = k8s_objects()
    deployment = objects[("Deployment", "captioner")]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    probes = {
        kind: container[kind]["httpGet"]["path"]
        for kind in ("livenessProbe", "readinessProbe", "startupProbe")
    }
    assert probes == {"livenessProbe": "/livez", "readinessProbe": "/readyz", "startupProbe": "/livez"}
    assert set(probes.values()) <= routes
    assert container["resources"] == {
        "requests": {"cpu": "1", "memory": "640Mi"},
        "limits": {"cpu": "2", "memory": "1Gi"},
    }
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # The Service and the HPA point at this Deployment.
    assert (
        objects[("Service", "captioner")]["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    )
    hpa = objects[("HorizontalPodAutoscaler", "captioner")]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "captioner"
    assert hpa["metrics"][0]["resource"]["target"]["averageUtilization"] == 70
    # A terminating pod gets longer than a request may take (preStop + request timeout).
    config = objects[("ConfigMap", "captioner-settings")]["data"]
    assert pod["terminationGracePeriodSeconds"] > 5 + float(config["CAPTIONER_REQUEST_TIMEOUT_S"])


def test_configmap_and_secret_are_valid_settings():
    objects = k8s_objects()
    config = objects[("ConfigMap", "captioner-settings")]["data"]
    deployment = objects[("Deployment", "captioner")]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    names = set(config) | {e["name"] for e in container.get("env", [])}
    unknown = {n for n in names if env_field(n) is None and n not in NON_SETTINGS_ENV}
    assert not unknown, f"not service settings (typo?): {unknown}"
    values = {env_field(k): v for k, v in config.items() if env_field(k)}
    settings = Settings(_env_file=None, **values)  # the validators accept them
    assert settings.redis_url.startswith("redis://captioner-redis:")
    # The keys file is where the Secret is mounted, and the Secret holds well-formed digests.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert str(settings.api_keys_file.parent) == mounts["api-keys"]
    keys = objects[("Secret", "captioner-api-keys")]["stringData"][settings.api_keys_file.name]
    digests = [line for line in keys.splitlines() if line and not line.startswith("#")]
    assert Settings(_env_file=None, api_keys_sha256=digests).api_keys_sha256 == digests


def test_compose_replicas_nginx_and_redis(routes):
    compose = documents(DEPLOY / "compose.yaml")[0]
    services = compose["services"]
    assert set(services) == {"captioner", "nginx", "redis"}
    app = services["captioner"]
    assert app["deploy"]["replicas"] == 3
    assert (DEPLOY / app["build"]["context"] / app["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert "redis://redis:" in app["environment"]["CAPTIONER_REDIS_URL"]
    assert {env_field(k) or k for k in app["environment"]} - set(Settings.model_fields) <= NON_SETTINGS_ENV
    for name, service in services.items():
        assert "healthcheck" in service, name
    for service in (app, services["nginx"]):
        path = re.search(r"http://127\.0\.0\.1:\d+(/\w+)", " ".join(service["healthcheck"]["test"])).group(1)
        assert path in routes
    template = services["nginx"]["volumes"][0].split(":")[0]
    assert (DEPLOY / template).resolve() == DEPLOY / "nginx" / "captioner.conf.template"
    assert (DEPLOY / "api_keys.sha256.example").is_file()


def test_k8s_trusts_no_proxy_and_keeps_client_addresses():
    """The client IP the rate limit keys on is the TCP peer's: no forwarded header is believed, and the Service
    does not SNAT (externalTrafficPolicy: Local), so the peer is the real client, not a node or another pod."""
    objects = k8s_objects()
    config = objects[("ConfigMap", "captioner-settings")]["data"]
    (container,) = objects[("Deployment", "captioner")]["spec"]["template"]["spec"]["containers"]
    names = set(config) | {e["name"] for e in container.get("env", [])}
    assert "FORWARDED_ALLOW_IPS" not in names  # one variable, the explicit one
    values = {env_field(k): v for k, v in config.items() if env_field(k)}
    assert Settings(_env_file=None, **values).forwarded_allow_ips == []
    service = objects[("Service", "captioner")]["spec"]
    assert service["type"] == "LoadBalancer" and service["externalTrafficPolicy"] == "Local"


def test_compose_trusts_exactly_the_nginx_container():
    compose = documents(DEPLOY / "compose.yaml")[0]
    environment = compose["services"]["captioner"]["environment"]
    assert "FORWARDED_ALLOW_IPS" not in environment
    trusted = Settings(_env_file=None, forwarded_allow_ips=environment["CAPTIONER_FORWARDED_ALLOW_IPS"])
    nginx_address = compose["services"]["nginx"]["networks"]["default"]["ipv4_address"]
    assert trusted.forwarded_allow_ips == [nginx_address]  # one address, not a network, not '*'
    (pool,) = compose["networks"]["default"]["ipam"]["config"]
    address = ipaddress.ip_address(nginx_address)
    # nginx's address is in the network but outside the range Docker hands out, so no other container gets it.
    assert address in ipaddress.ip_network(pool["subnet"])
    assert address not in ipaddress.ip_network(pool["ip_range"])
    for name, service in compose["services"].items():  # every container is on that one network
        assert set(service.get("networks", {"default": None})) == {"default"}, name


def dockerfile_stages() -> dict[str, list[str]]:
    """Stage name -> its instructions (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", (DEPLOY / "Dockerfile").read_text())
    stages: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if m := re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE):
            current = m.group(2) or m.group(1)
            stages[current] = [line]
        elif current:
            stages[current].append(line)
    return stages


def test_dockerfile_slim_non_root_with_healthcheck(routes):
    stages = dockerfile_stages()
    assert list(stages) == ["builder", "service-base", "service"]  # the default target is the last one
    runtime = stages["service-base"] + stages["service"]
    users = [line.split()[1] for line in runtime if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    (healthcheck,) = [line for line in runtime if line.startswith("HEALTHCHECK")]
    assert "/livez" in healthcheck and "/livez" in routes and "curl" not in healthcheck
    assert any(line.startswith("CMD") and "serve" in line for line in runtime)
    assert (
        stages["service-base"][0].split()[1] == "${PYTHON_IMAGE}"
        and "3.11-slim" in (DEPLOY / "Dockerfile").read_text()
    )
    installs = " ".join(line for stage in stages.values() for line in stage if "pip install" in line)
    assert (
        '".[serve]"' in installs
        and "train" not in installs
        and "tensorflow" not in installs.replace("import tensorflow", "")
    )
    assert any("COPY" in line and "/models/default" in line for line in stages["service"])


@pytest.mark.skipif(
    shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(), reason="nginx is not installed"
)
def test_nginx_template_passes_nginx_t(tmp_path):
    conf = render_nginx(tmp_path, 8080, [8001, 8002, 8003])
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    result = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(conf)],
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "captioner.conf").read_text()
    # Resend only what never reached a replica (refused connections) or was refused by one (502/503): never a
    # POST that may have crashed the replica it was sent to.
    directives = "\n".join(line.split("#")[0] for line in text.splitlines())
    assert "proxy_next_upstream error timeout http_502 http_503;" in directives
    assert "non_idempotent" not in directives
    # nginx drops idle upstream connections before the replicas do, so it never sends on one being closed.
    nginx_keepalive = float(re.search(r"^\s*keepalive_timeout (\d+)s;", text, re.MULTILINE).group(1))
    assert nginx_keepalive < Settings(_env_file=None).keepalive_timeout_s
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in text  # overwritten, never appended
