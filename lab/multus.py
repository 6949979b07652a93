"""Multus and the Kubernetes API, played by the harness, for Kathara labs on the emulated cluster.

- `kathara_lab(lab_conf)`: what Kathara's own Kubernetes manager (the `kathara` package) creates
  for a lab written in lab.conf syntax (fixed MACs included: `pc1[0]="A/02:00:00:00:00:01"`): a
  NetworkAttachmentDefinition per collision domain (`KubernetesLink._build_definition`) and a
  Deployment per device whose pod template carries the `k8s.v1.cni.cncf.io/networks` annotation
  (`KubernetesMachine._build_definition`). No cluster: only those two pure methods run.
- `Multus`: attaches a pod as Multus does: for each network selection element of its `networks`
  annotation, in order, one CNI ADD of the NAD's config (CNI_IFNAME from "interface", CNI_ARGS
  `IgnoreUnknown=true;K8S_POD_NAMESPACE=..;K8S_POD_NAME=..;K8S_POD_INFRA_CONTAINER_ID=..;
  K8S_POD_UID=..` plus `MAC=..` when the element has "mac"), then writes the pod's
  `k8s.v1.cni.cncf.io/network-status` from each result's interface that has `sandbox`. A failed
  ADD undoes the ones before it (DEL, in reverse), as Multus does.
- `ApiServerEmulator`: kmock's Kubernetes emulator on an event loop of its own thread, where
  the harness publishes those objects; it can listen inside an emulated node's network namespace,
  so that the reflector and agents running there reach it as they would an API server.
"""
from __future__ import annotations

import asyncio
import ctypes
import hashlib
import json
import os
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

from lab.cluster import Node, Pod
from lab.kathara import nad_definitions
from lab.runtime import CniReply, Runtime

os.environ.setdefault("HOME", "/tmp")  # Kathara reads its settings path from $HOME at import

NETWORKS = "k8s.v1.cni.cncf.io/networks"
NETWORK_STATUS = "k8s.v1.cni.cncf.io/network-status"
NAD_RESOURCE = "k8s.cni.cncf.io/v1/network-attachment-definitions"
RESOURCES = ("v1/nodes", "v1/pods", "discovery.k8s.io/v1/endpointslices", NAD_RESOURCE)


# -- what Kathara creates --------------------------------------------------------------------------
@dataclass
class KatharaLab:
    namespace: str                 # the lab hash, lower case, as Kathara's manager uses it
    nads: dict[str, dict]          # link name -> NetworkAttachmentDefinition
    deployments: dict[str, dict]   # device name -> Deployment (API JSON form)
    lab: object = None             # Kathara's Lab

    def nad(self, name: str) -> dict:
        """The NAD called `name` (metadata.name)."""
        return next(n for n in self.nads.values() if n["metadata"]["name"] == name)

    def pod(self, device: str, node: str) -> dict:
        """The pod the device's Deployment would make, scheduled on `node` (no status yet)."""
        deployment = self.deployments[device]
        template = deployment["spec"]["template"]
        name = deployment["metadata"]["name"]
        digest = hashlib.sha256(f"{self.namespace}/{name}".encode()).hexdigest()
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {**json.loads(json.dumps(template["metadata"])),
                             "name": f"{name}-{digest[:10]}-{digest[10:15]}",
                             "namespace": self.namespace, "uid": str(uuid.uuid4())},
                "spec": {**json.loads(json.dumps(template["spec"])), "nodeName": node},
                "status": {"phase": "Pending"}}


class _PositionalModels:
    """Kathara 3.8.3 builds some kubernetes client models with positional arguments
    (`V1EnvVar(name, value)`), which the installed client's models (keyword-only) refuse. This
    stands in for the `client` module inside KubernetesMachine while its `_build_definition` runs:
    each model class takes positional arguments in its field order (the order of the older
    client's constructors) and builds the real model."""

    def __getattr__(self, name: str):
        from kubernetes import client
        real = getattr(client, name)
        fields = list(getattr(real, "model_fields", ()))
        if not isinstance(real, type) or not fields:
            return real

        def build(*args, **kwargs):
            kwargs.update(zip(fields, args))
            return real(**kwargs)
        return build


