"""Request metrics shared by gunicorn's workers, and the Prometheus text format. No Flask here.

Each worker process counts its own requests into a small file of doubles (an mmap, one per
process id) in a directory that api/gunicorn.conf.py creates before the workers start; a scrape,
whichever worker answers it, adds up every file. That is what prometheus_client's multiprocess
mode does, in ~100 lines and without the dependency. The files of workers that exited stay, so
counters never go backwards while the server runs. Without a directory (the Flask test client, a
single process) the counts live in memory.

Per endpoint: a latency histogram (non-cumulative buckets, then +Inf, sum, count) and response
counts per status class.
"""
from __future__ import annotations

import bisect
import mmap
import os
import struct
import threading
import zlib
from pathlib import Path

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
_SUM, _COUNT, _CLASS = len(BUCKETS) + 1, len(BUCKETS) + 2, len(BUCKETS) + 3
SLOTS = _CLASS + len(CLASSES)
_MAGIC = b"MGAPIM01"
_HEADER = struct.Struct("<8sQ")  # magic, layout checksum: files of another layout are skipped


class RequestMetrics:
    def __init__(self, endpoints: list[str], directory: str | None = None):
        self.endpoints = list(endpoints)
        self._index = {name: i for i, name in enumerate(self.endpoints)}
        self.directory = directory
        layout = repr((self.endpoints, BUCKETS, CLASSES)).encode()
        self._header = _HEADER.pack(_MAGIC, zlib.crc32(layout))
        self._size = len(self.endpoints) * SLOTS
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._values = None

    # -- writing: one process, many threads ---------------------------------------------------------
    def _mine(self):
        """This process's counters, opened on first use after a fork (each worker its own)."""
        pid = os.getpid()
        if self._pid != pid:
            self._values, self._pid = self._open(pid), pid
        return self._values

    def _open(self, pid: int):
        nbytes = _HEADER.size + self._size * 8
        if not self.directory:
            buffer = bytearray(nbytes)
        else:
            path = Path(self.directory) / f"worker-{pid}.metrics"
            # A file left by an exited worker whose pid we now have: carry on counting in it.
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                os.ftruncate(fd, nbytes)
                buffer = mmap.mmap(fd, nbytes)
            finally:
                os.close(fd)
        if buffer[:_HEADER.size] != self._header:
            buffer[:] = bytes(nbytes)
            buffer[:_HEADER.size] = self._header
        return memoryview(buffer)[_HEADER.size:].cast("d")

    def observe(self, endpoint: str, seconds: float, status: int) -> None:
        base = self._index.get(endpoint)
        if base is None:
            return
        base *= SLOTS
        cls = min(max(status // 100, 1), 5) - 1
        with self._lock:
            values = self._mine()
            values[base + bisect.bisect_left(BUCKETS, seconds)] += 1
            values[base + _SUM] += seconds
            values[base + _COUNT] += 1
            values[base + _CLASS + cls] += 1

    # -- reading: every process's files ------------------------------------------------------------
    def totals(self) -> list[float]:
        if not self.directory:
            with self._lock:
                return list(self._mine())
        self._mine()  # so that this worker shows up even before its first request
        totals = [0.0] * self._size
        for path in Path(self.directory).glob("worker-*.metrics"):
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if data[:_HEADER.size] != self._header or len(data) != _HEADER.size + self._size * 8:
                continue
            for i, value in enumerate(memoryview(data)[_HEADER.size:].cast("d")):
                totals[i] += value
        return totals

    def exposition(self) -> list[str]:
        """The histogram and counters in Prometheus text format (lines)."""
        totals = self.totals()
        lines = ["# HELP megalos_api_request_duration_seconds Time to answer an API request, "
                 "by endpoint.",
                 "# TYPE megalos_api_request_duration_seconds histogram"]
        for i, endpoint in enumerate(self.endpoints):
            row, label = totals[i * SLOTS:(i + 1) * SLOTS], _label(endpoint)
            cumulative = 0.0
            for bound, count in zip((*BUCKETS, "+Inf"), row[:_SUM]):
                cumulative += count
                lines.append(f'megalos_api_request_duration_seconds_bucket{{endpoint="{label}",'
                             f'le="{bound}"}} {cumulative:.0f}')
            lines.append(f'megalos_api_request_duration_seconds_sum{{endpoint="{label}"}} {row[_SUM]:.6f}')
            lines.append(f'megalos_api_request_duration_seconds_count{{endpoint="{label}"}} {row[_COUNT]:.0f}')
        lines += ["# HELP megalos_api_requests_total API responses, by endpoint and status class.",
                  "# TYPE megalos_api_requests_total counter"]
        for i, endpoint in enumerate(self.endpoints):
            row, label = totals[i * SLOTS:(i + 1) * SLOTS], _label(endpoint)
            for j, cls in enumerate(CLASSES):
                if row[_CLASS + j]:
                    lines.append(f'megalos_api_requests_total{{endpoint="{label}",code="{cls}"}} '
                                 f'{row[_CLASS + j]:.0f}')
        return lines


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def gauge(name: str, help_text: str, samples: list[tuple[dict, float]]) -> list[str]:
    """One gauge family: [(labels, value)]."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
    for labels, value in samples:
        tags = ",".join(f'{k}="{_label(str(v))}"' for k, v in labels.items())
        lines.append(f"{name}{{{tags}}} {_number(value)}" if tags else f"{name} {_number(value)}")
    return lines


def clear(directory: str) -> None:
    """Remove the files of an earlier server (counters start again with the server)."""
    for path in Path(directory).glob("worker-*.metrics"):
        path.unlink(missing_ok=True)
