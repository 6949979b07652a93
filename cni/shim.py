"""`megalos`, the CNI binary, in Python: forwards the runtime's request to the node agent and
prints its answer. cni/shim.c is the same program in C (what the DaemonSet installs); the two
behave the same, byte for byte, and tests/test_shim.py runs both.

Standard library only, and only modules that load at once: `posix` (not `os`), `_socket` (not
`socket`); `json` only to report an error, or when the config mentions `agentSocket`. Installed
with `#!/usr/bin/python3 -IS`: the interpreter starts in ~11 ms here, and compiling this script
(done on every run: a script is never cached) adds ~2-3 ms.

Wire protocol on the agent's UNIX socket, one request per connection (the agent's side is
cni/server.py):
    shim -> agent: b"CNI1\\n", each CNI_* variable as b"NAME=VALUE\\0", b"\\0", then the network
                   config (stdin) byte for byte, then EOF (shutdown of the write side)
    agent -> shim: the exit code in decimal, b"\\n", then the plugin's stdout byte for byte,
                   then EOF
Limits: stdin 1 MiB, the CNI_* variables 64 KiB, the answer 1 MiB.

The agent's socket: the config's `agentSocket`, else $MEGALOS_AGENT_SOCKET, else the default.
$MEGALOS_TIMEOUT: seconds to wait for the agent, a plain decimal (30, 0.5); else 120.
When the agent cannot be reached the shim answers itself: code 11 (50 for STATUS) naming the
socket; 5 for a lost connection or a malformed answer.
"""
import _socket
import posix
import sys
import time

MAGIC = b"CNI1\n"
DEFAULT_SOCKET = "/run/megalos/agent.sock"
SOCKET_ENV = "MEGALOS_AGENT_SOCKET"
TIMEOUT_ENV = "MEGALOS_TIMEOUT"
DEFAULT_TIMEOUT = 120.0
DEFAULT_VERSION = "1.1.0"
MAX_STDIN = 1 << 20
MAX_ENV = 1 << 16
MAX_REPLY = 1 << 20
ERR_IO = 5
ERR_TRY_AGAIN_LATER = 11
ERR_NOT_AVAILABLE = 50


# -- the protocol, the shim's side ----------------------------------------------------------
def encode_request(env: dict, stdin: bytes) -> bytes:
    """The request for `env` (bytes -> bytes; only CNI_* variables go) and stdin."""
    entries = [key + b"=" + value + b"\0" for key, value in env.items()
               if key.startswith(b"CNI_") and b"=" not in key and b"\0" not in key + value]
    return MAGIC + b"".join(entries) + b"\0" + stdin


def decode_reply(data: bytes) -> tuple:
    """(exit code, stdout bytes); ValueError if `data` is not an answer."""
    head, newline, out = data.partition(b"\n")
    if not newline or not head.isdigit() or len(head) > 3 or int(head) > 255:
        raise ValueError("no exit code line")
    return int(head), out


# -- errors the shim reports itself ---------------------------------------------------------
def _config(stdin: bytes) -> dict:
    """The config as JSON, read as the C shim reads it: UTF-8, a stray byte kept as it is."""
    import json  # ~9 ms: only on the paths that need it
    try:
        conf = json.loads(stdin.decode("utf-8", "surrogateescape"))
    except (ValueError, RecursionError):
        return {}
    return conf if isinstance(conf, dict) else {}


def _error(stdin: bytes, code: int, msg: str, details: str = "") -> tuple:
    """(1, the CNI error JSON), in the config's cniVersion when it has one."""
    import json
    version = _config(stdin).get("cniVersion")
    body = {"cniVersion": version if isinstance(version, str) else DEFAULT_VERSION,
            "code": code, "msg": msg}
    if details:
        body["details"] = details
    return 1, json.dumps(body).encode()


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _socket_path(env: dict, stdin: bytes) -> bytes:
    if b"agentSocket" in stdin:
        path = _config(stdin).get("agentSocket")
        if isinstance(path, str) and path and "\0" not in path:
            try:
                return path.encode("utf-8", "surrogateescape")  # stray bytes as they came
            except UnicodeEncodeError:
                return path.encode("utf-8", "surrogatepass")  # a lone surrogate, as C writes it
    return env.get(SOCKET_ENV.encode()) or DEFAULT_SOCKET.encode()


