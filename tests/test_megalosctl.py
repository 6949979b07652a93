"""megalosctl run as a subprocess (`python -m api.cli`) against the live API (gunicorn, a real
reflector and speakers in namespaces): tables, -o json, wait that converges and wait that times
out. Its pure presentation helpers are tested with plain values first."""
from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from api import cli
from lab.api_server import ApiServer, free_port
from lab.cluster import REPO, Cluster
from lab.runtime import kathara_conf

TOKEN = "ctl-token"
VNI = 70300
MAC_A, MAC_B, MAC_LATE = "02:c1:00:00:00:01", "02:c1:00:00:00:02", "02:c1:00:00:00:0f"


# -- pure helpers ---------------------------------------------------------------------------------
def test_table_aligns_columns_and_shows_empty_cells_as_dashes():
    assert cli.table(["A", "LONGER"], [["x", None], ["wide-cell", 7]]).splitlines() == [
        "A          LONGER", "x          -", "wide-cell  7"]


@pytest.mark.parametrize("seconds, text", [(None, "-"), (5.9, "5s"), (65, "1m05s"),
                                           (3 * 3600 + 120, "3h02m"), (2 * 86400 + 3600, "2d01h")])
def test_durations_read_like_kubectl(seconds, text):
    assert cli.duration(seconds) == text


def test_times_are_utc():
    assert cli.when(0) == "1970-01-01T00:00:00Z" and cli.when(None) == "-"


def test_vnis_and_a_vni_say_who_owns_it_and_who_claims_it_too():
    doc = {"vnis": [{"vni": 1, "vteps": 2, "macs": 3, "owner": "lab-a", "others": ["lab-b", ""]},
                    {"vni": 2, "vteps": 1, "macs": 0, "owner": None, "others": []}]}
    lines = cli.vnis_table(doc).splitlines()
    assert lines[1].split() == ["1", "2", "3", "lab-a", "lab-b,(unnamed)"]
    assert lines[2].split() == ["2", "1", "0", "-", "-"]
    detail = {"vni": 1, "mac_count": 0, "owner": "lab-a", "vteps": [
        {"address": "192.0.2.2", "node": "n1"}, {"address": "192.0.2.3", "node": None}],
        "claims": [{"namespace": "lab-a", "since": 0, "vteps": ["192.0.2.2"]},
                   {"namespace": "lab-b", "since": 60_000, "vteps": ["192.0.2.3"]}]}
    text = cli.vni_text(detail, []).splitlines()
    assert text[0] == "VNI 1: 2 VTEPs, 0 MACs, owned by lab-a since 1970-01-01T00:00:00Z"
    assert text[1] == ("also claimed by lab-b since 1970-01-01T00:01:00Z (192.0.2.3): two "
                       "namespaces on one wire")
    assert text[4].split() == ["192.0.2.2", "n1", "lab-a"]
    assert text[5].split() == ["192.0.2.3", "-", "lab-b"]


def test_a_lan_on_a_vni_another_namespace_owns_says_so():
    lan = {"namespace": "lab1", "name": "kathara-a", "vni": 100}
    assert cli.vni_problem({**lan, "vni_owner": None, "vni_claimed_by": []}) == ""
    assert cli.vni_problem({**lan, "vni_owner": "lab1", "vni_claimed_by": ["lab1"]}) == ""
    assert "belongs to lab2: this LAN's pods cannot attach" in cli.vni_problem(
        {**lan, "vni_owner": "lab2", "vni_claimed_by": ["lab2"]})
    assert "also claimed by lab3: two namespaces on one wire" in cli.vni_problem(
        {**lan, "vni_owner": "lab1", "vni_claimed_by": ["lab1", "lab3"]})


def lan_doc(namespace="lab1") -> dict:
    def member(pod, mac, vteps, attached=True):
        return {"pod": pod, "namespace": "lab1", "interface": "net0" if attached else None,
                "mac": mac, "node": "n1", "attached": attached, "vteps": vteps,
                "announced": bool(vteps)}
    return {"namespace": namespace, "watching": True, "synced": True, "converged": False, "lans": [
        {"namespace": "lab1", "name": "kathara-a", "link": "A", "vni": 100, "converged": True,
         "members": [member("pc1", "02:00:00:00:00:01", ["192.0.2.2"])]},
        {"namespace": "lab1", "name": "kathara-b", "link": "B", "vni": 200, "converged": False,
         "members": [member("pc1", "02:00:00:00:00:02", ["192.0.2.2", "192.0.2.3"]),
                     member("pc2", None, [], attached=False)]}]}