def kathara_lab(lab_conf: str, seed: str = "megalos") -> KatharaLab:
    """The NADs and Deployments Kathara's Kubernetes manager makes for a lab (lab.conf text)."""
    from kubernetes import client
    from Kathara.manager.kubernetes import KubernetesMachine as machine_module
    from Kathara.parser.netkit.LabParser import LabParser
    from Kathara.setting.Setting import Setting

    settings = Setting.get_instance()
    if settings.manager_type != "kubernetes":  # the manager's own settings (host_shared, ...)
        settings.manager_type = "kubernetes"
        settings.load_settings_addon()
    with tempfile.TemporaryDirectory() as directory:
        Path(directory, "lab.conf").write_text(lab_conf)
        lab = LabParser.parse(directory)
    lab.hash = lab.hash.lower()  # as KubernetesManager.deploy_lab does
    nads = {}
    for name, definition in nad_definitions(lab, seed).items():
        link = lab.links[name]
        definition["metadata"]["namespace"] = lab.hash
        link.api_object = definition  # what KubernetesLink.create keeps: the created object
        nads[name] = definition
    machines = machine_module.KubernetesMachine.__new__(machine_module.KubernetesMachine)
    serialise = client.ApiClient().sanitize_for_serialization
    deployments = {}
    with mock.patch.object(machine_module, "client", _PositionalModels()):
        for name, machine in sorted(lab.machines.items()):
            machine.add_meta("real_name", machines.get_deployment_name(machine.name))
            deployments[name] = serialise(machines._build_definition(machine, None))
    return KatharaLab(lab.hash, nads, deployments, lab)


# -- what Multus does ------------------------------------------------------------------------------
class MultusError(Exception):
    pass


@dataclass
class Attachment:
    network: str       # "namespace/name" of the NAD
    ifname: str
    config: str        # the NAD's spec.config, as passed on stdin
    cni_args: str
    reply: CniReply


@dataclass
class AttachedPod:
    """A pod Multus attached: its object (annotations included), where it runs, what it got."""
    object: dict
    node: Node
    netns: Pod
    container_id: str
    attachments: list[Attachment] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.object["metadata"]["name"]

    @property
    def namespace(self) -> str:
        return self.object["metadata"]["namespace"]

    def mac(self, ifname: str) -> str:
        status = json.loads(self.object["metadata"]["annotations"][NETWORK_STATUS])
        return next(entry["mac"] for entry in status if entry.get("interface") == ifname)


def selection_elements(pod: dict) -> list[dict]:
    """The pod's network selection elements (the JSON list form Kathara writes), each with its
    namespace filled in (the pod's, when the element has none)."""
    raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(NETWORKS)
    if not raw:
        return []
    elements = json.loads(raw)
    if not isinstance(elements, list):
        raise MultusError(f"{NETWORKS} is not a JSON list")
    namespace = pod["metadata"]["namespace"]
    return [{**element, "namespace": element.get("namespace") or namespace} for element in elements]


def cni_args(pod: dict, container_id: str, element: dict) -> str:
    """CNI_ARGS as the plugin sees it under Multus: the runtime's, plus MAC= from the element."""
    metadata = pod["metadata"]
    args = (f"IgnoreUnknown=true;K8S_POD_NAMESPACE={metadata['namespace']};"
            f"K8S_POD_NAME={metadata['name']};K8S_POD_INFRA_CONTAINER_ID={container_id};"
            f"K8S_POD_UID={metadata['uid']}")
    if element.get("mac"):
        args += f";MAC={element['mac']}"
    return args


