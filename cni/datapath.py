"""The node datapath, over netlink (pyroute2): per VNI one VTEP and one bridge, per pod a veth.

Every `ensure_*` is idempotent; removal treats "already gone" as success. A pod port is made by
one RTM_NEWLINK (host end on the bridge, pod end created directly inside the pod's netns with
its final name, MAC and MTU) so a failure cannot leave half a veth behind.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import threading
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_NEWLINK
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import NTF_MASTER, NUD_NOARP, NUD_PERMANENT

from cni import naming, netns

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
    """A pod attachment as seen from the host: the veth's host end and the pod MACs behind it."""

    name: str
    index: int
    vni: int
    macs: tuple


def _attr(msg, name, default=None):
    value = msg.get_attr(name)
    return default if value is None else value


def _linkinfo(msg) -> tuple[str, object]:
    info = msg.get_attr("IFLA_LINKINFO")
    if info is None:
        return "", None
    return info.get_attr("IFLA_INFO_KIND") or "", info.get_attr("IFLA_INFO_DATA")


class Datapath:
    """One netlink socket to the node's netns, serialised: pyroute2 sockets are not thread-safe."""

    def __init__(self, vtep_ip: str = "", underlay_dev: str = ""):
        self._ipr = IPRoute(groups=0)  # commands only: no multicast events to pile up
        # pyroute2 0.9.7's sync IPRoute forgets this key, and nlm_request() needs it.
        self._ipr.status["nlm_generator"] = False
        self._lock = threading.RLock()
        self.default_underlay = self.find_underlay(vtep_ip=vtep_ip, dev=underlay_dev)

    def close(self) -> None:
        with self._lock:
            self._ipr.close()

    # -- lookups ---------------------------------------------------------------------------
    def _index(self, name: str) -> int | None:
        found = self._ipr.link_lookup(ifname=name)
        return found[0] if found else None

    def _link(self, index: int):
        try:
            return self._ipr.get_links(index)[0]
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise

    def find_underlay(self, vtep_ip: str = "", dev: str = "") -> Underlay:
        """The underlay device and VTEP IP: by device name, by address, or both."""
        with self._lock:
            if dev:
                index = self._index(dev)
                if index is None:
                    raise DatapathError(f"underlay device {dev!r} does not exist on this node")
                addrs = [_attr(a, "IFA_ADDRESS") for a in self._ipr.get_addr(index=index)
                         if a["scope"] == 0]
                if vtep_ip and vtep_ip not in addrs:
                    raise DatapathError(f"underlay device {dev!r} does not have address {vtep_ip}")
                if not vtep_ip:
                    v4 = [a for a in addrs if ":" not in a]
                    if not (v4 or addrs):
                        raise DatapathError(f"underlay device {dev!r} has no global address")
                    vtep_ip = (v4 or addrs)[0]
            elif vtep_ip:
                matches = [a["index"] for a in self._ipr.get_addr()
                           if _attr(a, "IFA_ADDRESS") == vtep_ip]
                if not matches:
                    raise DatapathError(f"no device on this node has the VTEP address {vtep_ip}")
                index = matches[0]
            else:
                raise DatapathError("the node's VTEP address or underlay device must be configured")
            link = self._link(index)
            return Underlay(ifindex=index, name=_attr(link, "IFLA_IFNAME"), ip=vtep_ip,
                            mtu=_attr(link, "IFLA_MTU", 1500))

    def healthy(self) -> str:
        """'' when ADD can be served, else why not."""
        try:
            current = self.find_underlay(self.default_underlay.ip, self.default_underlay.name)
        except DatapathError as exc:
            return str(exc)
        return "" if current.ifindex == self.default_underlay.ifindex else "underlay device changed"

    # -- per-VNI devices -------------------------------------------------------------------
    def lan(self, vni: int) -> Lan | None:
        """The VNI's devices if both exist."""
        with self._lock:
            vtep = self._index(naming.vtep_name(vni))
            bridge = self._index(naming.bridge_name(vni))
            if vtep is None or bridge is None:
                return None
            return Lan(vni, vtep, bridge, _attr(self._link(vtep), "IFLA_MTU", 0))

    def ensure_lan(self, vni: int, port: int, underlay: Underlay, mtu: int = 0) -> tuple[Lan, bool]:
        """The VNI's bridge and VTEP, created if missing; (lan, created)."""
        limit = underlay.overlay_mtu
        if mtu > limit:
            raise ConflictError(f"mtu {mtu} is above the overlay limit {limit} "
                                f"(underlay {underlay.name} mtu {underlay.mtu} minus VXLAN overhead)")
        with self._lock:
            created_bridge = self.ensure_bridge(vni, underlay)
            try:
                created_vtep = self.ensure_vtep(vni, port, underlay, mtu or limit)
            except Exception:
                if created_bridge:
                    self._delete(naming.bridge_name(vni))
                raise
            return self.lan(vni), created_bridge or created_vtep

    def ensure_bridge(self, vni: int, underlay: Underlay) -> bool:
        name = naming.bridge_name(vni)
        with self._lock:
            index = self._index(name)
            if index is not None:
                kind, _ = _linkinfo(self._link(index))
                if kind != "bridge":
                    raise ConflictError(f"{name} exists and is a {kind or 'plain'} device, not a bridge")
                return False
            # An explicit MAC: otherwise it follows the lowest port's and flaps.
            # nf_call_iptables off: bridged L2 frames must not meet the host's FORWARD rules.
            self._ipr.link("add", ifname=name, kind="bridge",
                           address=naming.derived_mac("bridge", vni, underlay.ip),
                           br_nf_call_iptables=0, br_nf_call_ip6tables=0,
                           br_nf_call_arptables=0)
            self._ipr.link("set", index=self._index(name), state="up")
            return True

    def ensure_vtep(self, vni: int, port: int, underlay: Underlay, mtu: int) -> bool:
        name = naming.vtep_name(vni)
        with self._lock:
            index = self._index(name)
            if index is not None:
                self._check_vtep(name, index, vni, port, underlay, mtu)
                return False
            local = {"vxlan_local": underlay.ip} if underlay.version == 4 \
                else {"vxlan_local6": underlay.ip}
            self._ipr.link("add", ifname=name, kind="vxlan", vxlan_id=vni, vxlan_port=port,
                           vxlan_link=underlay.ifindex, vxlan_learning=0, mtu=mtu,
                           address=naming.derived_mac("vtep", vni, underlay.ip), **local)
            index = self._index(name)
            try:
                self._ipr.link("set", index=index, master=self._index(naming.bridge_name(vni)),
                               state="up")
            except Exception:
                self._delete(name)
                raise
            return True

    def _check_vtep(self, name, index, vni, port, underlay, mtu) -> None:
        link = self._link(index)
        kind, data = _linkinfo(link)
        if kind != "vxlan":
            raise ConflictError(f"{name} exists and is a {kind or 'plain'} device, not a VXLAN device")
        have_port = data.get_attr("IFLA_VXLAN_PORT")
        have_local = data.get_attr("IFLA_VXLAN_LOCAL") or data.get_attr("IFLA_VXLAN_LOCAL6")
        if have_port != port or have_local != underlay.ip or data.get_attr("IFLA_VXLAN_ID") != vni:
            raise ConflictError(f"VNI {vni} is already set up with UDP port {have_port} and local "
                                f"address {have_local}; this network asks for port {port} and "
                                f"address {underlay.ip}")
        if _attr(link, "IFLA_MTU") != mtu:
            raise ConflictError(f"VNI {vni} is already set up with MTU {_attr(link, 'IFLA_MTU')}; "
                                f"this network asks for MTU {mtu}")

    def remove_lan_if_unused(self, vni: int) -> bool:
        """Delete the VNI's VTEP and bridge when no pod port is left on the bridge."""
        with self._lock:
            bridge = self._index(naming.bridge_name(vni))
            if bridge is not None and self._port_links(bridge):
                return False
            removed = self._delete(naming.vtep_name(vni))
            return self._delete(naming.bridge_name(vni)) or removed

    def _delete(self, name: str) -> bool:
        try:
            self._ipr.link("del", ifname=name)
            return True
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT):
                return False
            raise

    def lans(self) -> list[int]:
        """VNIs with a Megalos bridge or VTEP on this node."""
        with self._lock:
            found = {naming.vni_of_device(_attr(link, "IFLA_IFNAME", ""))
                     for link in self._ipr.get_links()}
        return sorted(v for v in found if v is not None)

    # -- pod ports -------------------------------------------------------------------------
    def ports(self, vni: int, bridge_index: int | None = None) -> list[Port]:
        """The pod ports on the VNI's bridge, with the pod MACs recorded on each."""
        with self._lock:
            if bridge_index is None:
                bridge_index = self._index(naming.bridge_name(vni))
                if bridge_index is None:
                    return []
            return [Port(_attr(link, "IFLA_IFNAME"), link["index"], vni,
                         self._static_macs(link["index"])) for link in self._port_links(bridge_index)]

    def _port_links(self, bridge_index: int) -> list:
        """The pod port links on a bridge, without their FDB entries (a dump per port is costly)."""
        with self._lock:
            return [link for link in self._ipr.get_links()
                    if _attr(link, "IFLA_MASTER") == bridge_index
                    and naming.is_port_name(_attr(link, "IFLA_IFNAME", ""))]

    def _static_macs(self, index: int) -> tuple:
        """Static bridge entries on a port: the pod MACs ADD recorded (a dump carries the
        bridge as NDA_MASTER, not NTF_MASTER; NUD_PERMANENT would be the port's own MAC)."""
        entries = self._ipr.fdb("dump", ifindex=index)
        return tuple(sorted({_attr(e, "NDA_LLADDR") for e in entries
                             if e["ifindex"] == index and e.get_attr("NDA_MASTER")
                             and e["state"] & NUD_NOARP and not e["state"] & NUD_PERMANENT}))

    def port(self, name: str) -> Port | None:
        with self._lock:
            index = self._index(name)
            if index is None:
                return None
            link = self._link(index)
            master = _attr(link, "IFLA_MASTER")
            vni = naming.vni_of_device(_attr(self._link(master), "IFLA_IFNAME", "")) if master else None
            return Port(name, index, vni or 0, self._static_macs(index))

    def add_port(self, lan: Lan, name: str, netns_path: str, ifname: str, mac: str) -> str:
        """Create the pod's veth in one request and bring both ends up; returns the host MAC."""
        host_mac = naming.derived_mac("port", name)
        fd = netns.open_fd(netns_path)
        try:
            with self._lock:
                if self._index(name) is not None:
                    raise ExistsError(f"the attachment already exists (host port {name})")
                msg = ifinfmsg()
                msg["flags"] = msg["change"] = IFF_UP
                msg["attrs"] = [
                    ("IFLA_IFNAME", name), ("IFLA_ADDRESS", host_mac), ("IFLA_MTU", lan.mtu),
                    ("IFLA_MASTER", lan.bridge_index),
                    ("IFLA_LINKINFO", {"attrs": [
                        ("IFLA_INFO_KIND", "veth"),
                        ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", {"attrs": [
                            ("IFLA_IFNAME", ifname), ("IFLA_NET_NS_FD", fd),
                            ("IFLA_ADDRESS", mac), ("IFLA_MTU", lan.mtu)]})]})]})]
                try:
                    tuple(self._ipr.nlm_request(
                        msg, RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL))
                except NetlinkError as exc:
                    if exc.code == errno.EEXIST:
                        raise ExistsError(f"interface {ifname} already exists in {netns_path}") from None
                    raise
        finally:
            os.close(fd)
        try:
            # The pod end cannot be created up (veth_open needs its peer): set it from inside.
            with netns.netlink_in(netns_path) as pod:
                pod.link("set", index=pod.link_lookup(ifname=ifname)[0], state="up")
            with self._lock:
                # replace: the pod may have sent a frame already, and the bridge learned it
                self._ipr.fdb("replace", ifindex=self._index(name), lladdr=mac,
                              state=NUD_NOARP, flags=NTF_MASTER)
        except Exception:
            self.delete_port(name)
            raise
        return host_mac

    def delete_port(self, name: str) -> bool:
        """Delete a pod's veth by its host end (the pod end goes with it)."""
        with self._lock:
            return self._delete(name)

    def pod_interface(self, netns_path: str, ifname: str) -> dict | None:
        """What the pod sees: kind, MAC, MTU, up, and its peer's ifindex on the host."""
        with netns.netlink_in(netns_path) as pod:
            found = pod.link_lookup(ifname=ifname)
            if not found:
                return None
            link = pod.get_links(found[0])[0]
            kind, _ = _linkinfo(link)
            return {"kind": kind, "mac": _attr(link, "IFLA_ADDRESS"), "mtu": _attr(link, "IFLA_MTU"),
                    "up": bool(link["flags"] & IFF_UP), "peer_index": _attr(link, "IFLA_LINK")}

    def host_port_state(self, name: str) -> dict | None:
        with self._lock:
            index = self._index(name)
            if index is None:
                return None
            link = self._link(index)
            return {"index": index, "master": _attr(link, "IFLA_MASTER"), "mtu": _attr(link, "IFLA_MTU"),
                    "up": bool(link["flags"] & IFF_UP)}
