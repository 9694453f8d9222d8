"""Which process writes a checkpoint: a lease with an owner, a host, a pid and a heartbeat."""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
import warnings
from collections.abc import Mapping
from typing import Any

from ..errors import CheckpointError
from .location import Location

logger = logging.getLogger("dask_em")

#: Name of the lease object: which process writes the checkpoint now.
LEASE = "lease.json"
#: Seconds without a heartbeat after which a writer's lease is taken over
#: (``$DASK_EM_LEASE_TIMEOUT`` overrides it).
LEASE_TIMEOUT = 120.0


class Lease:
    """Which process writes a checkpoint: an owner id, its host and pid, a heartbeat.

    A writer takes the lease when it opens a checkpoint, renews the
    heartbeat from a background thread, checks it still holds the lease
    before each pointer update, and removes it when it closes. A second
    writer is refused with the holder's name, unless the holder is stale:
    its heartbeat is older than ``timeout`` seconds, or it is a process of
    this host that no longer runs. A stale lease is taken over with a
    warning.

    Parameters
    ----------
    location : Location
        The checkpoint.
    timeout : float, optional
        Seconds; default ``$DASK_EM_LEASE_TIMEOUT`` or :data:`LEASE_TIMEOUT`.
    """

    def __init__(self, location: Location, timeout: float | None = None) -> None:
        if timeout is None:
            timeout = float(os.environ.get("DASK_EM_LEASE_TIMEOUT", LEASE_TIMEOUT))
        if not timeout > 0:
            raise ValueError(f"the lease timeout must be positive, got {timeout}")
        self.location = location
        self.timeout = float(timeout)
        self.record = {"owner": secrets.token_hex(8), "host": socket.gethostname(), "pid": os.getpid()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _now_record(self) -> dict[str, Any]:
        return {**self.record, "heartbeat": time.time(), "timeout": self.timeout}

    def _describe(self, holder: Mapping[str, Any]) -> str:
        age = time.time() - float(holder.get("heartbeat", 0.0))
        return (f"owner {holder.get('owner')!r} (pid {holder.get('pid')} on host {holder.get('host')!r}, "
                f"last heartbeat {age:.0f} s ago)")

    def _read(self) -> dict[str, Any] | None:
        try:
            holder = self.location.read_json(LEASE)
        except CheckpointError:
            return {"owner": "unreadable", "heartbeat": 0.0}  # a damaged lease is stale
        return holder if isinstance(holder, dict) else None

    def _stale(self, holder: Mapping[str, Any]) -> str | None:
        """Why ``holder`` may be taken over, or None when it is live."""
        try:
            age = time.time() - float(holder.get("heartbeat"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return "its heartbeat is unreadable"
        if age > self.timeout:
            return f"its heartbeat is {age:.0f} s old (timeout {self.timeout:g} s)"
        if holder.get("host") == self.record["host"] and isinstance(holder.get("pid"), int):
            if holder["pid"] == self.record["pid"]:
                return "it is an earlier fit of this process"
            try:
                os.kill(holder["pid"], 0)
            except ProcessLookupError:
                return "its process no longer runs"
            except OSError:
                pass
        return None

    def acquire(self) -> None:
        """Take the lease, or raise :class:`CheckpointError` naming the live holder."""
        where = f"checkpoint {self.location.url}"
        created = self._create()
        if not created:
            holder = self._read()
            if holder is not None and holder.get("owner") != self.record["owner"]:
                reason = self._stale(holder)
                if reason is None:
                    raise CheckpointError(
                        f"{where} is being written by another fit: {self._describe(holder)}. "
                        "Wait for it to finish or stop it, or choose another checkpoint path; a lease "
                        f"without a heartbeat for {self.timeout:g} s ($DASK_EM_LEASE_TIMEOUT) is taken over."
                    )
                if reason != "it is an earlier fit of this process":
                    warnings.warn(f"{where}: taking over the lease of {self._describe(holder)}: {reason}",
                                  UserWarning, stacklevel=4)
            self.location.write_json(LEASE, self._now_record())
        holder = self._read()
        if not holder or holder.get("owner") != self.record["owner"]:  # another writer won a race
            raise CheckpointError(f"{where}: another fit took the lease at the same moment: {self._describe(holder or {})}")
        self._thread = threading.Thread(target=self._beat, name="dask-em-lease", daemon=True)
        self._thread.start()

    def _create(self) -> bool:
        """Write the lease if there is none, atomically where the file system allows."""
        if not self.location.local:
            if self._read() is not None:
                return False
            self.location.write_json(LEASE, self._now_record())
            return True
        target = self.location.key(LEASE)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self._now_record(), f)
            f.flush()
            os.fsync(f.fileno())
        return True

    def _beat(self) -> None:
        while not self._stop.wait(min(10.0, self.timeout / 4)):
            try:
                holder = self._read()
                if not holder or holder.get("owner") != self.record["owner"]:
                    return  # taken over: check() reports it at the next snapshot
                self.location.write_json(LEASE, self._now_record())
            except Exception as exc:  # a storage hiccup: the next beat tries again
                logger.warning("renewing the lease of %s failed: %s", self.location.url, exc)

    def check(self) -> None:
        """Raise :class:`CheckpointError` if another writer has taken the lease over."""
        holder = self._read()
        if not holder or holder.get("owner") != self.record["owner"]:
            raise CheckpointError(
                f"checkpoint {self.location.url}: this fit lost its lease to "
                f"{self._describe(holder) if holder else 'nobody (the lease was deleted)'}; "
                "it stops writing so the two fits do not mix their snapshots"
            )

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if this fit still holds it."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        try:
            holder = self._read()
            if holder and holder.get("owner") == self.record["owner"]:
                self.location.fs.rm(self.location.key(LEASE))
        except Exception as exc:
            logger.warning("removing the lease of %s failed: %s", self.location.url, exc)

