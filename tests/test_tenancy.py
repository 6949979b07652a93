"""base.tenancy (who owns a VNI, who holds a MAC) and bgp.claims (how routes carry it), with
plain values; the claims' bytes also through os-ken's own parser and serialiser."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from base import tenancy
from base.tenancy import Tenant, VniClaim
from bgp import claims

NAMESPACES = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True)


@pytest.mark.parametrize("name", ["", "lab", "a", "0f2b6a4e1c", "kathara-" + "x" * 55])
def test_namespace_names_kubernetes_allows(name):
    assert tenancy.parse_namespace(name) == name


@pytest.mark.parametrize("name", ["Lab", "-lab", "lab-", "l_b", "a" * 64, "lab/x", "lab x", None, 3])
def test_other_namespace_names_are_refused(name):
    with pytest.raises(ValueError, match="namespace"):
        tenancy.parse_namespace(name)


def test_pod_names():
    assert tenancy.parse_pod_name("kathara-pc1-5d8f7b9c4-x2x7q") == "kathara-pc1-5d8f7b9c4-x2x7q"
    for bad in ("", "Pc1", "pc 1", "pc1/x", "a" * 254, "pc1;MAC=x"):
        with pytest.raises(ValueError):
            tenancy.parse_pod_name(bad)


@pytest.mark.parametrize("pod, device", [
    ("kathara-pc1-5d8f7b9c4-x2x7q", "kathara-pc1"),     # a Deployment's pod
    ("kathara-pc1-2ca953a5f3-93e59", "kathara-pc1"),    # the name lab.multus gives it
    ("web-0", "web-0"),                                 # a StatefulSet's keeps its name
    ("agent-x2x7q", "agent-x2x7q"),                     # a DaemonSet's: one suffix only
    ("pc1", "pc1"),
])
def test_a_device_is_a_pod_without_its_replicaset_suffixes(pod, device):
    assert tenancy.device_name(pod) == device


def test_pod_id_is_the_same_for_a_device_made_again_and_differs_between_devices():
    first = tenancy.pod_id("lab", "kathara-pc1-5d8f7b9c4-x2x7q")
    assert first == tenancy.pod_id("lab", "kathara-pc1-7c6d5b4a9-abcde")   # a new pod of pc1
    assert first != tenancy.pod_id("lab", "kathara-pc2-5d8f7b9c4-x2x7q")   # another device
    assert first != tenancy.pod_id("other-lab", "kathara-pc1-5d8f7b9c4-x2x7q")
    assert tenancy.parse_pod_id(first) == first and len(first) == 12
    assert Tenant("lab", "kathara-pc1-5d8f7b9c4-x2x7q").pod_id == first
    assert Tenant("lab").pod_id is None and Tenant("lab").pod_text == ""


def test_the_earliest_claim_owns_a_vni_and_a_tie_goes_to_the_least_name():
    a, b = VniClaim(100, "lab-b"), VniClaim(200, "lab-a")
    assert tenancy.owner([b, a]) == a
    assert tenancy.owner([VniClaim(5, "y"), VniClaim(5, "x")]) == VniClaim(5, "x")
    assert tenancy.owner([]) is None


def test_a_lan_spreading_to_another_node_keeps_its_age():
    known = [VniClaim(100, "lab"), VniClaim(50, "other"), VniClaim(70, "lab")]
    assert tenancy.claim_for("lab", known, now_ms=999) == VniClaim(70, "lab")
    assert tenancy.claim_for("new", known, now_ms=999) == VniClaim(999, "new")


def test_namespace_text_names_the_unnamed_one():
    assert tenancy.namespace_text("lab") == "namespace lab"
    assert "unnamed" in tenancy.namespace_text("")


# -- bgp.claims -----------------------------------------------------------------------------------

@given(NAMESPACES | st.just(""), st.integers(0, tenancy.MAX_SINCE))
def test_a_vni_claim_round_trips(namespace, since):
    communities = claims.vtep_claim(VniClaim(since, namespace))
    assert all(len(c) == 8 and c[0] == claims.TYPE for c in communities)
    assert len(communities) == 1 + -(-len(namespace) // 6)
    # Among other communities, in any order.
    other = bytes.fromhex("0002fde800000064") + bytes.fromhex("030c000000000008")
    raw = other[:8] + b"".join(reversed(communities)) + other[8:]
    assert claims.read_vni_claim(claims.ours(raw)) == VniClaim(since, namespace)


def test_the_layout_of_a_claim():
    assert claims.vtep_claim(VniClaim(0x0102030405, "kathara-lab")) == [
        bytes.fromhex("8c01000102030405"), b"\x8c\x10kathar", b"\x8c\x11a-lab\0"]
    assert claims.mac_holder("0123456789ab") == [bytes.fromhex("8c020123456789ab")]


def test_a_mac_route_names_its_pod():
    raw = b"".join(claims.mac_holder("0123456789ab"))
    assert claims.read_pod(claims.ours(raw)) == "0123456789ab"
    assert claims.read_pod(claims.ours(b"")) is None
    assert claims.read_vni_claim(claims.ours(raw)) is None   # a pod is no VNI claim


@pytest.mark.parametrize("raw, why", [
    (b"", "no communities at all"),
    (b"\x8c\x10kathar", "a name without a time"),
    (bytes.fromhex("8c01000000000001") + b"\x8c\x11a-lab\0", "part 0 missing"),
    (bytes.fromhex("8c01000000000001") + b"\x8c\x10kathar\x8c\x10kathar", "part 0 twice"),
    (bytes.fromhex("8c01000000000001") * 2, "the time twice"),
    (bytes.fromhex("8c01000000000001") + b"\x8c\x10Kathar", "not a namespace name"),
    (bytes.fromhex("8c01000000000001") + b"\x8c\x10ka\0thr", "a NUL inside the name"),
    (bytes.fromhex("8c01000000000001") + b"\x8c\x10kathar\x8c\x11\0\0\0\0\0\0", "a part of padding"),
    (bytes.fromhex("8c01000000000001") + b"\x8c\x10\xff\xfe\0\0\0\0", "not ASCII"),
])
def test_an_unreadable_claim_claims_nothing(raw, why):
    assert claims.read_vni_claim(claims.ours(raw)) is None, why


def test_claims_refuse_what_they_cannot_carry():
    with pytest.raises(ValueError):
        claims.vtep_claim(VniClaim(2**48, "lab"))
    with pytest.raises(ValueError):
        claims.vtep_claim(VniClaim(1, "Lab"))
    with pytest.raises(ValueError):
        claims.mac_holder("xyz")


def test_os_ken_keeps_our_communities_as_they_are():
    """os-ken parses a community it does not know into BGPUnknownExtendedCommunity and
    serialises it back unchanged; from_osken reads the parsed attribute as `ours` reads bytes."""
    from os_ken.lib.packet import bgp

    ours = claims.vtep_claim(VniClaim(1_700_000_000_000, "kathara-lab")) + claims.mac_holder("00ff00ff00ff")
    attribute = bgp.BGPPathAttributeExtendedCommunities(communities=[
        bgp.BGPEncapsulationExtendedCommunity.from_str("vxlan"),
        *(bgp._ExtendedCommunity.parse(c)[0] for c in ours)])
    parsed, rest = bgp._PathAttribute.parser(attribute.serialize())
    assert rest == b""
    assert [type(c).__name__ for c in parsed.communities[1:]] == ["BGPUnknownExtendedCommunity"] * 4
    assert parsed.serialize() == attribute.serialize()
    found = claims.from_osken(parsed)
    assert found == claims.ours(parsed.serialize()[3:])
    assert claims.read_vni_claim(found) == VniClaim(1_700_000_000_000, "kathara-lab")
    assert claims.read_pod(found) == "00ff00ff00ff"
    assert claims.from_osken(None) == {}
