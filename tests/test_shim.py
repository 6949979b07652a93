"""The `megalos` shims (cni/shim.c and cni/shim.py) against a tiny in-test agent on a UNIX socket:
the wire protocol, what they forward, how they fail. Every behaviour test runs both shims, exec'd
as a runtime does; the two must answer alike, byte for byte."""
from __future__ import annotations

import ast
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cni import install_shim, shim, spec
from cni import server as cni_server
from cni.plugin import Plugin
from lab.runtime import shim_kinds
from tests.conftest import ANSWER_OK, FakeAgent

SHIM = Path(shim.__file__)
CONF = json.dumps({"cniVersion": "0.3.0", "name": "lan_a", "type": "megalos", "suffix": "abcdef",
                   "vxlanId": 100})
ANSWER = ANSWER_OK
RESULT = ANSWER[2:]
ALL_BYTES = bytes(range(256)) + b"\0\0CNI1\n\0"  # every byte value, and the protocol's own markers
PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable


@pytest.fixture
def sockdir():
    path = tempfile.mkdtemp(prefix="mgshim", dir="/tmp")  # short: AF_UNIX paths stop at 108 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def agent(sockdir):
    fake = FakeAgent(os.path.join(sockdir, "agent.sock"))
    yield fake
    fake.close()


@pytest.fixture
def run_agent():
    """A fake agent on a socket of its own in /run/megalos/, where a config's agentSocket may point."""
    if os.geteuid() != 0:
        pytest.skip("needs root (/run/megalos)")
    made = not os.path.isdir(shim.SOCKET_DIR)
    os.makedirs(shim.SOCKET_DIR, mode=0o755, exist_ok=True)
    fake = FakeAgent(tempfile.mktemp(prefix="mgshim-", suffix=".sock", dir=shim.SOCKET_DIR))
    yield fake
    fake.close()
    os.unlink(fake.path)
    if made:
        try:
            os.rmdir(shim.SOCKET_DIR)
        except OSError:  # another run's socket is there now
            pass


def test_a_closed_fake_agent_no_longer_accepts(sockdir):
    """The fake's accept loop ends before its descriptor is freed (see FakeAgent.close)."""
    fake = FakeAgent(os.path.join(sockdir, "gone.sock"))
    fake.close()
    assert not fake.thread.is_alive()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        with pytest.raises(ConnectionRefusedError):
            client.connect(fake.path)


@pytest.fixture(scope="module")
def binaries(tmp_path_factory) -> dict[str, Path]:
    """Each shim kind this machine can build, installed as megalos-install-shim does."""
    bin_dir = tmp_path_factory.mktemp("shims")
    return {kind: install_shim.install(str(bin_dir), PYTHON, name=f"megalos-{kind}", kind=kind)
            for kind in shim_kinds()}


@pytest.fixture(params=shim_kinds())
def kind(request) -> str:
    return request.param


@pytest.fixture
def megalos(binaries, kind):
    """Exec the shim of `kind` with exactly `env` and `stdin` (str or bytes); (code, stdout, stderr)."""
    def call(env: dict, stdin: str | bytes = CONF, timeout: float = 30, **popen):
        data = stdin.encode() if isinstance(stdin, str) else stdin
        proc = subprocess.run([str(binaries[kind])], input=data, env=env, capture_output=True,
                              timeout=timeout, **popen)
        return proc.returncode, proc.stdout, proc.stderr
    return call


def both(binaries, env: dict, stdin: bytes | str = CONF) -> list[tuple]:
    """(code, stdout) from each shim kind, for the same request."""
    data = stdin.encode() if isinstance(stdin, str) else stdin
    return [subprocess.run([str(path)], input=data, env=env, capture_output=True, timeout=30)
            for path in binaries.values()]


def cni_env(socket_path: str, command: str = "ADD", **extra) -> dict:
    return {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/p1",
            "CNI_IFNAME": "net0", "CNI_PATH": "/opt/cni/bin", "CNI_ARGS": "K8S_POD_NAME=p1",
            shim.SOCKET_ENV: socket_path, **extra}


def error_body(out: bytes) -> dict:
    assert out.endswith(b"\n") and out.count(b"\n") == 1, out
    assert out.isascii(), out
    body = json.loads(out)
    assert list(body)[:3] == ["cniVersion", "code", "msg"] and set(body) <= {
        "cniVersion", "code", "msg", "details"}
    assert isinstance(body["code"], int) and body["msg"]
    return body


# -- the wire protocol, both sides, as bytes ----------------------------------------------------
def test_request_round_trip_is_binary_safe():
    env = {b"CNI_COMMAND": b"ADD", b"CNI_ARGS": b"A=1;B=\xff\xfe", b"PATH": b"/usr/bin",
           b"cni_lower": b"x", b"CNI_EMPTY": b""}
    request = shim.encode_request(env, ALL_BYTES)
    assert request == (b"CNI1\nCNI_COMMAND=ADD\0CNI_ARGS=A=1;B=\xff\xfe\0CNI_EMPTY=\0\0" + ALL_BYTES)
    decoded_env, stdin = cni_server.decode_request(request)
    assert stdin == ALL_BYTES
    assert decoded_env == {"CNI_COMMAND": "ADD", "CNI_ARGS": "A=1;B=\udcff\udcfe", "CNI_EMPTY": ""}


