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

from base.primitives import host_mac
from cni import naming, netns, spec
from cni.config import STANDARD_VXLAN_PORTS, NetConf, parse_netconf
from cni.datapath import ConflictError, Datapath, DatapathError, ExistsError
from cni.netlink import NetlinkError
from cni.netns import HostNetns, NetnsGone
from cni.spec import CniError, Interface

log = logging.getLogger(__name__)


class Announcements:
    """What the datapath tells the control plane to announce: this node's VTEP now takes part in a
    VNI (or no longer does), a pod MAC appeared on it (or went). The node speaker overrides these;
    without a control plane they are no-ops."""

    def vtep_added(self, vni: int) -> None: ...
    def vtep_removed(self, vni: int) -> None: ...
    def mac_added(self, vni: int, mac: str) -> None: ...
    def mac_removed(self, vni: int, mac: str) -> None: ...


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
            lan, created = self.datapath.ensure_lan(conf.vni, conf.vxlan_port, underlay, conf.mtu)
            if created:
                self.events.vtep_added(conf.vni)
            try:
                host_end_mac = self.datapath.add_port(lan, name, netns_fd, inv.ifname, mac, conf.name)
            except Exception:
                self._drop_lan_if_unused(conf.vni)
                raise
            self.events.mac_added(conf.vni, mac)
        return spec.shape_result(conf.cni_version, [
            Interface(name=name, mac=host_end_mac),
            Interface(name=inv.ifname, mac=mac, sandbox=inv.netns, mtu=lan.mtu)])

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
