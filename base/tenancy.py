"""Who a LAN and a MAC belong to: the namespace that owns a VNI, the pod that holds a MAC. Pure.

The rule (docs/architecture.md, "Tenancy"): the first namespace to use a VNI owns it cluster-wide
until its last port on the VNI is gone everywhere; a MAC on a LAN belongs to the pod that
attached it, and moves only with that pod (the same namespace and device).

- A claim on a VNI is (since, namespace): `since` is when the namespace first used the VNI, in
  milliseconds since the epoch. Claims are compared by time, then by name: the earliest wins, so
  every node that knows the same claims names the same owner.
- A pod is its namespace and its *device*: the pod name without the suffixes a Deployment's
  ReplicaSet adds (`kathara-pc1-5d8f7b9c4-x2x7q` is device `kathara-pc1`), so a Kathara device
  whose pod is made again, under a new name, is still the same pod. Its `pod_id` is 48 bits of a
  hash of `namespace/device`: what a MAC route carries.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

MAX_NAMESPACE = 63                 # a Kubernetes namespace name is a DNS label
MAX_POD_NAME = 253                 # a pod name is a DNS subdomain
MAX_SINCE = 2**48 - 1              # the claim time travels in six octets
POD_ID_BYTES = 6
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_POD_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
_POD_ID = re.compile(r"[0-9a-f]{12}")
# A Deployment's pod: <deployment>-<pod-template-hash (6-10)>-<5 random characters>.
_DEPLOYMENT_POD = re.compile(r"^(?P<base>.+)-[a-z0-9]{6,10}-[a-z0-9]{5}$")


def parse_namespace(value: object) -> str:
    """A namespace name: a DNS label of at most 63 characters, or '' (a runtime that names no
    namespace: all its pods are one tenant); ValueError says why not."""
    if not isinstance(value, str):
        raise ValueError(f"a namespace is a string, not {value!r}")
    if value and not (len(value) <= MAX_NAMESPACE and _NAMESPACE.fullmatch(value)):
        raise ValueError(f"{value[:80]!r} is not a namespace name (at most {MAX_NAMESPACE} "
                         "lower case letters, digits and '-', starting and ending with a letter "
                         "or digit)")
    return value


def parse_pod_name(value: object) -> str:
    """A pod name (a DNS subdomain of at most 253 characters); ValueError says why not."""
    if not (isinstance(value, str) and len(value) <= MAX_POD_NAME and _POD_NAME.fullmatch(value)):
        raise ValueError(f"{str(value)[:80]!r} is not a pod name (at most {MAX_POD_NAME} lower "
                         "case letters, digits, '-' and '.')")
    return value


def parse_pod_id(value: object) -> str:
    if not (isinstance(value, str) and _POD_ID.fullmatch(value)):
        raise ValueError(f"a pod id is 12 lower case hex digits, not {value!r}")
    return value


def device_name(pod: str) -> str:
    """The pod's name without a Deployment's ReplicaSet suffixes; any other name as it is."""
    match = _DEPLOYMENT_POD.match(pod)
    return match["base"] if match else pod


def pod_id(namespace: str, pod: str) -> str:
    """What a MAC route carries for the pod holding the MAC: 12 hex digits (48 bits) of
    blake2b("namespace/device")."""
    text = f"{namespace}/{device_name(pod)}"
    return hashlib.blake2b(text.encode(), digest_size=POD_ID_BYTES).hexdigest()


@dataclass(frozen=True, order=True)
class VniClaim:
    """A namespace's claim on a VNI: ordered by time, then name (the owner is the least)."""
    since: int          # ms since the epoch
    namespace: str

    def json(self) -> dict:
        return {"namespace": self.namespace, "since": self.since}


def owner(claims: Iterable[VniClaim]) -> VniClaim | None:
    """The claim that owns the VNI: the earliest (ties: the least name); None if unclaimed."""
    return min(claims, default=None)


def claim_for(namespace: str, known: Iterable[VniClaim], now_ms: int) -> VniClaim:
    """The claim a node makes when it sets up a VNI for `namespace`: as old as that namespace's
    earliest claim already known (a LAN spreading to one more node keeps its age), else now."""
    own = [c.since for c in known if c.namespace == namespace]
    return VniClaim(min([now_ms, *own]), namespace)


@dataclass(frozen=True)
class Tenant:
    """Who a CNI request comes from: K8S_POD_NAMESPACE ('' when the runtime sends none) and
    K8S_POD_NAME ('' when it sends none: then the pod claims no MAC, and can take no claimed
    one)."""
    namespace: str = ""
    pod: str = ""

    @property
    def pod_id(self) -> str | None:
        return pod_id(self.namespace, self.pod) if self.pod else None

    @property
    def pod_text(self) -> str:
        return f"{self.namespace}/{self.pod}" if self.pod else ""


def namespace_text(namespace: str) -> str:
    """How a namespace is named in messages ('' is the runtime that names none)."""
    return f"namespace {namespace}" if namespace else "the unnamed namespace (no K8S_POD_NAMESPACE)"
