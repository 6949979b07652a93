"""cni/shim.py against a tiny in-test agent on a UNIX socket: what it forwards, how it fails."""
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

from cni import shim

SHIM = Path(shim.__file__)
CONF = json.dumps({"cniVersion": "0.3.0", "name": "lan_a", "type": "megalos", "suffix": "abcdef",
                   "vxlanId": 100})
ANSWER = {"exit": 0, "stdout": '{"cniVersion": "0.3.0", "interfaces": []}'}


class FakeAgent:
    """Accepts connections on `path`; `reply(request bytes) -> bytes | None` (None: never answer)."""

    def __init__(self, path: str, reply=lambda request: json.dumps(ANSWER).encode(),
                 backlog: int = 64, serve: bool = True):
        self.path = path
        self.reply = reply
        self.requests: list[bytes] = []
        self.release = threading.Event()  # lets a connection that never answers finish
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(backlog)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        if serve:
            self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        with conn:
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
            request = b"".join(chunks)
            self.requests.append(request)
            answer = self.reply(request)
            if answer is None:
                self.release.wait(10)
                return
            conn.sendall(answer)

    @property
    def last(self) -> dict:
        return json.loads(self.requests[-1])

    def close(self):
        self.release.set()
        self.sock.close()


@pytest.fixture
def sockdir():
    path = tempfile.mkdtemp(prefix="mgshim", dir="/tmp")  # short: AF_UNIX paths stop at 107 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def agent(sockdir):
    fake = FakeAgent(os.path.join(sockdir, "agent.sock"))
    yield fake
    fake.close()


def cni_env(socket_path: str, command: str = "ADD", **extra) -> dict:
    return {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/p1",
            "CNI_IFNAME": "net0", "CNI_PATH": "/opt/cni/bin", "CNI_ARGS": "K8S_POD_NAME=p1",
            shim.SOCKET_ENV: socket_path, **extra}


def error_body(out: str) -> dict:
    body = json.loads(out)
    assert set(body) <= {"cniVersion", "code", "msg", "details"}
    assert isinstance(body["code"], int) and body["msg"]
    return body


# -- what the shim sends ----------------------------------------------------------------------
def test_forwards_only_cni_variables_and_stdin_verbatim(agent):
    env = {**cni_env(agent.path), "PATH": "/usr/bin", "HOME": "/root", "KUBECONFIG": "/secret",
           "cni_lowercase": "x", "XCNI_FOO": "y", "CNI_EXTRA": "kept"}
    stdin = CONF + "\n  "
    assert shim.forward(env, stdin) == (0, ANSWER["stdout"])
    request = agent.last
    assert set(request) == {"env", "stdin"}
    assert request["stdin"] == stdin
    assert request["env"] == {k: v for k, v in env.items() if k.startswith("CNI_")}
    assert "CNI_EXTRA" in request["env"] and shim.SOCKET_ENV not in request["env"]


def test_passes_the_agents_exit_code_and_stdout_through(sockdir):
    answer = {"exit": 1, "stdout": '{"cniVersion": "0.3.0", "code": 7, "msg": "vxlanId is required"}'}
    fake = FakeAgent(os.path.join(sockdir, "a.sock"), lambda request: json.dumps(answer).encode())
    try:
        assert shim.forward(cni_env(fake.path), CONF) == (1, answer["stdout"])
    finally:
        fake.close()


def test_config_agent_socket_wins_over_the_environment(sockdir, agent):
    conf = json.dumps({**json.loads(CONF), "agentSocket": agent.path})
    assert shim.forward(cni_env(os.path.join(sockdir, "elsewhere.sock")), conf)[0] == 0
    assert len(agent.requests) == 1


@pytest.mark.parametrize("stdin", ["", "not json", "[1, 2]", '{"agentSocket": 5, "cniVersion": 1}'])
def test_any_stdin_is_forwarded_for_the_agent_to_judge(agent, stdin):
    assert shim.forward(cni_env(agent.path), stdin)[0] == 0
    assert agent.last["stdin"] == stdin


def test_large_config_goes_through(agent):
    conf = json.dumps({**json.loads(CONF), "padding": "x" * 300_000})
    assert shim.forward(cni_env(agent.path), conf)[0] == 0
    assert agent.last["stdin"] == conf


# -- when the agent is not there --------------------------------------------------------------
@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK", "GC", "VERSION"])
def test_no_agent_is_code_11_naming_the_socket(sockdir, command):
    path = os.path.join(sockdir, "missing.sock")
    code, out = shim.forward(cni_env(path, command), CONF)
    body = error_body(out)
    assert code == 1 and body["code"] == 11
    assert path in body["msg"] and body["cniVersion"] == "0.3.0"
    assert body["details"]  # the OS reason, e.g. "No such file or directory"


def test_status_without_agent_is_code_50(sockdir):
    code, out = shim.forward(cni_env(os.path.join(sockdir, "missing.sock"), "STATUS"), CONF)
    assert code == 1 and error_body(out)["code"] == 50


