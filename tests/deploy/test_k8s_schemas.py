"""Every manifest in deploy/k8s/ validated against the Kubernetes OpenAPI schemas (kubernetes-validate, which ships
the schemas in its wheel: no cluster, no network), strictly: an unknown or misspelt field fails too."""

from __future__ import annotations

import copy

import pytest
from processes import REPO

yaml = pytest.importorskip("yaml", reason="PyYAML is not installed: pip install pyyaml")
kv = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed: pip install -e '.[test]'"
)

K8S = REPO / "deploy" / "k8s"
KUBERNETES = "1.37.0"  # the newest schemas kubernetes-validate ships; the manifests use only stable APIs


def manifests() -> list[tuple[str, dict]]:
    return [
        (f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc)
        for path in sorted(K8S.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc is not None
    ]


@pytest.mark.parametrize(("name", "doc"), manifests(), ids=[name for name, _ in manifests()])
def test_manifest_matches_the_kubernetes_schema(name, doc):
    kv.validate(doc, KUBERNETES, strict=True)  # raises ValidationError saying which field is wrong


def test_the_validator_rejects_what_a_cluster_would():
    deployment = next(doc for _, doc in manifests() if doc["kind"] == "Deployment")
    misspelt = copy.deepcopy(deployment)
    misspelt["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/readyz"}}
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "three"
    for broken in (misspelt, wrong_type):
        with pytest.raises(kv.ValidationError):
            kv.validate(broken, KUBERNETES, strict=True)
