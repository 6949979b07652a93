"""`megalos`, the CNI binary, in Python: forwards the runtime's request to the node agent and
prints its answer. cni/shim.c is the same program in C (what the DaemonSet installs); the two
behave the same, byte for byte, on any input, and tests/test_shim.py runs both.

Standard library only, and only modules that load at once: `posix` (not `os`), `_socket` (not
`socket`), never `re` (~10 ms); `json` only to write an answer the shim makes itself (an error,
VERSION). Installed with `#!/usr/bin/python3 -IS`: the interpreter starts in ~11 ms here, and
compiling this script (done on every run: a script is never cached) adds ~2-3 ms.

Wire protocol on the agent's UNIX socket, one request per connection (the agent's side is
cni/server.py):
    shim -> agent: b"CNI1\\n", each CNI_* variable as b"NAME=VALUE\\0", b"\\0", then the network
                   config (stdin) byte for byte, then EOF (shutdown of the write side)
    agent -> shim: the exit code in decimal, b"\\n", then the plugin's stdout byte for byte,
                   then EOF
Limits: stdin 1 MiB, the CNI_* variables 64 KiB, the answer 1 MiB.

Before it forwards anything the shim refuses, itself: a config larger than 1 MiB or nesting
arrays and objects more than 64 deep (code 6), and an `agentSocket` that is not a socket in
/run/megalos/ (code 7: a network config must not point the root-run plugin at any other
socket). VERSION is static: the shim answers it, without the agent.

The agent's socket: the config's `agentSocket`, else $MEGALOS_AGENT_SOCKET, else the default.
$MEGALOS_TIMEOUT: seconds to wait for the agent, a plain decimal (30, 0.5); else 120.
When the agent cannot be reached the shim answers itself: code 11 (50 for STATUS) naming the
socket; 5 for a lost connection or a malformed answer.

The config is scanned, never parsed (see `member`), the same way as cni/shim.c scans it: so the
two shims find the same `cniVersion` and `agentSocket` in any bytes, well-formed JSON or not.
"""
import _socket
import posix
import sys
import time

MAGIC = b"CNI1\n"
DEFAULT_SOCKET = "/run/megalos/agent.sock"
SOCKET_DIR = "/run/megalos/"
SOCKET_ENV = "MEGALOS_AGENT_SOCKET"
TIMEOUT_ENV = "MEGALOS_TIMEOUT"
DEFAULT_TIMEOUT = 120.0
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
DEFAULT_VERSION = SUPPORTED_VERSIONS[-1]
MAX_STDIN = 1 << 20
MAX_ENV = 1 << 16
MAX_REPLY = 1 << 20
MAX_DEPTH = 64      # nested arrays and objects in a config; a real one has fewer than 10
MAX_VALUE = 4096    # the scan ignores a cniVersion or agentSocket value longer than this - 4
ERR_IO = 5
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN_LATER = 11
ERR_NOT_AVAILABLE = 50
TOO_LARGE = f"the network configuration is larger than {MAX_STDIN} bytes"
TOO_DEEP = f"the network configuration nests arrays and objects more than {MAX_DEPTH} deep"
SOCKET_RULE = (f"agentSocket must be a socket in {SOCKET_DIR} ({SOCKET_DIR}NAME, NAME of letters, "
               "digits, '.', '_', '-'): the plugin talks only to the megalos agent")

_SPACE = b" \t\n\r"
_NOT_STRUCTURE = bytes(c for c in range(256) if c not in b"{}[],")
_NAME_BYTES = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"
_HEX = b"0123456789abcdefABCDEF"
_ESCAPES = b'"\\nrtbf/u'             # after a backslash...
_ESCAPED = b'"\\\n\r\t\b\f/'         # ...stands for (\u: four hex digits follow)


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


# -- the config, scanned as cni/shim.c scans it ---------------------------------------------
def _skip_space(data: bytes, i: int) -> int:
    while i < len(data) and data[i] in _SPACE:
        i += 1
    return i


def _string_end(data: bytes, i: int) -> int:
    """The index just past the JSON string whose opening quote is data[i]; len(data) if it is
    not terminated. A quote after an odd run of backslashes is escaped."""
    start = i + 1
    while True:
        quote = data.find(b'"', start)
        if quote < 0:
            return len(data)
        before = data[start:quote]
        if (len(before) - len(before.rstrip(b"\\"))) % 2 == 0:
            return quote + 1
        start = quote + 1


def _tokens(data: bytes, i: int = 0):
    """(position, byte, end) of each of `{}[],` outside strings and of each string, from data[i]
    on, in order: a string's position is its opening quote's and `end` is just past it; the
    others' are -1. Bytes are jumped over, not visited one by one."""
    while i < len(data):
        quote = data.find(b'"', i)
        stop = len(data) if quote < 0 else quote
        for byte in data[i:stop].translate(None, _NOT_STRUCTURE):
            yield -1, byte, -1
        if quote < 0:
            return
        i = _string_end(data, quote)
        yield quote, 0x22, i


