"""deploy/k8s checked without a cluster: every manifest validates against the Kubernetes schemas
kubernetes-validate ships, and commands, ports, probes, settings and secrets agree with the code
and with docker-compose.yml."""

from __future__ import annotations

import inspect
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from paylayer.cli import build_parser
from paylayer.grpc_server import run_main
from paylayer.ops.migrations import SERVICES
from paylayer.ops.services import GRPC_SERVICES, MODULES
from paylayer.settings import DEFAULT_ADDRS, DEFAULT_CATALOGUE_PATH, REPO_ROOT, Settings
from tests.test_compose import OUT_OF_POOL_CONNECTIONS

K8S_DIR = REPO_ROOT / "deploy" / "k8s"
BASE_DIR = K8S_DIR / "base"
PROCESSES = tuple(MODULES)
HTTP_PROCESSES = tuple(name for name in MODULES if name not in GRPC_SERVICES)
# The oldest Kubernetes the manifests promise to work on, and the newest the package knows.
KUBERNETES_VERSIONS = ("1.30.0", f"{kubernetes_validate.latest_version()}.0")
METRICS_PORTS = {
    "gateway": 9050,
    "payments": 9051,
    "entitlements": 9052,
    "accounts": 9053,
    "console": 9054,
}
# The processes that load the catalogue (the gateway never does).
CATALOGUE_READERS = (*GRPC_SERVICES, "console")
SCALED_ON_CPU = {"gateway", "entitlements"}


def _port(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def _load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


@pytest.fixture(scope="module")
def kustomization() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((BASE_DIR / "kustomization.yaml").read_text())
    return loaded


@pytest.fixture(scope="module")
def manifests(kustomization: dict[str, Any]) -> list[dict[str, Any]]:
    return [doc for name in kustomization["resources"] for doc in _load_documents(BASE_DIR / name)]


def _named(manifests: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in manifests if doc["kind"] == kind}


@pytest.fixture(scope="module")
def deployments(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return _named(manifests, "Deployment")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    return loaded


def _pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = _pod_spec(deployment)["containers"]
    return dict(container)


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def _literal_env(container: dict[str, Any]) -> dict[str, str]:
    return {name: entry["value"] for name, entry in _env(container).items() if "value" in entry}


def _secret_refs(node: Any) -> Iterator[dict[str, Any]]:
    """Every secretKeyRef, wherever it sits in a manifest."""
    if isinstance(node, dict):
        if "secretKeyRef" in node:
            yield node["secretKeyRef"]
        for value in node.values():
            yield from _secret_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _secret_refs(item)


def _documented_secrets() -> set[tuple[str, str]]:
    """(secret, key) rows of the table in deploy/k8s/README.md."""
    readme = (K8S_DIR / "README.md").read_text()
    return set(re.findall(r"^\| `([a-z0-9-]+)` \| `([A-Z_]+)` \|", readme, re.MULTILINE))


def _settings_read_from_env() -> set[str]:
    return Settings.variables()


def _required_settings(name: str) -> set[str]:
    """What the process refuses to start without, as its own code says."""
    if name in HTTP_PROCESSES:
        source = (REPO_ROOT / name / "__main__.py").read_text()
        call = re.search(r"\.require\(([^)]*)\)", source)
        assert call is not None
        return set(re.findall(r'"([A-Z_]+)"', call.group(1)))
    main = (REPO_ROOT / MODULES[name] / "__main__.py").read_text()
    given = re.search(r"required=\(([^)]*)\)", main)
    if given is not None:
        return set(re.findall(r'"([A-Z_]+)"', given.group(1)))
    return set(inspect.signature(run_main).parameters["required"].default)


# Files and schemas


def test_every_file_the_kustomization_names_exists_and_parses(
    kustomization: dict[str, Any],
) -> None:
    for name in kustomization["resources"]:
        documents = _load_documents(BASE_DIR / name)
        assert documents, f"{name} holds no manifest"
        for doc in documents:
            assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), name
    generated = [f for gen in kustomization.get("configMapGenerator", []) for f in gen["files"]]
    assert generated
    for name in generated:
        assert (BASE_DIR / name).is_file(), name
    listed = {*kustomization["resources"], *generated, "kustomization.yaml"}
    stray = {path.name for path in BASE_DIR.glob("*.yaml")} - listed
    assert not stray, f"manifests the kustomization never applies: {stray}"


def test_the_kustomization_puts_everything_in_one_namespace_with_common_labels(
    kustomization: dict[str, Any], manifests: list[dict[str, Any]]
) -> None:
    assert kustomization["namespace"] == "paylayer"
    assert _named(manifests, "Namespace").keys() == {"paylayer"}
    pairs = [entry["pairs"] for entry in kustomization["labels"]]
    assert {"app.kubernetes.io/part-of": "paylayer"} in pairs
    assert {image["name"] for image in kustomization["images"]} == {"paylayer"}
    for workload in [*_named(manifests, "Deployment").values(), *_named(manifests, "Job").values()]:
        for container in [
            *_pod_spec(workload).get("initContainers", []),
            *_pod_spec(workload)["containers"],
        ]:
            assert container["image"] == "paylayer", container["name"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schema(
    manifests: list[dict[str, Any]], version: str
) -> None:
    problems = []
    for doc in manifests:
        try:
            # strict: an unknown or misspelt field is an error, not silently dropped.
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = "/".join(str(part) for part in error.absolute_path)
            problems.append(f"{doc['kind']}/{doc['metadata']['name']} {where}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            problems.append(error.message)
    assert not problems, "\n".join(problems)


def test_the_catalogue_copy_is_the_repository_catalogue() -> None:
    assert (BASE_DIR / "catalogue.yaml").read_text() == (DEFAULT_CATALOGUE_PATH).read_text()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) not installed")
def test_the_kustomize_build_renders_valid_manifests_in_the_namespace() -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(BASE_DIR)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    documents = [doc for doc in yaml.safe_load_all(rendered) if doc]
    (catalogue,) = [d for d in documents if d["kind"] == "ConfigMap"]
    assert yaml.safe_load(catalogue["data"]["catalogue.yaml"])["skus"]
    for doc in documents:
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[0], strict=True)
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "paylayer"
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "paylayer"
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] in CATALOGUE_READERS:
            names = {v["configMap"]["name"] for v in _pod_spec(doc)["volumes"] if "configMap" in v}
            # The generated name carries a content hash; references must follow it.
            assert names == {catalogue["metadata"]["name"]}


