"""A Kathara lab running on the emulated cluster, as it would on Kubernetes with Multus: what
`make demo`, the LAN map's browser tests and its benchmark stand on.

- a control-plane node runs an API server (kmock's emulator, lab.multus.ApiServerEmulator, in
  the node's network namespace), `megalos-reflector` peering with every worker node and watching
  the NADs and pods (--lans-from-k8s), and the REST API (gunicorn, in the root namespace, on the
  reflector's state socket);
- each worker node runs `megalos-agent`;
- the lab's NetworkAttachmentDefinitions and pods are what Kathara's own code makes from a
  lab.conf (lab.multus.kathara_lab), and the Multus harness attaches each pod through the
  installed `megalos` plugin, then publishes its network status, as Multus does.

    with RunningLab(LAB_CONF, nodes=3, runtime=runtime) as lab:
        lab.attach("pc1", "node1")
        urllib.request.urlopen(lab.api.request("/api/v1/map"))  # the API's token with it
"""
from __future__ import annotations

import os
import signal
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lab.api_server import ApiServer
from lab.cluster import Cluster, Node, sh
from lab.multus import ApiServerEmulator, AttachedPod, KatharaLab, Multus, kathara_lab
from lab.runtime import Runtime

START_WAIT = 60.0  # seconds a process may take to start: the machine is shared, often loaded
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                   "ALL_PROXY")


class RunningLab:
    """The cluster, its control plane and the lab's attached devices (`devices`: device name ->
    lab.multus.AttachedPod). `start()` brings up everything but the devices; `attach` adds one."""

    def __init__(self, lab_conf: str, nodes: int = 3, runtime: Runtime | None = None,
                 hold_time: int = 3, api_token: str | None = None, api_env: dict | None = None,
                 api_workers: int = 2, api_port: int | None = None):
        self.lab_conf = lab_conf
        self.node_count = nodes
        self.runtime = runtime
        self.hold_time = hold_time
        self.api_token, self.api_env = api_token, api_env or {}
        self.api_workers, self.api_port = api_workers, api_port
        self.cluster: Cluster | None = None
        self.control: Node | None = None
        self.nodes: list[Node] = []
        self.kube: ApiServerEmulator | None = None
        self.kathara: KatharaLab | None = None
        self.multus: Multus | None = None
        self.api: ApiServer | None = None
        self.devices: dict[str, AttachedPod] = {}
        self._bin_dir: tempfile.TemporaryDirectory | None = None
        self._proxies: dict[str, str] = {}

    # -- life --------------------------------------------------------------------------------------
    def start(self) -> "RunningLab":
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        # The reflector reaches the API server directly, never through a proxy of this machine.
        self._proxies = {name: os.environ.pop(name) for name in PROXY_VARIABLES if name in os.environ}
        if self.runtime is None:
            self._bin_dir = tempfile.TemporaryDirectory(prefix="megalos-lab-bin-")
            self.runtime = Runtime(Path(self._bin_dir.name))
        self.cluster = Cluster()
        self.control = self.cluster.add_node("control")
        self.nodes = [self.cluster.add_node(f"node{i + 1}") for i in range(self.node_count)]
        self.kube = ApiServerEmulator(netns=self.control.netns, host=self.control.ip)
        kubeconfig = self.kube.kubeconfig(self.cluster.run_dir / "kubeconfig")
        self.control.start_reflector(
            *[arg for n in self.nodes for arg in ("--peer", f"{n.name}={n.ip}")],
            "--lans-from-k8s", "--kubeconfig", str(kubeconfig), "--hold-time", str(self.hold_time),
            wait=START_WAIT)
        with ThreadPoolExecutor(len(self.nodes)) as pool:  # each takes a second or two to start
            list(pool.map(self.start_agent, [node.name for node in self.nodes]))
        self.api = ApiServer(self.control.socket, token=self.api_token, workers=self.api_workers,
                             env=self.api_env).start(port=self.api_port)
        self.kathara = kathara_lab(self.lab_conf)
        for nad in self.kathara.nads.values():
            self.kube.create(nad)
        self.multus = Multus(self.runtime, self.kathara.nads)

    def close(self) -> None:
        """Everything goes: the API, the processes, the namespaces (also after a failed start)."""
        if self.api is not None:
            self.api.stop()
        if self.cluster is not None:
            if self.control is not None:
                self.control.stop_agent()  # its watches end before the API server does
            for node in self.nodes:
                node.stop_agent()
            if self.kube is not None:
                self.kube.close()
            self.cluster.destroy()
        if self._bin_dir is not None:
            self._bin_dir.cleanup()
        os.environ.update(self._proxies)

    def __enter__(self) -> "RunningLab":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- devices -----------------------------------------------------------------------------------
    def node(self, name: str) -> Node:
        return self.cluster.nodes[name]

    def attach(self, device: str, node_name: str) -> AttachedPod:
        """Kubernetes schedules the device's pod on `node_name`, Multus attaches its links (one
        CNI ADD each) and writes the pod's network status."""
        node = self.node(node_name)
        pod = self.kathara.pod(device, node.name)
        self.kube.create(pod)
        attached = self.multus.add(pod, node, node.add_pod(device))
        self.kube.replace(pod)
        self.devices[device] = attached
        return attached

    def detach(self, device: str) -> None:
        """The device's pod goes: Multus detaches it (a CNI DEL per link), then the object and the
        pod's network namespace are deleted."""
        attached = self.devices.pop(device)
        self.multus.delete(attached)
        self.kube.delete(attached.object)
        attached.node.pods.pop(attached.netns.name, None)
        sh("ip", "netns", "del", attached.netns.netns, check=False)

    # -- agents ------------------------------------------------------------------------------------
    def start_agent(self, node_name: str) -> None:
        self.node(node_name).start_agent("--reflector", self.control.ip,
                                         "--hold-time", str(self.hold_time), wait=START_WAIT)

    def kill_agent(self, node_name: str) -> None:
        """The node's agent dies (SIGKILL, its BGP process with it): its session closes."""
        self.node(node_name).stop_agent(signal.SIGKILL)
