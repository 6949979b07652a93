"""The daemons' metrics endpoints.

First the collectors with plain values: levels in, metric families out (rendered and parsed back
by prometheus_client, as a scrape would be), and each daemon's levels read from its state. Then
(root) the node agents and the reflector running in namespaces (lab.cluster), scraped over HTTP
from inside their nodes while pods come and go through the CNI plugin and BGP sessions run.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
import types
import urllib.request
from collections import Counter

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from base import metrics as endpoint
from bgp.client import BgpError
from bgp.protocol import ADD, MacRoute, Peers, PeerSummary, VtepRoute
from cni.server import CniServer
from lab.cluster import Cluster, wait_until
from lab.runtime import kathara_conf
from lab.scrape import series
from reflector import metrics as reflector_metrics
from reflector.protocol import ReflectorError, StateClient
from reflector.state import ReflectorState
from speaker import metrics as node_metrics
from speaker.evpn_state import RemoteRoutes
from tests.test_cni_server import ENV as CNI_ENV
from tests.test_cni_server import request as cni_request

ME, OTHER, THIRD = "192.0.2.2", "192.0.2.3", "192.0.2.4"
CNI = "megalos_cni_request_duration_seconds_count"
MAC, MAC2, MAC3 = "02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:03"


def scraped(*collectors) -> dict[str, float]:
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)
    return series(generate_latest(registry).decode())


class Families:
    """A collector of fixed families."""

    def __init__(self, families):
        self.families = families

    def collect(self):
        return self.families


def peer(address: str, state: str) -> PeerSummary:
    return PeerSummary(address, state, None, 0, 0, 0, 0)


class Bgp:
    """The BGP process as the collectors see it: alive, and its peer list (or a failure)."""

    def __init__(self, peers=(), fail=False, alive=True):
        self.peers, self.fail, self.alive = list(peers), fail, alive

    def call(self, command, timeout=10):
        assert isinstance(command, Peers)
        if self.fail:
            raise BgpError("no reply to peers within 2 s")
        return self.peers


# -- base.metrics ------------------------------------------------------------------------------------
def test_events_are_one_counter_series_per_key():
    values = scraped(Families([endpoint.events_family("megalos_x_events", "x",
                                                      Counter(bgp_command_failed=3, mac_limit=1))]))
    assert values == {'megalos_x_events_total{event="bgp_command_failed"}': 3,
                      'megalos_x_events_total{event="mac_limit"}': 1}
    assert scraped(Families([endpoint.events_family("megalos_x_events", "x", Counter())])) == {}


def test_sessions_are_counted_by_state_every_state_shown():
    values = scraped(Families([endpoint.sessions_family(
        "megalos_x_sessions", "x", ["Established", "Active", "Established", "Weird"])]))
    assert values == {'megalos_x_sessions{state="Idle"}': 0, 'megalos_x_sessions{state="Connect"}': 0,
                      'megalos_x_sessions{state="Active"}': 1, 'megalos_x_sessions{state="OpenSent"}': 0,
                      'megalos_x_sessions{state="OpenConfirm"}': 0,
                      'megalos_x_sessions{state="Established"}': 2, 'megalos_x_sessions{state="Weird"}': 1}


def options(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    endpoint.add_arguments(parser, 9999)
    return parser.parse_args(argv)


def test_the_endpoint_serves_a_registry_over_http_and_port_0_is_none():
    assert options().metrics_port == 9999 and options().metrics_host == "127.0.0.1"
    assert endpoint.serve(options("--metrics-port", "0"), CollectorRegistry(), "test") is None
    registry = CollectorRegistry()
    registry.register(Families([endpoint.gauge("megalos_x_up", "x", 1)]))
    server = endpoint.MetricsServer(registry, "127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as reply:
            assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            assert series(reply.read().decode()) == {"megalos_x_up": 1}
    finally:
        server.stop()


def test_a_port_in_use_is_logged_and_the_daemon_serves_on(caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.ERROR):
            assert endpoint.serve(options("--metrics-port", str(port)), CollectorRegistry(), "agent") is None
    assert f"agent: no metrics endpoint on 127.0.0.1 port {port}" in caplog.text


# -- the node agent --------------------------------------------------------------------------------
@pytest.mark.parametrize("exit_code, stdout, code", [
    (0, '{"cniVersion": "1.0.0", "interfaces": []}', 0),
    (0, "", 0),
    (1, '{"cniVersion": "1.0.0", "code": 7, "msg": "vxlanId is required"}', 7),
    (1, '{"code": 11, "msg": "try again later"}', 11),
    (1, "not JSON", -1),
    (1, '{"code": "7"}', -1),
    (1, "[7]", -1),
])
def test_the_cni_result_code_is_read_from_the_answer(exit_code, stdout, code):
    assert node_metrics.cni_result_code(exit_code, stdout) == code


def test_verbs_outside_the_spec_make_no_new_series():
    assert [node_metrics.cni_verb(v) for v in ("ADD", "DEL", "GC", "add", "", "X" * 300)] == \
        ["ADD", "DEL", "GC", "unknown", "unknown", "unknown"]


def test_cni_requests_land_in_the_histogram_by_verb_and_code():
    metrics = node_metrics.AgentMetrics()
    metrics.observe_cni("ADD", 0, "{}", 0.002)
    metrics.observe_cni("ADD", 0, "{}", 0.3)
    metrics.observe_cni("ADD", 1, '{"code": 7, "msg": "bad"}', 0.0004)
    metrics.observe_cni("BOGUS", 1, '{"code": 4, "msg": "bad"}', 0.0001)
    values = scraped(metrics.registry)
    name = "megalos_cni_request_duration_seconds"
    assert values[f'{name}_count{{code="0",verb="ADD"}}'] == 2
    assert values[f'{name}_bucket{{code="0",le="0.0025",verb="ADD"}}'] == 1
    assert values[f'{name}_bucket{{code="0",le="0.5",verb="ADD"}}'] == 2
    assert values[f'{name}_count{{code="7",verb="ADD"}}'] == 1
    assert values[f'{name}_count{{code="4",verb="unknown"}}'] == 1
    assert values["process_resident_memory_bytes"] > 0  # the process's own figures come along
    assert not [key for key in values if key.startswith("megalos_node_")]  # no control plane


def test_the_cni_socket_reports_every_answer_and_a_late_one_as_the_shim_saw_it():
    """The real socket server (cni/server.py) with the agent's hook: each verb's own code, and a
    verb still running at its deadline counted as the code 11 the shim was answered."""
    def handle(env, stdin, deadline):
        if env["CNI_COMMAND"] == "CHECK":
            time.sleep(0.8)  # beyond the deadline
            return 0, ""
        if env["CNI_COMMAND"] == "ADD":
            return 1, json.dumps({"cniVersion": "1.1.0", "code": 7, "msg": "vxlanId is required"})
        return 0, ""
    metrics = node_metrics.AgentMetrics()
    path = tempfile.mkdtemp(prefix="mgmet", dir="/tmp")  # short: AF_UNIX paths stop at 108 bytes
    server = CniServer(os.path.join(path, "agent.sock"), handle, deadline=0.3,
                       observe=metrics.observe_cni)
    server.start()
    try:
        assert cni_request(server.path)[0] == 0
        assert cni_request(server.path, {**CNI_ENV, "CNI_COMMAND": "ADD"})[1]["code"] == 7
        code, body = cni_request(server.path, {**CNI_ENV, "CNI_COMMAND": "CHECK"})
        assert code == 1 and body["code"] == 11
        wait_until(lambda: scraped(metrics.registry).get(f'{CNI}{{code="11",verb="CHECK"}}'), 5,
                   "the late CHECK counted")
    finally:
        server.stop()
        shutil.rmtree(path, ignore_errors=True)
    values = scraped(metrics.registry)
    assert values[f'{CNI}{{code="0",verb="DEL"}}'] == 1 and values[f'{CNI}{{code="7",verb="ADD"}}'] == 1
    assert values['megalos_cni_request_duration_seconds_sum{code="11",verb="CHECK"}'] >= 0.8


def test_node_levels_become_families():
    levels = node_metrics.NodeLevels(lans=2, local_macs=3, remote_macs=5, remote_vteps=1, backlog=4,
                                     withdrawals_pending=6, bgp_up=True,
                                     sessions=["Established", "Active"],
                                     events={"bgp_command_failed": 2})
    values = scraped(Families(node_metrics.families(levels)))
    assert {k: v for k, v in values.items() if "sessions" not in k} == {
        "megalos_node_lans": 2, "megalos_node_local_macs": 3, "megalos_node_remote_macs": 5,
        "megalos_node_remote_vteps": 1, "megalos_node_backlog": 4,
        "megalos_node_withdrawals_pending": 6, "megalos_node_bgp_up": 1,
        'megalos_node_events_total{event="bgp_command_failed"}': 2}
    assert values['megalos_node_bgp_sessions{state="Established"}'] == 1
    assert values['megalos_node_bgp_sessions{state="Active"}'] == 1
    quiet = scraped(Families(node_metrics.families(node_metrics.NodeLevels(0, 0, 0, 0, 0, 0, False, None))))
    assert quiet["megalos_node_bgp_up"] == 0 and not [k for k in quiet if "sessions" in k]


def speaker_with_routes(bgp) -> types.SimpleNamespace:
    """A node speaker's state, as its worker leaves it: VNIs 100 and 200 local, MAC announced
    here; routes of other nodes in 100, 200 and 300 (not local: kept, not programmed)."""
    remote = RemoteRoutes()
    for route in (VtepRoute(ADD, 100, OTHER), VtepRoute(ADD, 200, OTHER), VtepRoute(ADD, 200, THIRD),
                  VtepRoute(ADD, 300, THIRD), MacRoute(ADD, 100, MAC2, OTHER),
                  MacRoute(ADD, 200, MAC3, THIRD), MacRoute(ADD, 300, MAC3, THIRD),
                  MacRoute(ADD, 100, MAC, OTHER)):  # the local MAC, also seen elsewhere
        remote.apply(route)
    return types.SimpleNamespace(
        rd_index={100: 1, 200: 2}, announced={(100, MAC): 1}, remote=remote,
        pending={("entry",): 1.0}, counters=Counter(bgp_command_failed=1), bgp=bgp,
        backlog=lambda: 7)


def test_node_levels_are_read_from_the_speaker():
    levels = node_metrics.read_levels(speaker_with_routes(Bgp([peer("10.0.0.1", "Established"),
                                                                peer("10.0.0.2", "Connect")])))
    assert levels == node_metrics.NodeLevels(
        lans=2, local_macs=1, remote_macs=2, remote_vteps=2, backlog=7, withdrawals_pending=1,
        bgp_up=True, sessions=["Established", "Connect"], events={"bgp_command_failed": 1})


def test_a_bgp_process_that_does_not_answer_leaves_the_sessions_out():
    assert node_metrics.read_levels(speaker_with_routes(Bgp(fail=True))).sessions is None
    dead = node_metrics.read_levels(speaker_with_routes(Bgp(alive=False)))
    assert dead.sessions is None and not dead.bgp_up
    values = scraped(node_metrics.NodeCollector(speaker_with_routes(Bgp(fail=True))))
    assert values["megalos_node_bgp_up"] == 1 and values["megalos_node_remote_macs"] == 2


# -- the reflector ---------------------------------------------------------------------------------
def reflector_with_routes(bgp) -> types.SimpleNamespace:
    state = ReflectorState()
    for route in (VtepRoute(ADD, 100, ME), VtepRoute(ADD, 100, OTHER), VtepRoute(ADD, 200, OTHER),
                  MacRoute(ADD, 100, MAC, ME), MacRoute(ADD, 100, MAC2, OTHER),
                  MacRoute(ADD, 200, MAC2, OTHER)):
        state.apply(route)
    return types.SimpleNamespace(state=state, bgp=bgp, counters=Counter(session_up=2),
                                 peer_summaries=lambda: bgp.call(Peers()))


def test_reflector_levels_are_read_from_its_state_and_become_families():
    levels = reflector_metrics.read_levels(reflector_with_routes(Bgp([peer(ME, "Established"),
                                                                      peer(OTHER, "Idle")])))
    assert levels == reflector_metrics.ReflectorLevels(
        vnis=2, vteps=2, macs=3, changes=6, bgp_up=True, sessions=["Established", "Idle"],
        events={"session_up": 2})
    values = scraped(Families(reflector_metrics.families(levels)))
    assert {k: v for k, v in values.items() if "sessions" not in k} == {
        "megalos_reflector_vnis": 2, "megalos_reflector_vteps": 2, "megalos_reflector_macs": 3,
        "megalos_reflector_changes_total": 6, "megalos_reflector_bgp_up": 1,
        'megalos_reflector_events_total{event="session_up"}': 2}
    assert values['megalos_reflector_bgp_sessions{state="Idle"}'] == 1
    assert reflector_metrics.read_levels(reflector_with_routes(Bgp(fail=True))).sessions is None


def test_state_requests_are_counted_by_op_and_status():
    metrics = reflector_metrics.ReflectorMetrics(reflector_with_routes(Bgp()))
    for op, status in (("vnis", 200), ("vnis", 200), ("vni", 404), ("nonsense", 400), (None, 400),
                       (["a", "list"], 400)):
        metrics.observe_request(op, status)
    values = scraped(metrics.registry)
    assert values['megalos_reflector_state_requests_total{op="vnis",status="200"}'] == 2
    assert values['megalos_reflector_state_requests_total{op="vni",status="404"}'] == 1
    assert values['megalos_reflector_state_requests_total{op="unknown",status="400"}'] == 3
    assert values["megalos_reflector_vnis"] == 2


# -- the daemons for real ----------------------------------------------------------------------------
root = pytest.mark.root
VNI = 70400
AGENT, REFLECTOR = node_metrics.DEFAULT_PORT, reflector_metrics.DEFAULT_PORT


@pytest.fixture(scope="module")
def lab():
    """rr reflects for n1 and n2, each agent and the reflector on their default metrics ports."""
    with Cluster() as cluster:
        rr, n1, n2 = (cluster.add_node(name) for name in ("rr", "n1", "n2"))
        rr.start_reflector("--peer", n1.ip, "--peer", n2.ip)
        for node in (n1, n2):
            node.start_agent("--reflector", rr.ip)
        yield types.SimpleNamespace(cluster=cluster, rr=rr, n1=n1, n2=n2)


def value(node, port: int, name: str) -> float:
    return series(node.scrape(port)).get(name, 0.0)


def add(runtime, node, pod: str, conf, mac: str = "", ifname: str = "net0"):
    sandbox = node.pods.get(pod) or node.add_pod(pod)
    return runtime.call("ADD", conf, container_id=f"c-{pod}", netns=sandbox.netns_path,
                        ifname=ifname, args=f"MAC={mac}" if mac else "", socket=node.socket)


@root
def test_sessions_show_established_on_both_sides(lab):
    wait_until(lambda: value(lab.n1, AGENT, 'megalos_node_bgp_sessions{state="Established"}') == 1,
               15, "n1's session to the reflector")
    wait_until(lambda: value(lab.rr, REFLECTOR, 'megalos_reflector_bgp_sessions{state="Established"}')
               == 2, 15, "the reflector's sessions")
    node = series(lab.n1.scrape(AGENT))
    assert node["megalos_node_bgp_up"] == 1 and node['megalos_node_events_total{event="session_up"}'] >= 1
    assert sum(v for k, v in node.items() if k.startswith("megalos_node_bgp_sessions")) == 1
    reflector = series(lab.rr.scrape(REFLECTOR))
    assert reflector["megalos_reflector_bgp_up"] == 1
    assert reflector['megalos_reflector_events_total{event="session_up"}'] >= 2


@root
def test_cni_verbs_show_in_the_histogram_by_result_code(lab, runtime):
    before = series(lab.n1.scrape(AGENT))
    ok, invalid = f'{CNI}{{code="0",verb="ADD"}}', f'{CNI}{{code="7",verb="ADD"}}'
    assert add(runtime, lab.n1, "h1", kathara_conf("lan", VNI + 1)).code == 0
    bad = add(runtime, lab.n1, "h1", {"cniVersion": "1.0.0", "name": "x", "type": "megalos"},
              ifname="net1")
    assert bad.code == 1 and bad.json["code"] == 7
    after = series(lab.n1.scrape(AGENT))
    assert after[ok] == before.get(ok, 0) + 1 and after[invalid] == before.get(invalid, 0) + 1
    assert after[f'megalos_cni_request_duration_seconds_bucket{{code="0",le="+Inf",verb="ADD"}}'] \
        == after[ok]
    assert after['megalos_cni_request_duration_seconds_sum{code="0",verb="ADD"}'] > 0
    assert runtime.call("DEL", kathara_conf("lan", VNI + 1), container_id="c-h1",
                        netns=lab.n1.pods["h1"].netns_path, ifname="net0", socket=lab.n1.socket).code == 0
    deleted = f'{CNI}{{code="0",verb="DEL"}}'
    assert value(lab.n1, AGENT, deleted) == before.get(deleted, 0) + 1


@root
def test_a_mac_announced_on_one_node_is_a_remote_mac_on_the_other(lab, runtime):
    before = series(lab.n2.scrape(AGENT))
    assert add(runtime, lab.n2, "b", kathara_conf("lan", VNI), "02:7a:00:00:00:02").code == 0
    wait_until(lambda: value(lab.n2, AGENT, "megalos_node_lans") == before["megalos_node_lans"] + 1,
               10, "n2's LAN")
    assert add(runtime, lab.n1, "a", kathara_conf("lan", VNI), "02:7a:00:00:00:01").code == 0
    wait_until(lambda: value(lab.n2, AGENT, "megalos_node_remote_macs")
               == before["megalos_node_remote_macs"] + 1, 15, "n1's MAC programmed on n2")
    n2 = series(lab.n2.scrape(AGENT))
    assert n2["megalos_node_remote_vteps"] >= 1
    assert n2["megalos_node_local_macs"] == before["megalos_node_local_macs"] + 1
    wait_until(lambda: value(lab.n1, AGENT, "megalos_node_remote_macs") >= 1, 15, "n2's MAC on n1")
    reflector = series(lab.rr.scrape(REFLECTOR))
    assert reflector["megalos_reflector_vnis"] >= 1 and reflector["megalos_reflector_macs"] >= 2
    assert reflector["megalos_reflector_changes_total"] >= 4


@root
def test_state_socket_requests_show_by_op_and_status(lab):
    name = 'megalos_reflector_state_requests_total{op="vni",status="404"}'
    before = value(lab.rr, REFLECTOR, name)
    with pytest.raises(ReflectorError):
        StateClient(lab.rr.socket).call("vni", vni=VNI + 99)
    assert value(lab.rr, REFLECTOR, name) == before + 1


@root
def test_metrics_port_0_serves_nothing(lab):
    n3 = lab.cluster.add_node("n3")
    n3.start_agent("--metrics-port", "0")
    with pytest.raises(subprocess.CalledProcessError):
        n3.scrape(AGENT)


@root
def test_a_reflector_gone_shows_as_a_session_down(lab):
    """Last in this module: it stops the reflector."""
    lab.rr.stop_agent()
    wait_until(lambda: value(lab.n1, AGENT, 'megalos_node_bgp_sessions{state="Established"}') == 0,
               30, "n1's session down")
    node = series(lab.n1.scrape(AGENT))
    assert node['megalos_node_events_total{event="session_down"}'] >= 1
    assert node["megalos_node_bgp_up"] == 1
