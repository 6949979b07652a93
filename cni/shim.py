"""`megalos`, the CNI binary: forwards the runtime's request to the node agent and prints its answer.

Standard library only, so the interpreter starts fast (installed with `#!/usr/bin/python3 -IS`).
Wire protocol on the agent's UNIX socket, one request per connection:
    shim -> agent: {"env": {"CNI_COMMAND": ..., ...}, "stdin": "<network config>"} then EOF
    agent -> shim: {"exit": <exit code>, "stdout": "<what the plugin prints>"} then EOF
"""
import json
import os
import socket
import sys
import time

DEFAULT_SOCKET = "/run/megalos/agent.sock"
SOCKET_ENV = "MEGALOS_AGENT_SOCKET"
TIMEOUT_ENV = "MEGALOS_TIMEOUT"
DEFAULT_TIMEOUT = 120.0
ERR_IO = 5
ERR_TRY_AGAIN_LATER = 11
ERR_NOT_AVAILABLE = 50


def _error(version, code, msg, details=""):
    body = {"cniVersion": version, "code": code, "msg": msg}
    if details:
        body["details"] = details
    return 1, json.dumps(body)


def _peek(stdin):
    """cniVersion and agentSocket from the config, tolerating anything (the agent validates)."""
    try:
        conf = json.loads(stdin)
    except ValueError:
        return "1.1.0", ""
    if not isinstance(conf, dict):
        return "1.1.0", ""
    version = conf.get("cniVersion")
    path = conf.get("agentSocket")
    return (version if isinstance(version, str) else "1.1.0",
            path if isinstance(path, str) else "")


def forward(env, stdin):
    """(exit code, stdout text) for one CNI request."""
    version, path = _peek(stdin)
    path = path or env.get(SOCKET_ENV) or DEFAULT_SOCKET
    try:
        timeout = float(env.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT)
    except ValueError:
        timeout = DEFAULT_TIMEOUT
    request = json.dumps({"env": {k: v for k, v in env.items() if k.startswith("CNI_")},
                          "stdin": stdin}).encode()
    unavailable = ERR_NOT_AVAILABLE if env.get("CNI_COMMAND") == "STATUS" else ERR_TRY_AGAIN_LATER
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock.connect(path)
            break
        except BlockingIOError:  # EAGAIN: the agent's accept queue is full; it is busy, not gone
            if time.monotonic() < deadline:
                time.sleep(0.01)
                continue
            sock.close()
            return _error(version, ERR_TRY_AGAIN_LATER,
                          f"megalos agent at {path} is busy: no connection within {timeout:g} s")
        except OSError as exc:
            sock.close()
            return _error(version, unavailable,
                          f"megalos agent is not running: cannot connect to {path}",
                          exc.strerror or str(exc))
    try:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    except socket.timeout:
        return _error(version, ERR_TRY_AGAIN_LATER,
                      f"megalos agent at {path} did not answer within {timeout:g} s")
    except OSError as exc:
        return _error(version, ERR_IO, f"lost the connection to the megalos agent at {path}", str(exc))
    finally:
        sock.close()
    try:
        reply = json.loads(b"".join(chunks))
        return int(reply["exit"]), str(reply["stdout"])
    except (ValueError, KeyError, TypeError):
        return _error(version, ERR_IO, f"malformed answer from the megalos agent at {path}")


def main():
    stdin = sys.stdin.read() if not sys.stdin.isatty() else ""
    code, out = forward(dict(os.environ), stdin)
    if out:
        sys.stdout.write(out)
        sys.stdout.write("\n")
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
