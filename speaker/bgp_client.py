"""The agent's handle on a BGP process (``speaker.bgp_process``).

Plain threads: no eventlet, no os_ken import. ``BgpProcess`` starts the
process, sends JSON-line commands and waits for their replies, and hands
every event to ``on_event`` from its reader thread::

    with BgpProcess(on_event=queue.put) as bgp:
        bgp.call('start', router_id='10.0.0.11', asn=65000, role='speaker')
        bgp.call('peer_add', address='10.0.0.1', connect_mode='passive')
        bgp.call('vni_add', vni=100, rd_index=1)

The protocol is documented in ``speaker.bgp_process``.
"""

import itertools
import json
import logging
import subprocess
import sys
import threading
import time

LOG = logging.getLogger(__name__)

BGP_PROCESS_MODULE = 'speaker.bgp_process'


class BgpError(Exception):
    """A command failed, timed out, or the BGP process is gone."""


class _Pending:
    __slots__ = ('done', 'reply')

    def __init__(self):
        self.done = threading.Event()
        self.reply = None


class BgpProcess:
    """One BGP process and the pipes to it.

    ``argv_prefix`` runs it through another command, for example
    ``['ip', 'netns', 'exec', 'ns1']``. ``on_event(dict)`` is called from
    the reader thread, one event at a time, in the order the process wrote
    them; it should not block for long (the process buffers meanwhile).
    Calls made before the process is ready (os-ken imported) first wait up
    to ``startup_timeout`` seconds for it; their own timeout starts then.
    """

    def __init__(self, on_event=None, argv_prefix=(), python=sys.executable,
                 env=None, stderr=None, name='bgp', startup_timeout=60):
        self.name = name
        self._on_event = on_event
        self._startup_timeout = startup_timeout
        self._ready = threading.Event()  # the process said "ready", or died
        self._ids = itertools.count(1)
        self._pending = {}
        self._lock = threading.Lock()  # guards _pending and _exit_reason
        self._write_lock = threading.Lock()  # one command line at a time
        self._exit_reason = None
        argv = [*argv_prefix, python, '-m', BGP_PROCESS_MODULE]
        # Its own session: a signal to the agent's process group (Ctrl-C, a
        # runtime stopping the agent) must not kill BGP under the agent's
        # feet; the agent closes it, and stdin EOF stops it if the agent dies.
        self._process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=stderr, env=env, start_new_session=True)
        self._reader = threading.Thread(
            target=self._read, name='%s-reader' % name, daemon=True)
        self._reader.start()

    @property
    def pid(self):
        return self._process.pid

    @property
    def returncode(self):
        return self._process.poll()

    @property
    def alive(self):
        return self._exit_reason is None and self._process.poll() is None

    def call(self, op, timeout=10, **args):
        """Send one command and return its result.

        Raises ``BgpError`` when the reply is not ok, no reply came within
        ``timeout`` seconds, or the process is gone.
        """
        return self.call_many(op, [args], timeout)[0]

    def call_many(self, op, items, timeout=10):
        """Send ``op`` once per dict in ``items`` in one write.

        The process reads and applies them back to back, which lets it pack
        their routes into few UPDATE messages. Returns the results in
        order; raises ``BgpError`` (naming the first failure) if any
        failed. ``timeout`` applies to the whole batch.
        """
        commands, lines = [], []
        for args in items:
            command_id = next(self._ids)
            commands.append((command_id, _Pending()))
            lines.append(json.dumps({'id': command_id, 'op': op, **args}))
        if not commands:
            return []
        with self._lock:
            if self._exit_reason is not None:
                raise BgpError('%s: %s' % (self.name, self._exit_reason))
            self._pending.update(commands)
        try:
            with self._write_lock:
                self._process.stdin.write(('\n'.join(lines) + '\n').encode())
                self._process.stdin.flush()
        except (OSError, ValueError) as e:
            self._forget(commands)
            raise BgpError('%s: cannot send %s: %s'
                           % (self.name, op, e)) from None

        if not self._ready.wait(self._startup_timeout):
            self._forget(commands)
            raise BgpError('%s: not ready within %s s'
                           % (self.name, self._startup_timeout))
        deadline = time.monotonic() + timeout
        results, errors = [], []
        for _, pending in commands:
            if not pending.done.wait(max(0, deadline - time.monotonic())):
                self._forget(commands)
                raise BgpError('%s: no reply to %s within %s s'
                               % (self.name, op, timeout))
            reply = pending.reply
            results.append(reply.get('result'))
            if not reply.get('ok'):
                errors.append(reply.get('error'))
        if errors:
            more = ' (and %d more)' % (len(errors) - 1) if len(errors) > 1 else ''
            raise BgpError('%s: %s failed: %s%s'
                           % (self.name, op, errors[0], more))
        return results

    def _forget(self, commands):
        with self._lock:
            for command_id, _ in commands:
                self._pending.pop(command_id, None)

    def close(self, timeout=5):
        """Stop the process (``stop``, then end of stdin, then SIGKILL)."""
        if self._process.poll() is None and self._exit_reason is None:
            try:
                self.call('stop', timeout=timeout)
            except BgpError as e:
                LOG.warning('%s: stop: %s', self.name, e)
        try:
            with self._write_lock:
                self._process.stdin.close()
        except OSError:
            pass
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            LOG.warning('%s: killing pid %d', self.name, self._process.pid)
            self._process.kill()
            self._process.wait()
        self._reader.join(timeout)

    def wait(self, timeout=None):
        """Wait for the process to exit; its return code."""
        return self._process.wait(timeout)

    def kill(self):
        """SIGKILL the process (tests: a node that dies without a word)."""
        self._process.kill()
        self._process.wait()
        self._reader.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _read(self):
        stdout = self._process.stdout
        try:
            for raw in stdout:
                self._dispatch(raw)
        except (OSError, ValueError) as e:
            LOG.error('%s: reading stdout: %s', self.name, e)
        try:
            reason = 'process exited with code %s' % self._process.wait(5)
        except subprocess.TimeoutExpired:
            reason = 'process closed its output'
        self._fail_pending(reason)

    def _dispatch(self, raw):
        try:
            message = json.loads(raw)
        except ValueError:
            LOG.error('%s: not JSON: %r', self.name, raw[:200])
            return
        if 'reply' in message:
            with self._lock:
                pending = self._pending.pop(message['reply'], None)
            if pending is None:
                LOG.warning('%s: unexpected reply %r', self.name, message)
                return
            pending.reply = message
            pending.done.set()
        elif message.get('event') == 'ready':
            self._ready.set()
        elif 'event' in message:
            if self._on_event is None:
                return
            try:
                self._on_event(message)
            except Exception:
                LOG.exception('%s: on_event failed for %r',
                              self.name, message)
        else:
            LOG.warning('%s: unexpected message %r', self.name, message)

    def _fail_pending(self, reason):
        with self._lock:
            self._exit_reason = reason
            pending, self._pending = self._pending, {}
        self._ready.set()
        for item in pending.values():
            item.reply = {'ok': False, 'error': reason}
            item.done.set()
