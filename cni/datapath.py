"""The node datapath, over netlink: per VNI one VTEP and one bridge, per pod a veth.

Every `ensure_*` is idempotent; removal treats "already gone" as success. A pod port is made by
one RTM_NEWLINK (host end on the bridge, pod end created directly inside the pod's netns with
its final name, MAC and MTU) so a failure cannot leave half a veth behind.

Requests go through cni.netlink (a plain netlink socket and a small codec, no pyroute2 IPRoute).
The datapath keeps no state of its own, no cache to go stale: every verb reads what it needs
from the kernel, in few requests (an ADD on an existing LAN: 5, a DEL: 6), none of which grows
with the number of ports on the LAN.

Why one module of ~500 lines: it is every kernel object the plugin makes (bridge, VTEP, port,
their marks and claims) and the reads that find them again; they share one socket and one lock,
and each `ensure_*` is short. The netlink codec itself is cni.netlink.
"""
from __future__ import annotations

import errno
import ipaddress
import sys
import threading
from dataclasses import dataclass

from base.tenancy import Tenant, VniClaim
from cni import naming, netns
from cni.netlink import (IFLA_ADDRESS, IFLA_BR_FDB_MAX_LEARNED, IFLA_BR_NF_CALL_ARPTABLES,
                         IFLA_BR_NF_CALL_IP6TABLES, IFLA_BR_NF_CALL_IPTABLES, IFLA_IFALIAS, IFLA_MASTER,
                         IFLA_MTU, IFLA_NET_NS_FD, IFLA_VXLAN_ID, IFLA_VXLAN_LEARNING, IFLA_VXLAN_LINK,
                         IFLA_VXLAN_LOCAL, IFLA_VXLAN_LOCAL6, IFLA_VXLAN_PORT, NTF_MASTER, NTF_STICKY,
                         NUD_NOARP,
                         NUD_PERMANENT, VETH_INFO_PEER, FdbEntry, Link, Netlink, NetlinkError, attr, be16,
                         ip, link_body, linkinfo, mac, u8)

VXLAN_OVERHEAD = {4: 50, 6: 70}


class DatapathError(Exception):
    """A netlink operation failed, or the kernel state conflicts with the request."""


class ExistsError(DatapathError):
    """The attachment or the pod interface already exists."""


class ConflictError(DatapathError):
    """The VNI is already set up with different parameters."""


@dataclass(frozen=True)
class Underlay:
    """The node's underlay: where VXLAN packets leave, and the VTEP address they carry."""

    ifindex: int
    name: str
    ip: str
    mtu: int

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.ip).version

    @property
    def overlay_mtu(self) -> int:
        return self.mtu - VXLAN_OVERHEAD[self.version]


@dataclass(frozen=True)
class Lan:
    """The kernel devices of one VNI on this node."""

    vni: int
    vtep_index: int
    bridge_index: int
    mtu: int


@dataclass(frozen=True)
class Port:
    """A pod attachment as seen from the host: the veth's host end, the pod MACs behind it, its
    mark (naming.port_mark of its network; '' on a port an older agent made) and its pod
    ('namespace/name', '#<pod id>', or '' when the request named none)."""

    name: str
    index: int
    vni: int
    macs: tuple
    mark: str = ""
    pod: str = ""

    @classmethod
    def of(cls, link: Link, vni: int, macs: tuple) -> "Port":
        mark, pod = naming.split_port_alias(link.alias)
        return cls(link.name, link.index, vni, macs, mark, pod)

    @property
    def pod_id(self) -> str | None:
        """The pod's base.tenancy.pod_id, None if the port records no pod."""
        if not self.pod:
            return None
        if self.pod.startswith("#"):
            return self.pod[1:]
        namespace, _, name = self.pod.partition("/")
        return Tenant(namespace, name).pod_id


def _ours(link: Link | None, kind: str, mark: str) -> bool:
    """Whether `link` is a device Megalos made: of `kind`, carrying `mark` as its alias."""
    return link is not None and link.kind == kind and naming.has_mark(link.alias, mark)


