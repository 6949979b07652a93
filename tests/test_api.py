"""The HTTP API.

First, the app alone (Flask test client) in front of a real state socket served by a reflector
whose BGP process is a stand-in: the factory, the error paths, auth, settings, metrics.

Then the main tests (root): real HTTP to gunicorn serving the app, a real reflector and real
speakers in network namespaces (lab.cluster), pods attached through the CNI plugin: every
endpoint, auth, paging and filters, 400/404, the events long poll returning when a pod is added,
and 503 once the reflector is killed (that test comes last: it restarts the reflector).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from api import create_app, settings
from api.metrics import RequestMetrics, exposition
from api.openapi import DOCUMENT
from bgp.client import BgpError
from bgp.protocol import ADD, MacRoute, PeerAdd, PeerDel, Peers, PeerSummary, Start, VtepRoute
from lab.api_server import CONFIG, ApiServer
from lab.cluster import Cluster
from lab.runtime import kathara_conf
from lab.scrape import series
from reflector.protocol import ReflectorError, StateClient
from reflector.route_reflector import Reflector, ReflectorConfig
from reflector.state_server import StateServer, StateService

TOKEN = "test-token-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


# -- the app alone -------------------------------------------------------------------------------
class StandInBgp:
    """The reflector's BGP process, as far as the state socket needs it."""

    def __init__(self, on_event=None, name=""):
        self.peers: dict[str, PeerSummary] = {}
        self.fail: Exception | None = None

    def call(self, command):
        if self.fail:
            raise self.fail
        if isinstance(command, Peers):
            return list(self.peers.values())
        if isinstance(command, PeerAdd):
            new = command.address not in self.peers
            self.peers.setdefault(command.address, PeerSummary(
                address=command.address, state="Established", uptime=12.5, received=3, sent=1,
                updates_received=2, updates_sent=1))
            return new
        if isinstance(command, PeerDel):
            return self.peers.pop(command.address, None) is not None
        if isinstance(command, Start):
            return None
        raise AssertionError(command)


@pytest.fixture
def reflector():
    """A Reflector (real state, real state socket) with a stand-in BGP process."""
    node = Reflector(ReflectorConfig("192.0.2.1"), spawn_bgp=StandInBgp)
    node.start()
    node.add_peer("192.0.2.2")
    for route in (VtepRoute(ADD, 100, "192.0.2.2"), MacRoute(ADD, 100, "02:00:00:00:00:01", "192.0.2.2")):
        node.state.apply(route)
    directory = tempfile.mkdtemp(prefix="mgapi")  # short: a UNIX socket path has 107 bytes
    server = StateServer(os.path.join(directory, "state.sock"), StateService(node))
    server.start()
    node.socket = server.server_address
    yield node
    server.stop()
    shutil.rmtree(directory)


@pytest.fixture
def app(reflector):
    return create_app({"REFLECTOR_SOCKET": reflector.socket, "API_TOKEN": TOKEN})


def authorised(app):
    """A test client that sends the token with every request (reads need it)."""
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
    return client


@pytest.fixture
def client(app):
    return authorised(app)


def test_the_factory_takes_its_config_and_ignores_the_environment(monkeypatch, reflector):
    monkeypatch.setenv("MEGALOS_API_TOKEN", "from-env")
    app = create_app({"REFLECTOR_SOCKET": reflector.socket, "PAGE_LIMIT": 7})
    assert app.config["API_TOKEN"] is None and app.config["PAGE_LIMIT"] == 7
    assert create_app().config["API_TOKEN"] == "from-env"  # no config: the environment


def test_settings_read_the_token_from_the_environment_or_a_file(tmp_path):
    assert settings.read_token({}) is None
    assert settings.read_token({"MEGALOS_API_TOKEN": " t1 "}) == "t1"
    secret = tmp_path / "token"
    secret.write_text("t2\n")
    assert settings.read_token({"MEGALOS_API_TOKEN_FILE": str(secret)}) == "t2"
    with pytest.raises(settings.SettingsError, match="missing"):
        settings.read_token({"MEGALOS_API_TOKEN_FILE": str(tmp_path / "missing")})
    (tmp_path / "empty").write_text("")
    with pytest.raises(settings.SettingsError, match="empty"):
        settings.read_token({"MEGALOS_API_TOKEN_FILE": str(tmp_path / "empty")})
    env = settings.from_env({"MEGALOS_REFLECTOR_SOCKET": "/x.sock",
                             "MEGALOS_API_EVENTS_MAX_TIMEOUT": "2.5"})
    assert env == {"API_TOKEN": None, "REFLECTOR_SOCKET": "/x.sock", "EVENTS_MAX_TIMEOUT": 2.5}