def _timeout(raw) -> float:
    if raw and raw.replace(b".", b"", 1).isdigit():
        value = float(raw)
        if 0 < value < 1e9:
            return value
    return DEFAULT_TIMEOUT


# -- the exchange ---------------------------------------------------------------------------
def exchange(env: dict, stdin: bytes) -> tuple:
    """(exit code, stdout bytes) for one CNI request; `env` maps bytes to bytes."""
    if len(stdin) > MAX_STDIN:
        return _error(b"", ERR_IO, f"the network configuration is larger than {MAX_STDIN} bytes")
    path = _socket_path(env, stdin)
    shown = _text(path)
    request = encode_request(env, stdin)
    if len(request) - len(MAGIC) - len(stdin) > MAX_ENV:
        return _error(stdin, ERR_IO, f"the CNI_* variables are larger than {MAX_ENV} bytes")
    timeout = _timeout(env.get(TIMEOUT_ENV.encode()))
    unavailable = ERR_NOT_AVAILABLE if env.get(b"CNI_COMMAND") == b"STATUS" else ERR_TRY_AGAIN_LATER
    deadline = time.monotonic() + timeout
    try:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    except OSError as exc:
        return _error(stdin, unavailable,
                      f"megalos agent is not running: cannot connect to {shown}",
                      exc.strerror or str(exc))
    try:
        while True:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                sock.connect(path)
                break
            except BlockingIOError:  # EAGAIN: the agent's accept queue is full; busy, not gone
                if time.monotonic() < deadline:
                    time.sleep(0.01)
                    continue
                return _error(stdin, ERR_TRY_AGAIN_LATER, f"megalos agent at {shown} is busy: "
                              f"no connection within {timeout:g} s")
            except OSError as exc:
                return _error(stdin, unavailable,
                              f"megalos agent is not running: cannot connect to {shown}",
                              exc.strerror or str(exc))
        chunks, size = [], 0
        try:
            sock.sendall(request)
            sock.shutdown(_socket.SHUT_WR)
            while size <= MAX_REPLY:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except TimeoutError:
            return _error(stdin, ERR_TRY_AGAIN_LATER,
                          f"megalos agent at {shown} did not answer within {timeout:g} s")
        except OSError as exc:
            return _error(stdin, ERR_IO, f"lost the connection to the megalos agent at {shown}",
                          exc.strerror or str(exc))
    finally:
        sock.close()
    if size > MAX_REPLY:
        return _error(stdin, ERR_IO, f"malformed answer from the megalos agent at {shown}",
                      f"larger than {MAX_REPLY} bytes")
    try:
        return decode_reply(b"".join(chunks))
    except ValueError:
        return _error(stdin, ERR_IO, f"malformed answer from the megalos agent at {shown}")


def _bytes(value) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def forward(env: dict, stdin) -> tuple:
    """(exit code, stdout text) for one CNI request; `env` and `stdin` as str or bytes."""
    code, out = exchange({_bytes(k): _bytes(v) for k, v in env.items()}, _bytes(stdin))
    return code, _text(out)


def _read_stdin() -> bytes:
    if sys.stdin is None or sys.stdin.isatty():
        return b""
    return sys.stdin.buffer.read(MAX_STDIN + 1)


def main() -> int:
    try:
        stdin = _read_stdin()
    except OSError as exc:
        code, out = _error(b"", ERR_IO, "cannot read the network configuration from stdin",
                           exc.strerror or str(exc))
    else:
        code, out = exchange(posix.environ, stdin)
    data = out + b"\n" if out else b""
    try:  # unbuffered: nothing is left for the interpreter to flush (and fail on) at exit
        while data:
            data = data[posix.write(1, data):]
    except OSError as exc:  # a result the runtime never sees is a failure
        sys.stderr.write(f"megalos: cannot write the answer to stdout: {exc.strerror}\n")
        return code or 1
    return code


if __name__ == "__main__":
    sys.exit(main())