def _foreign(link: Link, mark: str) -> ConflictError:
    return ConflictError(f"{link.name} exists but Megalos did not make it (its alias is "
                         f"{link.alias or 'empty'}, not {mark}): remove or rename it")


def _pod_macs(entries, index: int) -> tuple:
    """The pod MACs ADD recorded on a port: static entries of the bridge's own FDB (a dump
    carries the bridge as NDA_MASTER; NUD_PERMANENT would be the port's own MAC)."""
    return tuple(sorted({e.mac for e in entries if e.ifindex == index and e.master
                         and e.state & NUD_NOARP and not e.state & NUD_PERMANENT}))


def bridge_vni(nl: Netlink, index: int) -> int | None:
    """The VNI of the Megalos bridge with ifindex `index`; None for any other device, or none."""
    bridge = nl.link(index=index) if index else None
    return naming.vni_of_device(bridge.name) if bridge is not None and bridge.kind == "bridge" else None


def port_vni(nl: Netlink, port: Link) -> int | None:
    """The VNI of the LAN a pod port is on: port -> its bridge -> the VNI in the bridge's name.
    None if `port` is not a pod port on a Megalos bridge. The one way the agent resolves it
    (the datapath's DEL and CHECK, the MAC watch)."""
    if not naming.is_port_name(port.name) or not port.master:
        return None
    return bridge_vni(nl, port.master)