def test_the_state_client_hands_large_tables_through_as_sent(reflector):
    client = StateClient(reflector.socket)
    raw = client.call_raw("vni", vni=100, limit=10)
    assert raw.startswith(b'{"vni":100,') and json.loads(raw) == client.call("vni", vni=100, limit=10)
    assert json.loads(client.call_raw("totals"))["macs"] == 1  # an ordinary result, re-encoded
    with pytest.raises(ReflectorError) as error:
        client.call_raw("vni", vni=7)
    assert error.value.status == 404 and "unknown VNI 7" in str(error.value)


def test_reads_go_through_the_state_socket(client):
    assert client.get("/api/v1/vnis").json == {
        "vnis": [{"vni": 100, "vteps": 1, "macs": 1, "owner": None, "others": []}], "total": 1,
        "next": None}
    assert client.get("/api/v1/macs/02-00-00-00-00-01").json["locations"][0]["vtep"] == "192.0.2.2"
    assert client.get("/api/v1/nodes").json["nodes"][0]["address"] == "192.0.2.2"


@pytest.mark.parametrize("path, status, message", [
    ("/api/v1/vnis/abc", 400, "malformed VNI"),
    ("/api/v1/vnis/0", 400, "malformed VNI"),
    ("/api/v1/vnis/16777216", 400, "malformed VNI"),
    ("/api/v1/vnis/" + "9" * 5000, 400, "malformed VNI"),
    ("/api/v1/vnis/7", 404, "unknown VNI 7"),
    ("/api/v1/vnis?limit=0", 400, "malformed limit"),
    ("/api/v1/vnis?limit=10001", 400, "malformed limit"),
    ("/api/v1/vnis?cursor=x", 400, "malformed cursor"),
    ("/api/v1/vnis/100?cursor=no-at-sign", 400, "malformed cursor"),
    ("/api/v1/vnis?vtep=not-an-ip", 400, "malformed vtep"),
    ("/api/v1/vnis?node=Bad_Name", 400, "malformed node name"),
    ("/api/v1/macs/02:00:00:00:00", 400, "malformed MAC"),
    ("/api/v1/macs/02:00:00:00:00:99", 404, "not announced"),
    ("/api/v1/macs/02:00:00:00:00:01?vni=x", 400, "malformed VNI"),
    ("/api/v1/nodes/192.0.2.77", 404, "not a peer"),
    ("/api/v1/nodes/nope", 400, "malformed address"),
    ("/api/v1/events?since=-1", 400, "malformed since"),
    ("/api/v1/events?timeout=nan", 400, "malformed timeout"),
    ("/api/v1/events?timeout=-1", 400, "malformed timeout"),
    ("/api/v1/lans?namespace=Lab_1", 400, "malformed namespace"),
    ("/api/v1/lans?namespace=", 400, "malformed namespace"),
    ("/api/v1/lans?namespace=" + "a" * 64, 400, "malformed namespace"),
    ("/no/such/path", 404, "not found"),
])
def test_errors_are_json(client, path, status, message):
    reply = client.get(path)
    assert reply.status_code == status
    assert reply.json["status"] == status and message in reply.json["error"], reply.json