def test_request_without_variables_or_stdin():
    assert shim.encode_request({}, b"") == b"CNI1\n\0"
    assert cni_server.decode_request(b"CNI1\n\0") == ({}, b"")
    assert cni_server.decode_request(b"CNI1\n\0\0\0") == ({}, b"\0\0")


def test_request_first_of_duplicate_variables_wins():
    assert cni_server.decode_request(b"CNI1\nCNI_A=1\0CNI_A=2\0\0x") == ({"CNI_A": "1"}, b"x")


@pytest.mark.parametrize("request_bytes", [
    b"", b"CNI1", b"CNI2\n\0", b'{"env": {}, "stdin": ""}', b"CNI1\nCNI_A=1", b"CNI1\nCNI_A=1\0",
    b"CNI1\nCNI_A\0\0", b"CNI1\nPATH=/bin\0\0", b"CNI1\n=x\0\0",
])
def test_malformed_requests_are_refused(request_bytes):
    with pytest.raises(ValueError):
        cni_server.decode_request(request_bytes)


@pytest.mark.parametrize("code", [0, 1, 7, 255])
def test_reply_round_trip_is_binary_safe(code):
    assert shim.decode_reply(cni_server.encode_reply(code, "")) == (code, b"")
    assert shim.decode_reply(b"%d\n" % code + ALL_BYTES) == (code, ALL_BYTES)
    assert cni_server.encode_reply(code, '{"a": "\\u00e9"}') == b'%d\n{"a": "\\u00e9"}' % code


MALFORMED_ANSWERS = [b"", b"\n", b"0", b"x\n", b"-1\n", b"+1\n", b" 0\n", b"0 \n", b"1e1\n",
                     b"256\n", b"0000\n", b"\xff\n", b'{"exit": 0, "stdout": ""}', b"\n0\n"]


@pytest.mark.parametrize("answer", MALFORMED_ANSWERS)
def test_malformed_replies_are_refused(answer):
    with pytest.raises(ValueError):
        shim.decode_reply(answer)


def test_both_shims_send_the_same_bytes(binaries, agent):
    if len(binaries) < 2:
        pytest.skip("no C compiler here")
    env = {**cni_env(agent.path), "CNI_ARGS": "IgnoreUnknown=1;MAC=02:00:00:00:00:01", "HOME": "/r"}
    both(binaries, env, ALL_BYTES)
    assert len(agent.requests) == 2 and agent.requests[0] == agent.requests[1]
    assert agent.last == ({k: v for k, v in env.items() if k.startswith("CNI_")}, ALL_BYTES)


@pytest.fixture
def server(sockdir):
    """The agent's real socket server, with a plugin that records what reaches it."""
    calls = []

    def handle_cni(env, stdin, deadline):
        calls.append((env, stdin))
        return 0, '{"ok": true}'

    srv = cni_server.CniServer(os.path.join(sockdir, "agent.sock"), handle_cni)
    srv.start()
    yield srv, calls
    srv.stop()