def too_deep(data: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether arrays and objects nest more than `limit` deep anywhere in `data` (brackets in
    strings do not count; well-formed or not)."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    depth = 0
    for _, byte, _ in _tokens(data):
        if byte in b"[{":
            depth += 1
            if depth > limit:
                return True
        elif byte in b"]}":
            depth -= 1
    return False


def _hex4(data: bytes, i: int) -> bool:
    digits = data[i:i + 4]
    return len(digits) == 4 and not digits.translate(None, _HEX)


def _unescape(data: bytes, start: int, end: int) -> bytes | None:
    """The JSON string data[start:end] (quotes included) unescaped: raw bytes as they are, an
    escape as UTF-8 (a lone surrogate too); None if malformed or too long for the C shim's
    buffer of MAX_VALUE bytes (which a 4-byte character may need to fit)."""
    if end - start < 2 or data[end - 1] != 0x22:
        return None
    out = bytearray()
    i = start + 1
    while i < end - 1:
        if len(out) + 4 >= MAX_VALUE:
            return None
        if data[i] != 0x5C:
            out.append(data[i])
            i += 1
            continue
        i += 1
        kind = _ESCAPES.find(data[i:i + 1])
        if kind < 0:
            return None
        if data[i] != 0x75:  # not \u
            out.append(_ESCAPED[kind])
            i += 1
            continue
        if i + 4 >= end - 1 or not _hex4(data, i + 1):
            return None
        code = int(data[i + 1:i + 5], 16)
        i += 4
        if (0xD800 <= code < 0xDC00 and i + 6 < end - 1 and data[i + 1:i + 3] == b"\\u"
                and _hex4(data, i + 3) and 0xDC00 <= int(data[i + 3:i + 7], 16) < 0xE000):
            code = 0x10000 + ((code - 0xD800) << 10) + (int(data[i + 3:i + 7], 16) - 0xDC00)
            i += 6
        out += chr(code).encode("utf-8", "surrogatepass")
        i += 1
    return bytes(out)


def member(data: bytes, key: bytes) -> bytes | None:
    """The string value of the top-level member `key` of the JSON object in `data` (the last
    one wins, as with json.loads), unescaped; None if absent or not a string. A scan, not a
    parser: it follows strings and nesting only. On a well-formed config it finds what
    json.loads finds; on any bytes, what cni/shim.c's scan_member finds. A key written with
    escapes is not recognised."""
    start = _skip_space(data, 0)
    if start >= len(data) or data[start] != 0x7B:
        return None
    depth, at_key, found = 0, False, None
    for at, byte, end in _tokens(data, start):
        if byte in b"{[":
            depth += 1
            at_key = depth == 1
        elif byte in b"}]":
            depth -= 1
            if depth == 0:
                return found
        elif byte == 0x2C:
            at_key = depth == 1
        elif at_key:  # a string where a key goes
            at_key = False
            colon = _skip_space(data, end)
            if (colon < len(data) and data[colon] == 0x3A and end - at == len(key) + 2
                    and data[at + 1:end - 1] == key):
                value = _skip_space(data, colon + 1)
                found = (_unescape(data, value, _string_end(data, value))
                         if value < len(data) and data[value] == 0x22 else None)
    return found


def config_text(raw: bytes) -> str:
    """A value unescaped from the config as text, read as cni/shim.c reads it: UTF-8 where (as
    in a Python str) an encoded lone surrogate is a character, any other stray byte kept as
    with surrogateescape."""
    parts = []
    while True:
        try:
            parts.append(raw.decode("utf-8", "surrogatepass"))
            return "".join(parts)
        except UnicodeDecodeError as exc:
            parts += [raw[:exc.start].decode("utf-8", "surrogatepass"), chr(0xDC00 + raw[exc.start])]
            raw = raw[exc.start + 1:]


def socket_allowed(path: bytes) -> bool:
    """Whether `path` is a socket in /run/megalos/ (the only sockets a config may name)."""
    name = path[len(SOCKET_DIR):]
    return (path.startswith(SOCKET_DIR.encode()) and name not in (b"", b".", b"..")
            and not name.translate(None, _NAME_BYTES))


def _config_socket(stdin: bytes) -> bytes | None:
    """The config's agentSocket; None if it names none (absent, empty, not a string)."""
    path = member(stdin, b"agentSocket") if b"agentSocket" in stdin else None
    return path if path and b"\0" not in path else None


# -- answers the shim makes itself ----------------------------------------------------------
def _version(stdin: bytes) -> str:
    raw = member(stdin, b"cniVersion")
    return DEFAULT_VERSION if raw is None else config_text(raw)


def _error(stdin: bytes, code: int, msg: str, details: str = "") -> tuple:
    """(1, the CNI error JSON), in the config's cniVersion when it has one."""
    import json  # ~13 ms: only on the paths that need it
    body = {"cniVersion": _version(stdin), "code": code, "msg": msg}
    if details:
        body["details"] = details
    return 1, json.dumps(body).encode()


_SUPPORTED_JSON = ", ".join(f'"{v}"' for v in SUPPORTED_VERSIONS)


def version_reply(stdin: bytes) -> bytes:
    """VERSION's answer: static but for the cniVersion, the config's (what the agent answered),
    written as json.dumps writes it. Without json (~13 ms to import) unless the version needs
    escaping."""
    version = _version(stdin)
    if version.isascii() and version.isprintable() and '"' not in version and "\\" not in version:
        return f'{{"cniVersion": "{version}", "supportedVersions": [{_SUPPORTED_JSON}]}}'.encode()
    import json
    return json.dumps({"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}).encode()


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


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
        return _error(b"", ERR_DECODE, TOO_LARGE)
    if too_deep(stdin):
        return _error(stdin, ERR_DECODE, TOO_DEEP)
    path = _config_socket(stdin)
    if path is not None and not socket_allowed(path):
        return _error(stdin, ERR_INVALID_CONFIG, SOCKET_RULE)
    if env.get(b"CNI_COMMAND") == b"VERSION":
        return 0, version_reply(stdin)
    path = path or env.get(SOCKET_ENV.encode()) or DEFAULT_SOCKET.encode()
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
