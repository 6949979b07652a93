"""The real cluster: scripts/cluster.sh's one node (etcd, kube-apiserver, controller-manager,
scheduler, kubelet, kube-proxy, containerd, Multus), Megalos installed on it with `kubectl apply
-k` from k8s/, and the helpers the tests use to look at it.

The tests are marked `k8s` and left out of the default run (`make test`); `make test-k8s` runs
them. A cluster already up is used and left up; otherwise the session starts one and removes it
at the end, whatever happened.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "scripts" / "cluster.sh"
K8S = ROOT / "k8s"
NAMESPACE = "megalos"
API_TOKEN = secrets.token_hex(16)  # the Secret megalos-api the overlay makes: reads need it
TIMINGS: dict[str, float] = {}  # what the session measured, printed at its end


def cluster_sh(*args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLUSTER), *args], capture_output=True, text=True, check=check,
                          timeout=timeout)


def wait_for(what: str, predicate, timeout: float = 120, interval: float = 1):
    """predicate() until it returns something true; fails naming `what` (and the last error)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (subprocess.CalledProcessError, ValueError, KeyError) as exc:
            last = exc
        time.sleep(interval)
    detail = f": {getattr(last, 'stderr', '') or last}" if last else ""
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}{detail}")


@dataclass
class Kube:
    """kubectl against the cluster, and commands run on its node (its network namespace)."""

    env: dict[str, str]
    created: list[str] = field(default_factory=list)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([self.env["KUBECTL"], "--kubeconfig", self.env["KUBECONFIG"], *args],
                              input=input, capture_output=True, text=True, check=check,
                              timeout=timeout)

    def get(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", "-o", "json", *args).stdout)

    def apply(self, *documents: dict) -> None:
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(documents))

    def node(self, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """A command on the node: its network and mount namespaces, as the host's root."""
        return subprocess.run([str(CLUSTER), "exec", *argv], capture_output=True, text=True,
                              check=check, timeout=timeout)

    def node_links(self) -> list[dict]:
        return json.loads(self.node("ip", "-j", "link", "show").stdout)

    def exec(self, namespace: str, pod: str, *argv: str, check: bool = True,
             timeout: float = 60) -> subprocess.CompletedProcess:
        return self.kubectl("-n", namespace, "exec", pod, "--", *argv, check=check,
                            timeout=timeout)

    def namespace(self, prefix: str) -> str:
        """A namespace of its own for a test (deleted at the end of the session, or by the test)."""
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.kubectl("create", "namespace", name)
        self.created.append(name)
        return name

    def pod_ready(self, namespace: str, name: str) -> bool:
        pod = self.get("-n", namespace, "pod", name)
        return any(c["type"] == "Ready" and c["status"] == "True"
                   for c in pod.get("status", {}).get("conditions", []))

    def api_get(self, path: str) -> dict:
        """GET on the Megalos API through its Service's cluster IP (kube-proxy), from the node,
        with the token (on stdin: never in a process list)."""
        ip = self.get("-n", NAMESPACE, "service", "megalos-api")["spec"]["clusterIP"]
        code = ("import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
                "urllib.request.Request(sys.argv[1], headers={'Authorization': 'Bearer ' + "
                "sys.stdin.readline().strip()}), timeout=10).read().decode())")
        return json.loads(subprocess.run(
            [str(CLUSTER), "exec", "python3", "-c", code, f"http://{ip}:8080{path}"],
            input=API_TOKEN + "\n", capture_output=True, text=True, check=True, timeout=60).stdout)


@pytest.fixture(scope="session")
def kube():
    if os.geteuid() != 0:
        pytest.skip("the cluster needs root")
    started = cluster_sh("status", check=False).returncode != 0
    if started:
        t0 = time.monotonic()
        up = cluster_sh("up", check=False, timeout=3600)
        if up.returncode != 0:
            pytest.fail(f"scripts/cluster.sh up failed:\n{up.stderr[-4000:]}")
        TIMINGS["cluster up (s)"] = time.monotonic() - t0
    env = dict(line.split("=", 1) for line in cluster_sh("env").stdout.split())
    k = Kube(env)
    try:
        yield k
    finally:
        for name in k.created:
            k.kubectl("delete", "namespace", name, "--wait=false", check=False)
        if started:
            down = cluster_sh("down", check=False)
            assert down.returncode == 0, f"scripts/cluster.sh down failed:\n{down.stderr}"


def overlay(tmp: Path, image: str) -> Path:
    """The test overlay of k8s/: the locally built image, one reflector (one node cannot hold
    two: anti-affinity) and the API's token Secret, as docs/install.md has the operator make it.
    Nothing else changes."""
    name, _, tag = image.rpartition(":")
    directory = tmp / "overlay"
    directory.mkdir()
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(K8S, directory)],
        "images": [{"name": "ghcr.io/megalos/megalos", "newName": name, "newTag": tag}],
        "replicas": [{"name": "megalos-reflector", "count": 1}],
        "secretGenerator": [{"name": "megalos-api", "namespace": NAMESPACE,
                             "literals": [f"token={API_TOKEN}"]}],
        "generatorOptions": {"disableNameSuffixHash": True},
    }
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return directory


@pytest.fixture(scope="session")
def megalos(kube):
    """Megalos installed with `kubectl apply -k` (the overlay above); both rollouts complete."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        kube.kubectl("apply", "-k", str(overlay(Path(tmp), kube.env["MEGALOS_IMAGE"])))
    for kind in ("daemonset/megalos-agent", "deployment/megalos-reflector"):
        rollout = kube.kubectl("-n", NAMESPACE, "rollout", "status", kind, "--timeout=300s",
                               check=False, timeout=330)
        if rollout.returncode != 0:
            pytest.fail(f"{kind} did not roll out: {rollout.stderr}\n{describe(kube)}")
    TIMINGS["kubectl apply -k -> both rollouts Ready (s)"] = time.monotonic() - t0
    return kube


@pytest.fixture(scope="session")
def timings() -> dict[str, float]:
    """Figures a test measured, printed at the end of the session (docs/benchmarks.md)."""
    return TIMINGS


def describe(kube: Kube) -> str:
    return kube.kubectl("-n", NAMESPACE, "describe", "pods", check=False).stdout[-6000:]


def pytest_terminal_summary(terminalreporter):
    for what, seconds in TIMINGS.items():
        terminalreporter.write_line(f"k8s timing: {what}: {seconds:.1f}")