def raw_exchange(path: str, request: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        return b"".join(iter(lambda: sock.recv(65536), b""))


def test_agent_server_answers_in_the_protocol(server):
    srv, calls = server
    assert raw_exchange(srv.path, shim.encode_request({b"CNI_COMMAND": b"ADD"}, b"{}")) == \
        b'0\n{"ok": true}'
    assert calls == [({"CNI_COMMAND": "ADD"}, "{}")]


@pytest.mark.parametrize("request_bytes, code, msg", [
    (b'{"env": {}, "stdin": ""}', 5, "malformed request from the megalos shim"),
    (b"CNI1\nCNI_COMMAND=ADD", 5, "malformed request from the megalos shim"),
    (b"CNI1\n\0" + b" " * (cni_server.MAX_REQUEST - 5), 5, "malformed request from the megalos shim"),
    (b"CNI1\nCNI_COMMAND=ADD\0\0{\"name\": \"\xff\"}", 6, "the network configuration is not UTF-8"),
])
def test_agent_server_refuses_what_it_cannot_read(server, request_bytes, code, msg):
    srv, calls = server
    exit_code, out = shim.decode_reply(raw_exchange(srv.path, request_bytes))
    body = json.loads(out)
    assert (exit_code, body["code"], body["msg"], body["cniVersion"]) == (1, code, msg, "1.1.0")
    assert calls == []


def test_agent_server_takes_the_largest_request_a_shim_sends(server):
    srv, calls = server
    env = {b"CNI_ARGS": b"a" * (shim.MAX_ENV - len(b"CNI_ARGS=\0\0"))}
    request = shim.encode_request(env, b" " * shim.MAX_STDIN)
    assert len(request) == cni_server.MAX_REQUEST
    assert shim.decode_reply(raw_exchange(srv.path, request))[0] == 0
    assert len(calls[0][1]) == shim.MAX_STDIN


# -- what the shims send ------------------------------------------------------------------------
def test_forwards_only_cni_variables_and_stdin_verbatim(megalos, agent):
    env = {**cni_env(agent.path), "PATH": "/usr/bin", "HOME": "/root", "KUBECONFIG": "/secret",
           "cni_lowercase": "x", "XCNI_FOO": "y", "CNI_EXTRA": "kept"}
    stdin = CONF + "\n  "
    assert megalos(env, stdin) == (0, RESULT + b"\n", b"")
    got_env, got_stdin = agent.last
    assert got_stdin == stdin.encode()
    assert got_env == {k: v for k, v in env.items() if k.startswith("CNI_")}
    assert "CNI_EXTRA" in got_env and shim.SOCKET_ENV not in got_env


def test_binary_stdin_goes_through_untouched(megalos, agent):
    assert megalos(cni_env(agent.path), ALL_BYTES)[0] == 0
    assert agent.last[1] == ALL_BYTES


@pytest.mark.parametrize("code", [0, 1, 3, 255])
def test_passes_the_agents_exit_code_and_stdout_through(sockdir, megalos, code):
    out = b'{"cniVersion": "0.3.0", "code": 7, "msg": "vxlanId is required"}'
    fake = FakeAgent(os.path.join(sockdir, "a.sock"), lambda request: b"%d\n" % code + out)
    try:
        assert megalos(cni_env(fake.path)) == (code, out + b"\n", b"")
    finally:
        fake.close()


def test_prints_nothing_for_an_empty_answer(sockdir, megalos):
    fake = FakeAgent(os.path.join(sockdir, "del.sock"), lambda request: b"0\n")
    try:
        assert megalos(cni_env(fake.path, "DEL")) == (0, b"", b"")
    finally:
        fake.close()


def test_config_agent_socket_wins_over_the_environment(sockdir, run_agent, megalos):
    conf = json.dumps({**json.loads(CONF), "agentSocket": run_agent.path})
    assert megalos(cni_env(os.path.join(sockdir, "elsewhere.sock")), conf)[0] == 0
    assert len(run_agent.requests) == 1


@pytest.mark.parametrize("make_path", [
    lambda p: p,                                                  # the NAD author's own socket
    lambda p: "/run/megalos/../.." + p,                           # climbing out of /run/megalos
    lambda p: "/run/megalos/./../.." + p,
    lambda p: "/run/megalos//../.." + p,
    lambda p: "/run/megalos/" + os.path.relpath(p, "/run/megalos"),
])
def test_config_agent_socket_elsewhere_is_refused_and_never_reached(sockdir, megalos, make_path):
    """A NetworkAttachmentDefinition pointing the root-run plugin at a socket its author
    listens on: the shim refuses it (code 7) before any connection, so the author's socket
    never sees the pod's netns path and arguments, and never answers for the plugin."""
    rogue = FakeAgent(os.path.join(sockdir, "rogue.sock"),
                      lambda request: b'0\n{"cniVersion": "1.1.0", "interfaces": []}')
    elsewhere = FakeAgent(os.path.join(sockdir, "env.sock"))
    try:
        conf = json.dumps({**json.loads(CONF), "agentSocket": make_path(rogue.path)})
        code, out, err = megalos(cni_env(elsewhere.path), conf)
    finally:
        rogue.close()
        elsewhere.close()
    body = error_body(out)
    assert (code, err, body["code"], body["cniVersion"]) == (1, b"", 7, "0.3.0")
    assert body["msg"] == shim.SOCKET_RULE
    assert rogue.requests == elsewhere.requests == []


@pytest.mark.parametrize("make_conf, found", [
    (lambda p: '{"agentSocket": "%s"}' % p.replace("/", "\\/"), True),          # escaped slashes
    (lambda p: '{ "agentSocket" :\n "%s" , "x": 1}' % p, True),                 # spacing
    (lambda p: '{"agentSocket": "/nowhere", "agentSocket": "%s"}' % p, True),   # the last one wins
    (lambda p: '{"agentSocket": "%s", "agentSocket": 5}' % p, False),
    (lambda p: '{"args": {"agentSocket": "%s"}}' % p, False),                   # not top-level
    (lambda p: '{"x": ["agentSocket", "%s"]}' % p, False),
    (lambda p: '{"x": "\\"agentSocket\\": \\"%s\\""}' % p, False),              # inside a string
    (lambda p: '{"agentSocket": ""}', False),
    (lambda p: '{"agentSocket": "%s\\u0000"}' % p, False),                     # NUL: no path
    (lambda p: '{"agentSocket": "/tmp/x\\u0000"}', False),                       # NUL: no path
])
def test_which_agent_socket_the_config_names(sockdir, run_agent, megalos, make_conf, found):
    elsewhere = FakeAgent(os.path.join(sockdir, "env.sock"))
    try:
        assert megalos(cni_env(elsewhere.path), make_conf(run_agent.path))[0] == 0
    finally:
        elsewhere.close()
    assert (len(run_agent.requests), len(elsewhere.requests)) == ((1, 0) if found else (0, 1))


@pytest.mark.parametrize("stdin", ["", "not json", "[1, 2]", '{"agentSocket": 5, "cniVersion": 1}'])
def test_any_stdin_is_forwarded_for_the_agent_to_judge(agent, megalos, stdin):
    assert megalos(cni_env(agent.path), stdin)[0] == 0
    assert agent.last[1] == stdin.encode()


def test_large_config_goes_through(agent, megalos):
    conf = json.dumps({**json.loads(CONF), "padding": "x" * 300_000})
    assert megalos(cni_env(agent.path), conf)[0] == 0
    assert agent.last[1] == conf.encode()


def test_stdin_limit(agent, megalos):
    """Exactly 1 MiB goes through; one byte more is refused by the shim, before any connection."""
    limit = b"x" * shim.MAX_STDIN
    assert megalos(cni_env(agent.path), limit)[0] == 0
    assert agent.last[1] == limit
    code, out, _ = megalos(cni_env(agent.path), limit + b"x")
    body = error_body(out)
    assert code == 1 and body["code"] == 6 and body["cniVersion"] == "1.1.0"
    assert body["msg"] == "the network configuration is larger than 1048576 bytes"
    assert len(agent.requests) == 1


def test_environment_limit(agent, megalos):
    """CNI_* variables of exactly 64 KiB (entries and the closing NUL) go; one byte more does not."""
    env = cni_env(agent.path, CNI_ARGS="")
    used = sum(len(f"{k}={v}\0") for k, v in env.items() if k.startswith("CNI_")) + 1
    env["CNI_ARGS"] = "x" * (shim.MAX_ENV - used)
    assert megalos(env)[0] == 0
    env["CNI_ARGS"] += "x"
    code, out, _ = megalos(env)
    body = error_body(out)
    assert code == 1 and body["code"] == 5 and body["cniVersion"] == "0.3.0"
    assert body["msg"] == "the CNI_* variables are larger than 65536 bytes"
    assert len(agent.requests) == 1


# -- when the agent is not there ----------------------------------------------------------------
@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK", "GC"])
def test_no_agent_is_code_11_naming_the_socket(sockdir, megalos, command):
    path = os.path.join(sockdir, "missing.sock")
    code, out, err = megalos(cni_env(path, command))
    body = error_body(out)
    assert (code, err, body["code"], body["cniVersion"]) == (1, b"", 11, "0.3.0")
    assert body["msg"] == f"megalos agent is not running: cannot connect to {path}"
    assert body["details"] == "No such file or directory"


def test_status_without_agent_is_code_50(sockdir, megalos):
    code, out, _ = megalos(cni_env(os.path.join(sockdir, "missing.sock"), "STATUS"))
    assert code == 1 and error_body(out)["code"] == 50


def test_socket_file_nobody_listens_on_is_code_11(sockdir, megalos):
    path = os.path.join(sockdir, "stale.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens: ECONNREFUSED
    code, out, _ = megalos(cni_env(path))
    body = error_body(out)
    assert code == 1 and body["code"] == 11 and path in body["msg"]
    assert body["details"] == "Connection refused"


def test_socket_path_that_is_a_directory_or_too_long_is_code_11(sockdir, megalos):
    for path in (sockdir, "/tmp/" + "x" * 200):
        code, out, _ = megalos(cni_env(path))
        assert code == 1 and error_body(out)["code"] == 11
    assert error_body(megalos(cni_env("/tmp/" + "x" * 200))[1])["details"] == "AF_UNIX path too long"


def test_default_socket_and_version_when_stdin_is_not_json(megalos):
    env = cni_env("")
    del env[shim.SOCKET_ENV]
    if os.path.exists(shim.DEFAULT_SOCKET):
        pytest.skip(f"an agent runs on this machine at {shim.DEFAULT_SOCKET}")
    code, out, _ = megalos(env, "not json")
    body = error_body(out)
    assert code == 1 and body["code"] == 11 and shim.DEFAULT_SOCKET in body["msg"]
    assert body["cniVersion"] == "1.1.0"


# -- when the agent misbehaves ------------------------------------------------------------------
def test_timeout_is_code_11(sockdir, megalos):
    fake = FakeAgent(os.path.join(sockdir, "slow.sock"), lambda request: None)
    try:
        code, out, _ = megalos(cni_env(fake.path, MEGALOS_TIMEOUT="0.3"))
    finally:
        fake.close()
    body = error_body(out)
    assert code == 1 and body["code"] == 11
    assert body["msg"] == f"megalos agent at {fake.path} did not answer within 0.3 s"


@pytest.mark.parametrize("answer", MALFORMED_ANSWERS)
def test_malformed_answer_is_code_5(sockdir, megalos, answer):
    fake = FakeAgent(os.path.join(sockdir, "bad.sock"), lambda request: answer)
    try:
        code, out, _ = megalos(cni_env(fake.path))
    finally:
        fake.close()
    body = error_body(out)
    assert code == 1 and body["code"] == 5 and body["cniVersion"] == "0.3.0"
    assert body["msg"] == f"malformed answer from the megalos agent at {fake.path}"


def test_answer_larger_than_the_limit_is_code_5(sockdir, megalos):
    big = b"0\n" + b"x" * shim.MAX_REPLY
    fake = FakeAgent(os.path.join(sockdir, "big.sock"), lambda request: big)
    try:
        code, out, _ = megalos(cni_env(fake.path))
        assert code == 1 and error_body(out)["details"] == "larger than 1048576 bytes"
        fake.reply = lambda request: big[:-2]  # exactly the limit
        assert megalos(cni_env(fake.path))[1] == big[2:-2] + b"\n"
    finally:
        fake.close()


def test_busy_agent_with_a_full_accept_queue_is_waited_for(sockdir, binaries, kind):
    fake = FakeAgent(os.path.join(sockdir, "busy.sock"), backlog=1, serve=False)
    env = cni_env(fake.path, MEGALOS_TIMEOUT="10")
    try:
        procs = [subprocess.Popen([str(binaries[kind])], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  env=env) for _ in range(8)]
        for proc in procs:
            proc.stdin.write(CONF.encode())
            proc.stdin.close()
        threading.Event().wait(0.5)  # the agent is busy: nobody accepts yet
        assert all(proc.poll() is None for proc in procs), "a shim gave up on a busy agent"
        fake.thread.start()
        codes = [proc.wait(15) for proc in procs]
    finally:
        fake.close()
    assert codes == [0] * 8


def test_busy_agent_that_stays_busy_is_code_11(sockdir, binaries, kind):
    fake = FakeAgent(os.path.join(sockdir, "busy.sock"), backlog=0, serve=False)
    env = cni_env(fake.path, MEGALOS_TIMEOUT="0.5")
    try:
        procs = [subprocess.Popen([str(binaries[kind])], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, env=env) for _ in range(4)]
        outs = [proc.communicate(timeout=15)[0] for proc in procs]
    finally:
        fake.close()
    bodies = [error_body(out) for out in outs]
    assert {body["code"] for body in bodies} == {11}
    # One connection fits in the queue (and is never answered); the others find it full.
    assert {body["msg"] for body in bodies} == {
        f"megalos agent at {fake.path} did not answer within 0.5 s",
        f"megalos agent at {fake.path} is busy: no connection within 0.5 s"}


@pytest.mark.parametrize("value", ["", "soon", "-", "-1", "0", "inf", "nan", "1e3", "0x10", " 5", "1..2"])
def test_unreadable_timeout_falls_back_to_the_default(agent, megalos, value):
    assert megalos(cni_env(agent.path, MEGALOS_TIMEOUT=value))[0] == 0
    assert shim._timeout(value.encode()) == shim.DEFAULT_TIMEOUT


@pytest.mark.parametrize("value, seconds", [("30", 30.0), ("0.5", 0.5), (".25", 0.25), ("2.", 2.0)])
def test_timeout_values(value, seconds):
    assert shim._timeout(value.encode()) == seconds


# -- the two shims answer alike -----------------------------------------------------------------
ODD_PATH = b'/tmp/mgshim-"q"\\b\n\t\x01\x7f-\xc3\xa9-\xf0\x9f\x98\x80-\xff-\xed\xa0\x80-\xe2\x82.sock'


@pytest.mark.parametrize("case", ["no-agent", "status", "odd-path", "odd-version", "config-path",
                                  "config-path-elsewhere", "stray-bytes", "too-long-path",
                                  "108-byte-path", "huge-stdin", "huge-env", "too-deep",
                                  "raw-surrogate-version", "malformed-config", "version",
                                  "version-odd", "version-malformed", "version-not-json"])
def test_answers_the_shim_makes_are_byte_for_byte_the_same(binaries, sockdir, case):
    if len(binaries) < 2:
        pytest.skip("no C compiler here")
    missing = os.path.join(sockdir, "missing.sock")
    env, stdin = cni_env(missing), CONF.encode()
    if case == "status":
        env["CNI_COMMAND"] = "STATUS"
    elif case == "odd-path":
        env = {k.encode(): v.encode() for k, v in env.items()}
        env[shim.SOCKET_ENV.encode()] = ODD_PATH
    elif case == "odd-version":
        stdin = b'{"cniVersion": "0.3.0 \\"\\\\ \\u00e9 \\ud83d\\ude00 \\ud800 \xc3\xa9 \\n\\/"}'
    elif case == "config-path":  # escapes; nobody listens there
        stdin = b'{"agentSocket": "\\/run\\/megalos\\/mgshim-\\u0061bsent.sock"}'
    elif case == "config-path-elsewhere":
        stdin = b'{"agentSocket": "\\/tmp\\/mgshim-\\u00e9\\ud83d\\ude00\\ud800.sock"}'
    elif case == "stray-bytes":  # not UTF-8, inside strings: both shims keep the bytes
        stdin = b'{"cniVersion": "0.4.0\xff", "x": "\xc3", "agentSocket": "/tmp/mgshim-\xfe"}'
    elif case == "too-deep":
        stdin = b'{"cniVersion": "0.4.0", "args": ' + b"[" * 65 + b"]" * 65 + b"}"
    elif case == "raw-surrogate-version":  # an encoded surrogate written raw: not UTF-8
        stdin = b'{"cniVersion": "\xed\xa0\x80 \\ud800"}'
    elif case == "malformed-config":  # json.loads gives up; the scan finds the version
        stdin = b'{"cniVersion": "0.4.0", "vxlanId": '
    elif case.startswith("version"):
        env["CNI_COMMAND"] = "VERSION"
        stdin = {"version": b'{"cniVersion": "1.0.0"}',
                 "version-odd": b'{"cniVersion": "0.3.0 \\"\\\\ \\u00e9 \\ud800 \xff"}',
                 "version-malformed": b'{"cniVersion": "0.4.0",',
                 "version-not-json": b"\xff\xfe not json"}[case]
    elif case == "too-long-path":
        env[shim.SOCKET_ENV] = "/tmp/" + "y" * 300
    elif case == "108-byte-path":
        env[shim.SOCKET_ENV] = "/tmp/" + "y" * 103
    elif case == "huge-stdin":
        stdin = b" " * (shim.MAX_STDIN + 1)
    elif case == "huge-env":
        env["CNI_ARGS"] = "a" * shim.MAX_ENV
    c, python = both(binaries, env, stdin)
    assert (c.returncode, c.stdout, c.stderr) == (python.returncode, python.stdout, python.stderr)
    if case.startswith("version"):
        assert c.returncode == 0 and list(json.loads(c.stdout)) == ["cniVersion", "supportedVersions"]
        return
    body = error_body(c.stdout)
    assert c.returncode == 1 and body["code"] == {
        "config-path-elsewhere": 7, "stray-bytes": 7, "huge-stdin": 6, "too-deep": 6,
        "huge-env": 5, "status": 50}.get(case, 11), body
    if case == "raw-surrogate-version":
        assert body["cniVersion"] == "\ud800 \ud800"
    if case == "malformed-config":
        assert body["cniVersion"] == "0.4.0"
    if case == "config-path":
        assert body["msg"] == ("megalos agent is not running: cannot connect to "
                               "/run/megalos/mgshim-absent.sock")
    if case == "odd-path":
        shown = ODD_PATH.decode("utf-8", "surrogateescape")
        assert body["msg"] == f"megalos agent is not running: cannot connect to {shown}"
    if case == "odd-version":
        assert body["cniVersion"] == "0.3.0 \"\\ \u00e9 \U0001f600 \ud800 \u00e9 \n/"


json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=3), max_leaves=8)
member_names = st.sampled_from(["cniVersion", "agentSocket", "name", "vxlanId", "args"])


