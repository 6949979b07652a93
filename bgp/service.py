"""The commands of the protocol applied to one os-ken `BGPSpeaker`, and its events reported.

A node's own routes go out through bgp.osken_origin's table (the wire path: a burst of commands,
one flush, few UPDATEs) or, with `MEGALOS_WIRE_ORIGIN=0` or `MEGALOS_WIRE_PATH=0`, through
os-ken's API (`OskenOrigin`); both take the same calls.

`osken` is a namespace of the os-ken modules, imported by bgp.process after eventlet's monkey
patching (so this module imports no os-ken itself and its logic can be driven by a stand-in);
`emit` takes one protocol event.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from bgp import claims
from bgp.events import peer_summary, route_event
from bgp.protocol import (ROLE_REFLECTOR, Command, MacAdd, MacDel, Originated, PeerAdd, PeerDel,
                          Peers, PeerState, ProtocolError, Reply, Rib, Start, Stop, VtepAdd,
                          VtepDel, event_json, route_distinguisher, route_target)

log = logging.getLogger("megalos.bgp.service")


@dataclass
class _LocalVni:
    rd_index: int
    route_dist: str
    claim: object = None                      # base.tenancy.VniClaim the VTEP route carries
    macs: dict = field(default_factory=dict)  # (mac, ip) -> mobility seq
    pods: dict = field(default_factory=dict)  # (mac, ip) -> the pod its route names, or None


class OskenOrigin:
    """Routes originated through os-ken's API: a VRF per VNI (export only), each route added to
    it by ``evpn_prefix_add`` (with our communities: ``osken_compat.originate_evpn``). The calls
    are those of bgp.osken_origin.OriginTable, which keeps them on the wire path instead."""

    def __init__(self, osken, speaker, config: Start):
        self._osken = osken
        self._speaker = speaker
        self._config = config

    def vrf_add(self, route_dist: str, vni: int) -> None:
        # Export only: what we receive is reported from the global EVPN table
        # (_on_best_path_change) and the agent filters it by VNI; importing every received route
        # into a VRF as well only cost CPU (a fifth of this process's for 10k MACs) and memory.
        self._speaker.vrf_add(route_dist=route_dist, import_rts=[],
                              export_rts=[route_target(self._config.asn, vni)],
                              route_family=self._osken.bgpspeaker.RF_L2_EVPN)

    def vrf_del(self, route_dist: str) -> None:
        self._speaker.vrf_del(route_dist)

    def vtep(self, route_dist: str, vni: int, communities: list[bytes]) -> None:
        bgpspeaker = self._osken.bgpspeaker
        router_id = self._config.router_id
        self._osken.compat.originate_evpn(
            self._speaker, communities, route_type=bgpspeaker.EVPN_MULTICAST_ETAG_ROUTE,
            route_dist=route_dist, ethernet_tag_id=0, ip_addr=router_id, vni=vni,
            next_hop=router_id, tunnel_type=bgpspeaker.TUNNEL_TYPE_VXLAN,
            pmsi_tunnel_type=bgpspeaker.PMSI_TYPE_INGRESS_REP)

    def mac(self, route_dist: str, vni: int, mac: str, ip: str | None, seq: int | None,
            communities: list[bytes]) -> None:
        bgpspeaker = self._osken.bgpspeaker
        mobility = {"mac_mobility": seq} if seq is not None else {}
        self._osken.compat.originate_evpn(
            self._speaker, communities, route_type=bgpspeaker.EVPN_MAC_IP_ADV_ROUTE,
            route_dist=route_dist, esi=0, ethernet_tag_id=0, mac_addr=mac, ip_addr=ip, vni=vni,
            next_hop=self._config.router_id, tunnel_type=bgpspeaker.TUNNEL_TYPE_VXLAN, **mobility)

    def withdraw_mac(self, route_dist: str, mac: str, ip: str | None) -> None:
        self._speaker.evpn_prefix_del(route_type=self._osken.bgpspeaker.EVPN_MAC_IP_ADV_ROUTE,
                                      route_dist=route_dist, ethernet_tag_id=0, mac_addr=mac, ip_addr=ip)

    def withdraw_vtep(self, route_dist: str) -> None:
        self._speaker.evpn_prefix_del(route_type=self._osken.bgpspeaker.EVPN_MULTICAST_ETAG_ROUTE,
                                      route_dist=route_dist, ethernet_tag_id=0,
                                      ip_addr=self._config.router_id)

    def flush(self) -> None:
        """os-ken sends as it goes."""

    def sent_to(self, address: str) -> int:
        """os-ken's Adj-RIB-out counts these routes already."""
        return 0


