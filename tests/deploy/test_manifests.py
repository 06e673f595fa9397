"""The deployment, checked statically: every kustomize overlay renders (kubectl kustomize), validates with
kubernetes-validate --strict against Kubernetes 1.30 and the newest version it knows, passes checkov but for
the checks deploy/k8s/.checkov.yaml skips (each with its reason), and holds what deploy/README.md promises
(restricted pods, migrations first, topics by the Job, autoscaling, network policies, the Ingress's routes).
The compose file validates against the compose specification. Nothing here needs a cluster or Docker.

checkov runs from .venv-tools (``make tools``; docs/decisions/0042).
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.routing import APIRoute

from shared.service import service_routers
from shared.settings import SERVICES

pytestmark = pytest.mark.deploy

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists())
BIN = Path(sys.executable).parent
CHECKOV = ROOT / ".venv-tools" / "bin" / "checkov"
WORKLOADS = ("Deployment", "Job")
CLUSTER_SCOPED = {"Namespace"}


def tool(name: str) -> str:
    found = BIN / name if (BIN / name).exists() else shutil.which(name)
    assert found, f"{name} is missing: `make install` installs it (requirements.lock)"
    return str(found)


def render(overlay: str, tmp: Path) -> str:
    """``kubectl kustomize`` of a copy of deploy/k8s whose git-ignored secret files are the examples."""
    tree = tmp / overlay / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("secrets.env", "topic-admin.env"))
    for example in (tree / "overlays" / overlay).glob("*.env.example"):
        shutil.copy(example, example.with_suffix(""))
    done = subprocess.run(
        [tool("kubectl"), "kustomize", str(tree / "overlays" / overlay)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    name = request.param
    text = render(name, tmp_path_factory.mktemp("render"))
    path = tmp_path_factory.mktemp("rendered") / f"{name}.yaml"
    path.write_text(text)
    docs = [d for d in yaml.safe_load_all(text) if d]
    kustomization = yaml.safe_load((K8S / "overlays" / name / "kustomization.yaml").read_text())
    settings = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("membership-settings")
    )
    yield {
        "name": name,
        "path": path,
        "docs": docs,
        "namespace": kustomization["namespace"],
        "tag": kustomization["images"][0]["newTag"],
        "settings": settings["data"],
    }


def of_kind(overlay: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [d for d in overlay["docs"] if d["kind"] == kind]


def pod_specs(overlay: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for d in overlay["docs"]:
        if d["kind"] in WORKLOADS:
            yield f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def test_there_are_dev_and_prod_overlays() -> None:
    assert {"dev", "prod"} <= set(OVERLAYS)
    assert not (K8S / "membership.yaml").exists()


# --- validation ---------------------------------------------------------------------------------------------


def _latest_kubernetes() -> str:
    from kubernetes_validate.utils import latest_version

    return str(latest_version())


@pytest.mark.parametrize("version", ["1.30.0", _latest_kubernetes()])
def test_every_resource_validates_strictly(overlay: dict[str, Any], version: str) -> None:
    done = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "--quiet", "-k", version, str(overlay["path"])],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # the only kinds without a schema there: KEDA's (custom resources, checked by the tests below)
    unknown = [line for line in (done.stdout + done.stderr).splitlines() if "Couldn't find schema" in line]
    assert all("keda.sh/" in line for line in unknown), unknown
    assert len(overlay["docs"]) - len(unknown) > 40  # the rest was validated


def test_the_validator_rejects_what_kubernetes_would(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n"
        "spec: {selector: {matchLabels: {a: b}}, template: {metadata: {labels: {a: b}}, "
        "spec: {containers: [{name: c, image: i, securityContext: {readOnlyRootFileSystem: true}}]}}}\n"
    )
    done = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "-k", "1.30.0", str(bad)], capture_output=True, text=True, check=False
    )
    assert done.returncode != 0  # the misspelt field would be dropped silently by a lenient check


def _checkov_config() -> dict[str, Any]:
    return dict(yaml.safe_load((K8S / ".checkov.yaml").read_text()))


def _checkov(path: Path) -> dict[str, Any]:
    assert CHECKOV.exists(), "checkov is missing: `make tools` installs it into .venv-tools (requirements-tools.lock)"
    done = subprocess.run(
        [str(CHECKOV), "--config-file", str(K8S / ".checkov.yaml"), "-f", str(path), "-o", "json", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
    )
    report = json.loads(done.stdout)
    return dict(report[0] if isinstance(report, list) else report)


def test_checkov_finds_nothing_but_the_skipped_checks(overlay: dict[str, Any]) -> None:
    report = _checkov(overlay["path"])
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert failed == []
    assert report["summary"]["passed"] > 500
    skipped = {c["check_id"] for c in report["results"].get("skipped_checks", [])}
    assert skipped <= set(_checkov_config()["skip-check"])


def test_every_skipped_check_has_its_reason_written_down() -> None:
    text = (K8S / ".checkov.yaml").read_text()
    for check in _checkov_config()["skip-check"]:
        line = next(line for line in text.splitlines() if check in line)
        assert "#" in line and len(line.split("#", 1)[1].strip()) > 20, check
    readme = (ROOT / "deploy" / "README.md").read_text()
    assert all(check in readme for check in _checkov_config()["skip-check"])


def test_checkov_would_catch_a_writable_root_filesystem(tmp_path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(render("prod", tmp_path)) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    path = tmp_path / "weakened.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    failed = {c["check_id"] for c in _checkov(path)["results"]["failed_checks"]}
    assert "CKV_K8S_22" in failed


# --- shape ----------------------------------------------------------------------------------------------------


def test_namespace_labels_and_images(overlay: dict[str, Any]) -> None:
    (namespace,) = of_kind(overlay, "Namespace")
    assert namespace["metadata"]["name"] == overlay["namespace"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for d in overlay["docs"]:
        labels = d["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/part-of") == "membership-platform", d["metadata"]["name"]
        assert labels.get("app.kubernetes.io/managed-by") == "kustomize", d["metadata"]["name"]
        if d["kind"] not in CLUSTER_SCOPED:
            assert d["metadata"]["namespace"] == overlay["namespace"], d["metadata"]["name"]
    assert overlay["tag"] not in ("", "latest")
    for where, spec in pod_specs(overlay):
        for c in containers(spec):
            image, _, tag = c["image"].rpartition(":")
            assert image.endswith("membership-platform") and tag == overlay["tag"], (where, c["image"])


def test_settings_are_production_and_secrets_come_from_ignored_files(overlay: dict[str, Any]) -> None:
    settings = overlay["settings"]
    assert settings["MEMBERSHIP_ENV"] == "production"
    assert settings["MEMBERSHIP_CREATE_TOPICS"] == "false"
    assert not any("SECRET" in k or "PASSWORD" in k or k.endswith("_KEY") for k in settings)
    secrets = {d["metadata"]["name"].rsplit("-", 1)[0]: d for d in of_kind(overlay, "Secret")}
    assert set(secrets) == {"membership-secrets", "membership-topic-admin"}
    here = K8S / "overlays" / overlay["name"]
    for env in ("secrets.env", "topic-admin.env"):
        ignored = subprocess.run(["git", "check-ignore", "-q", str(here / env)], cwd=ROOT, check=False)
        assert ignored.returncode == 0, f"{env} must be git-ignored"
        tracked = subprocess.run(["git", "ls-files", str(here / env)], cwd=ROOT, capture_output=True, text=True)
        assert tracked.stdout == "", f"{env} is committed"
        assert (here / f"{env}.example").exists()
    for where, spec in pod_specs(overlay):
        for c in containers(spec):
            assert not [e for e in c.get("env", []) if "valueFrom" not in e and "PASSWORD" in e["name"]], where
            assert "--seed-demo" not in c["command"], where


def test_pods_are_restricted(overlay: dict[str, Any]) -> None:
    for where, spec in pod_specs(overlay):
        assert spec["automountServiceAccountToken"] is False, where
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        writable = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for c in containers(spec):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, (where, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (where, c["name"])
            assert sc["capabilities"] == {"drop": ["ALL"]}, (where, c["name"])
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, (where, c["name"])
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert mounts.get("/tmp") in writable, (where, c["name"])
            assert c["resources"]["limits"]["memory"] and c["resources"]["requests"]["cpu"], (where, c["name"])
    (account,) = of_kind(overlay, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False


def _deployments(overlay: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in of_kind(overlay, "Deployment")}


def test_each_service_has_an_api_and_a_worker_with_probes_and_migrations_first(overlay: dict[str, Any]) -> None:
    deployments = _deployments(overlay)
    assert set(deployments) == {f"{s}-{r}" for s in SERVICES for r in ("api", "worker")}
    for i, service in enumerate(SERVICES, 1):
        for role, port, port_name in (("api", 8000 + i, "http"), ("worker", 9000 + i, "metrics")):
            spec = deployments[f"{service}-{role}"]["spec"]["template"]["spec"]
            (main,) = spec["containers"]
            assert main["command"] == ["python", "-m", service, role]
            assert main["ports"] == [{"name": port_name, "containerPort": port, "protocol": "TCP"}]
            env = {e["name"]: e["value"] for e in main["env"]}
            assert env[f"MEMBERSHIP_{service.upper()}_{'PORT' if role == 'api' else 'WORKER_PORT'}"] == str(port)
            assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port_name}
            assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port_name}
            # new code serves only after its schema is migrated (the migration takes an advisory lock)
            assert [c["command"] for c in spec["initContainers"]] == [["python", "-m", service, "migrate"]]
            zones = {t["topologyKey"] for t in spec["topologySpreadConstraints"]}
            assert zones == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}


def test_services_name_their_ports(overlay: dict[str, Any]) -> None:
    services = {d["metadata"]["name"]: d for d in of_kind(overlay, "Service")}
    for i, service in enumerate(SERVICES, 1):
        assert services[service]["spec"]["ports"] == [
            {"name": "http", "port": 8000 + i, "targetPort": "http", "protocol": "TCP"}
        ]
        assert services[f"{service}-worker"]["spec"]["ports"][0]["targetPort"] == "metrics"


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        if e["operator"] == "In" and labels.get(e["key"]) not in e["values"]:
            return False
    return True


def test_autoscaling_and_disruption_budgets(overlay: dict[str, Any]) -> None:
    deployments = _deployments(overlay)
    partitions = int(overlay["settings"]["MEMBERSHIP_TOPIC_PARTITIONS"])
    hpas = {d["spec"]["scaleTargetRef"]["name"]: d for d in of_kind(overlay, "HorizontalPodAutoscaler")}
    scaled = {d["spec"]["scaleTargetRef"]["name"]: d for d in of_kind(overlay, "ScaledObject")}
    assert set(hpas) == {f"{s}-api" for s in SERVICES}
    assert set(scaled) == {f"{s}-worker" for s in SERVICES}
    for hpa in hpas.values():
        assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    for name, so in scaled.items():
        service = name.removesuffix("-worker")
        (trigger,) = so["spec"]["triggers"]
        assert trigger["type"] == "kafka"
        assert trigger["metadata"]["consumerGroup"] == f"membership-{service}"  # shared.consumer's group id
        assert trigger["metadata"]["bootstrapServers"] == overlay["settings"]["MEMBERSHIP_KAFKA_BOOTSTRAP"]
        # a consumer more than the partitions would sit idle
        assert so["spec"]["maxReplicaCount"] == partitions, name
        assert 1 <= so["spec"]["minReplicaCount"] <= partitions
    for name, d in deployments.items():
        assert "replicas" not in d["spec"], f"{name}: the autoscaler owns the replica count"
    pdbs = of_kind(overlay, "PodDisruptionBudget")
    for name, d in deployments.items():
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert [p for p in pdbs if _selects(p["spec"]["selector"], labels)], f"{name} has no PodDisruptionBudget"


def test_keda_reads_the_generated_secret(overlay: dict[str, Any]) -> None:
    auths = of_kind(overlay, "TriggerAuthentication")
    secrets = {d["metadata"]["name"] for d in of_kind(overlay, "Secret")}
    for so in of_kind(overlay, "ScaledObject"):
        (trigger,) = so["spec"]["triggers"]
        sasl = trigger["metadata"]["sasl"]
        if sasl == "none":
            assert "authenticationRef" not in trigger
            continue
        assert sasl == "scram_sha512" and trigger["metadata"]["tls"] == "enable"
        (auth,) = [a for a in auths if a["metadata"]["name"] == trigger["authenticationRef"]["name"]]
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["name"] in secrets  # the hashed name of the generated Secret


def test_topics_are_made_by_a_job_named_after_the_release(overlay: dict[str, Any], tmp_path: Path) -> None:
    (job,) = of_kind(overlay, "Job")
    assert job["metadata"]["name"] == f"membership-topics-{overlay['tag']}"
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "shared.topics"]
    # what the Job would create with these settings
    env = {k: v for k, v in overlay["settings"].items() if k.startswith("MEMBERSHIP_TOPIC")}
    done = subprocess.run(
        [sys.executable, "-m", "shared.topics", "--plan"],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert len(plan) == 2 * len(SERVICES)
    for topic in plan:
        assert topic["partitions"] == int(overlay["settings"]["MEMBERSHIP_TOPIC_PARTITIONS"])
        if topic["topic"].endswith(".dlq"):
            assert int(topic["configs"]["retention.ms"]) >= 30 * 24 * 3600 * 1000
        else:
            assert "retention.ms" in topic["configs"]
        if overlay["name"] == "prod":
            assert topic["replication_factor"] == 3
            assert topic["configs"]["min.insync.replicas"] == "2"


# --- network policies -------------------------------------------------------------------------------------------


def _policies_for(overlay: dict[str, Any], labels: dict[str, str], kind: str) -> list[dict[str, Any]]:
    return [
        p
        for p in of_kind(overlay, "NetworkPolicy")
        if kind in p["spec"]["policyTypes"] and _selects(p["spec"]["podSelector"], labels)
    ]


def _egress_ports(overlay: dict[str, Any], labels: dict[str, str]) -> set[int]:
    ports: set[int] = set()
    for p in _policies_for(overlay, labels, "Egress"):
        for rule in p["spec"].get("egress", []):
            for port in rule["ports"]:
                ports.update(range(port["port"], port.get("endPort", port["port"]) + 1))
    return ports


def _ingress_namespaces(overlay: dict[str, Any], labels: dict[str, str]) -> set[str]:
    found: set[str] = set()
    for p in _policies_for(overlay, labels, "Ingress"):
        for rule in p["spec"].get("ingress", []):
            for peer in rule["from"]:
                found.add(peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"])
    return found


def test_network_policies(overlay: dict[str, Any]) -> None:
    deny = [p for p in of_kind(overlay, "NetworkPolicy") if p["spec"]["podSelector"] == {}]
    assert any(set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"} and not p["spec"].get("ingress") for p in deny)
    kafka, postgres, dns = set(range(9092, 9095)), {5432}, {53}
    for name, d in _deployments(overlay).items():
        labels = d["spec"]["template"]["metadata"]["labels"]
        egress, ingress = _egress_ports(overlay, labels), _ingress_namespaces(overlay, labels)
        if name.endswith("-api"):
            assert ingress == {"ingress-nginx", "monitoring"}, name
            assert egress == dns | postgres | kafka, name
        elif name == "notify-worker":
            assert ingress == {"monitoring"}
            assert egress == dns | postgres | kafka | {443, 587}
        else:
            assert ingress == {"monitoring"}, name
            assert egress == dns | postgres | kafka, name
    (job,) = of_kind(overlay, "Job")
    assert _egress_ports(overlay, job["spec"]["template"]["metadata"]["labels"]) == dns | kafka


# --- the Ingress ------------------------------------------------------------------------------------------------


def _routes() -> dict[str, set[str]]:
    """Every route path (parameters filled in) and the services that serve it."""
    served: dict[str, set[str]] = {}
    for service in SERVICES:
        defn = importlib.import_module(f"{service}.service").SERVICE
        for router in service_routers(defn):
            for route in router.routes:
                if isinstance(route, APIRoute):
                    path = re.sub(r"\{[^}]+\}", "x-1", route.path)
                    served.setdefault(path, set()).add(service)
    return served


def _ingress_paths(overlay: dict[str, Any], name: str) -> list[tuple[str, str]]:
    (ingress,) = [i for i in of_kind(overlay, "Ingress") if i["metadata"]["name"] == name]
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/use-regex"] == "true"
    return [
        (p["path"], p["backend"]["service"]["name"]) for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]
    ]


def _match(paths: list[tuple[str, str]], url: str) -> list[tuple[str, str]]:
    # ingress-nginx: `location ~* "^<path>"`
    return [(p, backend) for p, backend in paths if re.match("^" + p, url, re.IGNORECASE)]


def test_the_ingress_routes_every_public_route_to_its_service(overlay: dict[str, Any]) -> None:
    public = _ingress_paths(overlay, "membership-api")
    hosts = {r["host"] for i in of_kind(overlay, "Ingress") for r in i["spec"]["rules"]}
    assert len(hosts) == 1  # one host for the five APIs
    routes = _routes()
    assert len(routes) > 40
    for url, services in routes.items():
        matched = _match(public, url)
        if len(services) == 1:
            assert [b for _, b in matched] == list(services), (url, matched)
        else:  # the operations routes every service has: not public under one name (see the ops Ingress)
            assert matched == [], (url, matched)
    for internal in ("/metrics", "/healthz", "/readyz", "/docs", "/openapi.json", "/v1/dead-letters", "/v1/audit"):
        assert _match(public, internal) == [], internal


def test_the_ops_ingress_reaches_each_services_own_operations_routes(overlay: dict[str, Any]) -> None:
    ops = _ingress_paths(overlay, "membership-ops")
    (ingress,) = [i for i in of_kind(overlay, "Ingress") if i["metadata"]["name"] == "membership-ops"]
    rewrite = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/rewrite-target"]
    for url, services in _routes().items():
        for service in services:
            matched = _match(ops, f"/ops/{service}{url}")
            assert [b for _, b in matched] == [service], (service, url)
            found = re.match("^" + matched[0][0], f"/ops/{service}{url}")
            assert found and rewrite.replace("$1", found.group(1)) == url
    assert _match(ops, "/ops/points/metrics") == []


# --- images and compose -----------------------------------------------------------------------------------------


def test_the_dockerfile_builds_a_slim_runtime_stage() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.split(r"(?m)^FROM ", text)[1:]
    assert len(stages) == 2 and " AS runtime" in stages[1].splitlines()[0]
    runtime = stages[1]
    assert re.search(r"(?m)^USER 10001", runtime)
    assert re.search(r"(?m)^HEALTHCHECK .*shared\.healthcheck", runtime)
    exposed = {int(p) for line in re.findall(r"(?m)^EXPOSE (.*)$", runtime) for p in line.split()}
    assert exposed == {8000 + i for i in range(1, 6)} | {9000 + i for i in range(1, 6)}
    assert "pip install" not in runtime  # everything comes built from the first stage
    build = stages[0]
    assert "--constraint requirements.lock ." in build  # the runtime dependencies only, no extras
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[0 if ignored[0] == "*" else ignored.index("*")] == "*"
    assert "!tests/" not in ignored and "services/*/tests" in ignored


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def test_compose_validates_against_the_compose_specification() -> None:
    done = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(ROOT / "docker-compose.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_runs_in_production_with_healthchecks_and_observability() -> None:
    services = _compose()["services"]
    apps = {n: s for n, s in services.items() if s.get("command", [""])[0] == "python"}
    long_running = {n for n, s in apps.items() if s["command"][-1] in ("api", "worker")}
    assert long_running == {f"{s}-{r}" for s in SERVICES for r in ("api", "worker")}
    for name, service in apps.items():
        assert service["environment"]["MEMBERSHIP_ENV"] == "production", name
        assert "--seed-demo" not in service["command"], name
        assert ":latest" not in service["image"], name
        if name in long_running:
            assert service["healthcheck"]["test"] == ["CMD", "python", "-m", "shared.healthcheck"], name
            assert service["depends_on"]["topics"]["condition"] == "service_completed_successfully", name
    assert apps["topics"]["command"] == ["python", "-m", "shared.topics"]
    for name in ("postgres", "kafka", "prometheus", "grafana"):
        assert "healthcheck" in services[name], name
    prometheus = " ".join(services["prometheus"]["volumes"])
    assert "./deploy/observability/prometheus.yml:/etc/prometheus/prometheus.yml" in prometheus
    assert "./deploy/observability/alerts.yml:/etc/prometheus/alerts.yml" in prometheus
    grafana = " ".join(services["grafana"]["volumes"])
    assert "./deploy/observability/dashboards:/var/lib/grafana/dashboards" in grafana
    assert "./deploy/observability/grafana/provisioning:/etc/grafana/provisioning" in grafana


def test_prometheus_scrapes_every_api_and_worker_and_loads_the_rules() -> None:
    config = yaml.safe_load((ROOT / "deploy/observability/prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    ports = {n: s for n, s in _compose()["services"].items()}
    for i, service in enumerate(SERVICES, 1):
        assert f"{service}-api:{8000 + i}" in targets
        assert f"{service}-worker:{9000 + i}" in targets
        assert ports[f"{service}-worker"]["environment"][f"MEMBERSHIP_{service.upper()}_WORKER_PORT"] == str(9000 + i)
    provider = yaml.safe_load(
        (ROOT / "deploy/observability/grafana/provisioning/dashboards/membership.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    source = yaml.safe_load((ROOT / "deploy/observability/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
