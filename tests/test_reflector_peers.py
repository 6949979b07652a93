"""The reflector's static peers from its command line (pure)."""
import pytest

from reflector.main import peer_addresses, split_peer


def test_named_and_plain_peers():
    assert split_peer("node-1=192.0.2.5") == ("192.0.2.5", "node-1")
    assert split_peer("192.0.2.5") == ("192.0.2.5", None)
    assert split_peer("=192.0.2.5") == ("192.0.2.5", None)


@pytest.mark.parametrize("raw", ["node-1=", "node-1=not-an-ip", "999.0.0.1"])
def test_bad_peers_are_refused(raw):
    with pytest.raises(ValueError):
        split_peer(raw)


def test_peers_and_cidrs_without_the_reflector_itself():
    peers = peer_addresses(["a=192.0.2.5", "192.0.2.9"], ["192.0.2.0/30"], router_id="192.0.2.1")
    assert peers == ["192.0.2.5", "192.0.2.9", "192.0.2.2"]


def test_a_huge_cidr_is_refused():
    with pytest.raises(ValueError, match="at most"):
        peer_addresses([], ["10.0.0.0/8"], router_id="192.0.2.1")