def test_socket_file_nobody_listens_on_is_code_11(sockdir):
    path = os.path.join(sockdir, "stale.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens: ECONNREFUSED
    code, out = shim.forward(cni_env(path), CONF)
    assert code == 1 and error_body(out)["code"] == 11 and path in error_body(out)["msg"]


def test_socket_path_that_is_a_directory_or_too_long_is_code_11(sockdir):
    for path in (sockdir, "/tmp/" + "x" * 200):
        code, out = shim.forward(cni_env(path), CONF)
        assert code == 1 and error_body(out)["code"] == 11


def test_default_socket_and_version_when_stdin_is_not_json():
    env = cni_env("")
    del env[shim.SOCKET_ENV]
    if os.path.exists(shim.DEFAULT_SOCKET):
        pytest.skip(f"an agent runs on this machine at {shim.DEFAULT_SOCKET}")
    code, out = shim.forward(env, "not json")
    body = error_body(out)
    assert code == 1 and body["code"] == 11 and shim.DEFAULT_SOCKET in body["msg"]
    assert body["cniVersion"] == "1.1.0"


# -- when the agent misbehaves ----------------------------------------------------------------
def test_timeout_is_code_11(sockdir):
    fake = FakeAgent(os.path.join(sockdir, "slow.sock"), lambda request: None)
    try:
        code, out = shim.forward(cni_env(fake.path, MEGALOS_TIMEOUT="0.3"), CONF)
    finally:
        fake.close()
    body = error_body(out)
    assert code == 1 and body["code"] == 11
    assert "did not answer within 0.3 s" in body["msg"] and fake.path in body["msg"]


@pytest.mark.parametrize("answer", [
    b"", b"not json", b"[1, 2]", b"{}", b'{"exit": 0}', b'{"stdout": ""}', b'{"exit": "x", "stdout": ""}',
    b'{"exit": null, "stdout": ""}', b"\xff\xfe", b'{"exit": 0, "stdout": "x"',
])
def test_malformed_answer_is_code_5(sockdir, answer):
    fake = FakeAgent(os.path.join(sockdir, "bad.sock"), lambda request: answer)
    try:
        code, out = shim.forward(cni_env(fake.path), CONF)
    finally:
        fake.close()
    body = error_body(out)
    assert code == 1 and body["code"] == 5 and "malformed answer" in body["msg"]
    assert body["cniVersion"] == "0.3.0"


def test_busy_agent_with_a_full_accept_queue_is_waited_for(sockdir):
    fake = FakeAgent(os.path.join(sockdir, "busy.sock"), backlog=1, serve=False)
    results = []
    clients = [threading.Thread(target=lambda: results.append(
        shim.forward(cni_env(fake.path, MEGALOS_TIMEOUT="10"), CONF))) for _ in range(8)]
    try:
        for client in clients:
            client.start()
        threading.Event().wait(0.3)  # the agent is busy: nobody accepts yet
        fake.thread.start()
        for client in clients:
            client.join(15)
    finally:
        fake.close()
    assert [code for code, _ in results] == [0] * 8, results


@pytest.mark.parametrize("value", ["", "soon", "-"])
def test_unreadable_timeout_falls_back_to_the_default(agent, value):
    assert shim.forward(cni_env(agent.path, MEGALOS_TIMEOUT=value), CONF)[0] == 0


# -- the installed binary ---------------------------------------------------------------------
def run_shim(env: dict, stdin: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-I", "-S", str(SHIM)], input=stdin, env=env,
                          capture_output=True, text=True, timeout=30)


def test_main_prints_the_answer_with_a_newline_and_exits_with_its_code(agent):
    proc = run_shim(cni_env(agent.path), CONF)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, ANSWER["stdout"] + "\n", "")


def test_main_prints_nothing_for_an_empty_answer(sockdir):
    fake = FakeAgent(os.path.join(sockdir, "del.sock"), lambda r: b'{"exit": 0, "stdout": ""}')
    try:
        proc = run_shim(cni_env(fake.path, "DEL"), CONF)
    finally:
        fake.close()
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_main_without_agent_prints_error_json_and_fails(sockdir):
    proc = run_shim(cni_env(os.path.join(sockdir, "none.sock")), CONF)
    assert proc.returncode == 1 and proc.stderr == ""
    assert error_body(proc.stdout)["code"] == 11


def test_shim_imports_only_the_standard_library():
    tree = ast.parse(SHIM.read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import in the shim"
            modules.add(node.module.split(".")[0])
    assert modules, "no imports found: the parser is looking at the wrong file"
    assert modules <= set(sys.stdlib_module_names), modules - set(sys.stdlib_module_names)


def test_shim_runs_without_the_project_on_the_path(tmp_path, agent):
    """Installed alone in a CNI bin dir, with -I -S: nothing but the file itself."""
    lone = tmp_path / "megalos"
    shutil.copy(SHIM, lone)
    proc = subprocess.run([sys.executable, "-I", "-S", str(lone)], input=CONF, env=cni_env(agent.path),
                          capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
