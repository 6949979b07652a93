"""The CNI verbs, served by the node agent: (environment, stdin) in, (exit code, stdout) out.

`Plugin.handle` owns parsing and error formatting (like the reference plugins' skel); each verb
handler only does its work and raises. A per-VNI lock serialises work on one LAN, so an ADD
cannot race the last DEL that removes the LAN's bridge and VTEP; a verb does not wait for it
past its deadline.
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone

from base import tenancy
from base.primitives import host_mac
from base.tenancy import Tenant, VniClaim, namespace_text
from cni import naming, netns, spec
from cni.config import STANDARD_VXLAN_PORTS, NetConf, parse_netconf
from cni.datapath import ConflictError, Datapath, DatapathError, ExistsError
from cni.netlink import NetlinkError
from cni.netns import HostNetns, NetnsGone
from cni.spec import CniError, Interface

log = logging.getLogger(__name__)


class Announcements:
    """What the datapath tells the control plane to announce: this node's VTEP now takes part in a
    VNI (or no longer does), a pod MAC appeared on it (or went; `pod`: the base.tenancy.pod_id of
    the pod holding it). And what the control plane knows of other nodes, for the ADD's checks:
    the claims their VTEP routes carry on a VNI, [(VTEP, claim)], and the route that wins for a
    MAC, (VTEP, the pod it names or None). The node speaker overrides these; without a control
    plane they are no-ops, and know nothing."""

    def vtep_added(self, vni: int) -> None: ...
    def vtep_removed(self, vni: int) -> None: ...
    def mac_added(self, vni: int, mac: str, pod: str | None = None) -> None: ...
    def mac_removed(self, vni: int, mac: str) -> None: ...

    def vni_claims(self, vni: int) -> list[tuple[str, VniClaim]]:
        return []

    def mac_holder(self, vni: int, mac: str) -> tuple[str, str | None] | None:
        return None


class VniLocks:
    """One lock per VNI, dropped when nobody holds or waits for it."""

    def __init__(self):
        self._guard = threading.Lock()
        self._locks: dict[int, list] = {}  # vni -> [lock, users]

    @contextmanager
    def hold(self, vni: int, deadline: float = math.inf):
        """The VNI's lock; code 11 if it is not free by `deadline` (time.monotonic())."""
        with self._guard:
            entry = self._locks.setdefault(vni, [threading.Lock(), 0])
            entry[1] += 1
        try:
            wait = -1 if deadline == math.inf else max(deadline - time.monotonic(), 0)
            if not entry[0].acquire(timeout=wait):
                raise CniError(spec.ERR_TRY_AGAIN_LATER,
                               f"VNI {vni} is busy: its lock was not free before this request's "
                               "deadline; nothing was changed")
            try:
                yield
            finally:
                entry[0].release()
        finally:
            with self._guard:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._locks[vni]


def _requested_mac(inv: spec.Invocation, conf: NetConf) -> str:
    """The pod MAC the runtime asks for: runtimeConfig.mac (the `mac` capability), else
    CNI_ARGS MAC= (normalised, code 4 if it is no unicast MAC); '' if neither."""
    if conf.runtime_mac:
        return conf.runtime_mac
    if inv.args.get("MAC"):
        try:
            return host_mac(inv.args["MAC"])
        except ValueError as exc:
            raise CniError(spec.ERR_INVALID_ENV, f"CNI_ARGS MAC: {exc}") from None
    return ""


def _when(claim: VniClaim) -> str:
    return datetime.fromtimestamp(claim.since / 1000, timezone.utc).isoformat(timespec="seconds")


def _vni_owned(vni: int, owner: VniClaim, where: str, tenant: Tenant) -> CniError:
    return CniError(spec.ERR_VNI_OWNED,
                    f"VNI {vni} belongs to {namespace_text(owner.namespace)} (since {_when(owner)}, "
                    f"{where}): {namespace_text(tenant.namespace)} cannot attach to it",
                    "a VNI belongs to the first namespace that uses it, until its last pod on the "
                    "VNI is gone from every node; give this network another vxlanId")