def test_lans_show_members_and_convergence(client, reflector):
    """The LAN table is fed from the Kubernetes API in the reflector (reflector.discovery
    LanWatcher); here it is filled directly. MAC 02:00:00:00:00:01 is announced in VNI 100."""
    assert client.get("/api/v1/lans").json == {"namespace": None, "watching": False,
                                               "synced": False, "converged": False, "lans": []}
    config = json.dumps({"cniVersion": "0.3.0", "name": "a", "type": "megalos", "vxlanId": 100})
    reflector.state.lan_reset("nads", [{"metadata": {"name": "kathara-a", "namespace": "lab1",
                                                     "labels": {"name": "A"}},
                                        "spec": {"config": config}}])

    def pod(name, mac):
        status = [{"name": "lab1/kathara-a", "interface": "net0", "mac": mac, "dns": {}}]
        return {"metadata": {"name": name, "namespace": "lab1", "annotations": {
            "k8s.v1.cni.cncf.io/network-status": json.dumps(status)}},
            "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}}
    reflector.state.lan_reset("pods", [pod("pc1", "02:00:00:00:00:01")])
    body = client.get("/api/v1/lans?namespace=lab1").json
    assert body == {"namespace": "lab1", "watching": True, "synced": True, "converged": True,
                    "lans": [{"namespace": "lab1", "name": "kathara-a", "link": "A", "vni": 100,
                              "members": [{"pod": "pc1", "namespace": "lab1", "interface": "net0",
                                           "mac": "02:00:00:00:00:01", "node": "n1",
                                           "attached": True, "vteps": ["192.0.2.2"],
                                           "announced": True, "frozen": False}],
                              "converged": True, "vni_owner": None, "vni_claimed_by": [],
                              "frozen_macs": []}]}
    reflector.state.lan_event("pods", "ADDED", pod("pc2", "02:00:00:00:00:02"))
    body = client.get("/api/v1/lans").json
    assert body["namespace"] is None and not body["converged"]
    assert [(m["pod"], m["announced"]) for m in body["lans"][0]["members"]] == \
        [("pc1", True), ("pc2", False)]
    assert client.get("/api/v1/lans?namespace=other").json["lans"] == []


def test_long_polls_beyond_the_waiters_allowed_answer_at_once(reflector):
    client = authorised(create_app({"REFLECTOR_SOCKET": reflector.socket, "API_TOKEN": TOKEN,
                                    "EVENTS_MAX_WAITERS": 0}))
    started = time.monotonic()
    reply = client.get("/api/v1/events?since=2&timeout=5")
    assert reply.status_code == 200 and reply.json["changes"] == []
    assert time.monotonic() - started < 2


def test_a_wrong_method_is_a_json_405(client):
    reply = client.put("/api/v1/vnis")
    assert reply.status_code == 405 and reply.json["status"] == 405
    assert "GET" in reply.headers["Allow"]


def test_mutating_calls_need_the_bearer_token(app, client, reflector):
    body = {"address": "192.0.2.9", "name": "node-9"}
    anonymous = app.test_client()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic " + TOKEN}):
        reply = anonymous.post("/api/v1/nodes", json=body, headers=headers)
        assert reply.status_code == 401 and reply.json["status"] == 401
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    assert anonymous.delete("/api/v1/nodes/192.0.2.2").status_code == 401
    reply = client.post("/api/v1/nodes", json=body, headers=AUTH)
    assert reply.status_code == 201 and reply.json == {**body, "added": True}
    assert reply.headers["Location"].endswith("/api/v1/nodes/192.0.2.9")
    assert client.post("/api/v1/nodes", json=body, headers=AUTH).status_code == 200
    assert reflector.state.node_names == {"192.0.2.9": "node-9"}
    assert client.get("/api/v1/nodes/192.0.2.9").json["name"] == "node-9"
    assert client.delete("/api/v1/nodes/192.0.2.9", headers=AUTH).status_code == 204
    assert client.delete("/api/v1/nodes/192.0.2.9", headers=AUTH).status_code == 404
    assert reflector.state.node_names == {}


@pytest.mark.parametrize("body, message", [
    ("not json", "the request body is not valid JSON"),
    ([], "JSON object"),
    ({}, "JSON object"),
    ({"address": "192.0.2.9", "extra": 1}, "unknown fields"),
    ({"address": 7}, "address"),
    ({"address": "300.1.1.1"}, "malformed address"),
    ({"address": "192.0.2.9", "name": "Not A Name"}, "malformed node name"),
    ({"address": "224.0.0.5"}, "cannot be a BGP peer"),
    ({"address": "127.0.0.1"}, "cannot be a BGP peer"),
    ({"address": "192.0.2.1"}, "the reflector itself"),
])
def test_a_bad_node_is_refused(client, body, message):
    data = body if isinstance(body, str) else json.dumps(body)
    reply = client.post("/api/v1/nodes", data=data, headers=AUTH)
    assert reply.status_code == 400 and message in reply.json["error"], reply.json


def test_without_a_token_on_the_server_mutations_and_reads_are_forbidden(reflector):
    client = create_app({"REFLECTOR_SOCKET": reflector.socket}).test_client()
    reply = client.post("/api/v1/nodes", json={"address": "192.0.2.9"}, headers=AUTH)
    assert reply.status_code == 403 and "no API token" in reply.json["error"]
    assert client.delete("/api/v1/nodes/192.0.2.2", headers=AUTH).status_code == 403
    reply = client.get("/api/v1/nodes", headers=AUTH)
    assert reply.status_code == 403 and "MEGALOS_API_READS_NEED_TOKEN=0" in reply.json["error"]
    opened = create_app({"REFLECTOR_SOCKET": reflector.socket, "READS_NEED_TOKEN": False})
    assert opened.test_client().get("/api/v1/nodes").status_code == 200


def test_a_reflector_that_is_not_there_gives_503():
    client = authorised(create_app({"REFLECTOR_SOCKET": "/nonexistent/megalos.sock",
                                    "API_TOKEN": TOKEN}))
    for path in ("/api/v1/vnis", "/api/v1/vnis/100", "/api/v1/macs/02:00:00:00:00:01",
                 "/api/v1/nodes", "/api/v1/lans", "/api/v1/events", "/readyz"):
        reply = client.get(path)
        assert reply.status_code == 503 and "not answering" in reply.json["error"], path
    assert client.post("/api/v1/nodes", json={"address": "192.0.2.9"}, headers=AUTH).status_code == 503
    assert client.get("/healthz").status_code == 200
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and series(metrics.text)["megalos_reflector_up"] == 0


def test_a_failing_bgp_process_is_503_and_a_reflector_bug_502(client, reflector):
    reflector.bgp.fail = BgpError("reflector-bgp: process exited with code 1")
    reply = client.get("/api/v1/nodes")
    assert reply.status_code == 503 and "process exited" in reply.json["error"]
    reflector.bgp.fail = RuntimeError("boom")
    reply = client.get("/api/v1/nodes")
    assert reply.status_code == 502 and "boom" in reply.json["error"]
    reflector.bgp.fail = None
    assert client.get("/api/v1/nodes").status_code == 200  # the connection survived both


def test_an_unexpected_error_is_a_json_500_without_traceback():
    class Broken:
        def call(self, op, **args):
            raise RuntimeError("a bug with a secret")
    client = authorised(create_app({"STATE_CLIENT": Broken(), "API_TOKEN": TOKEN}))
    reply = client.get("/api/v1/vnis")
    assert reply.status_code == 500
    assert reply.json == {"error": "internal error (see the API server's log)", "status": 500}


def test_metrics_count_requests_per_endpoint(client):
    for _ in range(3):
        client.get("/api/v1/vnis/100")
    client.get("/api/v1/vnis/abc")
    client.get("/nowhere")
    values = series(client.get("/metrics").text)
    assert values['megalos_api_request_duration_seconds_count{endpoint="/api/v1/vnis/{vni}"}'] == 4
    assert values['megalos_api_requests_total{code="4xx",endpoint="/api/v1/vnis/{vni}"}'] == 1
    assert values['megalos_api_requests_total{code="4xx",endpoint="unmatched"}'] == 1
    assert values['megalos_api_request_duration_seconds_bucket{endpoint="/api/v1/vnis/{vni}",le="+Inf"}'] == 4
    assert values["megalos_vnis"] == 1 and values["megalos_bgp_peers_established"] == 1
    # Every endpoint is there from the start, at 0.
    assert values['megalos_api_request_duration_seconds_count{endpoint="/api/v1/lans"}'] == 0


def test_metrics_speak_openmetrics_to_a_scraper_that_asks(client):
    reply = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert reply.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert reply.text.endswith("# EOF\n") and "megalos_reflector_up 1" in reply.text
    plain = client.get("/metrics")
    assert plain.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"


WORKER = """
import json, sys
from api.metrics import RequestMetrics, exposition
metrics = RequestMetrics(["/a", "/b"])
for endpoint, seconds, status in json.loads(sys.argv[1]):
    metrics.observe(endpoint, seconds, status)
"""


def test_worker_metrics_files_add_up(tmp_path):
    """Two worker processes in prometheus_client's multiprocess mode (the directory in the
    environment, as api/gunicorn.conf.py sets it), then a scrape in a third adds them up."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for observations in ([["/a", 0.003, 200], ["/b", 2.0, 503]], [["/a", 0.0001, 200], ["/c", 1, 200]]):
        subprocess.run([sys.executable, "-c", WORKER, json.dumps(observations)], env=env,
                       cwd=CONFIG.parent.parent, check=True, timeout=60)
    assert len({path.stem.rsplit("_", 1)[1] for path in tmp_path.glob("*.db")}) == 2  # two pids
    body, _ = exposition(RequestMetrics(["/a", "/b"], str(tmp_path)).collectors(), "")
    values = series(body.decode())
    assert values['megalos_api_request_duration_seconds_count{endpoint="/a"}'] == 2
    assert values['megalos_api_request_duration_seconds_bucket{endpoint="/a",le="0.001"}'] == 1
    assert values['megalos_api_request_duration_seconds_bucket{endpoint="/a",le="0.005"}'] == 2
    assert values['megalos_api_requests_total{code="5xx",endpoint="/b"}'] == 1
    assert values['megalos_api_requests_total{code="2xx",endpoint="/a"}'] == 2
    assert not [name for name in values if '"/c"' in name]  # not an endpoint of the app


def test_the_openapi_document_is_served(client):
    assert client.get("/api/v1/openapi.json").json == json.loads(json.dumps(DOCUMENT))


def test_gunicorn_settings_come_from_the_environment():
    env = {**os.environ, "MEGALOS_API_BIND": "127.0.0.1:9999,[::1]:9999", "MEGALOS_API_WORKERS": "3"}
    env.pop("MEGALOS_API_THREADS", None)
    out = subprocess.run([sys.executable, "-m", "gunicorn", "-c", str(CONFIG), "--print-config"],
                         capture_output=True, text=True, env=env, cwd=CONFIG.parent.parent,
                         timeout=60).stdout
    config = dict(re.findall(r"^(\w+)\s+= (.*)$", out, re.M))
    assert config["bind"] == "['127.0.0.1:9999', '[::1]:9999']"
    assert config["worker_class"] == "gthread" and config["workers"] == "3"
    assert config["threads"] == "16" and config["wsgi_app"] == "api:create_app()"
    assert config["control_socket_disable"] == "True"


# -- gunicorn's workers and their request metrics (no reflector needed) ---------------------------
def scrape(api: ApiServer) -> dict[str, float]:
    with urllib.request.urlopen(api.url + "/metrics", timeout=15) as reply:
        return series(reply.read().decode())


def healthz_count(api: ApiServer) -> float:
    return scrape(api)['megalos_api_request_duration_seconds_count{endpoint="/healthz"}']


def workers_of(api: ApiServer) -> list[int]:
    master = api.process.pid
    return [int(pid) for pid in Path(f"/proc/{master}/task/{master}/children").read_text().split()]


def test_gunicorn_keeps_the_workers_metrics_in_a_directory_of_its_own():
    with ApiServer("/nonexistent/megalos.sock", workers=2) as api:
        directory = Path(re.search(r"request metrics of the workers in (\S+)", api.log())[1])
        for _ in range(10):
            urllib.request.urlopen(api.url + "/healthz", timeout=15).close()
        assert healthz_count(api) >= 10 and list(directory.glob("*.db"))
    assert not directory.exists()  # made for this server, removed at its exit


def test_a_given_metrics_directory_is_emptied_at_start_and_kept(tmp_path):
    stale = tmp_path / "counter_1.db"
    stale.write_bytes(b"left by an earlier server")
    with ApiServer("/nonexistent/megalos.sock", workers=1,
                   env={"MEGALOS_API_METRICS_DIR": str(tmp_path)}) as api:
        assert scrape(api)["megalos_reflector_up"] == 0
        assert not stale.exists() and list(tmp_path.glob("*.db"))
    assert tmp_path.is_dir()


def test_a_dead_workers_requests_stay_counted():
    with ApiServer("/nonexistent/megalos.sock", workers=2) as api:
        for _ in range(20):  # fresh connections: both workers answer some
            urllib.request.urlopen(api.url + "/healthz", timeout=15).close()
        before = healthz_count(api)
        victim = workers_of(api)[0]
        os.kill(victim, signal.SIGKILL)
        assert wait_for(lambda: len(workers_of(api)) == 2 and victim not in workers_of(api))
        # The scrape itself is a request to /metrics, not /healthz: the count holds exactly.
        assert healthz_count(api) == before >= 20
        urllib.request.urlopen(api.url + "/healthz", timeout=15).close()
        assert healthz_count(api) == before + 1


# -- real HTTP, real reflector and speakers ------------------------------------------------------
root = pytest.mark.root
V1, V2, V_NONE = 70100, 70101, 70199
MACS = {"a": "02:a1:00:00:00:01", "b": "02:a1:00:00:00:02", "c": "02:a1:00:00:00:03"}
TWICE = "02:a1:00:00:00:99"   # announced by two nodes in V2
MAX_WAIT = 8                  # the live server's longest long poll, seconds


def http(method: str, url: str, body=None, headers=None, timeout: float = 15.0):
    """(status, headers, JSON body or text) of one real HTTP request."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            status, head, raw = reply.status, reply.headers, reply.read()
    except urllib.error.HTTPError as exc:
        status, head, raw = exc.code, exc.headers, exc.read()
    text = raw.decode()
    is_json = head.get("Content-Type", "").startswith("application/json")
    return status, head, json.loads(text) if is_json and text else text


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    return predicate()


def attach(runtime, node, pod, vni, mac):
    reply = runtime.call("ADD", kathara_conf("lan", vni), container_id=f"c-{pod.name}",
                         netns=pod.netns_path, ifname="net0", args=f"MAC={mac}", socket=node.socket)
    assert reply.code == 0, reply


@dataclass
class Live:
    cluster: Cluster
    rr: object
    n1: object
    n2: object
    n3: object
    api: ApiServer
    runtime: object

    @property
    def url(self) -> str:
        return self.api.url

    def get(self, path: str, **kw):
        """A read, with the token."""
        return http("GET", self.url + path, headers=AUTH, **kw)


@pytest.fixture(scope="module")
def live(runtime):
    """rr reflects for n1 and n2 (n3 runs an agent but is no peer until POST /api/v1/nodes);
    V1 has a MAC of each of a, b (n1, n2) and c (n1); V2 has one MAC announced by both nodes."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    with Cluster() as cluster:
        rr, n1, n2, n3 = (cluster.add_node(name) for name in ("rr", "n1", "n2", "n3"))
        rr.start_reflector("--peer", n1.ip, "--peer", n2.ip)
        for node in (n1, n2, n3):
            node.start_agent("--reflector", rr.ip)
        for node, pod, vni, mac in ((n1, "a", V1, MACS["a"]), (n2, "b", V1, MACS["b"]),
                                    (n1, "c", V1, MACS["c"]), (n1, "d", V2, TWICE),
                                    (n2, "e", V2, TWICE)):
            attach(runtime, node, node.add_pod(pod), vni, mac)
        api = ApiServer(rr.socket, token=TOKEN, env={"MEGALOS_API_EVENTS_MAX_TIMEOUT": str(MAX_WAIT)})
        with api:
            live = Live(cluster, rr, n1, n2, n3, api, runtime)
            # The ADDs name no namespace: the unnamed one ('') owns both VNIs.
            expected = [{"vni": V1, "vteps": 2, "macs": 3, "owner": "", "others": []},
                        {"vni": V2, "vteps": 2, "macs": 1, "owner": "", "others": []}]
            converged = wait_for(lambda: live.get("/api/v1/vnis")[2].get("vnis") == expected
                                 and len(live.get(f"/api/v1/macs/{TWICE}")[2].get("locations", [])) == 2)
            assert converged, (live.get("/api/v1/vnis"), api.log()[-2000:])
            yield live


@root
def test_vnis_lists_each_vni_with_its_vtep_and_mac_counts(live):
    status, headers, body = live.get("/api/v1/vnis")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert body == {"vnis": [{"vni": V1, "vteps": 2, "macs": 3, "owner": "", "others": []},
                             {"vni": V2, "vteps": 2, "macs": 1, "owner": "", "others": []}],
                    "total": 2, "next": None}


@root
def test_a_vni_shows_its_vteps_and_mac_table(live):
    status, _, body = live.get(f"/api/v1/vnis/{V1}")
    assert status == 200
    assert [v["address"] for v in body["vteps"]] == sorted([live.n1.ip, live.n2.ip])
    assert body["mac_count"] == 3 and body["next"] is None
    table = {row["mac"]: row for row in body["macs"]}
    assert {mac: table[mac]["vtep"] for mac in table} == {
        MACS["a"]: live.n1.ip, MACS["b"]: live.n2.ip, MACS["c"]: live.n1.ip}
    for row in body["macs"]:
        assert row["vni"] == V1 and row["ip"] is None and row["ips"] == []
        assert time.time() - 600 < row["first_seen"] <= row["last_changed"] <= time.time()


@root
def test_a_mac_seen_on_two_nodes_shows_both(live):
    status, _, body = live.get(f"/api/v1/macs/{TWICE.upper().replace(':', '-')}")
    assert status == 200 and body["mac"] == TWICE
    assert [(row["vni"], row["vtep"]) for row in body["locations"]] == [
        (V2, ip) for ip in sorted([live.n1.ip, live.n2.ip])]
    assert live.get(f"/api/v1/macs/{TWICE}?vtep={live.n2.ip}")[2]["locations"][0]["vtep"] == live.n2.ip
    assert live.get(f"/api/v1/macs/{TWICE}?vni={V1}")[0] == 404


@root
def test_tables_come_in_pages(live):
    vnis, cursor = [], None
    while True:
        status, _, page = live.get("/api/v1/vnis?limit=1" + (f"&cursor={cursor}" if cursor else ""))
        assert status == 200 and len(page["vnis"]) <= 1 and page["total"] == 2
        vnis += [v["vni"] for v in page["vnis"]]
        cursor = page["next"]
        if not cursor:
            break
    assert vnis == [V1, V2]
    macs, cursor = [], None
    while True:
        query = "limit=2" + (f"&cursor={urllib.request.quote(cursor)}" if cursor else "")
        page = live.get(f"/api/v1/vnis/{V1}?{query}")[2]
        assert page["mac_count"] == 3 and len(page["vteps"]) == 2  # every page: all the VTEPs
        macs += [row["mac"] for row in page["macs"]]
        cursor = page["next"]
        if not cursor:
            break
    assert macs == sorted(MACS.values())
    assert live.get(f"/api/v1/vnis/{V1}?cursor=garbage")[0] == 400


@root
def test_tables_filter_by_vtep_and_by_node_name(live):
    body = live.get(f"/api/v1/vnis/{V1}?vtep={live.n2.ip}")[2]
    assert [row["mac"] for row in body["macs"]] == [MACS["b"]]
    # Name n1 (already a peer: 200, not 201); its rows carry the name, and the name filters.
    status, _, added = http("POST", live.url + "/api/v1/nodes",
                            {"address": live.n1.ip, "name": "n1"}, AUTH)
    assert status == 200 and added == {"address": live.n1.ip, "name": "n1", "added": False}
    body = live.get(f"/api/v1/vnis/{V1}?node=n1")[2]
    assert [row["mac"] for row in body["macs"]] == [MACS["a"], MACS["c"]]
    assert {row["node"] for row in body["macs"]} == {"n1"}
    assert {v["address"]: v["node"] for v in body["vteps"]} == {live.n1.ip: "n1", live.n2.ip: None}
    assert live.get("/api/v1/vnis?node=nobody")[2] == {"vnis": [], "total": 0, "next": None}
    both = f"/api/v1/vnis/{V1}?node=n1&vtep="
    assert len(live.get(both + live.n1.ip)[2]["macs"]) == 2  # given both, rows match both
    assert live.get(both + live.n2.ip)[2]["macs"] == []
    nodes = {n["address"]: n for n in live.get("/api/v1/nodes")[2]["nodes"]}
    assert nodes[live.n1.ip]["name"] == "n1"


@root
def test_unknown_and_malformed_are_404_and_400(live):
    for path, status in ((f"/api/v1/vnis/{V_NONE}", 404), ("/api/v1/vnis/x1", 400),
                         ("/api/v1/macs/02:a1:00:00:00:77", 404), ("/api/v1/macs/02:a1", 400),
                         ("/api/v1/nodes/192.0.2.200", 404), ("/api/v2/vnis", 404)):
        code, headers, body = live.get(path)
        assert code == status and body["status"] == status, (path, body)
        assert headers["Content-Type"] == "application/json"


@root
def test_nodes_are_the_reflectors_bgp_peers(live):
    status, _, body = live.get("/api/v1/nodes")
    assert status == 200
    peers = {n["address"]: n for n in body["nodes"]}
    for node in (live.n1, live.n2):
        peer = peers[node.ip]
        assert peer["state"] == "Established" and peer["uptime"] > 0
        assert peer["received"] >= 2 and peer["sent"] >= 1  # its Type-3s and MACs; the other's
    assert live.get(f"/api/v1/nodes/{live.n2.ip}")[2]["address"] == live.n2.ip


@root
def test_adding_and_removing_a_node_needs_the_token(live):
    url, n3 = live.url + "/api/v1/nodes", live.n3
    for headers in ({}, {"Authorization": "Bearer nope"}):
        status, head, body = http("POST", url, {"address": n3.ip}, headers)
        assert status == 401 and body["status"] == 401 and "Bearer" in head["WWW-Authenticate"]
    status, head, body = http("POST", url, {"address": n3.ip, "name": "n3"}, AUTH)
    assert status == 201 and body == {"address": n3.ip, "name": "n3", "added": True}
    assert head["Location"].endswith(f"/api/v1/nodes/{n3.ip}")
    up = wait_for(lambda: live.get(f"/api/v1/nodes/{n3.ip}")[2].get("state") == "Established")
    assert up, live.get(f"/api/v1/nodes/{n3.ip}")
    assert http("DELETE", f"{url}/{n3.ip}")[0] == 401
    assert http("DELETE", f"{url}/{n3.ip}", headers=AUTH)[0] == 204
    assert http("DELETE", f"{url}/{n3.ip}", headers=AUTH)[0] == 404
    assert live.get(f"/api/v1/nodes/{n3.ip}")[0] == 404
    assert http("POST", url, {"adress": n3.ip}, AUTH)[0] == 400


@root
def test_a_server_without_a_token_refuses_changes_and_reads(live):
    with ApiServer(live.rr.socket, token="", workers=1, threads=2) as api:
        status, _, body = http("POST", api.url + "/api/v1/nodes", {"address": live.n3.ip}, AUTH)
        assert status == 403 and "no API token" in body["error"]
        assert http("DELETE", f"{api.url}/api/v1/nodes/{live.n1.ip}", headers=AUTH)[0] == 403
        assert http("GET", api.url + "/api/v1/nodes", headers=AUTH)[0] == 403
        assert http("GET", api.url + "/readyz")[0] == 200


@root
def test_the_events_long_poll_returns_when_a_pod_is_added(live):
    seq = live.get("/api/v1/events?timeout=0&limit=1")[2]["seq"]
    result = {}

    def poll():
        started = time.monotonic()
        result["reply"] = live.get(f"/api/v1/events?since={seq}&timeout={MAX_WAIT}&vni={V1}",
                                   timeout=30)
        result["elapsed"] = time.monotonic() - started

    waiter = threading.Thread(target=poll)
    waiter.start()
    time.sleep(0.3)  # the poll is waiting
    attach(live.runtime, live.n2, live.n2.add_pod("f"), V1, "02:a1:00:00:00:f0")
    waiter.join(30)
    status, _, body = result["reply"]
    assert status == 200 and result["elapsed"] < MAX_WAIT - 0.5, result  # woken, not timed out
    added = [c for c in body["changes"] if c.get("mac") == "02:a1:00:00:00:f0"]
    assert added and added[0]["action"] == "add" and added[0]["vtep"] == live.n2.ip, body
    assert all(change["seq"] > seq and change["vni"] == V1 for change in body["changes"])
    assert body["next"] >= body["changes"][-1]["seq"] and not body["truncated"]


@root
def test_the_events_long_poll_is_bounded(live):
    seq = live.get("/api/v1/events?timeout=0&limit=1")[2]["seq"]
    started = time.monotonic()
    status, _, body = live.get(f"/api/v1/events?since={seq}&timeout=999&vni={V_NONE}", timeout=30)
    elapsed = time.monotonic() - started
    assert status == 200 and body["changes"] == []
    assert MAX_WAIT - 0.5 < elapsed < MAX_WAIT + 4  # shortened to the server's maximum


@root
def test_health_readiness_and_metrics(live):
    assert live.get("/healthz")[:3:2] == (200, {"status": "ok"})
    status, _, body = live.get("/readyz")
    assert status == 200 and body["reflector"]["router_id"] == live.rr.ip
    for _ in range(20):  # on fresh connections: both workers answer some
        assert live.get(f"/api/v1/vnis/{V2}")[0] == 200
    status, headers, text = live.get("/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    values = series(text)
    assert values["megalos_reflector_up"] == 1
    assert values["megalos_bgp_peers"] >= 2 and values["megalos_bgp_peers_established"] >= 2
    assert values["megalos_bgp_routes"] >= 6 and values["megalos_vnis"] == 2
    assert values["megalos_macs"] >= 4
    count = 'megalos_api_request_duration_seconds_count{endpoint="/api/v1/vnis/{vni}"}'
    assert values[count] >= 20
    # Every scrape, whichever worker answers it, adds up both workers' counts.
    assert all(series(live.get("/metrics")[2])[count] >= 20 for _ in range(6))


@root
def test_the_openapi_document_is_served_live(live):
    status, _, body = live.get("/api/v1/openapi.json")
    assert status == 200 and body["openapi"].startswith("3.") and "/api/v1/vnis/{vni}" in body["paths"]


@root
def test_a_dead_reflector_gives_503_until_it_is_back(live):
    """Runs last in this module: it kills the reflector, then starts it again."""
    live.rr.stop_agent(sig=signal.SIGKILL)
    try:
        for path in ("/api/v1/vnis", f"/api/v1/vnis/{V1}", f"/api/v1/macs/{TWICE}", "/api/v1/nodes",
                     "/api/v1/events?timeout=1", "/readyz"):
            status, headers, body = live.get(path)
            assert status == 503 and body["status"] == 503 and "not answering" in body["error"], path
            assert headers["Retry-After"]
        assert http("POST", live.url + "/api/v1/nodes", {"address": live.n3.ip}, AUTH)[0] == 503
        assert live.get("/healthz")[0] == 200
        status, _, text = live.get("/metrics")
        assert status == 200 and series(text)["megalos_reflector_up"] == 0
    finally:
        if os.path.exists(live.rr.socket):
            os.unlink(live.rr.socket)  # stale: the killed reflector could not remove it
        live.rr.start_reflector("--peer", live.n1.ip, "--peer", live.n2.ip)
    assert wait_for(lambda: live.get("/readyz")[0] == 200, timeout=15)
    assert wait_for(lambda: live.get("/api/v1/vnis")[2]["total"] == 2, timeout=30)


def test_a_request_line_over_gunicorns_limit_is_the_documented_414():
    """A query string of 5,000 bytes never reaches the app: gunicorn answers 414 itself, and the
    OpenAPI document says so for every operation (the schema test sends such lines)."""
    with ApiServer("/nonexistent/megalos.sock", workers=1) as api:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(api.request("/api/v1/events?timeout=" + "9" * 5000), timeout=10)
        assert refused.value.code == 414
        assert refused.value.headers.get_content_type() == "text/html"
    for path, methods in DOCUMENT["paths"].items():
        for method, operation in methods.items():
            assert "text/html" in operation["responses"]["414"]["content"], (method, path)
