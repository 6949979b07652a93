"""The OpenAPI document against the live server: schemathesis generates requests from
/api/v1/openapi.json and checks every answer (status documented, body matching its schema,
content type, no 5xx) from gunicorn serving the app in front of a real reflector and speaker.

The long poll is capped at 0.2 s on this server and the examples are bounded, so the whole
module runs in well under a minute. Nodes that POST /api/v1/nodes adds exist only inside the
reflector's namespace: nothing is sent off this machine.
"""
from __future__ import annotations

import os
import time
import urllib.request

import pytest
from hypothesis import HealthCheck, settings

schemathesis = pytest.importorskip("schemathesis")

from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

from api.openapi import DOCUMENT  # noqa: E402
from lab.api_server import ApiServer  # noqa: E402
from lab.cluster import Cluster  # noqa: E402
from lab.runtime import kathara_conf  # noqa: E402

pytestmark = pytest.mark.root
TOKEN = "schema-token"
VNI = 70200


@pytest.fixture(scope="module")
def server(runtime):
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    with Cluster() as cluster:
        rr, n1 = cluster.add_node("rr"), cluster.add_node("n1")
        rr.start_reflector("--peer", n1.ip)
        n1.start_agent("--reflector", rr.ip)
        pod = n1.add_pod("a")
        reply = runtime.call("ADD", kathara_conf("lan", VNI), container_id="c-a",
                             netns=pod.netns_path, ifname="net0", args="MAC=02:5c:00:00:00:01",
                             socket=n1.socket)
        assert reply.code == 0, reply
        with ApiServer(rr.socket, token=TOKEN, workers=1, threads=8,
                       env={"MEGALOS_API_EVENTS_MAX_TIMEOUT": "0.2"}) as api:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                with urllib.request.urlopen(api.request("/api/v1/vnis")) as reply:
                    if b'"macs":1' in reply.read():
                        break
                time.sleep(0.2)
            yield api


# The document as the app serves it (tests/test_api.py checks the served copy is this one).
# Loaded here rather than from the live URL: schemathesis' lazy `from_fixture` loader fails on
# pytest 9 ('Function' object has no attribute '_nodeid').
schema = schemathesis.openapi.from_dict(DOCUMENT)


@schema.auth()
class Token:
    """The server's token on every request, but where schemathesis leaves the document's bearer
    security out on purpose (then it expects the 401 that reads and changes answer)."""

    def get(self, case, context):
        return TOKEN

    def set(self, case, data, context):
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


# POST /api/v1/nodes refuses, with a documented 400, addresses that are well-formed but cannot
# be a peer (multicast, loopback, unspecified, the reflector's own): no schema can say that, so
# "schema-valid data is accepted" is not checked there. Everything else is.
SEMANTIC_400 = {("POST", "/api/v1/nodes")}


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_follows_its_openapi_document(case, server):
    excluded = [positive_data_acceptance] if (case.method, case.path) in SEMANTIC_400 else []
    response = case.call_and_validate(base_url=server.url, excluded_checks=excluded, timeout=10)
    # schemathesis lets a 401 pass as "credentials it lacks": with the token, there is none.
    if not case.operation.schema.is_security_param_negated(case):
        assert response.status_code != 401, (case.method, case.path, response.text)
