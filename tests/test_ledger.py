"""speaker.ledger.Ledger with plain values: what should be announced in, commands out, replies in."""
from __future__ import annotations

from base.tenancy import VniClaim
from bgp.protocol import MacAdd, MacDel, OriginatedRoutes, VtepAdd, VtepDel
from speaker.ledger import Ledger

MAC, MAC2 = "02:00:00:00:00:01", "02:00:00:00:00:02"


def accept_all(ledger: Ledger, now: float = 0.0) -> list:
    commands = ledger.commands(now)
    for command in commands:
        ledger.accepted(command)
    return commands


def test_vtep_routes_first_then_mac_routes_then_withdrawn_vtep_routes():
    ledger = Ledger()
    ledger.add_vni(300)
    accept_all(ledger)
    ledger.remove_vni(300)
    ledger.add_vni(100)
    ledger.set_mac((100, MAC), 0)
    assert ledger.commands(0) == [VtepAdd(100, 2), MacAdd(100, MAC), VtepDel(300)]  # RD 1 still in use


def test_nothing_is_recorded_before_it_is_accepted():
    ledger = Ledger()
    ledger.add_vni(100)
    ledger.set_mac((100, MAC), 3)
    commands = ledger.commands(0)
    assert ledger.rd_index == {} and ledger.announced == {}
    for command in commands:
        ledger.failed(command, now=0)
    assert ledger.pending == 2 and ledger.commands(0.4) == []
    assert ledger.commands(0.5) == [VtepAdd(100, 1), MacAdd(100, MAC, seq=3)]


def test_a_mac_waits_for_its_vni_and_goes_once_the_vtep_route_is_accepted():
    ledger = Ledger()
    ledger.add_vni(100)
    ledger.set_mac((100, MAC), 0)
    vtep, mac = ledger.commands(0)
    ledger.failed(vtep, 0)
    ledger.failed(mac, 0)
    assert ledger.commands(0.5) == [vtep, mac]  # retried together, in order
    ledger.failed(vtep, 0.5)  # 1 s before the next try
    ledger.accepted(mac)  # "vni 100 was not added" would be a failure; say it went
    ledger.set_mac((100, MAC2), 0)
    assert ledger.commands(0.6) == []  # MAC2 waits for its VNI's VTEP route
    assert ledger.commands(1.5) == [vtep]
    ledger.accepted(vtep)
    assert ledger.commands(1.5) == [MacAdd(100, MAC2)]


def test_what_comes_and_goes_between_two_batches_costs_no_command():
    ledger = Ledger()
    ledger.add_vni(100)
    accept_all(ledger)
    ledger.set_mac((100, MAC), 0)
    ledger.drop_mac((100, MAC))
    assert ledger.commands(0) == []


def test_a_vni_removed_withdraws_its_macs_with_its_vtep_route():
    ledger = Ledger()
    ledger.add_vni(100)
    ledger.set_mac((100, MAC), 0)
    accept_all(ledger)
    ledger.remove_vni(100)
    assert ledger.macs == {} and ledger.commands(0) == [VtepDel(100)]
    ledger.accepted(VtepDel(100))
    assert ledger.rd_index == {} and ledger.announced == {}


def test_a_lost_process_gets_everything_again():
    ledger = Ledger()
    ledger.add_vni(100)
    ledger.set_mac((100, MAC), 2)
    accept_all(ledger)
    ledger.lost()
    assert ledger.commands(0) == [VtepAdd(100, 1), MacAdd(100, MAC, seq=2)]


def test_what_the_process_originates_replaces_what_was_believed_and_the_difference_is_sent():
    ledger = Ledger()
    ledger.add_vni(100)
    ledger.set_mac((100, MAC), 0)
    accept_all(ledger)
    differ = ledger.originated(OriginatedRoutes(vteps={100: 1, 555: 9},
                                                macs={(100, MAC2, None): 0, (555, MAC, None): 4}))
    assert differ == 4  # VNI 555 and its MAC, MAC2 it holds, MAC it lost
    assert ledger.commands(0) == [MacAdd(100, MAC), MacDel(100, MAC2), VtepDel(555)]


def test_a_new_claim_or_pod_is_announced_again_with_the_same_numbers():
    """The LAN came back for another namespace, the MAC for another pod: the route is announced
    again (the BGP process replaces it), never withdrawn first."""
    ledger = Ledger()
    lab_a, lab_b = VniClaim(1000, "lab-a"), VniClaim(2000, "lab-b")
    ledger.add_vni(100, lab_a)
    ledger.set_mac((100, MAC), 4, "lab-a/pc1")
    assert accept_all(ledger) == [VtepAdd(100, 1, "lab-a", 1000), MacAdd(100, MAC, seq=4, pod="lab-a/pc1")]
    ledger.add_vni(100, lab_a)
    ledger.set_mac((100, MAC), 4, "lab-a/pc1")
    assert ledger.commands(0) == []  # the same again: nothing to send
    ledger.add_vni(100, lab_b)
    ledger.set_mac((100, MAC), 4, "lab-b/pc1")
    assert accept_all(ledger) == [VtepAdd(100, 1, "lab-b", 2000), MacAdd(100, MAC, seq=4, pod="lab-b/pc1")]
    assert ledger.claims_accepted == {100: lab_b} and ledger.pods_accepted == {(100, MAC): "lab-b/pc1"}


def test_what_the_process_originates_keeps_the_claims_where_the_numbers_match():
    ledger = Ledger()
    ledger.add_vni(100, VniClaim(1000, "lab-a"))
    ledger.add_vni(200, VniClaim(1000, "lab-a"))
    ledger.set_mac((100, MAC), 0, "lab-a/pc1")
    accept_all(ledger)
    # The process lost VNI 200's route and holds VNI 100's and the MAC's as accepted.
    assert ledger.originated(OriginatedRoutes({100: 1}, {(100, MAC, None): 0})) == 1
    assert ledger.commands(0) == [VtepAdd(200, 2, "lab-a", 1000)]