@settings(max_examples=60, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(members=st.lists(st.tuples(member_names, json_values | st.text(max_size=60)), max_size=6),
       ascii_only=st.booleans(), indent=st.sampled_from([None, 0, 2]))
def test_random_configs_get_the_same_answer_from_both_shims(binaries, members, ascii_only, indent):
    """Well-formed configs (duplicate keys, nesting, escapes, any text) with no agent listening:
    both shims pick the same socket and cniVersion, and print the same bytes."""
    if len(binaries) < 2:
        pytest.skip("no C compiler here")
    body = "{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=ascii_only, indent=indent)}"
                           for k, v in members) + "}"
    try:
        stdin = body.encode()
    except UnicodeEncodeError:  # a lone surrogate written raw: not UTF-8, not a config
        return
    with tempfile.TemporaryDirectory(prefix="mgshim", dir="/tmp") as empty:
        env = {**cni_env(os.path.join(empty, "none.sock")), "MEGALOS_TIMEOUT": "2"}
        c, python = (subprocess.run([str(path)], input=stdin, env=env, capture_output=True,
                                    timeout=30, cwd=empty) for path in binaries.values())
    assert (c.returncode, c.stdout, c.stderr) == (python.returncode, python.stdout, python.stderr)


# JSON's pieces, broken ones too, and stray bytes: what a scan can trip on.
fragments = st.sampled_from([b"{", b"}", b"[", b"]", b",", b":", b'"', b"\\", b'\\"', b"\\\\", b"\\u",
                             b"d83d", b"\\ude00", b"\\ud800", b"\xed\xa0\x80", b"\xff", b"\xc3", b" ",
                             b"\n", b"1", b"null", b'"cniVersion"', b'"agentSocket"', b'"0.4.0"',
                             b'"/run/megalos/x.sock"', b'"/tmp/x.sock"', b"\0", b"[" * 70])


