"""base/primitives.py with plain values: VNIs, MAC and IP addresses as every layer checks them."""
from __future__ import annotations

import pytest

from base.primitives import (MAX_VNI, ZERO_MAC, canonical_ip, canonical_mac, host_mac, is_unicast_mac,
                             is_vni, normalize_ip, normalize_mac, parse_vni, vtep_address)


def test_max_vni_is_24_bits():
    assert MAX_VNI == 16777215 == 2**24 - 1


@pytest.mark.parametrize("value", [1, 2, 4096, 65536, MAX_VNI])
def test_vnis_in_range(value):
    assert is_vni(value) and parse_vni(value) == value


@pytest.mark.parametrize("value", [0, -1, MAX_VNI + 1, 2**64, True, False, "7", 7.0, None])
def test_not_vnis(value):
    assert not is_vni(value)
    with pytest.raises(ValueError, match=r"a VNI is an integer in 1\.\.16777215"):
        parse_vni(value)


# -- MAC addresses ----------------------------------------------------------------------------
@pytest.mark.parametrize("value, expected", [
    ("02:aa:00:00:00:01", "02:aa:00:00:00:01"),
    ("02:AA:00:00:00:0F", "02:aa:00:00:00:0f"),
    ("02-aa-00-00-00-01", "02:aa:00:00:00:01"),
    ("  02:aa:00:00:00:01\n", "02:aa:00:00:00:01"),
    ("00:00:00:00:00:01", "00:00:00:00:00:01"),
    ("fe:ff:ff:ff:ff:ff", "fe:ff:ff:ff:ff:ff"),
])
def test_host_mac_accepts(value, expected):
    assert host_mac(value) == expected


@pytest.mark.parametrize("value, fragment", [
    ("", "is not a MAC address"),
    ("02:aa:00:00:00", "is not a MAC address"),
    ("02:aa:00:00:00:01:02", "is not a MAC address"),
    ("02aa00000001", "is not a MAC address"),
    ("02.aa.00.00.00.01", "is not a MAC address"),
    ("2:aa:0:0:0:1", "is not a MAC address"),
    ("02:aa:00:00:00:0g", "is not a MAC address"),
    ("02:aa:00:00:00:01x", "is not a MAC address"),
    ("zz:zz:zz:zz:zz:zz", "is not a MAC address"),
    ("01:00:5e:00:00:01", "multicast/broadcast"),
    ("33:33:00:00:00:01", "multicast/broadcast"),
    ("ff:ff:ff:ff:ff:ff", "multicast/broadcast"),
    ("00:00:00:00:00:00", "not a usable MAC address"),
    ("00-00-00-00-00-00", "not a usable MAC address"),
    (None, "must be a string"),
    (2, "must be a string"),
    (b"02:aa:00:00:00:01", "must be a string"),
    (["02:aa:00:00:00:01"], "must be a string"),
])
def test_host_mac_rejects_with_a_clear_message(value, fragment):
    with pytest.raises(ValueError) as info:
        host_mac(value)
    assert fragment in str(info.value)
    if isinstance(value, str) and value.strip() and "usable" not in fragment:
        assert repr(value) in str(info.value)  # the message quotes what was given


@pytest.mark.parametrize("value, expected", [
    ("01:00:5E:00:00:01", "01:00:5e:00:00:01"), ("FF-FF-FF-FF-FF-FF", "ff:ff:ff:ff:ff:ff"),
    (" 00:00:00:00:00:00 ", ZERO_MAC)])
def test_normalize_mac_takes_any_mac_host_mac_only_unicast(value, expected):
    assert normalize_mac(value) == canonical_mac(value) == expected
    assert not is_unicast_mac(expected)
    with pytest.raises(ValueError):
        host_mac(value)


@pytest.mark.parametrize("value", ["", "02:aa:00:00:00", "02aa00000001", None, 3, b"02:aa:00:00:00:01"])
def test_canonical_mac_is_empty_where_normalize_mac_raises(value):
    assert canonical_mac(value) == ""
    with pytest.raises(ValueError):
        normalize_mac(value)


@pytest.mark.parametrize("value, expected", [
    ("192.0.2.1", "192.0.2.1"), (" 10.0.0.1\n", "10.0.0.1"), ("2001:DB8::0:1", "2001:db8::1")])
def test_normalize_ip(value, expected):
    assert normalize_ip(value) == canonical_ip(value) == expected


@pytest.mark.parametrize("value", ["", "10.0.0", "10.0.0.256", "host", None, 4, b"10.0.0.1"])
def test_not_ips(value):
    assert canonical_ip(value) == ""
    with pytest.raises(ValueError, match="IP address"):
        normalize_ip(value)


# -- tunnel endpoints (the VTEP a received route names) -------------------------------------------
@pytest.mark.parametrize("value, expected", [
    ("192.0.2.7", "192.0.2.7"), ("10.0.0.1", "10.0.0.1"), (" 198.51.100.1 ", "198.51.100.1"),
    ("fd00:6d67::3", "fd00:6d67::3"), ("2001:DB8::1", "2001:db8::1"), ("1.0.0.0", "1.0.0.0"),
])
def test_unicast_node_addresses_are_tunnel_endpoints(value, expected):
    assert vtep_address(value, own="192.0.2.2") == expected


@pytest.mark.parametrize("value, kind", [
    ("127.0.0.1", "loopback"), ("127.3.2.1", "loopback"), ("::1", "loopback"),
    ("::ffff:127.0.0.1", "loopback"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("0.1.2.3", "this network"),
    ("224.0.0.5", "multicast"), ("239.1.1.1", "multicast"), ("ff02::1", "multicast"),
    ("::ffff:224.0.0.1", "multicast"),
    ("169.254.1.1", "link-local"), ("fe80::1", "link-local"),
    ("255.255.255.255", "broadcast"),
])
def test_what_no_node_can_be_is_refused_with_the_reason(value, kind):
    with pytest.raises(ValueError, match=kind):
        vtep_address(value, own="192.0.2.2")


@pytest.mark.parametrize("value, own", [("192.0.2.2", "192.0.2.2"), ("fd00::2", "FD00:0::2")])
def test_our_own_vtep_is_refused(value, own):
    with pytest.raises(ValueError, match="this node's own VTEP"):
        vtep_address(value, own=own)
    assert vtep_address(value) == normalize_ip(value)  # without `own`, it is a node's address


@pytest.mark.parametrize("value", ["", "example.org", "192.0.2.256", None, 3232235521, "1.2.3.4/32"])
def test_not_addresses_are_refused(value):
    with pytest.raises(ValueError, match="IP address"):
        vtep_address(value)
