"""Stopping a child process group: a signal, a bounded wait, then SIGKILL.

Our daemons and test harnesses start children in sessions of their own (a signal to the parent's
group must not reach them), so stopping one means signalling its whole group.
"""
from __future__ import annotations

import os
import signal
import subprocess


def stop_process_group(process: subprocess.Popen, sig: int = signal.SIGTERM,
                       timeout: float = 10.0) -> int:
    """Send `sig` to the group `process` leads, wait up to `timeout` s, then SIGKILL the group;
    its return code. A process that already exited is only reaped."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, sig)
            return process.wait(timeout)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return process.wait()