# Deployments: what runs, where it listens, how it is probed


def test_there_is_one_deployment_per_process(deployments: dict[str, dict[str, Any]]) -> None:
    assert set(deployments) == set(PROCESSES)


@pytest.mark.parametrize("name", PROCESSES)
def test_each_deployment_runs_the_compose_command(
    deployments: dict[str, dict[str, Any]], compose: dict[str, Any], name: str
) -> None:
    command = _container(deployments[name])["command"]
    assert command == compose["services"][name]["command"]
    assert command == ["python", "-m", MODULES[name]]


@pytest.mark.parametrize("name", PROCESSES)
def test_ports_and_addresses_agree_with_the_default_addresses(
    deployments: dict[str, dict[str, Any]], manifests: list[dict[str, Any]], name: str
) -> None:
    port = _port(DEFAULT_ADDRS[name])
    container = _container(deployments[name])
    env = _literal_env(container)
    assert env["LISTEN_ADDR"] == f"0.0.0.0:{port}"
    assert port in {p["containerPort"] for p in container["ports"]}
    service = _named(manifests, "Service")[name]
    assert port in {p["port"] for p in service["spec"]["ports"]}
    for other in GRPC_SERVICES:
        if f"{other.upper()}_ADDR" in env:
            # The short Service name: resolved in the pods' own namespace.
            assert env[f"{other.upper()}_ADDR"] == f"{other}:{_port(DEFAULT_ADDRS[other])}"


@pytest.mark.parametrize("name", GRPC_SERVICES)
def test_grpc_services_are_probed_on_grpc_health_at_their_port(
    deployments: dict[str, dict[str, Any]], name: str
) -> None:
    container = _container(deployments[name])
    port = _port(DEFAULT_ADDRS[name])
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == port, probe


