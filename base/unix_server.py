"""A UNIX stream socket server, one thread per connection: the CNI socket and the reflector's state
socket are both this. With `max_connections`, at most that many connections are served at once:
the server accepts the next one only when one of them is done, so the others wait in the
listen backlog (a full backlog refuses a connect with EAGAIN) and the thread count stays bounded.

One rule for a socket file left behind by an earlier run: nobody answers on it, so it is
removed; a live one means another instance is serving, and this one refuses to start
(RuntimeError) instead of stealing its clients. The file gets `mode` from the moment it exists
(the umask is set around bind), never a moment of wider permissions.
"""
from __future__ import annotations

import os
import socket
import socketserver
import threading


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    request_queue_size = socket.SOMAXCONN  # socketserver's default of 5 refuses a burst of clients

    def __init__(self, path: str, handler: type[socketserver.BaseRequestHandler], mode: int = 0o600,
                 name: str = "unix-server", max_connections: int = 0):
        self.path = path
        self.name = name
        self._thread: threading.Thread | None = None
        self._slots = threading.BoundedSemaphore(max_connections) if max_connections else None
        self._stopping = threading.Event()
        remove_stale_socket(path)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        old = os.umask(0o777 & ~mode)
        try:
            super().__init__(path, handler)
        finally:
            os.umask(old)

    def get_request(self):
        """Accept a connection once a slot is free (with `max_connections`)."""
        if self._slots is not None:
            while not self._slots.acquire(timeout=0.2):
                if self._stopping.is_set():
                    raise OSError("the server is stopping")  # serve_forever goes on to its end
        try:
            return super().get_request()
        except BaseException:
            if self._slots is not None:
                self._slots.release()
            raise

    def shutdown_request(self, request) -> None:
        """Called once for every accepted connection, when it is done: its slot is free."""
        try:
            super().shutdown_request(request)
        finally:
            if self._slots is not None:
                self._slots.release()

    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self.serve_forever, name=self.name, daemon=True)
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        """Stop serving (if started), close the socket and remove its file."""
        self._stopping.set()
        if self._thread is not None:
            self.shutdown()  # waits for serve_forever to return: never call it before start()
            self._thread = None
        self.server_close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def remove_stale_socket(path: str) -> None:
    """Remove a socket file nobody listens on; RuntimeError when something answers on it."""
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise RuntimeError(f"another process is already serving {path}")
