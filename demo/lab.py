"""The demo's lab: devices and the collision domains (LANs) of their interfaces, like a lab.conf,
spread over the worker nodes round-robin. `make demo` runs it; the LAN map's browser tests show it."""
from __future__ import annotations

import itertools

LAB = {
    "r1": ["A", "B"],
    "r2": ["B", "C"],
    "pc1": ["A"],
    "pc2": ["C"],
    "pc3": ["A"],
}


def lab_conf(lab: dict[str, list[str]] = LAB) -> str:
    """The lab in Kathara's lab.conf syntax: interface i of a device (ethi) is on LAN lab[device][i]."""
    return "".join(f'{device}[{i}]="{lan}"\n' for device, lans in lab.items()
                   for i, lan in enumerate(lans))


def plan(nodes: list[str], devices=LAB) -> dict[str, str]:
    """Spread the devices over the nodes round-robin, as a scheduler might."""
    return dict(zip(devices, itertools.cycle(nodes)))


def addresses(lab: dict[str, list[str]] = LAB) -> dict[tuple[str, str], str]:
    """An IPv4 address per device and LAN: one /24 per LAN (A 10.1.0.0/24, B 10.2.0.0/24...)."""
    lans = sorted({lan for lans in lab.values() for lan in lans})
    hosts = {lan: itertools.count(1) for lan in lans}
    return {(device, lan): f"10.{lans.index(lan) + 1}.0.{next(hosts[lan])}"
            for device, device_lans in lab.items() for lan in device_lans}