@pytest.mark.parametrize("name", HTTP_PROCESSES)
def test_http_processes_are_probed_on_healthz_and_readyz(
    deployments: dict[str, dict[str, Any]], name: str
) -> None:
    container = _container(deployments[name])
    port = _port(DEFAULT_ADDRS[name])
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}


@pytest.mark.parametrize("name", PROCESSES)
def test_each_deployment_rolls_without_losing_capacity_and_within_its_resources(
    deployments: dict[str, dict[str, Any]], name: str
) -> None:
    deployment = deployments[name]
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    resources = _container(deployment)["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert {"cpu", "memory"} <= resources["limits"].keys()


@pytest.mark.parametrize("name", PROCESSES)
def test_the_pod_outlives_the_services_own_shutdown_grace(
    deployments: dict[str, dict[str, Any]], name: str
) -> None:
    pod = _pod_spec(deployments[name])
    container = _container(deployments[name])
    grace = float(_literal_env(container)["SHUTDOWN_GRACE_SECONDS"])
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    pause = float(pre_stop[1]) if pre_stop else 0.0
    assert pod["terminationGracePeriodSeconds"] > grace + pause


@pytest.mark.parametrize("name", PROCESSES)
def test_each_pod_runs_as_a_numeric_non_root_user_on_a_read_only_root(
    deployments: dict[str, dict[str, Any]], name: str
) -> None:
    pod = _pod_spec(deployments[name])
    # The image's USER is a name; runAsNonRoot alone cannot be proven and the pod would not start.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    container = _container(deployments[name])
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


@pytest.mark.parametrize("name", PROCESSES)
def test_each_deployment_has_a_disruption_budget_selecting_its_pods(
    deployments: dict[str, dict[str, Any]], manifests: list[dict[str, Any]], name: str
) -> None:
    pod_labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
    budgets = [
        pdb
        for pdb in _named(manifests, "PodDisruptionBudget").values()
        if pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    ]
    assert len(budgets) == 1
    assert budgets[0]["spec"]["minAvailable"] == 1


@pytest.mark.parametrize("name", PROCESSES)
def test_every_variable_set_is_read_by_the_code_and_every_required_one_is_set(
    deployments: dict[str, dict[str, Any]], name: str
) -> None:
    env = _env(_container(deployments[name]))
    unknown = set(env) - _settings_read_from_env()
    assert not unknown, f"{name} sets variables the code never reads: {unknown}"
    missing = _required_settings(name) - set(env)
    assert not missing, f"{name} would refuse to start without {missing}"


@pytest.mark.parametrize("name", PROCESSES)
def test_each_process_exposes_metrics_on_its_own_port(
    deployments: dict[str, dict[str, Any]], name: str
) -> None:
    port = METRICS_PORTS[name]
    container = _container(deployments[name])
    assert _literal_env(container)["METRICS_ADDR"] == f"0.0.0.0:{port}"
    assert {"name": "metrics", "containerPort": port} in container["ports"]
    annotations = deployments[name]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)


def test_the_gateway_is_not_scraped_on_its_public_port(
    deployments: dict[str, dict[str, Any]], manifests: list[dict[str, Any]]
) -> None:
    annotations = deployments["gateway"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] != str(_port(DEFAULT_ADDRS["gateway"]))
    assert annotations["prometheus.io/path"] == "/metrics"
    # The gateway's Service (what an Ingress points at) carries the webhook port only.
    service = _named(manifests, "Service")["gateway"]
    assert [p["port"] for p in service["spec"]["ports"]] == [_port(DEFAULT_ADDRS["gateway"])]


# Network policies: closed by default

# Who may open a connection to each gRPC port, by the callers' pod names.
GRPC_CALLERS = {
    "payments": {"gateway"},
    "accounts": {"payments"},
    "entitlements": {"payments", "accounts"},
}
CALLER_LABEL = "paylayer.io/caller"


