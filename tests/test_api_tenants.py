"""The API as another lab's user, or anyone on the network, would try it: read what the labs are
(namespaces, pods, MACs) without the token, send bodies too large or nested too deep, hide a body's
size in chunks. First the app alone (Flask's test client), then real HTTP to gunicorn, both in
front of a real state socket (the reflector fixture of tests/test_api.py)."""
from __future__ import annotations

import http.client
import json
import urllib.parse

import pytest

from api import create_app, settings
from lab.api_server import ApiServer
from tests.test_api import AUTH, TOKEN, reflector  # noqa: F401 - a fixture

READS = ("/api/v1/lans", "/api/v1/lans?namespace=lab1", "/api/v1/vnis", "/api/v1/vnis/100",
         "/api/v1/macs/02:00:00:00:00:01", "/api/v1/nodes", "/api/v1/nodes/192.0.2.2",
         "/api/v1/events", "/api/v1/events?since=0&timeout=1", "/api/v1/map")
OPEN = ("/healthz", "/readyz", "/metrics", "/api/v1/openapi.json", "/", "/map/map.js",
        "/map/map.css")


@pytest.fixture
def app(reflector):  # noqa: F811
    """The app as a deployment configures it: a token, and nothing said about reads."""
    return create_app({"REFLECTOR_SOCKET": reflector.socket, "API_TOKEN": TOKEN})


@pytest.mark.parametrize("path", READS)
def test_reads_need_the_token_by_default(app, path):
    client = app.test_client()
    for headers in ({}, {"Authorization": "Bearer not-the-token"}, {"Authorization": TOKEN}):
        for method in (client.get, client.head):
            reply = method(path, headers=headers)
            assert reply.status_code == 401, (path, headers, reply.status_code)
            assert reply.headers["WWW-Authenticate"].startswith("Bearer")
        assert client.get(path, headers=headers).json["status"] == 401
    assert client.get(path, headers=AUTH).status_code == 200


def test_what_stays_open_holds_no_labs_data(app):
    client = app.test_client()
    for path in OPEN:
        assert client.get(path).status_code == 200, path
    metrics = client.get("/metrics").text
    assert "lab1" not in metrics and "02:00:00:00:00:01" not in metrics


def test_an_unknown_path_tells_nothing_without_the_token(app):
    client = app.test_client()
    assert client.get("/api/v1/secrets").status_code == 401
    assert client.get("/api/v1/secrets", headers=AUTH).status_code == 404


def test_the_default_comes_from_the_environment_too_and_the_opt_out_is_explicit(monkeypatch,
                                                                              reflector):  # noqa: F811
    monkeypatch.setenv("MEGALOS_REFLECTOR_SOCKET", reflector.socket)
    monkeypatch.setenv("MEGALOS_API_TOKEN", TOKEN)
    monkeypatch.delenv("MEGALOS_API_READS_NEED_TOKEN", raising=False)
    assert create_app().test_client().get("/api/v1/lans").status_code == 401
    monkeypatch.setenv("MEGALOS_API_READS_NEED_TOKEN", "0")
    assert create_app().test_client().get("/api/v1/lans").status_code == 200
    assert settings.from_env({"MEGALOS_API_READS_NEED_TOKEN": "no"})["READS_NEED_TOKEN"] is False


def test_a_body_larger_than_the_limit_is_a_json_413(app):
    client = app.test_client()
    big = json.dumps({"address": "192.0.2.9", "name": "x" * (64 * 1024)})
    for headers in (AUTH, {}):  # refused before the token is even looked at
        reply = client.post("/api/v1/nodes", data=big, headers=headers)
        assert reply.status_code == 413 and reply.json == {
            "error": "the request body is larger than 65536 bytes", "status": 413}
    # A GET carrying a body it does not need is refused the same way.
    assert client.get("/api/v1/vnis", data=big, headers=AUTH).status_code == 413


@pytest.mark.parametrize("body, message", [
    ('{"address": ' + "[" * 20_000 + "]" * 20_000 + "}", "nests arrays and objects more than 64"),
    ("[" * 30_000, "nests arrays and objects more than 64"),
    ('{"address": "192.0.2.9"', "not valid JSON"),
    ('\xff{"address": 1}', "not valid JSON"),
])
def test_a_nested_or_malformed_body_is_a_json_400(app, body, message):
    """Before: 20,000 nested brackets made Flask's json.loads raise RecursionError, answered 500
    with a traceback in the log."""
    reply = app.test_client().post("/api/v1/nodes", data=body.encode("latin-1"), headers=AUTH)
    assert reply.status_code == 400 and message in reply.json["error"], reply.json


# -- real HTTP -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """gunicorn as shipped, on its own state socket (the fixture above is per test)."""
    from tests.test_api import StandInBgp
    from reflector.route_reflector import Reflector, ReflectorConfig
    from reflector.state_server import StateServer, StateService
    node = Reflector(ReflectorConfig("192.0.2.1"), spawn_bgp=StandInBgp)
    node.start()
    state = StateServer(str(tmp_path_factory.mktemp("mgapi") / "s.sock"), StateService(node))
    state.start()
    try:
        with ApiServer(state.path, token=TOKEN, workers=1, threads=4) as api:
            yield api
    finally:
        state.stop()


def send(url: str, method: str, path: str, body: bytes | None = None, headers=None,
         chunked: bool = False) -> tuple[int, dict]:
    """(status, JSON body) of one request; the answer is read even when the server answered and
    hung up before the body was all sent (as it does with one too large)."""
    address = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    try:
        try:
            if chunked:
                connection.request(method, path, body=iter([body[i:i + 8192]
                                                            for i in range(0, len(body), 8192)]),
                                   headers={**(headers or {}), "Transfer-Encoding": "chunked"},
                                   encode_chunked=True)
            else:
                connection.request(method, path, body=body, headers=headers or {})
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the end of the body: the answer waits to be read
        reply = connection.getresponse()
        return reply.status, json.loads(reply.read())
    finally:
        connection.close()


def test_over_http_reads_need_the_token(server):
    status, body = send(server.url, "GET", "/api/v1/lans")
    assert (status, body["status"]) == (401, 401)
    assert send(server.url, "GET", "/api/v1/lans", headers=server.auth)[0] == 200


@pytest.mark.parametrize("chunked", [False, True], ids=["with-length", "chunked"])
def test_over_http_a_large_body_is_413_however_it_is_sent(server, chunked):
    """A megabyte to POST /api/v1/nodes, with a Content-Length or in chunks without one: a JSON
    413, not the body read whole."""
    body = json.dumps({"address": "192.0.2.9", "name": "x" * (1 << 20)}).encode()
    status, reply = send(server.url, "POST", "/api/v1/nodes", body,
                         {**server.auth, "Content-Type": "application/json"}, chunked=chunked)
    assert status == 413 and reply["status"] == 413 and "larger than 65536" in reply["error"]


def test_over_http_deep_nesting_is_400_and_the_log_has_no_traceback(server):
    body = ('{"address": ' + "[" * 20_000 + "]" * 20_000 + "}").encode()
    status, reply = send(server.url, "POST", "/api/v1/nodes", body,
                         {**server.auth, "Content-Type": "application/json"})
    assert status == 400 and "nests arrays and objects" in reply["error"]
    assert "Traceback" not in server.log() and "RecursionError" not in server.log()
