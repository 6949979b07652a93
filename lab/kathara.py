"""What Kathara's own Kubernetes manager produces for a lab, computed with the `kathara` package.

No cluster is needed: `KubernetesLink._build_definition` and `_get_network_id` are pure, so the
NADs below are byte-for-byte what Kathara would create (same names, same VNIs, same config).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

os.environ.setdefault("HOME", "/tmp")


@dataclass(frozen=True)
class Nad:
    name: str          # metadata.name, e.g. kathara-lan-b-ae007059
    link: str          # the lab's collision domain
    config: dict       # spec.config, decoded
    raw_config: str    # spec.config exactly as Kathara writes it


def lab_nads(links: dict[str, list[str]], lab_name: str = "megalos-lab", seed: str = "megalos"):
    """{link: [machine, ...]} -> (Kathara Lab, {link: Nad}) built by Kathara's own code."""
    from Kathara.model.Lab import Lab

    lab = Lab(lab_name)
    for link, machines in links.items():
        for machine in machines:
            lab.connect_machine_to_link(machine, link)
    nads = {}
    for name, definition in nad_definitions(lab, seed).items():
        raw = definition["spec"]["config"]
        nads[name] = Nad(definition["metadata"]["name"], name, json.loads(raw), raw)
    return lab, nads


def nad_definitions(lab, seed: str = "megalos") -> dict:
    """{link: NetworkAttachmentDefinition} as KubernetesLink.deploy_links makes them: unique VNIs
    allotted in link-name order, by Kathara's own pure methods (no API client needed)."""
    from Kathara.manager.kubernetes.KubernetesLink import KubernetesLink

    manager = KubernetesLink.__new__(KubernetesLink)
    manager.seed = seed
    taken: dict[int, int] = {}
    return {name: manager._build_definition(link, manager._get_unique_network_id(name, taken))
            for name, link in sorted(lab.links.items())}
