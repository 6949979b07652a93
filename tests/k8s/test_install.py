"""`kubectl apply -k` of k8s/ (the test overlay: the local image, one reflector) on a real
cluster: the rollouts, the init container's install, the probes, the reflector's BGP session to
the node it found from its Node object, the API through its Service, and RBAC against a real
authorizer."""
from __future__ import annotations

import json

import pytest

from tests.k8s.conftest import NAMESPACE, wait_for

pytestmark = pytest.mark.k8s
SERVICE_ACCOUNTS = ("megalos-agent", "megalos-reflector")


def pods(kube, name: str) -> list[dict]:
    return kube.get("-n", NAMESPACE, "pods", "-l", f"app.kubernetes.io/name={name}")["items"]


def test_the_init_container_installed_the_static_shim(megalos):
    (agent,) = pods(megalos, "megalos-agent")
    (init,) = agent["status"]["initContainerStatuses"]
    assert init["state"]["terminated"]["exitCode"] == 0
    assert megalos.node("test", "-x", "/opt/cni/bin/megalos").returncode == 0
    # The host runs it (not the image): it answers VERSION without the agent or a python3.
    version = megalos.node("sh", "-c", "echo '{\"cniVersion\":\"1.1.0\",\"name\":\"n\","
                           "\"type\":\"megalos\"}' | CNI_COMMAND=VERSION /opt/cni/bin/megalos")
    assert "1.1.0" in json.loads(version.stdout)["supportedVersions"]


def test_the_probes_pass_and_nothing_restarted(megalos):
    for name in SERVICE_ACCOUNTS:
        for pod in pods(megalos, name):
            conditions = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
            assert conditions["Ready"] == "True", (name, conditions)
            for status in pod["status"]["containerStatuses"]:
                assert status["ready"] and status["started"], (name, status["name"])
                assert status["restartCount"] == 0, (name, status["name"])


def test_the_reflector_peers_with_the_node_it_found(megalos):
    """The reflector read the Node object (--peers-from-k8s); the agent found the reflector from
    the headless Service's EndpointSlices; the session between them is Established."""
    node_ip, node_name = megalos.env["NODE_IP"], megalos.env["NODE_NAME"]

    def established():
        peers = megalos.api_get("/api/v1/nodes")["nodes"]
        return [p for p in peers if p["address"] == node_ip and p["state"] == "Established"]

    (peer,) = wait_for("the reflector's BGP session with the node", established, timeout=90)
    assert peer["name"] == node_name


def test_the_api_answers_through_its_service(megalos):
    health = megalos.api_get("/readyz")
    assert health
    openapi = megalos.api_get("/api/v1/openapi.json")
    assert openapi["info"]["title"]
    assert "vnis" in megalos.api_get("/api/v1/vnis")


def test_nothing_was_refused_by_the_authorizer(megalos):
    """No request of a Megalos ServiceAccount got a 403 (the API server's audit log), and no
    container of theirs logged one."""
    prefix = f"system:serviceaccount:{NAMESPACE}:"
    refused = []
    with open(f"{megalos.env['STATE']}/logs/audit.log") as log:
        for line in log:
            event = json.loads(line)
            user = event.get("user", {}).get("username", "")
            if user.startswith(prefix) and event.get("responseStatus", {}).get("code") == 403:
                refused.append((user, event["verb"], event["requestURI"]))
    assert not refused
    for name in SERVICE_ACCOUNTS:
        for pod in pods(megalos, name):
            for container in pod["spec"]["containers"]:
                logs = megalos.kubectl("-n", NAMESPACE, "logs", pod["metadata"]["name"],
                                       "-c", container["name"]).stdout
                assert "403" not in logs and "Forbidden" not in logs, (name, container["name"])


# (service account, verb, resource, allowed): what each must be able to do, and what it must not.
CAN_I = [
    ("megalos-reflector", "list", "nodes", True),
    ("megalos-reflector", "watch", "pods", True),
    ("megalos-reflector", "list", "network-attachment-definitions.k8s.cni.cncf.io", True),
    ("megalos-reflector", "update", "nodes", False),
    ("megalos-reflector", "patch", "nodes", False),
    ("megalos-reflector", "get", "secrets", False),
    ("megalos-reflector", "delete", "pods", False),
    ("megalos-reflector", "create", "pods", False),
    ("megalos-agent", "watch", "endpointslices.discovery.k8s.io", True),
    ("megalos-agent", "get", "endpoints", True),
    ("megalos-agent", "list", "nodes", False),
    ("megalos-agent", "update", "nodes", False),
    ("megalos-agent", "get", "secrets", False),
    ("megalos-agent", "delete", "pods", False),
    ("megalos-agent", "list", "pods", False),
]


@pytest.mark.parametrize("account, verb, resource, allowed", CAN_I)
def test_rbac_as_each_service_account(megalos, account, verb, resource, allowed):
    answer = megalos.kubectl("auth", "can-i", verb, resource, "-n", NAMESPACE,
                             f"--as=system:serviceaccount:{NAMESPACE}:{account}", check=False)
    assert answer.stdout.strip() == ("yes" if allowed else "no"), answer
