"""RemoteRoutes: received routes in, VTEP FDB changes out (pure logic, plain values)."""
from bgp.protocol import MacRoute, VtepRoute
from speaker.evpn_state import FloodEntry, MacEntry, RemoteRoutes

MAC = "02:00:00:00:00:01"


def mac(action, vtep, vni=100, seq=0, m=MAC):
    return MacRoute(action, vni, m, vtep, seq=seq)


def flood(action, vtep, vni=100):
    return VtepRoute(action, vni, vtep)


def test_flood_entries_added_once_removed_once():
    routes = RemoteRoutes()
    assert routes.apply(flood("add", "10.0.0.2")) == ([FloodEntry(100, "10.0.0.2")], [])
    assert routes.apply(flood("add", "10.0.0.2")) == ([], [])  # adds repeat: idempotent
    assert routes.apply(flood("del", "10.0.0.2")) == ([], [FloodEntry(100, "10.0.0.2")])
    assert routes.apply(flood("del", "10.0.0.2")) == ([], [])
    assert routes.floods == {}


def test_mac_add_and_withdraw():
    routes = RemoteRoutes()
    assert routes.apply(mac("add", "10.0.0.2")) == ([MacEntry(100, MAC, "10.0.0.2")], [])
    assert routes.apply(mac("add", "10.0.0.2")) == ([], [])
    assert routes.apply(mac("del", "10.0.0.2")) == ([], [MacEntry(100, MAC, "10.0.0.2")])
    assert routes.winner(100, MAC) is None and routes.mac_count() == 0


def test_higher_sequence_number_wins_whatever_the_order():
    routes = RemoteRoutes()
    routes.apply(mac("add", "10.0.0.3", seq=1))
    assert routes.apply(mac("add", "10.0.0.2", seq=0)) == ([], [])  # older location: ignored
    assert routes.winner(100, MAC) == "10.0.0.3"
    assert routes.max_seq(100, MAC) == 1
    # The newer location withdrawn: the older one is what is left (replace, no delete).
    assert routes.apply(mac("del", "10.0.0.3")) == ([MacEntry(100, MAC, "10.0.0.2")], [])


def test_equal_sequence_numbers_latest_announcement_wins():
    routes = RemoteRoutes()
    routes.apply(mac("add", "10.0.0.2"))
    assert routes.apply(mac("add", "10.0.0.3")) == ([MacEntry(100, MAC, "10.0.0.3")], [])
    assert routes.apply(mac("del", "10.0.0.2")) == ([], [])  # not the winner: nothing changes


def test_routes_of_every_vni_are_kept_and_desired_per_vni():
    routes = RemoteRoutes()
    routes.apply(flood("add", "10.0.0.2", vni=7))
    routes.apply(mac("add", "10.0.0.2", vni=7))
    routes.apply(mac("add", "10.0.0.4", vni=8, m="02:00:00:00:00:08"))
    assert routes.desired(7) == {FloodEntry(7, "10.0.0.2"), MacEntry(7, MAC, "10.0.0.2")}
    assert routes.desired(8) == {MacEntry(8, "02:00:00:00:00:08", "10.0.0.4")}
    assert routes.desired(9) == set()



def test_a_pinned_mac_ignores_newer_claims_while_its_vtep_announces_it():
    routes = RemoteRoutes()
    routes.apply(mac("add", "10.0.0.2", seq=1))
    routes.pin(100, MAC, "10.0.0.2")  # frozen: a duplicate
    assert routes.apply(mac("add", "10.0.0.3", seq=2)) == ([], [])
    assert routes.apply(mac("add", "10.0.0.4", seq=9)) == ([], [])
    assert routes.winner(100, MAC) == "10.0.0.2" and routes.seq(100, MAC, "10.0.0.4") == 9
    # The pinned VTEP withdraws: the MAC goes to the best one left, and stays there.
    assert routes.apply(mac("del", "10.0.0.2")) == ([MacEntry(100, MAC, "10.0.0.4")], [])
    assert routes.pins == {(100, MAC): "10.0.0.4"}
    assert routes.apply(mac("add", "10.0.0.3", seq=10)) == ([], [])
    routes.pin(100, MAC, None)  # released: the sequence numbers decide again
    assert routes.winner(100, MAC) == "10.0.0.3"
    assert routes.seq(100, MAC, "10.0.0.9") == 0
