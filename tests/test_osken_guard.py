"""bgp.osken_guard: what upstream os-ken does that makes it needed (each ``test_upstream_*``
fails when an upgrade changes it: then re-check the guard), and its os-ken-path VTEP rule on a
real os-ken Peer. On real sessions, both paths, as a rogue peer tries them: test_tenant_bgp.py."""
from __future__ import annotations

import inspect
import logging

from os_ken.lib.packet import bgp as bgp_packet
from os_ken.services.protocols.bgp.core import CoreService
from os_ken.services.protocols.bgp.peer import Peer, PeerCounterNames
from os_ken.services.protocols.bgp.rtconf import base as rtconf_base

from bgp import evpn_wire, osken_guard
from bgp.osken_patch import original
from bgp.peer_rules import Backoff
from bgp.protocol import RoutesRefused
from test_osken_compat import _rr_client_peer

CLIENT, OTHER = "192.0.2.11", "192.0.2.12"


def _update(next_hop: str, macs: range, vni: int = 100):
    rd = evpn_wire.route_distinguisher(CLIENT, 1)
    [raw] = evpn_wire.announcements(next_hop, [evpn_wire.mac_nlri(rd, f"02:00:00:00:00:{i:02x}", vni)
                                               for i in macs],
                                    evpn_wire.extended_communities(65000, vni))
    return bgp_packet.BGPMessage.parser(raw)[0]


def _learning_peer(monkeypatch):
    peer = _rr_client_peer(monkeypatch, CLIENT)
    learned = []
    peer._core_service.table_manager.learn_path = learned.append
    return peer, learned


def test_upstream_max_prefixes_only_logs_and_counts_every_prefix_ever_received(monkeypatch, caplog):
    peer, learned = _learning_peer(monkeypatch)
    peer._neigh_conf._settings[rtconf_base.MAX_PREFIXES] = 1
    new_paths = original(Peer, "_extract_and_handle_mpbgp_new_paths")
    with caplog.at_level(logging.ERROR):
        new_paths(peer, _update(CLIENT, range(2)))
        new_paths(peer, _update(CLIENT, range(2)))  # the same two routes again
    assert "Max. prefix allowed for this neighbor exceeded." in caplog.text
    assert len(peer.adj_rib_in) == 2 and len(learned) == 4        # kept, and learned
    assert peer.state.get_count(PeerCounterNames.RECV_PREFIXES) == 4  # not what is held


def test_upstream_never_empties_a_peers_adj_rib_in():
    assignments = [line for line in inspect.getsource(Peer).splitlines() if "_adj_rib_in =" in line]
    assert [line.strip() for line in assignments] == ["self._adj_rib_in = {}"]  # in __init__ only
    assert "_adj_rib_in" not in inspect.getsource(original(Peer, "connection_lost"))


def test_upstream_listens_with_the_start_protocol_bound_at_start():
    """Why osken_guard.apply runs before the speaker starts."""
    assert "self.start_protocol" in inspect.getsource(CoreService._run)


def test_a_clients_routes_naming_another_vtep_are_withdrawn_on_oskens_path(monkeypatch):
    osken_guard.apply()
    events = []
    guard = osken_guard.PeerGuard(events.append, 0, Backoff(), check_vteps=True)
    monkeypatch.setitem(osken_guard._guards, "on", guard)
    peer, learned = _learning_peer(monkeypatch)
    peer._extract_and_handle_mpbgp_new_paths(_update(CLIENT, range(3)))
    assert [p.is_withdraw for p in learned] == [False] * 3 and len(peer.adj_rib_in) == 3
    learned.clear()
    peer._extract_and_handle_mpbgp_new_paths(_update(OTHER, range(2, 5)))  # 2 held before
    assert [(p.is_withdraw, p.nlri.mac_addr) for p in learned] == [(True, "02:00:00:00:00:02")]
    assert len(peer.adj_rib_in) == 2
    assert events == [RoutesRefused(CLIENT, 3, f"next hop {OTHER} is not the peer's own address")]