class BgpService:
    def __init__(self, osken, emit: Callable):
        self._osken = osken
        self._emit = emit
        self._speaker = None
        self._config: Start | None = None
        self._peers: dict[str, PeerAdd] = {}
        self._vnis: dict[int, _LocalVni] = {}
        self._wire = None  # bgp.osken_fastpath.WireTable: received EVPN routes
        self._origin = None  # what originates ours: OskenOrigin or bgp.osken_origin.OriginTable
        self._guard = None  # bgp.osken_guard.PeerGuard: what peers may send
        self.stopped = False
        self._handlers: dict[type, Callable[[Any], Any]] = {
            Start: self._start, PeerAdd: self._peer_add, PeerDel: self._peer_del,
            VtepAdd: self._vtep_add, VtepDel: self._vtep_del, MacAdd: self._mac_add,
            MacDel: self._mac_del, Peers: self._peers_summary, Rib: self._rib,
            Originated: self._originated, Stop: self._stop}

    def handle(self, command_id: int, command: Command) -> Reply:
        if not isinstance(command, Start) and self._speaker is None:
            return Reply(command_id, False, error="not started")
        try:
            return Reply(command_id, True, self._handlers[type(command)](command))
        except ProtocolError as exc:
            return Reply(command_id, False, error=str(exc))
        except Exception as exc:  # os-ken reports bad input as exceptions
            log.exception("%s failed", command.op)
            return Reply(command_id, False, error=f"{type(exc).__name__}: {exc}")

    # -- commands ---------------------------------------------------------------------------------
    def _start(self, config: Start) -> None:
        if self._speaker is not None:
            raise ProtocolError("already started")
        bgpspeaker = self._osken.bgpspeaker
        hosts = [config.listen_host] if config.listen_host else bgpspeaker.DEFAULT_BGP_SERVER_HOSTS[:1]
        self._config = config
        self._speaker = bgpspeaker.BGPSpeaker(
            as_number=config.asn, router_id=config.router_id, bgp_server_hosts=hosts,
            bgp_server_port=config.listen_port, best_path_change_handler=self._on_best_path_change,
            peer_up_handler=self._on_peer_up, peer_down_handler=self._on_peer_down,
            cluster_id=config.cluster_id)
        compat = self._osken.compat
        compat.set_connect_retry(config.connect_retry)
        if config.role == ROLE_REFLECTOR:
            compat.apply_reflector_fixes()
        if config.restart_grace:
            compat.enable_restart_grace(config.restart_grace)
        self._guard = self._osken.guard.enable(
            self._emit, config.max_routes_per_peer, self._osken.Backoff(config.route_limit_backoff),
            check_vteps=config.role == ROLE_REFLECTOR)
        wire = os.environ.get("MEGALOS_WIRE_PATH", "1") != "0"  # "0": os-ken's own path (tests)
        if wire:
            self._wire = self._osken.fastpath.enable_wire_path(
                self._emit, reflect=config.role == ROLE_REFLECTOR, guard=self._guard)
        if config.role != ROLE_REFLECTOR:
            if wire and os.environ.get("MEGALOS_WIRE_ORIGIN", "1") != "0":
                self._origin = self._osken.origin.enable_origin(config.router_id, config.asn)
            else:
                self._origin = OskenOrigin(self._osken, self._speaker, config)
        if config.listen_port and not self._wait_listening():
            raise ProtocolError(f"cannot listen on {hosts[0]} port {config.listen_port} (see log)")
        log.info("started %s %s AS %d", config.role, config.router_id, config.asn)

    def _wait_listening(self, timeout: float = 2.0) -> bool:
        core = self._osken.CORE_MANAGER.get_core_service()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if getattr(core, "listen_sockets", None):
                return True
            self._osken.sleep(0.01)
        return False

    def _peer_add(self, peer: PeerAdd) -> bool:
        known = self._peers.get(peer.address)
        if known == peer:
            return False
        if known is not None:
            raise ProtocolError(f"peer {peer.address} exists with other settings; delete it first")
        compat = self._osken.compat
        self._speaker.neighbor_add(
            address=peer.address, remote_as=self._config.asn, enable_ipv4=False, enable_evpn=True,
            password=peer.password, is_route_reflector_client=self._config.role == ROLE_REFLECTOR,
            connect_mode=compat.connect_mode(peer.connect_mode))
        # No yield since neighbor_add: the session cannot have started.
        compat.set_hold_time(peer.address, self._config.hold_time)
        self._peers[peer.address] = peer
        return True

    def _peer_del(self, command: PeerDel) -> bool:
        if self._peers.pop(command.address, None) is None:
            return False
        self._osken.compat.delete_neighbor(self._speaker, command.address)
        return True

    def _vtep_add(self, command: VtepAdd) -> bool:
        self._check_originates()
        known = self._vnis.get(command.vni)
        if known is not None:
            if known.rd_index != command.rd_index:
                raise ProtocolError(f"vni {command.vni} already has rd_index {known.rd_index}")
            if known.claim == command.claim:
                return False
            self._announce_vtep(known.route_dist, command)  # the VNI changed hands: claim again
            known.claim = command.claim
            return True
        for other_vni, other in self._vnis.items():
            if other.rd_index == command.rd_index:
                raise ProtocolError(f"rd_index {command.rd_index} is used by vni {other_vni}")
        route_dist = route_distinguisher(self._config.router_id, command.rd_index)
        self._origin.vrf_add(route_dist, command.vni)
        try:
            self._announce_vtep(route_dist, command)
        except Exception:
            self._origin.vrf_del(route_dist)
            raise
        self._vnis[command.vni] = _LocalVni(command.rd_index, route_dist, command.claim)
        return True

    def _announce_vtep(self, route_dist: str, command: VtepAdd) -> None:
        self._origin.vtep(route_dist, command.vni,
                          claims.vtep_claim(command.claim) if command.claim else [])

    def _vtep_del(self, command: VtepDel) -> bool:
        known = self._vnis.pop(command.vni, None)
        if known is None:
            return False
        for mac, ip in sorted(known.macs, key=str):
            self._origin.withdraw_mac(known.route_dist, mac, ip)
        self._origin.withdraw_vtep(known.route_dist)
        self._origin.vrf_del(known.route_dist)
        return True

    def _mac_add(self, command: MacAdd) -> bool:
        self._check_originates()
        known = self._local_vni(command.vni)
        key = (command.mac, command.ip)
        if key in known.macs and (known.macs[key], known.pods[key]) == (command.seq, command.pod):
            return False
        # A sequence number (RFC 7432 MAC mobility) only once the MAC has moved: the route then
        # wins over the one its old node may still announce.
        self._origin.mac(known.route_dist, command.vni, command.mac, command.ip, command.seq or None,
                         claims.mac_holder(command.pod) if command.pod else [])
        known.macs[key] = command.seq
        known.pods[key] = command.pod
        return True

    def _mac_del(self, command: MacDel) -> bool:
        known = self._local_vni(command.vni)
        key = (command.mac, command.ip)
        if key not in known.macs:
            return False
        self._origin.withdraw_mac(known.route_dist, command.mac, command.ip)
        del known.macs[key], known.pods[key]
        return True

    def _check_originates(self) -> None:
        if self._config.role == ROLE_REFLECTOR:
            raise ProtocolError("the reflector originates no routes")

    def _local_vni(self, vni: int) -> _LocalVni:
        known = self._vnis.get(vni)
        if known is None:
            raise ProtocolError(f"vni {vni} was not added")
        return known

    def _peers_summary(self, command: Peers) -> list[dict]:
        core = self._osken.CORE_MANAGER.get_core_service()
        counters = self._osken.PeerCounterNames
        now = time.time()
        result = []
        for peer in core.peer_manager.iterpeers:
            if peer.ip_address not in self._peers:
                continue  # deleted: os-ken keeps nothing we should report
            sent = sum(1 for r in peer.adj_rib_out.values() if not r.path.is_withdraw and not r.filtered)
            received = len(peer.adj_rib_in)
            if self._wire is not None:  # the routes taken on the wire path
                sent += self._wire.sent_to(peer.ip_address)
                received += self._wire.received.get(peer.ip_address, 0)
            if self._origin is not None:
                sent += self._origin.sent_to(peer.ip_address)
            result.append(peer_summary(
                address=peer.ip_address, state=peer.state.bgp_state,
                established_at=peer.state._established_time, received=received,
                sent=sent, updates_received=peer.state.get_count(counters.RECV_UPDATES),
                updates_sent=peer.state.get_count(counters.SENT_UPDATES), now=now).json())
        return sorted(result, key=lambda p: p["address"])

    def _rib(self, command: Rib) -> list[dict]:
        core = self._osken.CORE_MANAGER.get_core_service()
        table = core.table_manager.get_global_table_by_route_family(self._osken.RF_L2_EVPN)
        routes = []
        for dest in list(table.values()):
            path = dest.best_path
            if path is None or path.source is None:
                continue
            route = route_event(path, False, self._config.router_id)
            if route is not None:
                routes.append(event_json(route))
        if self._wire is not None:
            routes += [event_json(route) for route in self._wire.events()]
        return routes

    def _originated(self, command: Originated) -> dict:
        return {"vteps": [{"vni": vni, "rd_index": known.rd_index} for vni, known in self._vnis.items()],
                "macs": [{"vni": vni, "mac": mac, "ip": ip, "seq": seq}
                         for vni, known in self._vnis.items() for (mac, ip), seq in known.macs.items()]}

    def flush(self) -> None:
        """Send the routes the commands so far originated or withdrew (the end of a burst: the
        wire path sends them as few UPDATEs as fit; os-ken sent them already)."""
        if self._origin is not None:
            self._origin.flush()

    def _stop(self, command: Stop) -> None:
        self.stop()

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self._speaker is not None:
            self._speaker.shutdown()

    # -- os-ken callbacks (in os-ken's green threads) ----------------------------------------------
    def _on_best_path_change(self, ev) -> None:
        route = route_event(ev.path, ev.is_withdraw, self._config.router_id if self._config else None)
        if route is not None:
            self._emit(route)

    def _on_peer_up(self, address: str, remote_as: int) -> None:
        self._emit(PeerState(address, True))

    def _on_peer_down(self, address: str, remote_as: int) -> None:
        reason = self._guard.down_reason(address) if self._guard is not None else ""
        self._emit(PeerState(address, False, reason))
