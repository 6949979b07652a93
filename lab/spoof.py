"""A spoofing pod: Ethernet frames from many source MACs, sent from inside a pod's namespace.

The socket (AF_PACKET, raw) is opened in the pod's netns by this process (cni.netns.socket_in):
no shell, no process per frame. Each frame is the smallest Ethernet frame of an experimental
EtherType (0x88b5) from one source address; the bridge of the pod's LAN learns each source on
the pod's port, as it would from a pod that forges its source addresses (or a lab device
bridging a large LAN).
"""
from __future__ import annotations

import json
import socket

from cni import naming
from cni.netns import socket_in
from lab.cluster import Node, Pod

ETHERTYPE = b"\x88\xb5"  # IEEE 802 local experimental
BROADCAST = "ff:ff:ff:ff:ff:ff"


def frame_sender(pod_netns: str, ifname: str) -> socket.socket:
    """A raw packet socket bound to `ifname` inside the pod's netns (the caller closes it)."""
    sock = socket_in(f"/var/run/netns/{pod_netns}", socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((ifname, 0))
    return sock


def frame(src: str, dst: str) -> bytes:
    return bytes.fromhex(dst.replace(":", "")) + bytes.fromhex(src.replace(":", "")) + ETHERTYPE + bytes(46)


def spoofed_macs(count: int, tag: int = 0x5f, start: int = 0) -> list[str]:
    """`count` locally administered unicast MACs, 02:<tag>:<32-bit counter>."""
    return [f"02:{tag:02x}:{i >> 24 & 255:02x}:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"
            for i in range(start, start + count)]


def bridge_mac(node: Node, vni: int) -> str:
    """The address of the VNI's bridge on `node`: frames to it stay on the node (not flooded)."""
    return json.loads(node.run("ip", "-j", "link", "show", "dev", naming.bridge_name(vni)).stdout)[0]["address"]


def spoof(pod: Pod, macs: list[str], dst: str = BROADCAST, ifname: str = "net0") -> int:
    """Send one frame from each of `macs` out of the pod's `ifname`; how many were sent."""
    sock = frame_sender(pod.netns, ifname)
    try:
        for src in macs:
            sock.send(frame(src, dst))
    finally:
        sock.close()
    return len(macs)
