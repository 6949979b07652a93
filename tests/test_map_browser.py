"""The LAN map in a real browser: headless Chromium (Debian's, driven by Playwright) on the page
the API serves, against the demo's lab running on the namespace cluster (lab.labrun: an emulated
Kubernetes API server, the reflector watching it, three nodes' agents, Kathara's pods attached
through the Multus harness).

The map shows the demo lab; a device added (CNI ADD through Multus) appears without a reload, and
goes when deleted; a killed agent turns its node and its LANs to trouble, and back once it runs
again; clicking shows a LAN's MAC table and VTEPs, a node's session; reads need the token: the
page asks for it, or takes it from the URL's fragment, which never reaches the server (the other
tests hand it over that way).

Screenshots of each state are kept in test-artifacts/map/ ($MEGALOS_TEST_ARTIFACTS to move it).
"""
from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from lab.api_server import ApiServer
from demo.lab import LAB, lab_conf, plan
from lab.browser import MapPage, launch
from lab.cluster import REPO
from lab.labrun import RunningLab

pytestmark = pytest.mark.root
playwright_api = pytest.importorskip("playwright.sync_api")

SPARE = {"pc4": ["C"]}  # in the lab, not started with it: the "new ADD"
TOKEN = "map-token-4711"
LIVE = 15_000  # ms a change may take to show here (the budget is measured in bench/map.py)
# Long polls of at most 2 s: gunicorn lets a request in flight finish before it stops, and a
# page's 25 s poll would hold each server's stop that long.
API_ENV = {"MEGALOS_API_EVENTS_MAX_TIMEOUT": "2"}


@pytest.fixture(scope="module")
def artefacts() -> Path:
    path = Path(os.environ.get("MEGALOS_TEST_ARTIFACTS", REPO / "test-artifacts")) / "map"
    path.mkdir(parents=True, exist_ok=True)
    print(f"\nLAN map screenshots: {path}")
    return path


@pytest.fixture(scope="module")
def lab(runtime):
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    with RunningLab(lab_conf({**LAB, **SPARE}), nodes=3, runtime=runtime, api_token=TOKEN,
                    api_env=API_ENV) as running:
        placement = plan([n.name for n in running.nodes])
        for device in LAB:
            running.attach(device, placement[device])
        yield running


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, lab, artefacts):
    tab = MapPage(browser, lab.api.page_url(f"ns={lab.kathara.namespace}"), artefacts)
    tab.rendered()
    yield tab
    assert tab.errors == [], tab.errors
    tab.close()


STATES_OF = """([kind, want]) => Object.entries(want).every(([label, state]) => {
  const el = [...document.querySelectorAll(`#map [data-kind="${kind}"]`)].find((e) =>
    (e.querySelector(kind === "node" ? ".node-title" : kind === "lan" ? ".label" : "text") || e)
      .textContent === label);
  return state === null ? !el : el && el.classList.contains(state);
})"""


def wait_states(tab: MapPage, kind: str, want: dict, timeout: int = LIVE) -> None:
    """Until every `label: class` of `want` holds (None: no such element)."""
    try:
        tab.wait_for(STATES_OF, [kind, want], timeout)
    except TimeoutError:
        raise AssertionError(f"{kind}s: want {want}, have {tab.labels(kind)}") from None


def test_the_map_shows_the_demo_lab(page, lab):
    wait_states(page, "lan", {"A": "s-converged", "B": "s-converged", "C": "s-converged"})
    assert page.labels("device") == {device: "s-converged" for device in LAB}
    assert page.labels("lan") == {"A": "s-converged", "B": "s-converged", "C": "s-converged"}
    assert page.labels("node") == {"node1": "up", "node2": "up", "node3": "up"}
    # Each device is drawn in its node's box, each interface as a line to its LAN.
    placement = plan([n.name for n in lab.nodes])
    inside = page.page.evaluate("""() => Object.fromEntries([...document.querySelectorAll(
        '#map .device')].map((d) => { const r = d.querySelector('rect').getBBox();
        const node = [...document.querySelectorAll('#map .node')].find((n) => {
          const b = n.querySelector('rect').getBBox();
          return r.x >= b.x && r.x + r.width <= b.x + b.width && r.y >= b.y && r.y + r.height <= b.y + b.height; });
        return [d.querySelector('text').textContent, node && node.dataset.id]; }))""")
    assert inside == placement
    edges = page.page.evaluate("document.querySelectorAll('#map .edge').length")
    assert edges == sum(len(lans) for lans in LAB.values())
    summary = page.page.inner_text("#summary")
    assert "5 devices" in summary and "7 interfaces" in summary and "3 LANs (3 converged" in summary
    assert page.page.input_value("#namespace") == lab.kathara.namespace
    assert all(url.startswith(lab.api.url + "/") for url in page.requests), page.requests
    page.shot("1-demo-lab")