def test_lans_as_tables():
    lines = cli.lans_text(lan_doc()).splitlines()
    assert lines[0].split() == ["LAN", "LINK", "VNI", "MEMBERS", "CONVERGED"]
    assert lines[1].split() == ["kathara-a", "A", "100", "1/1", "yes"]
    assert lines[2].split() == ["kathara-b", "B", "200", "1/2", "no"]
    assert lines[4].split() == ["LAN", "POD", "INTERFACE", "MAC", "NODE", "VTEPS", "ANNOUNCED"]
    assert lines[6].split() == ["kathara-b", "pc1", "net0", "02:00:00:00:00:02", "n1",
                                "192.0.2.2,192.0.2.3", "yes"]
    assert lines[7].split() == ["kathara-b", "pc2", "-", "-", "n1", "-", "not", "attached"]
    every = cli.lans_text(lan_doc(namespace=None)).splitlines()
    assert every[0].split()[0] == "NAMESPACE" and every[1].split()[0] == "lab1"
    empty = {"namespace": "x", "watching": True, "synced": True, "converged": True, "lans": []}
    assert cli.lans_text(empty).splitlines()[-1] == "(no LANs in namespace x)"
    assert cli.lans_notice(empty) is None
    assert "--lans-from-k8s" in cli.lans_notice({**empty, "watching": False, "synced": False})
    assert "not listed" in cli.lans_notice({**empty, "synced": False})