class Datapath:
    """One netlink socket to the node's netns, serialised by a lock (one request at a time)."""

    def __init__(self, vtep_ip: str = "", underlay_dev: str = "", max_learned: int = 0):
        """`max_learned`: what each LAN's bridge may learn at most (0: no cap), so a pod
        spoofing source MACs cannot grow the kernel's FDB without bound."""
        self.max_learned = max_learned
        self._nl = Netlink()
        self._lock = threading.RLock()
        self.default_underlay = self.find_underlay(vtep_ip=vtep_ip, dev=underlay_dev)

    def close(self) -> None:
        with self._lock:
            self._nl.close()

    # -- lookups ---------------------------------------------------------------------------
    def _link(self, name: str = "", index: int = 0) -> Link | None:
        with self._lock:
            return self._nl.link(name=name, index=index)

    def find_underlay(self, vtep_ip: str = "", dev: str = "") -> Underlay:
        """The underlay device and VTEP IP: by device name, by address, or both."""
        with self._lock:
            if dev:
                link = self._nl.link(name=dev)
                if link is None:
                    raise DatapathError(f"underlay device {dev!r} does not exist on this node")
                index = link.index
                addrs = [a.address for a in self._nl.addresses(index) if a.scope == 0]
                if vtep_ip and vtep_ip not in addrs:
                    raise DatapathError(f"underlay device {dev!r} does not have address {vtep_ip}")
                if not vtep_ip:
                    v4 = [a for a in addrs if ":" not in a]
                    if not (v4 or addrs):
                        raise DatapathError(f"underlay device {dev!r} has no global address")
                    vtep_ip = (v4 or addrs)[0]
            elif vtep_ip:
                matches = [a.index for a in self._nl.addresses() if a.address == vtep_ip]
                if not matches:
                    raise DatapathError(f"no device on this node has the VTEP address {vtep_ip}")
                index = matches[0]
                link = self._nl.link(index=index)
                if link is None:
                    raise DatapathError(f"the device with the VTEP address {vtep_ip} is gone")
            else:
                raise DatapathError("the node's VTEP address or underlay device must be configured")
            return Underlay(ifindex=index, name=link.name, ip=vtep_ip, mtu=link.mtu or 1500)

    def healthy(self) -> str:
        """'' when ADD can be served, else why not."""
        try:
            current = self.find_underlay(self.default_underlay.ip, self.default_underlay.name)
        except DatapathError as exc:
            return str(exc)
        return "" if current.ifindex == self.default_underlay.ifindex else "underlay device changed"

    # -- per-VNI devices -------------------------------------------------------------------
    def lan(self, vni: int) -> Lan | None:
        """The VNI's devices if both exist, made by Megalos."""
        with self._lock:
            vtep = self._nl.link(name=naming.vtep_name(vni))
            bridge = self._nl.link(name=naming.bridge_name(vni))
            if not (_ours(vtep, "vxlan", naming.VTEP_MARK) and _ours(bridge, "bridge", naming.BRIDGE_MARK)):
                return None
            return Lan(vni, vtep.index, bridge.index, vtep.mtu)

    def lan_claim(self, vni: int) -> tuple[int, VniClaim | None] | None:
        """(the VNI's bridge's ifindex, the claim it records: the namespace whose pods use the
        VNI on this node, None on a bridge an older agent made), or None: no bridge."""
        bridge = self._link(name=naming.bridge_name(vni))
        if not _ours(bridge, "bridge", naming.BRIDGE_MARK):
            return None
        return bridge.index, naming.bridge_claim(bridge.alias)

    def ensure_lan(self, vni: int, port: int, underlay: Underlay, mtu: int = 0,
                   claim: VniClaim | None = None) -> tuple[Lan, bool]:
        """The VNI's bridge and VTEP, created if missing; (lan, created). Two lookups when the
        LAN exists, which also check it: a VXLAN device with our parameters, up, on the bridge.
        `claim` is recorded on a bridge that records none (cni.plugin checked it first)."""
        limit = underlay.overlay_mtu
        if mtu > limit:
            raise ConflictError(f"mtu {mtu} is above the overlay limit {limit} "
                                f"(underlay {underlay.name} mtu {underlay.mtu} minus VXLAN overhead)")
        with self._lock:
            bridge, created_bridge = self.ensure_bridge(vni, underlay, claim)
            try:
                vtep, created_vtep = self.ensure_vtep(vni, port, underlay, mtu or limit, bridge)
            except Exception:
                if created_bridge:
                    self._delete(naming.bridge_name(vni))
                raise
            return Lan(vni, vtep, bridge, mtu or limit), created_bridge or created_vtep

    def ensure_bridge(self, vni: int, underlay: Underlay,
                      claim: VniClaim | None = None) -> tuple[int, bool]:
        """(bridge ifindex, created); a bridge made, or found without a claim, records `claim`."""
        name = naming.bridge_name(vni)
        with self._lock:
            link = self._nl.link(name=name)
            if link is not None:
                if link.kind != "bridge":
                    raise ConflictError(f"{name} exists and is a {link.kind or 'plain'} device, "
                                        "not a bridge")
                if not naming.has_mark(link.alias, naming.BRIDGE_MARK):
                    raise _foreign(link, naming.BRIDGE_MARK)
                if claim is not None and naming.bridge_claim(link.alias) is None:
                    self._set_alias(link.index, naming.bridge_mark(claim))
                if not link.up:
                    self._nl.set_link(link_body(index=link.index, up=True))
                return link.index, False
            # An explicit MAC: otherwise it follows the lowest port's and flaps.
            # nf_call_iptables off: bridged L2 frames must not meet the host's FORWARD rules.
            cap = [attr(IFLA_BR_FDB_MAX_LEARNED, self.max_learned)] if self.max_learned else []
            body = link_body(name=name, up=True, attrs=[
                attr(IFLA_ADDRESS, mac(naming.derived_mac("bridge", vni, underlay.ip))),
                linkinfo("bridge", [attr(IFLA_BR_NF_CALL_IPTABLES, u8(0)),
                                    attr(IFLA_BR_NF_CALL_IP6TABLES, u8(0)),
                                    attr(IFLA_BR_NF_CALL_ARPTABLES, u8(0)), *cap])])
            return self._create_marked(name, body, naming.bridge_mark(claim)), True

    def ensure_vtep(self, vni: int, port: int, underlay: Underlay, mtu: int,
                    bridge_index: int) -> tuple[int, bool]:
        """(VTEP ifindex, created). Created in one request, up and on the bridge at once; then
        the bridge stops learning on it: remote MACs are the control plane's (static entries),
        and a frame from a remote copy of a local pod's MAC must not move that pod's entry."""
        name = naming.vtep_name(vni)
        with self._lock:
            link = self._nl.link(name=name)
            if link is not None:
                self._check_vtep(link, vni, port, underlay, mtu)
                if not naming.has_mark(link.alias, naming.VTEP_MARK):
                    raise _foreign(link, naming.VTEP_MARK)
                if link.master != bridge_index or not link.up:
                    self._nl.set_link(link_body(index=link.index, up=True,
                                                attrs=[attr(IFLA_MASTER, bridge_index)]))
                    self._nl.set_bridge_port_learning(link.index, False)
                return link.index, False
            local = IFLA_VXLAN_LOCAL if underlay.version == 4 else IFLA_VXLAN_LOCAL6
            body = link_body(name=name, up=True, attrs=[
                attr(IFLA_ADDRESS, mac(naming.derived_mac("vtep", vni, underlay.ip))),
                attr(IFLA_MTU, mtu), attr(IFLA_MASTER, bridge_index),
                linkinfo("vxlan", [attr(IFLA_VXLAN_ID, vni),
                                   attr(IFLA_VXLAN_LINK, underlay.ifindex),
                                   attr(local, ip(underlay.ip)), attr(IFLA_VXLAN_LEARNING, u8(0)),
                                   attr(IFLA_VXLAN_PORT, be16(port))])])
            index = self._create_marked(name, body, naming.VTEP_MARK)
            try:
                self._nl.set_bridge_port_learning(index, False)
            except Exception:
                self._delete(name)
                raise
            return index, True

    def _create_marked(self, name: str, body: bytes, mark: str) -> int:
        """Create a link and give it its mark (the kernel ignores IFLA_IFALIAS in the request
        that creates a link: a second request); nothing is left if the mark fails."""
        with self._lock:
            index = self._nl.create_link(name, body)
            try:
                self._set_alias(index, mark)
            except Exception:
                self._delete(name)
                raise
            return index

    def _set_alias(self, index: int, alias: str) -> None:
        with self._lock:
            self._nl.set_link(link_body(index=index, attrs=[attr(IFLA_IFALIAS, alias)]))

    @staticmethod
    def _check_vtep(link: Link, vni: int, port: int, underlay: Underlay, mtu: int) -> None:
        if link.kind != "vxlan":
            raise ConflictError(f"{link.name} exists and is a {link.kind or 'plain'} device, "
                                "not a VXLAN device")
        have_vni, have_port, have_local = link.vxlan()
        if have_port != port or have_local != underlay.ip or have_vni != vni:
            raise ConflictError(f"VNI {vni} is already set up with UDP port {have_port} and local "
                                f"address {have_local}; this network asks for port {port} and "
                                f"address {underlay.ip}")
        if link.mtu != mtu:
            raise ConflictError(f"VNI {vni} is already set up with MTU {link.mtu}; "
                                f"this network asks for MTU {mtu}")

    def remove_lan_if_unused(self, vni: int) -> bool:
        """Delete the VNI's VTEP and bridge when no pod port is left on the bridge (the caller
        holds the VNI's lock: no ADD can put a port there meanwhile); only devices Megalos
        made, whoever else named a device mgbr<VNI> or mgvx<VNI>."""
        bridge = self._link(name=naming.bridge_name(vni))
        if bridge is not None and self._has_ports(bridge.index):
            return False
        vtep = self._link(name=naming.vtep_name(vni))
        removed = _ours(vtep, "vxlan", naming.VTEP_MARK) and self._delete(index=vtep.index)
        return (_ours(bridge, "bridge", naming.BRIDGE_MARK) and self._delete(index=bridge.index)
                or removed)

    def _has_ports(self, bridge_index: int) -> bool:
        """Whether any pod port is on the bridge. The kernel filters the link dump to the
        bridge's ports and this stops at the first pod port, on a socket of its own that it
        then closes with the rest of the dump unread: the cost does not grow with the LAN."""
        with Netlink() as nl:
            return any(naming.is_port_name(link.name) for link in nl.links(master=bridge_index))

    @staticmethod
    def _delete(name: str = "", index: int = 0) -> bool:
        """Delete a link on a socket of its own, without the lock: the request returns only
        after the kernel's RCU barrier for the device (~20 ms here), and other verbs need not
        wait for that."""
        with Netlink() as nl:
            return nl.delete_link(name=name, index=index)

    def _own_devices(self) -> list[Link]:
        """The bridges and VTEPs Megalos made on this node: the right kind, name and mark."""
        with self._lock:
            links = list(self._nl.links())
        return [link for link in links if naming.vni_of_device(link.name) and (
            link.name.startswith(naming.BRIDGE_PREFIX) and _ours(link, "bridge", naming.BRIDGE_MARK)
            or link.name.startswith(naming.VTEP_PREFIX) and _ours(link, "vxlan", naming.VTEP_MARK))]

    def mark_legacy_devices(self) -> list[str]:
        """Mark the bridges and VTEPs an agent made before devices were marked, those it can
        prove are Megalos's: its name, no alias, and the MAC address Megalos derives for that
        VNI and VTEP address (naming.derived_mac), which nobody else sets; the names marked.
        Called at start; any other mgbr<N>/mgvx<N> is left alone (and never deleted)."""
        with self._lock:
            links = {link.name: link for link in self._nl.links()}
            proven = []
            for link in links.values():
                vni = naming.vni_of_device(link.name)
                if not vni or link.alias:
                    continue
                if link.name == naming.vtep_name(vni) and link.kind == "vxlan":
                    have_vni, _, local = link.vxlan()
                    if have_vni == vni and link.address == naming.derived_mac("vtep", vni, local):
                        proven.append((link, naming.VTEP_MARK))
                elif link.name == naming.bridge_name(vni) and link.kind == "bridge":
                    vtep = links.get(naming.vtep_name(vni))
                    addresses = {self.default_underlay.ip} | (
                        {vtep.vxlan()[2]} if vtep is not None and vtep.kind == "vxlan" else set())
                    if link.address in {naming.derived_mac("bridge", vni, a) for a in addresses}:
                        proven.append((link, naming.BRIDGE_MARK))
            for link, mark in proven:
                self._set_alias(link.index, mark)
        return sorted(link.name for link, _ in proven)

    def stop_vtep_learning(self) -> list[str]:
        """Turn bridge learning off on every Megalos VTEP on a bridge (those an earlier agent
        made learn: see ensure_vtep); the names of the VTEPs. Called at start."""
        with self._lock:
            vteps = [link for link in self._own_devices() if link.kind == "vxlan" and link.master]
            for link in vteps:
                self._nl.set_bridge_port_learning(link.index, False)
        return [link.name for link in vteps]

    def limit_learning(self) -> list[str] | None:
        """Cap what every Megalos bridge learns at `max_learned` (fdb_max_learned: beyond it
        the bridge forwards frames from new source MACs without learning them); the bridges
        changed, or None when the kernel does not have the setting (before Linux 6.8, where
        the attribute is silently ignored). Called at start, for bridges an earlier agent made."""
        if not self.max_learned:
            return []
        with self._lock:
            bridges = [link for link in self._own_devices() if link.kind == "bridge"]
            if any(IFLA_BR_FDB_MAX_LEARNED not in link.info for link in bridges):
                return None
            changed = [link for link in bridges
                       if int.from_bytes(link.info[IFLA_BR_FDB_MAX_LEARNED][:4], sys.byteorder)
                       != self.max_learned]
            for link in changed:
                self._nl.set_link(link_body(index=link.index, attrs=[
                    linkinfo("bridge", [attr(IFLA_BR_FDB_MAX_LEARNED, self.max_learned)])]))
        return [link.name for link in changed]

    def lans(self) -> list[int]:
        """VNIs with a Megalos bridge or VTEP on this node."""
        return sorted({naming.vni_of_device(link.name) for link in self._own_devices()})

    # -- pod ports -------------------------------------------------------------------------
    def ports(self, vni: int, bridge_index: int | None = None) -> list[Port]:
        """The pod ports on the VNI's bridge, with the pod MACs recorded on each."""
        with self._lock:
            if bridge_index is None:
                bridge = self._nl.link(name=naming.bridge_name(vni))
                if bridge is None:
                    return []
                bridge_index = bridge.index
            links = [link for link in self._nl.links(master=bridge_index)
                     if naming.is_port_name(link.name)]
            return [Port.of(link, vni, self._static_macs(link.index)) for link in links]

    def _static_macs(self, index: int) -> tuple:
        with self._lock:
            return _pod_macs(self._nl.fdb(index), index)

    def port(self, name: str) -> Port | None:
        with self._lock:
            link = self._nl.link(name=name)
            if link is None:
                return None
            return Port.of(link, port_vni(self._nl, link) or 0, self._static_macs(link.index))

    def mac_holder(self, vni: int, bridge_index: int, pod_mac: str) -> Port | None:
        """The pod port of the VNI's bridge that holds `pod_mac` (ADD recorded it there), or
        None. One lookup in the bridge's FDB, one of the port: not a walk of the LAN."""
        with self._lock:
            entry = self._nl.fdb_get(bridge_index, pod_mac)
            if entry is None or not entry.state & NUD_NOARP or entry.state & NUD_PERMANENT:
                return None
            link = self._nl.link(index=entry.ifindex)
            if link is None or not naming.is_port_name(link.name):
                return None
            return Port.of(link, vni, (pod_mac,))

    def mark_port(self, port: Port, network: str) -> None:
        """Mark a port an older agent made (no mark) as `network`'s: GC proved it is."""
        self._set_alias(port.index, naming.port_mark(network))

    def add_port(self, lan: Lan, name: str, netns_fd: int, ifname: str, pod_mac: str,
                 network: str, tenant: Tenant | None = None) -> str:
        """Create the pod's veth in one request (the pod end inside the netns of `netns_fd`,
        from netns.open_fd), mark the host end as `network`'s and `tenant`'s pod's, bring both
        ends up, and record the pod MAC on the port as a sticky static entry (a frame another
        port sends from that MAC cannot move it there); returns the host MAC."""
        host_mac = naming.derived_mac("port", name)
        body = link_body(name=name, up=True, attrs=[
            attr(IFLA_ADDRESS, mac(host_mac)), attr(IFLA_MTU, lan.mtu),
            attr(IFLA_MASTER, lan.bridge_index),
            linkinfo("veth", [attr(VETH_INFO_PEER, link_body(name=ifname, attrs=[
                attr(IFLA_NET_NS_FD, netns_fd), attr(IFLA_ADDRESS, mac(pod_mac)),
                attr(IFLA_MTU, lan.mtu)]))])])
        with self._lock:
            try:
                index = self._nl.create_link(name, body)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise
                if self._nl.link(name=name) is not None:
                    what = f"the attachment already exists (host port {name})"
                else:
                    what = f"interface {ifname} already exists in the pod"
                raise ExistsError(what) from None
        try:
            self._set_alias(index, naming.port_mark(network, tenant))
            # The pod end cannot be created up (veth_open needs its peer): set it from inside.
            with netns.open_netlink(netns_fd) as pod:
                pod.set_link(link_body(name=ifname, up=True))
            with self._lock:
                # replace: the pod may have sent a frame already, and the bridge learned it
                self._nl.fdb_replace(FdbEntry(index, pod_mac, state=NUD_NOARP,
                                              flags=NTF_MASTER | NTF_STICKY))
        except Exception:
            self.delete_port(name)
            raise
        return host_mac

    def delete_port(self, name: str) -> bool:
        """Delete a pod's veth by its host end (the pod end goes with it)."""
        return self._delete(name)

    def pod_interface(self, netns_path: str, ifname: str) -> dict | None:
        """What the pod sees: kind, MAC, MTU, up, and its peer's ifindex on the host."""
        with netns.netlink_in(netns_path) as pod:
            link = pod.link(name=ifname)
        if link is None:
            return None
        return {"kind": link.kind, "mac": link.address, "mtu": link.mtu,
                "up": link.up, "peer_index": link.peer or None}

    def host_port_state(self, name: str) -> dict | None:
        link = self._link(name=name)
        if link is None:
            return None
        return {"index": link.index, "master": link.master or None, "mtu": link.mtu,
                "up": link.up}