def test_clicking_a_lan_shows_its_mac_table_and_vteps(page, lab):
    page.page.click('#map .hub:has(.label:text-is("A"))')
    page.wait_for("() => document.querySelectorAll('#detail table tr').length > 1")
    macs = sorted(lab.devices[d].mac("net0") for d in LAB if LAB[d][0] == "A")
    shown = page.page.eval_on_selector_all("#detail td.mono:first-child", "els => els.map(e => e.textContent)")
    assert sorted(shown) == macs
    vteps = page.page.eval_on_selector_all("#panel table.vteps td.mono", "els => els.map(e => e.textContent)")
    hosts = {lab.devices[d].node.ip for d in LAB if "A" in LAB[d]}
    assert set(vteps) == hosts
    assert "VNI" in page.page.inner_text("#panel .sub")
    page.shot("2-lan-a-mac-table")


def test_clicking_a_node_shows_its_session_and_peers(page, lab):
    page.page.click('#map .node-title:text-is("node1")')
    page.wait_for("() => document.querySelector('#detail table') !== null")
    text = page.page.inner_text("#panel")
    assert "Established" in text and lab.node("node1").ip in text
    peers = page.page.eval_on_selector_all("#panel table.peers a", "els => els.map(e => e.textContent)")
    assert peers == ["node2", "node3"]  # node1 shares A with node2 and node3, B and C with node2
    page.shot("3-node1-session")


def test_an_add_appears_live_and_a_del_disappears(page, lab):
    page.page.evaluate("window.__sameDocument = true")  # gone if the page reloads
    lab.attach("pc4", "node3")
    wait_states(page, "device", {"pc4": "s-converged"})
    wait_states(page, "lan", {"C": "s-converged"})
    page.shot("4-pc4-added")
    lab.detach("pc4")
    wait_states(page, "device", {"pc4": None})
    assert page.page.evaluate("window.__sameDocument") is True
    assert set(page.labels("device")) == set(LAB)
    page.shot("5-pc4-deleted")


def test_a_killed_agent_turns_its_node_and_lans_to_trouble_and_back(page, lab):
    # node3 runs pc1 (on A): A goes to trouble, B and C (not on node3) stay converged.
    placement = plan([n.name for n in lab.nodes])
    assert placement["pc1"] == "node3" and [d for d, n in placement.items() if n == "node3"] == ["pc1"]
    lab.kill_agent("node3")
    try:
        wait_states(page, "node", {"node3": "down"})
        wait_states(page, "lan", {"A": "s-trouble"})
        assert page.labels("lan")["B"] == page.labels("lan")["C"] == "s-converged"
        assert page.labels("device")["pc1"] == "s-trouble"
        page.page.click('#map .hub:has(.label:text-is("A"))')
        page.wait_for("() => document.querySelector('#panel .problems') !== null")
        assert "node node3: BGP session" in page.page.inner_text("#panel .problems")
        page.shot("6-node3-agent-killed")
    finally:
        lab.start_agent("node3")
    wait_states(page, "node", {"node3": "up"}, timeout=60_000)
    wait_states(page, "lan", {"A": "s-converged"}, timeout=60_000)
    page.shot("7-node3-agent-back")


def test_the_page_asks_for_the_token(browser, lab, artefacts, tmp_path):
    log = tmp_path / "access.log"
    env = {**API_ENV, "MEGALOS_API_ACCESS_LOG": str(log)}
    with ApiServer(lab.control.socket, token=TOKEN, workers=1, env=env) as api:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(api.url + "/api/v1/map", timeout=10)
        assert refused.value.code == 401
        tab = MapPage(browser, api.url + "/", artefacts)
        try:
            tab.page.wait_for_selector("#token-form:not([hidden])")
            tab.shot("8-token-asked")
            tab.page.fill("#token", "wrong")
            tab.page.click("#token-form button")
            tab.wait_for("() => document.querySelector('#token-error').textContent === 'wrong token'")
            tab.page.fill("#token", TOKEN)
            tab.page.click("#token-form button")
            tab.rendered()
            assert len(tab.labels("device")) == len(LAB)
        finally:
            tab.close()
        # A link carrying the token in its fragment: the page takes it, the address bar drops it.
        tab = MapPage(browser, f"{api.url}/#token={TOKEN}", artefacts)
        try:
            tab.rendered()
            assert tab.page.evaluate("location.hash") == ""
        finally:
            tab.close()
    requests = log.read_text()
    assert "/api/v1/map" in requests and TOKEN not in requests  # never in a logged URL