@pytest.mark.parametrize("answer, message", [
    (b"[" * 100_000 + b"]" * 100_000, "nests arrays and objects more than 64 deep"),
    (b"<html>not json</html>", "is not valid JSON"),
])
def test_an_answer_that_is_not_json_within_bounds_is_an_error_not_a_traceback(answer, message,
                                                                               capsys):
    """A server that is not the API (or is hostile): before, json.loads raised RecursionError
    out of megalosctl."""
    class Hostile(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        code = cli.main(["--server", f"http://127.0.0.1:{server.server_port}", "--token", "t",
                         "vnis"])
    finally:
        server.shutdown()
        server.server_close()
    assert code == 3 and message in capsys.readouterr().err


# -- against the live server ----------------------------------------------------------------------
NO_TOKEN = {"MEGALOS_API_TOKEN": "", "MEGALOS_API_TOKEN_FILE": ""}


def ctl(live, *argv, timeout=60, env=None):
    """Run megalosctl, the token in a file named by $MEGALOS_API_TOKEN_FILE unless `env` says
    otherwise; (exit code, stdout, stderr)."""
    environ = {**os.environ, "MEGALOS_API": live["url"], "MEGALOS_API_TOKEN": "",
               "MEGALOS_API_TOKEN_FILE": live["token_file"], **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "api.cli", *argv], capture_output=True, text=True,
                          cwd=REPO, env=environ, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def attach(runtime, node, name, mac):
    pod = node.add_pod(name)
    reply = runtime.call("ADD", kathara_conf("lan", VNI), container_id=f"c-{name}",
                         netns=pod.netns_path, ifname="net0", args=f"MAC={mac}", socket=node.socket)
    assert reply.code == 0, reply


@pytest.fixture(scope="module")
def live(runtime, tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    with Cluster() as cluster:
        rr, n1, n2 = (cluster.add_node(name) for name in ("rr", "n1", "n2"))
        rr.start_reflector("--peer", n1.ip, "--peer", n2.ip)
        n1.start_agent("--reflector", rr.ip)
        n2.start_agent("--reflector", rr.ip)
        attach(runtime, n1, "a", MAC_A)
        attach(runtime, n2, "b", MAC_B)
        # Pages of one row: the CLI has to follow them.
        with ApiServer(rr.socket, token=TOKEN, workers=1, threads=8,
                       env={"MEGALOS_API_PAGE_LIMIT": "1"}) as api:
            token_file = tmp_path_factory.mktemp("ctl") / "token"
            token_file.write_text(f"{TOKEN}\n")
            live = {"url": api.url, "n1": n1, "n2": n2, "runtime": runtime,
                    "token_file": str(token_file)}
            code, _, err = ctl(live, "wait", "--mac", MAC_A, "--mac", MAC_B, "--timeout", "30")
            assert code == 0, err
            yield live


root = pytest.mark.root


@root
def test_vnis_as_a_table_and_as_json(live):
    code, out, _ = ctl(live, "vnis")
    assert code == 0
    assert out.split("\n")[0].split() == ["VNI", "VTEPS", "MACS", "OWNER", "ALSO", "CLAIMED", "BY"]
    assert out.split("\n")[1].split() == [str(VNI), "2", "2", "(unnamed)", "-"]
    code, out, _ = ctl(live, "vnis", "-o", "json")
    assert code == 0 and json.loads(out) == {
        "vnis": [{"vni": VNI, "vteps": 2, "macs": 2, "owner": "", "others": []}]}


@root
def test_vni_shows_vteps_and_the_mac_table(live):
    n1, n2 = live["n1"], live["n2"]
    code, out, _ = ctl(live, "vni", str(VNI))
    assert code == 0
    assert out.startswith(f"VNI {VNI}: 2 VTEPs, 2 MACs, owned by (unnamed) since 20")
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("02:")}
    assert rows[MAC_A][1] == n1.ip and rows[MAC_B][1] == n2.ip
    assert "FIRST SEEN" in out and rows[MAC_A][4].endswith("Z")
    # Every page (of one row, on this server) is followed into one document.
    code, out, _ = ctl(live, "-o", "json", "vni", str(VNI))
    doc = json.loads(out)
    assert [row["mac"] for row in doc["macs"]] == [MAC_A, MAC_B] and doc["next"] is None
    code, out, _ = ctl(live, "vni", str(VNI), "--limit", "1", "-o", "json")
    assert len(json.loads(out)["macs"]) == 1 and json.loads(out)["next"]
    code, out, _ = ctl(live, "vni", str(VNI), "--vtep", n2.ip)
    assert MAC_B in out and MAC_A not in out


@root
def test_mac_and_nodes(live):
    code, out, _ = ctl(live, "mac", MAC_A.upper())
    assert code == 0 and out.splitlines()[1].split()[:3] == [str(VNI), MAC_A, live["n1"].ip]
    code, out, _ = ctl(live, "nodes")
    assert code == 0 and out.splitlines()[0].split()[:3] == ["ADDRESS", "NAME", "STATE"]
    assert sum("Established" in line for line in out.splitlines()) == 2
    code, out, _ = ctl(live, "nodes", "-o", "json")
    assert {n["address"] for n in json.loads(out)["nodes"]} == {live["n1"].ip, live["n2"].ip}


@root
def test_lans_says_when_the_reflector_does_not_watch_them(live):
    code, out, err = ctl(live, "lans", "--namespace", "lab1")
    assert code == 0 and "--lans-from-k8s" in err and "(no LANs in namespace lab1)" in out
    code, out, _ = ctl(live, "lans", "-o", "json")
    assert code == 0 and json.loads(out)["watching"] is False
    code, _, err = ctl(live, "lans", "--namespace", "Not_A_Namespace")
    assert code == 3 and "malformed namespace" in err


@root
def test_errors_have_clear_messages_and_exit_codes(live):
    code, out, err = ctl(live, "mac", "02:c1:00:00:00:77")
    assert code == 3 and out == "" and "404" in err and "not announced" in err
    code, _, err = ctl(live, "vni", "70399")
    assert code == 3 and "unknown VNI 70399" in err
    code, _, err = ctl(live, "add-node", "192.0.2.250", env=NO_TOKEN)
    assert code == 3 and "401" in err
    code, _, err = ctl(live, "--server", f"http://127.0.0.1:{free_port()}", "vnis")
    assert code == 4 and "cannot reach the API" in err
    code, _, err = ctl(live, "wait", "--timeout", "1")
    assert code == 2 and "nothing to wait for" in err
    code, _, err = ctl(live, "wait", "--vteps", "2")
    assert code == 2 and "--vteps needs --vni" in err


@root
def test_reads_need_the_token_and_say_how_to_give_it(live, tmp_path):
    code, out, err = ctl(live, "vnis", env=NO_TOKEN)
    assert code == 3 and out == "" and "401 missing bearer token" in err
    assert "--token-file" in err and "$MEGALOS_API_TOKEN" in err
    code, _, err = ctl(live, "nodes", "--token", "wrong")
    assert code == 3 and "401 wrong bearer token" in err
    code, _, err = ctl(live, "vnis", "--token-file", str(tmp_path / "absent"))
    assert code == 2 and "--token-file" in err and "No such file" in err
    (tmp_path / "token").write_text(TOKEN + "\n")
    code, out, _ = ctl(live, "vnis", "--token-file", str(tmp_path / "token"), env=NO_TOKEN)
    assert code == 0 and str(VNI) in out


def test_the_token_comes_from_the_first_of_the_options_and_the_environment(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_text("from-option-file\n")
    second.write_text("from-env-file\n")
    parse = cli.build_parser().parse_args
    env = {"MEGALOS_API_TOKEN": "from-env", "MEGALOS_API_TOKEN_FILE": str(second)}
    assert cli.token_of(parse(["--token", "t", "--token-file", str(first), "vnis"]), env) == "t"
    assert cli.token_of(parse(["vnis", "--token-file", str(first)]), env) == "from-option-file"
    assert cli.token_of(parse(["vnis"]), env) == "from-env"
    assert cli.token_of(parse(["vnis"]), {"MEGALOS_API_TOKEN_FILE": str(second)}) == "from-env-file"
    assert cli.token_of(parse(["vnis"]), {}) is None


@root
def test_add_node_and_remove_node_with_the_token(live):
    code, out, err = ctl(live, "add-node", "192.0.2.250", "--name", "n-250", "--token", TOKEN)
    assert code == 0 and "added" in out, err
    code, out, _ = ctl(live, "nodes", "-o", "json")
    assert {"address": "192.0.2.250", "name": "n-250"}.items() <= next(
        n for n in json.loads(out)["nodes"] if n["address"] == "192.0.2.250").items()
    code, out, _ = ctl(live, "remove-node", "192.0.2.250", env={**NO_TOKEN, "MEGALOS_API_TOKEN": TOKEN})
    assert code == 0 and "removed" in out


@root
def test_wait_returns_when_the_mac_and_vteps_converge(live):
    ok, out, err = ctl(live, "wait", "--vni", str(VNI), "--vteps", "2", "--timeout", "5")
    assert ok == 0 and "converged" in err
    started = time.monotonic()
    waiting = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "wait", "--mac", MAC_LATE, "--vni", str(VNI),
         "--timeout", "30", "-o", "json"], cwd=REPO, text=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env={**os.environ, "MEGALOS_API": live["url"], **NO_TOKEN,
                                     "MEGALOS_API_TOKEN": TOKEN})
    time.sleep(1.5)
    assert waiting.poll() is None  # still waiting: the MAC is not there
    attach(live["runtime"], live["n2"], "late", MAC_LATE)
    out, err = waiting.communicate(timeout=30)
    assert waiting.returncode == 0, err
    assert time.monotonic() - started < 15
    assert f"MAC {MAC_LATE} in VNI {VNI} not announced" in err  # progress, on stderr
    assert json.loads(out)["converged"] is True


@root
def test_wait_times_out_with_a_clear_message(live):
    started = time.monotonic()
    code, out, err = ctl(live, "wait", "--mac", "02:c1:00:00:00:ee", "--vni", str(VNI),
                         "--vteps", "3", "--timeout", "2")
    assert code == 1 and out == ""
    assert 1.5 < time.monotonic() - started < 10
    assert "timed out after 2 s" in err
    assert "MAC 02:c1:00:00:00:ee in VNI 70300 not announced" in err
    assert f"VNI {VNI} has 2 of 3 VTEPs" in err
