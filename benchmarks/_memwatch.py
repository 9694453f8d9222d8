"""Memory, CPU, spill and restart watching of a LocalCluster's worker processes.

Shared by the out-of-core benchmarks. Peak memory is the kernel's own
high-water mark of each process (``VmHWM`` in ``/proc/PID/status``), reset
before each phase through ``/proc/PID/clear_refs``; a sampling thread
(psutil, every 20 ms) records the same peaks where ``/proc`` is not
available.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psutil


def _hwm(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_hwm(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def worker_pids(client: Any) -> dict[str, int]:
    """Worker address -> pid of the worker process."""
    return dict(client.run(os.getpid))


def spill_state(client: Any) -> dict[str, dict[str, float]]:
    """Per worker: bytes spilled now, and cumulative disk writes/reads since start."""

    def probe(dask_worker: Any) -> dict[str, float]:
        out = {"spilled_bytes": 0.0, "disk_write_count": 0.0, "disk_read_count": 0.0, "paused": 0.0}
        data = dask_worker.data
        total = getattr(data, "spilled_total", None)
        if total is not None:
            out["spilled_bytes"] = float(total[1] if isinstance(total, tuple) else total)
        for key, value in getattr(dask_worker, "digests_total", {}).items():
            name = "-".join(str(k) for k in key) if isinstance(key, tuple) else str(key)
            if "disk-write" in name and name.endswith("count"):
                out["disk_write_count"] += float(value)
            if "disk-read" in name and name.endswith("count"):
                out["disk_read_count"] += float(value)
        out["paused"] = float(str(dask_worker.status).lower().endswith("paused"))
        return out

    return dict(client.run(probe))


def worker_logs_problems(client: Any) -> list[str]:
    """Lines of worker and nanny logs that speak of memory trouble, spilling or restarts."""
    words = ("memory use is high", "spill", "paus", "restart", "killed", "exceeded", "terminat")
    lines: list[str] = []
    for source in (client.get_worker_logs(), client.get_worker_logs(nanny=True)):
        for address, records in source.items():
            for _level, message in records:
                if any(w in message.lower() for w in words):
                    lines.append(f"{address}: {message}")
    return lines


@dataclass
class Watch:
    """Peak RSS and CPU time of processes during one phase.

    Use as a context manager around the phase. ``peaks`` maps a label to
    the peak resident memory in bytes; ``cpu_seconds`` to user+system CPU
    time used in the phase.
    """

    pids: dict[str, int]
    interval: float = 0.02
    peaks: dict[str, int] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    exact: bool = False

    def __enter__(self) -> Watch:
        self._procs = {k: psutil.Process(p) for k, p in self.pids.items()}
        self._cpu0 = {k: _cpu(p) for k, p in self._procs.items()}
        self.exact = all(_reset_hwm(p) for p in self.pids.values())
        self._sampled = {k: 0 for k in self.pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self._t0 = time.perf_counter()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            for k, p in self._procs.items():
                try:
                    self._sampled[k] = max(self._sampled[k], p.memory_info().rss)
                except psutil.Error:
                    pass
            self._stop.wait(self.interval)

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self._t0
        self._stop.set()
        self._thread.join()
        for k, p in self._procs.items():
            hwm = _hwm(self.pids[k]) if self.exact else None
            self.peaks[k] = max(hwm or 0, self._sampled[k])
            try:
                self.cpu_seconds[k] = _cpu(p) - self._cpu0[k]
            except psutil.Error:
                self.cpu_seconds[k] = float("nan")


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


def merge_peaks(watches: list[Watch]) -> dict[str, int]:
    """Largest peak of each process over several phases."""
    out: dict[str, int] = {}
    for w in watches:
        for k, v in w.peaks.items():
            out[k] = max(out.get(k, 0), v)
    return out