def status_entry(network: str, result: dict) -> dict:
    """A network-status entry from an ADD result: the interface that has `sandbox` (the pod's),
    its MAC, and the result's IPs on it (none with megalos)."""
    interfaces = result.get("interfaces") or []
    index, interface = next(((i, ifc) for i, ifc in enumerate(interfaces) if ifc.get("sandbox")),
                            (None, None))
    if interface is None:
        raise MultusError(f"{network}: the result has no interface with a sandbox: {result}")
    ips = [ip["address"].split("/")[0] for ip in result.get("ips") or []
           if ip.get("interface") in (None, index)]
    entry = {"name": network, "interface": interface["name"]}
    if ips:
        entry["ips"] = ips
    entry["mac"] = interface.get("mac", "")
    entry["dns"] = result.get("dns") or {}
    return entry


class Multus:
    """Attaches and detaches pods' secondary networks through `runtime` (the installed plugin),
    on the node agent of the node they run on."""

    def __init__(self, runtime: Runtime, nads: dict[str, dict]):
        self.runtime = runtime
        self.nads = {f"{n['metadata']['namespace']}/{n['metadata']['name']}": n
                     for n in nads.values()}

    def add(self, pod: dict, node: Node, netns: Pod) -> AttachedPod:
        container_id = hashlib.sha256(pod["metadata"]["uid"].encode()).hexdigest()
        attached = AttachedPod(pod, node, netns, container_id)
        status = []
        for index, element in enumerate(selection_elements(pod)):
            network = f"{element['namespace']}/{element['name']}"
            nad = self.nads.get(network)
            if nad is None:
                self.delete(attached)
                raise MultusError(f"pod {pod['metadata']['name']}: no NetworkAttachmentDefinition "
                                  f"{network}")
            ifname = element.get("interface") or f"net{index + 1}"
            args = cni_args(pod, container_id, element)
            config = nad["spec"]["config"]
            reply = self.runtime.call("ADD", config, container_id=container_id,
                                      netns=netns.netns_path, ifname=ifname, args=args,
                                      socket=node.socket)
            if reply.code != 0:
                self.delete(attached)
                raise MultusError(f"pod {pod['metadata']['name']}: ADD {network} {ifname}: {reply}")
            attached.attachments.append(Attachment(network, ifname, config, args, reply))
            status.append(status_entry(network, reply.json))
        metadata = pod["metadata"]
        metadata.setdefault("annotations", {})[NETWORK_STATUS] = json.dumps(status)
        pod["status"] = {"phase": "Running", "hostIP": node.ip}
        return attached

    def delete(self, attached: AttachedPod) -> None:
        """DEL every attachment, last first (Multus's order); the status annotation goes."""
        for attachment in reversed(attached.attachments):
            reply = self.runtime.call("DEL", attachment.config,
                                      container_id=attached.container_id,
                                      netns=attached.netns.netns_path, ifname=attachment.ifname,
                                      args=attachment.cni_args, socket=attached.node.socket)
            if reply.code != 0:
                raise MultusError(f"DEL {attachment.network} {attachment.ifname}: {reply}")
        attached.attachments.clear()
        (attached.object["metadata"].get("annotations") or {}).pop(NETWORK_STATUS, None)


# -- the API server --------------------------------------------------------------------------------
_CLONE_NEWNET = 0x40000000