def _mac_held(vni: int, pod_mac: str, holder: str, tenant: Tenant) -> CniError:
    asking = f"pod {tenant.pod_text}" if tenant.pod else "a request without K8S_POD_NAME"
    return CniError(spec.ERR_MAC_HELD, f"MAC {pod_mac} on VNI {vni} is held by {holder}: {asking} "
                    "cannot take it",
                    "a MAC moves only with its pod (the same namespace and device, e.g. a Kathara "
                    "device made again on another node); give this interface another MAC")


class Plugin:
    def __init__(self, datapath: Datapath, events: Announcements | None = None, not_ready=lambda: "",
                 vxlan_ports: tuple = STANDARD_VXLAN_PORTS):
        self.datapath = datapath
        self.events = events or Announcements()
        self.not_ready = not_ready  # '' when the control plane is fine, else why not
        self.vxlan_ports = tuple(vxlan_ports)  # the UDP ports a network may open (vxlanPort)
        self.locks = VniLocks()

    # -- the skel: parse, dispatch, format ---------------------------------------------------
    def handle(self, env: dict, stdin: str, deadline: float = math.inf) -> tuple[int, str]:
        """(exit code, stdout) for one request; `deadline` (time.monotonic()): the verb gives up
        waiting for its VNI's lock then."""
        version = spec.LATEST_VERSION
        try:
            inv = spec.parse_environment(env)
            raw = spec.decode_config(stdin) if (stdin.strip() or inv.command != "VERSION") else {}
            if isinstance(raw.get("cniVersion"), str):
                version = raw["cniVersion"]
            if inv.command == "VERSION":
                return 0, json.dumps(spec.version_result(version))
            conf = parse_netconf(raw)
            version = conf.cni_version
            spec.verb_allowed(inv.command, version)
            handler = {"ADD": self.add, "DEL": self.delete, "CHECK": self.check,
                       "STATUS": self.status, "GC": self.gc}[inv.command]
            result = handler(inv, conf, deadline)
            return 0, json.dumps(result) if result is not None else ""
        except CniError as exc:
            return 1, json.dumps(exc.to_json(version))
        except Exception as exc:  # never a traceback on the runtime's stdout
            error = self._translate(exc)
            if error.code == spec.ERR_DATAPATH:
                log.exception("%s failed", env.get("CNI_COMMAND"))
            return 1, json.dumps(error.to_json(version))

    @staticmethod
    def _translate(exc: Exception) -> CniError:
        if isinstance(exc, NetnsGone):
            return CniError(spec.ERR_UNKNOWN_CONTAINER, str(exc))
        if isinstance(exc, HostNetns):
            return CniError(spec.ERR_INVALID_ENV, f"CNI_NETNS: {exc}")
        if isinstance(exc, ExistsError):
            return CniError(spec.ERR_INTERFACE_EXISTS, str(exc))
        if isinstance(exc, ConflictError):
            return CniError(spec.ERR_VNI_CONFLICT, str(exc))
        if isinstance(exc, (DatapathError, NetlinkError)):
            return CniError(spec.ERR_DATAPATH, f"datapath: {exc}")
        return CniError(spec.ERR_DATAPATH, f"internal error: {exc.__class__.__name__}: {exc}")

    def _underlay(self, conf: NetConf):
        if not conf.master:
            return self.datapath.default_underlay
        try:
            return self.datapath.find_underlay(dev=conf.master)
        except DatapathError as exc:
            raise CniError(spec.ERR_INVALID_CONFIG, f"master: {exc}") from None

    # -- verbs -------------------------------------------------------------------------------
    def add(self, inv: spec.Invocation, conf: NetConf, deadline: float = math.inf) -> dict:
        tenant = spec.tenant(inv.args)
        mac = _requested_mac(inv, conf) or naming.random_mac()
        if conf.vxlan_port not in self.vxlan_ports:
            raise CniError(spec.ERR_INVALID_CONFIG,
                           f"vxlanPort {conf.vxlan_port} is not allowed on this node (allowed: "
                           f"{', '.join(map(str, self.vxlan_ports))}: megalos-agent --vxlan-ports)")
        underlay = self._underlay(conf)
        if conf.mtu > underlay.overlay_mtu:
            raise CniError(spec.ERR_INVALID_CONFIG,
                           f"mtu {conf.mtu} is above what the underlay allows ({underlay.overlay_mtu}: "
                           f"{underlay.name} mtu {underlay.mtu} minus the VXLAN overhead)")
        name = naming.port_name(inv.container_id, inv.ifname)
        # The pod's netns is checked and opened before the LAN is touched or its lock taken.
        with netns.opened(inv.netns) as netns_fd, self.locks.hold(conf.vni, deadline):
            claim = self._claim(conf.vni, tenant, mac, name)
            lan, created = self.datapath.ensure_lan(conf.vni, conf.vxlan_port, underlay, conf.mtu,
                                                    claim)
            if created:
                self.events.vtep_added(conf.vni)
            try:
                host_end_mac = self.datapath.add_port(lan, name, netns_fd, inv.ifname, mac, conf.name,
                                                      tenant)
            except Exception:
                self._drop_lan_if_unused(conf.vni)
                raise
            self.events.mac_added(conf.vni, mac, tenant.pod_id)
        return spec.shape_result(conf.cni_version, [
            Interface(name=name, mac=host_end_mac),
            Interface(name=inv.ifname, mac=mac, sandbox=inv.netns, mtu=lan.mtu)])

    def _claim(self, vni: int, tenant: Tenant, pod_mac: str, port_name: str) -> VniClaim:
        """The claim this ADD makes on the VNI, once it is clear it may (the VNI's lock held,
        nothing made yet): the VNI's bridge here records no other namespace, the claims other
        nodes announce name no other owner (base.tenancy.owner), and the MAC is held by no other
        pod, here or in the route that wins for it elsewhere. CniError 104 or 105 otherwise."""
        local = self.datapath.lan_claim(vni)
        bridge_index, here = local if local else (None, None)
        if here is not None and here.namespace != tenant.namespace:
            raise _vni_owned(vni, here, "its pods use it on this node", tenant)
        remote = self.events.vni_claims(vni)
        owner = tenancy.owner([claim for _, claim in remote] + ([here] if here else []))
        if owner is not None and owner.namespace != tenant.namespace:
            vteps = sorted(vtep for vtep, claim in remote if claim == owner)
            raise _vni_owned(vni, owner, f"behind VTEP {', '.join(vteps)}", tenant)
        mine = tenant.pod_id
        if bridge_index is not None:
            port = self.datapath.mac_holder(vni, bridge_index, pod_mac)
            if port is not None and port.name != port_name and port.pod_id not in (None, mine):
                raise _mac_held(vni, pod_mac, f"pod {port.pod} on this node", tenant)
        elsewhere = self.events.mac_holder(vni, pod_mac)
        if elsewhere is not None and elsewhere[1] not in (None, mine):
            raise _mac_held(vni, pod_mac, f"another pod (pod id {elsewhere[1]}) behind VTEP "
                            f"{elsewhere[0]}", tenant)
        return here or tenancy.claim_for(tenant.namespace, [c for _, c in remote],
                                         int(time.time() * 1000))

    def _detach(self, name: str, vni: int) -> None:
        """Delete one pod port (lock held) and tell the control plane its MACs are gone."""
        port = self.datapath.port(name)
        if port is None:
            return
        self.datapath.delete_port(name)
        for mac in port.macs:
            self.events.mac_removed(port.vni or vni, mac)

    def _drop_lan_if_unused(self, vni: int) -> None:
        if self.datapath.remove_lan_if_unused(vni):
            self.events.vtep_removed(vni)

    def delete(self, inv: spec.Invocation, conf: NetConf, deadline: float = math.inf) -> None:
        with self.locks.hold(conf.vni, deadline):
            self._detach(naming.port_name(inv.container_id, inv.ifname), conf.vni)
            self._drop_lan_if_unused(conf.vni)

    def check(self, inv: spec.Invocation, conf: NetConf, deadline: float = math.inf) -> None:
        name = naming.port_name(inv.container_id, inv.ifname)
        lan = self.datapath.lan(conf.vni)
        if lan is None:
            raise CniError(spec.ERR_CHECK_FAILED, f"VNI {conf.vni} has no bridge or VTEP on this node")
        host = self.datapath.host_port_state(name)
        if host is None:
            raise CniError(spec.ERR_CHECK_FAILED, f"host port {name} of {inv.ifname} is missing")
        pod = self.datapath.pod_interface(inv.netns, inv.ifname)
        if pod is None:
            raise CniError(spec.ERR_CHECK_FAILED, f"interface {inv.ifname} is missing in {inv.netns}")
        expected_mac = self._expected_mac(inv, conf) or pod["mac"]
        problems = [
            (host["master"] != lan.bridge_index, f"{name} is not a port of bridge {naming.bridge_name(conf.vni)}"),
            (not host["up"], f"host port {name} is down"),
            (not pod["up"], f"{inv.ifname} is down"),
            (pod["kind"] != "veth", f"{inv.ifname} is a {pod['kind'] or 'plain'} device, not a veth"),
            (pod["peer_index"] != host["index"], f"{inv.ifname} is not the peer of {name}"),
            (pod["mac"] != expected_mac, f"{inv.ifname} has MAC {pod['mac']}, expected {expected_mac}"),
            (pod["mtu"] != lan.mtu, f"{inv.ifname} has MTU {pod['mtu']}, expected {lan.mtu}"),
            (host["mtu"] != lan.mtu, f"{name} has MTU {host['mtu']}, expected {lan.mtu}"),
        ]
        found = [msg for bad, msg in problems if bad]
        if found:
            raise CniError(spec.ERR_CHECK_FAILED, "; ".join(found))

    @staticmethod
    def _expected_mac(inv: spec.Invocation, conf: NetConf) -> str:
        """The pod MAC the runtime expects: from prevResult's sandbox interface, else args."""
        interfaces = (conf.prev_result or {}).get("interfaces") or []
        if not isinstance(interfaces, list):
            raise CniError(spec.ERR_INVALID_CONFIG, "prevResult.interfaces must be a list")
        for itf in interfaces:
            if isinstance(itf, dict) and itf.get("name") == inv.ifname and itf.get("sandbox"):
                try:
                    return host_mac(itf.get("mac"))
                except ValueError:
                    raise CniError(spec.ERR_INVALID_CONFIG,
                                   f"prevResult has an invalid MAC for {inv.ifname}") from None
        return _requested_mac(inv, conf)

    def status(self, inv: spec.Invocation, conf: NetConf, deadline: float = math.inf) -> None:
        reason = self.datapath.healthy() or self.not_ready()
        if reason:
            raise CniError(spec.ERR_NOT_AVAILABLE, "the megalos agent cannot serve ADD now", reason)

    def gc(self, inv: spec.Invocation, conf: NetConf, deadline: float = math.inf) -> None:
        """Remove this network's ports the runtime no longer lists; ports of other networks on
        the VNI, and ports an older agent made (unmarked), are not this GC's to judge. An
        unmarked port the runtime lists as this network's is marked as such."""
        if conf.valid_attachments is None:
            raise CniError(spec.ERR_INVALID_CONFIG,
                           "GC needs the list of valid attachments (cni.dev/valid-attachments): "
                           "without it every attachment of the network would look stale")
        valid = {naming.port_name(cid, ifname) for cid, ifname in conf.valid_attachments}
        mark = naming.port_mark(conf.name)
        with self.locks.hold(conf.vni, deadline):
            for port in self.datapath.ports(conf.vni):
                if port.mark == mark and port.name not in valid:
                    log.info("GC: removing stale attachment %s on VNI %s", port.name, conf.vni)
                    self._detach(port.name, conf.vni)
                elif not port.mark and port.name in valid:
                    self.datapath.mark_port(port, conf.name)
            self._drop_lan_if_unused(conf.vni)

    def sweep(self) -> list[int]:
        """Remove LANs left without pods (their pods' netns went without a DEL: the kernel took
        the veths with them). What GC does when the runtime calls it, without waiting for it."""
        removed = []
        for vni in self.datapath.lans():
            with self.locks.hold(vni):
                if self.datapath.remove_lan_if_unused(vni):
                    log.info("sweep: VNI %d had no pod left: removed its bridge and VTEP", vni)
                    self.events.vtep_removed(vni)
                    removed.append(vni)
        return removed