def _ingress_to(
    manifests: list[dict[str, Any]], name: str, port: int
) -> list[list[dict[str, Any]] | None]:
    """The `from` lists (None: from anywhere) of every rule letting traffic to `name`:`port`."""
    pod_labels = {"app.kubernetes.io/name": name}
    rules: list[list[dict[str, Any]] | None] = []
    for policy in _named(manifests, "NetworkPolicy").values():
        selected = policy["spec"]["podSelector"].get("matchLabels", {})
        if not selected.items() <= pod_labels.items():
            continue
        assert "Ingress" in policy["spec"]["policyTypes"]
        for rule in policy["spec"].get("ingress", []):
            ports = {p["port"] for p in rule.get("ports", [])}
            if not ports or port in ports:
                rules.append(rule.get("from"))
    return rules


def test_every_pod_is_closed_to_ingress_unless_a_policy_lets_it_in(
    manifests: list[dict[str, Any]],
) -> None:
    policies = _named(manifests, "NetworkPolicy")
    deny = [
        p
        for p in policies.values()
        if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")
    ]
    assert deny and deny[0]["spec"]["policyTypes"] == ["Ingress"]


@pytest.mark.parametrize("name", GRPC_SERVICES)
def test_a_grpc_port_takes_only_its_callers_and_pods_or_namespaces_labelled_as_callers(
    manifests: list[dict[str, Any]], name: str
) -> None:
    rules = _ingress_to(manifests, name, _port(DEFAULT_ADDRS[name]))
    assert rules and all(r is not None for r in rules), "open to anyone"
    peers = [peer for rule in rules for peer in rule or []]
    pods = set()
    for peer in peers:
        assert "ipBlock" not in peer
        selector = peer.get("podSelector") or peer.get("namespaceSelector") or {}
        labels = selector.get("matchLabels", {})
        expressions = selector.get("matchExpressions", [])
        if "app.kubernetes.io/name" in labels:
            assert set(peer) == {"podSelector"}
            pods.add(labels["app.kubernetes.io/name"])
        else:
            # Anyone else must carry the caller label (a namespace or a pod).
            assert expressions == [{"key": CALLER_LABEL, "operator": "Exists"}], peer
    assert pods == GRPC_CALLERS[name]


def test_only_the_gateways_webhook_port_is_open_to_anyone(manifests: list[dict[str, Any]]) -> None:
    for name in PROCESSES:
        for port in {_port(DEFAULT_ADDRS[name]), METRICS_PORTS[name]}:
            open_to_all = None in _ingress_to(manifests, name, port)
            assert open_to_all == (name == "gateway" and port == 8080), (name, port)


# Connections: the shipped replica counts stay under PostgreSQL's default max_connections.

POSTGRES_MAX_CONNECTIONS = 100
POSTGRES_RESERVED = 3  # superuser_reserved_connections
# Each one's LISTEN connection, outside the pool (checked against the code in test_compose).
LISTEN_CONNECTIONS = OUT_OF_POOL_CONNECTIONS


def test_the_most_replicas_times_their_pools_fit_in_postgres_connections(
    deployments: dict[str, dict[str, Any]], manifests: list[dict[str, Any]]
) -> None:
    autoscalers = {
        h["spec"]["scaleTargetRef"]["name"]: h["spec"]["maxReplicas"]
        for h in _named(manifests, "HorizontalPodAutoscaler").values()
    }
    total = 1  # the migration Job, one connection at a time
    for name in GRPC_SERVICES:
        deployment = deployments[name]
        replicas = autoscalers.get(name, deployment["spec"]["replicas"])
        surge = deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
        pool = int(_literal_env(_container(deployment))["DATABASE_POOL_SIZE"])
        total += (replicas + surge) * (pool + LISTEN_CONNECTIONS.get(name, 0))
    assert total <= POSTGRES_MAX_CONNECTIONS - POSTGRES_RESERVED, total
    # The budget the README states is the one shipped.
    assert f"Job) = {total}," in (REPO_ROOT / "deploy/k8s/README.md").read_text()