def _enter_netns(name: str) -> None:
    """Move the calling thread (only) into the named network namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


class ApiServerEmulator:
    """kmock's KubernetesEmulator on a loop in a background thread, driven from sync code.

    With `netns`, the loop's thread lives in that network namespace (the rest of the process does
    not move): the server listens there, at `host`, for the processes of the emulated cluster.
    """

    def __init__(self, netns: str | None = None, host: str = "127.0.0.1",
                 resources: tuple[str, ...] = RESOURCES):
        import kmock
        self._kmock = kmock
        self.loop = asyncio.new_event_loop()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run_loop, args=(netns,), name="kmock",
                                        daemon=True)
        self._thread.start()
        self._closing: asyncio.Event | None = None
        ready = threading.Event()
        self._serving = asyncio.run_coroutine_threadsafe(self._serve(ready, host, resources),
                                                         self.loop)
        for _ in range(100):
            if ready.wait(0.1) or self._failure is not None:
                break
        if not ready.is_set():
            self._serving.cancel()
            raise RuntimeError(f"kmock did not start: {self._failure or self._serving}")
        from kubernetes import client
        self.api_client = client.ApiClient(client.Configuration(host=self.url))

    def _run_loop(self, netns: str | None) -> None:
        try:
            if netns:
                _enter_netns(netns)
        except BaseException as exc:  # noqa: BLE001 - reported by the constructor
            self._failure = exc
            return
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def _serve(self, ready: threading.Event, host: str, resources) -> None:
        kmock = self._kmock
        self._closing = asyncio.Event()
        async with kmock.KubernetesEmulator() as km, kmock.Server(km, host=host) as server:
            for resource in resources:
                km.resources[resource] = {}
            self.km, self.url = km, str(server.url).rstrip("/")
            ready.set()
            await self._closing.wait()

    def run(self, fn, timeout: float = 10.0):
        """Run `fn(km)` (sync or async) on the emulator's loop; its result."""
        async def call():
            result = fn(self.km)
            return await result if asyncio.iscoroutine(result) else result
        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout)

    def request(self, method: str, path: str, body: dict | None = None) -> int:
        async def send(km):
            async with km.request(method, path, json=body) as response:
                await response.read()
                return response.status
        status = self.run(send)
        assert status < 300, f"{method} {path}: HTTP {status}"
        return status

    def requests(self, method: str, path_prefix: str) -> list:
        return self.run(lambda km: [r for r in km if r.method.value == method
                                    and r.url.path.startswith(path_prefix)])

    # -- objects, by kind
    def create(self, obj: dict) -> None:
        self.request("POST", _collection(obj), obj)

    def replace(self, obj: dict) -> None:
        """A merge patch with the whole object (kmock merges dicts, replaces other values)."""
        self.request("PATCH", f"{_collection(obj)}/{obj['metadata']['name']}", obj)

    def delete(self, obj: dict) -> None:
        self.request("DELETE", f"{_collection(obj)}/{obj['metadata']['name']}")

    def kubeconfig(self, path: Path) -> Path:
        """A kubeconfig file for this server (no credentials: kmock asks for none)."""
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "emulated",
            "clusters": [{"name": "emulated", "cluster": {"server": self.url}}],
            "users": [{"name": "harness", "user": {"token": "unused"}}],
            "contexts": [{"name": "emulated",
                          "context": {"cluster": "emulated", "user": "harness"}}]}))
        return path

    def close(self, timeout: float = 5.0) -> None:
        """Stop serving. Clients still watching (processes not stopped yet) hold their streams
        open and the server would wait for them: after `timeout` they are cut."""
        if self._failure is not None:
            return  # the loop never ran
        if self._closing is not None:
            self.loop.call_soon_threadsafe(self._closing.set)
            try:
                self._serving.result(timeout)
            except TimeoutError:
                self._serving.cancel()
                try:
                    self._serving.result(timeout)
                except BaseException:  # noqa: BLE001 - cancelled, as asked
                    pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def __enter__(self) -> "ApiServerEmulator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _collection(obj: dict) -> str:
    """The URL path of an object's collection (namespaced ones in their namespace)."""
    group_version, kind = obj["apiVersion"], obj["kind"]
    plural = {"Node": "nodes", "Pod": "pods", "EndpointSlice": "endpointslices",
              "NetworkAttachmentDefinition": "network-attachment-definitions"}[kind]
    prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    namespace = obj["metadata"].get("namespace")
    if kind == "Node" or not namespace:
        return f"{prefix}/{plural}"
    return f"{prefix}/namespaces/{namespace}/{plural}"