@settings(max_examples=150, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(pieces=st.lists(fragments | st.binary(max_size=4), max_size=14),
       command=st.sampled_from(["ADD", "VERSION"]))
def test_any_bytes_get_the_same_answer_from_both_shims(binaries, pieces, command):
    """Malformed configs, stray bytes, deep nesting, with no agent listening: both shims scan
    alike (cni/shim.py's `member` is cni/shim.c's scan_member) and print the same bytes."""
    if len(binaries) < 2:
        pytest.skip("no C compiler here")
    stdin = b'{"cniVersion": ' * (len(pieces) % 2) + b"".join(pieces)
    with tempfile.TemporaryDirectory(prefix="mgshim", dir="/tmp") as empty:
        env = {**cni_env(os.path.join(empty, "none.sock"), command), "MEGALOS_TIMEOUT": "2"}
        c, python = (subprocess.run([str(path)], input=stdin, env=env, capture_output=True,
                                    timeout=30, cwd=empty) for path in binaries.values())
    assert (c.returncode, c.stdout, c.stderr) == (python.returncode, python.stdout, python.stderr)


@pytest.mark.parametrize("conf", [
    "", "{}", "not json", "[1]", '{"cniVersion": 5}', '{"cniVersion": "9.9.9"}',
    '{"cniVersion": "0.4.0 \\u00e9 \\ud83d\\ude00 \\n"}',
    *[json.dumps({"cniVersion": v, "name": "x", "vxlanId": 1}) for v in spec.SUPPORTED_VERSIONS]])
def test_version_is_answered_without_the_agent_as_the_agent_answered(sockdir, megalos, conf):
    """VERSION is static: the shim answers it with no agent behind its socket (nothing is
    forwarded), with the reply the agent gives (Plugin.handle) wherever the agent gives one."""
    agent_code, agent_out = Plugin(datapath=None).handle({"CNI_COMMAND": "VERSION"}, conf)
    fake = FakeAgent(os.path.join(sockdir, "v.sock"), lambda request: b"1\n{}")
    try:
        code, out, err = megalos(cni_env(fake.path, "VERSION"), conf)
    finally:
        fake.close()
    assert fake.requests == [] and (code, err) == (0, b"")
    if agent_code == 0:
        assert out == agent_out.encode() + b"\n"
    else:  # the agent refused a config that is no JSON object; VERSION needs none
        assert json.loads(out) == spec.version_result()


def test_deep_config_is_refused_by_the_shim_before_the_agent(agent, megalos):
    conf = '{"cniVersion": "1.0.0", "prevResult": ' + "[" * 100_000 + "]" * 100_000 + "}"
    code, out, err = megalos(cni_env(agent.path), conf)
    body = error_body(out)
    assert (code, err, body["code"], body["cniVersion"]) == (1, b"", 6, "1.0.0")
    assert body["msg"] == "the network configuration nests arrays and objects more than 64 deep"
    assert agent.requests == []
    assert megalos(cni_env(agent.path), '{"a": ' + "[" * 63 + "]" * 63 + "}")[0] == 0


@pytest.mark.parametrize("data, expected", [
    (b"", False), (b"[" * 64, False), (b"[" * 65, True), (b"{" * 65, True),
    (b'"' + b"[" * 100 + b'"', False),                         # in a string
    (b'"\\"' + b"[" * 65, False),                             # an escaped quote: still a string
    (b'"\\\\"' + b"[" * 65, True),                           # an escaped backslash, then the end
    (b"][" * 100 + b"[" * 64, False), (b"[]" * 100, False),
    (b"[" * 64 + b'"' + b"]" * 10 + b"[" * 10, False),          # an unterminated string to the end
])
def test_too_deep(data, expected):
    assert shim.too_deep(data) == expected


@pytest.mark.parametrize("data, key, expected", [
    (b'{"cniVersion": "1.0.0"}', b"cniVersion", b"1.0.0"),
    (b'{"a": {"cniVersion": "x"}, "cniVersion": "y"}', b"cniVersion", b"y"),
    (b'{"cniVersion": "x", "cniVersion": 1}', b"cniVersion", None),
    (b'{"cniVersion": "\\u00e9\\ud83d\\ude00\\ud800"}', b"cniVersion",
     "\u00e9\U0001f600".encode() + b"\xed\xa0\x80"),
    (b'{"cniVersion": "' + b"x" * (shim.MAX_VALUE - 4) + b'"}', b"cniVersion", b"x" * (shim.MAX_VALUE - 4)),
    (b'{"cniVersion": "' + b"x" * (shim.MAX_VALUE - 3) + b'"}', b"cniVersion", None),  # C's buffer
    (b'{"cniVersion": "\\x"}', b"cniVersion", None),
    (b'{"cniVersion": "1.0.0",', b"cniVersion", b"1.0.0"),    # malformed: what the C scan finds
    (b' [{"cniVersion": "1.0.0"}]', b"cniVersion", None),
])
def test_member(data, key, expected):
    assert shim.member(data, key) == expected


def test_c_error_json_escaping(binaries, sockdir):
    """Every character class through the C shim's JSON writer, checked against json.dumps."""
    if "c" not in binaries:
        pytest.skip("no C compiler here")
    path = os.path.join(sockdir, "x").encode() + bytes(range(1, 128)) + "é€😀".encode() + b"\x80\xc0\xff"
    env = {b"CNI_COMMAND": b"ADD", shim.SOCKET_ENV.encode(): path}
    proc = subprocess.run([str(binaries["c"])], input=b"{}", env=env, capture_output=True, timeout=30)
    shown = path.decode("utf-8", "surrogateescape")
    expected = {"cniVersion": "1.1.0", "code": 11,
                "msg": f"megalos agent is not running: cannot connect to {shown}",
                "details": "AF_UNIX path too long"}
    assert proc.stdout == json.dumps(expected).encode() + b"\n"


# -- the installed binaries -----------------------------------------------------------------------
def test_closed_stdin_is_an_empty_config(binaries, kind, agent):
    proc = subprocess.run(["sh", "-c", 'exec "$0" <&-', str(binaries[kind])], env=cni_env(agent.path),
                          capture_output=True, timeout=30)
    assert proc.returncode == 0, proc
    assert agent.last[1] == b""


def test_an_answer_that_cannot_be_written_is_a_failure(binaries, kind, agent):
    """stdout on a full device: the runtime would never see the result, so not exit 0."""
    with open("/dev/full", "wb") as full:
        proc = subprocess.run([str(binaries[kind])], input=CONF.encode(), env=cni_env(agent.path),
                              stdout=full, stderr=subprocess.PIPE, timeout=30)
    assert proc.returncode == 1, proc
    assert proc.stderr == b"megalos: cannot write the answer to stdout: No space left on device\n"
    assert len(agent.requests) == 1  # the agent was asked once: the failure is the output's


def test_shim_imports_only_fast_standard_modules():
    """posix, _socket, sys, time at the top (built in: no file to find); json only when needed."""
    tree = ast.parse(SHIM.read_text())
    top = {alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    assert top == {"_socket", "posix", "sys", "time"}
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            modules.add(node.module.split(".")[0])
    assert modules <= set(sys.stdlib_module_names) and modules - top == {"json"}


def test_shim_runs_without_the_project_on_the_path(tmp_path, agent):
    """Installed alone in a CNI bin dir, with -I -S: nothing but the file itself."""
    lone = tmp_path / "megalos"
    shutil.copy(SHIM, lone)
    proc = subprocess.run([sys.executable, "-I", "-S", str(lone)], input=CONF, env=cni_env(agent.path),
                          capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_forward_is_the_shim_in_process(agent):
    """cni.shim.forward: what tests and benchmarks use to talk to an agent without an exec."""
    assert shim.forward(cni_env(agent.path), CONF) == (0, RESULT.decode())
    assert agent.last == ({k: v for k, v in cni_env(agent.path).items() if k.startswith("CNI_")},
                          CONF.encode())


def test_c_shim_builds_without_warnings_and_static(tmp_path):
    cc = os.environ.get("CC") or "cc"
    if not shutil.which(cc):
        pytest.skip("no C compiler here")
    out = tmp_path / "megalos"
    proc = subprocess.run([cc, *install_shim.C_FLAGS, "-std=c11", "-Wall", "-Wextra", "-Werror",
                           "-o", str(out), str(install_shim.SHIM_C_SOURCE)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    if shutil.which("readelf"):
        headers = subprocess.run(["readelf", "-l", str(out)], capture_output=True, text=True).stdout
        assert "LOAD" in headers and "INTERP" not in headers  # static: no dynamic loader


def test_installer_refuses_a_binary_that_does_not_run_here(tmp_path):
    bogus = tmp_path / "bogus"
    bogus.write_bytes(b"\x7fELF not really")
    bogus.chmod(0o755)
    assert install_shim.main([str(tmp_path / "bin"), "--kind", "c", "--binary", str(bogus)]) == 1
    assert list((tmp_path / "bin").iterdir()) == []  # no temporary file left


def test_installer_copies_a_prebuilt_c_shim(binaries, tmp_path, agent):
    if "c" not in binaries:
        pytest.skip("no C compiler here")
    assert install_shim.main([str(tmp_path), "--kind", "c", "--binary", str(binaries["c"])]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["megalos"]
    proc = subprocess.run([str(tmp_path / "megalos")], input=CONF.encode(), env=cni_env(agent.path),
                          capture_output=True, timeout=30)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, RESULT + b"\n", b""), agent.requests