@pytest.mark.parametrize("name", CATALOGUE_READERS)
def test_the_catalogue_config_map_is_mounted_where_catalogue_path_points(
    deployments: dict[str, dict[str, Any]], kustomization: dict[str, Any], name: str
) -> None:
    container = _container(deployments[name])
    catalogue_path = Path(_literal_env(container)["CATALOGUE_PATH"])
    (generator,) = kustomization["configMapGenerator"]
    assert catalogue_path.name in generator["files"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {
        v["name"]: v["configMap"]["name"]
        for v in _pod_spec(deployments[name])["volumes"]
        if "configMap" in v
    }
    assert [mounts[v] for v, cm in volumes.items() if cm == generator["name"]] == [
        str(catalogue_path.parent)
    ]


# Secrets


def test_no_secret_value_is_kept_in_the_repository() -> None:
    for path in [*K8S_DIR.rglob("*.yaml"), *K8S_DIR.rglob("*.yml")]:
        for doc in _load_documents(path):
            if isinstance(doc, dict) and doc.get("kind") == "Secret":
                assert not doc.get("data") and not doc.get("stringData"), path
            if isinstance(doc, dict) and doc.get("kind") == "Kustomization":
                assert "secretGenerator" not in doc, path
        if path.name == "kustomization.yaml":
            assert "secretGenerator" not in yaml.safe_load(path.read_text()), path


def test_every_secret_reference_is_documented_and_every_documented_secret_is_used(
    manifests: list[dict[str, Any]],
) -> None:
    referenced = {(ref["name"], ref["key"]) for ref in _secret_refs(manifests)}
    documented = _documented_secrets()
    assert referenced - documented == set(), "referenced but not in deploy/k8s/README.md"
    assert documented - referenced == set(), "documented but never referenced"


@pytest.mark.parametrize("name", PROCESSES)
def test_secret_settings_come_from_secrets_never_from_literals(
    deployments: dict[str, dict[str, Any]], name: str
) -> None:
    env = _env(_container(deployments[name]))
    secret_names = {"DATABASE_URL", "INTERNAL_TOKEN", "STRIPE_WEBHOOK_SECRETS"}
    secret_names |= {"STRIPE_API_KEY", "TELEGRAM_WEBHOOK_SECRET", "TELEGRAM_BOT_TOKEN"}
    for variable in secret_names & set(env):
        assert "secretKeyRef" in env[variable].get("valueFrom", {}), variable
    if "DATABASE_URL" in env:
        # Its own role: a service can reach no schema but its own.
        assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == f"paylayer-{name}"


def test_the_migration_job_migrates_each_schema_with_its_own_role(
    manifests: list[dict[str, Any]],
) -> None:
    (job,) = _named(manifests, "Job").values()
    assert job["spec"]["backoffLimit"] >= 1
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    pod = _pod_spec(job)
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    migrated = []
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        command = container["command"]
        args = build_parser().parse_args(command[1:])
        assert command[0] == "paylayer" and args.command == "migrate"
        (service,) = args.services
        ref = _env(container)["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == f"paylayer-{service}"
        assert set(_env(container)) == {"DATABASE_URL"}
        migrated.append(service)
    assert sorted(migrated) == sorted(SERVICES)


# Services and autoscaling


@pytest.mark.parametrize("name", PROCESSES)
def test_each_service_selects_its_deployments_pods(
    deployments: dict[str, dict[str, Any]], manifests: list[dict[str, Any]], name: str
) -> None:
    service = _named(manifests, "Service")[name]
    pod_labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


@pytest.mark.parametrize("name", GRPC_SERVICES)
def test_grpc_services_are_headless_so_clients_see_every_replica(
    manifests: list[dict[str, Any]], name: str
) -> None:
    assert _named(manifests, "Service")[name]["spec"].get("clusterIP") == "None"


def test_autoscalers_scale_the_gateway_and_entitlements_on_cpu(
    manifests: list[dict[str, Any]], deployments: dict[str, dict[str, Any]]
) -> None:
    autoscalers = _named(manifests, "HorizontalPodAutoscaler").values()
    assert {hpa["spec"]["scaleTargetRef"]["name"] for hpa in autoscalers} == SCALED_ON_CPU
    for hpa in autoscalers:
        assert hpa["apiVersion"] == "autoscaling/v2"
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["name"] in deployments
        assert hpa["spec"]["minReplicas"] >= 2
        assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
