"""Multus calls the plugin: pods selecting a Kathara-style NetworkAttachmentDefinition (built by
Kathara's own code) with a fixed MAC get their `net0` from /opt/cni/bin/megalos through the
real Multus thin plugin, reach each other over it, and leave nothing behind when deleted."""
from __future__ import annotations

import json

import pytest

from cni import naming
from lab.kathara import lab_nads
from tests.k8s.conftest import wait_for

pytestmark = pytest.mark.k8s
MACS = {"p1": "02:6b:38:00:00:01", "p2": "02:6b:38:00:00:02"}
ADDRESSES = {"p1": "198.19.100.1", "p2": "198.19.100.2"}  # on the LAN only, inside the pods


def nad_object(nad, namespace: str) -> dict:
    return {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": nad.name, "namespace": namespace,
                         "labels": {"name": nad.link, "app": "kathara"}},
            "spec": {"config": nad.raw_config}}


def device_pod(kube, name: str, namespace: str, selection: list[dict]) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace,
                         "annotations": {"k8s.v1.cni.cncf.io/networks": json.dumps(selection)}},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                "name": "device", "image": kube.env["DEVICE_IMAGE"], "imagePullPolicy": "Never",
                "command": ["sleep", "infinity"],
                "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}]}}


def megalos_links(kube) -> set[str]:
    return {link["ifname"] for link in kube.node_links() if link["ifname"].startswith("mg")}


def test_a_multus_selection_with_a_mac_gets_net0_and_reaches_a_second_pod(megalos):
    kube = megalos
    namespace = kube.namespace("mk8s-multus")
    _, nads = lab_nads({"lan_a": ["p1", "p2"]}, lab_name=namespace)
    nad = nads["lan_a"]
    vni = nad.config["vxlanId"]
    kube.apply(nad_object(nad, namespace))
    for pod, mac in MACS.items():
        selection = [{"name": nad.name, "namespace": namespace, "interface": "net0",
                      "kathara.link": nad.link, "mac": mac}]
        kube.apply(device_pod(kube, pod, namespace, selection))
    for pod in MACS:
        wait_for(f"pod {pod} Ready", lambda pod=pod: kube.pod_ready(namespace, pod), timeout=180)

    for pod, mac in MACS.items():
        (link,) = json.loads(kube.exec(namespace, pod, "ip", "-j", "link", "show", "net0").stdout)
        assert link["address"] == mac
        # Multus's network-status names the interface it got from us, with that MAC.
        status = json.loads(kube.get("-n", namespace, "pod", pod)["metadata"]["annotations"]
                            ["k8s.v1.cni.cncf.io/network-status"])
        ours = [s for s in status if s.get("interface") == "net0"]
        assert ours and ours[0]["mac"] == mac and ours[0]["name"] == f"{namespace}/{nad.name}"
        kube.exec(namespace, pod, "ip", "addr", "add", f"{ADDRESSES[pod]}/24", "dev", "net0")
    assert {naming.vtep_name(vni), naming.bridge_name(vni)} <= megalos_links(kube)

    ping = kube.exec(namespace, "p2", "ping", "-c", "3", "-W", "2", ADDRESSES["p1"], check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr

    # The node's agent advertised both MACs; the reflector holds them under the VNI.
    def reflected():
        table = kube.api_get(f"/api/v1/vnis/{vni}")
        return {row["mac"] for row in table["macs"]} >= set(MACS.values())

    wait_for("the reflector to hold both MACs", reflected, timeout=30)

    kube.kubectl("-n", namespace, "delete", "pod", *MACS, "--wait=true", timeout=120)
    wait_for("the VNI's devices to go", lambda: not {
        n for n in megalos_links(kube) if n in (naming.vtep_name(vni), naming.bridge_name(vni))
        or n.startswith("mgp")}, timeout=60)
    fdb = kube.node("bridge", "fdb", "show").stdout
    assert all(mac not in fdb for mac in MACS.values())
    wait_for("the reflector to forget the VNI",
             lambda: vni not in {v["vni"] for v in kube.api_get("/api/v1/vnis")["vnis"]},
             timeout=60)
