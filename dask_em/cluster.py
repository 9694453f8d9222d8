"""Which Dask client a fit runs on."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from distributed import Client, LocalCluster

#: Environment variable naming the scheduler address when none is given.
SCHEDULER_ENV = "DASK_EM_SCHEDULER"


def _current_client() -> Client | None:
    try:
        return Client.current()
    except ValueError:
        return None


def local_cluster(n_workers: int | None = None, memory_limit: str | float | None = "auto", **kwargs: Any) -> LocalCluster:
    """A LocalCluster bound to 127.0.0.1: one single-threaded process per core.

    One thread per process keeps BLAS and the GIL from contending: the
    E-step of a block is single-threaded numpy and BLAS work.
    """
    n_workers = n_workers or max(1, min(os.cpu_count() or 1, 8))
    kwargs.setdefault("dashboard_address", "127.0.0.1:0")
    return LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        memory_limit=memory_limit,
        **kwargs,
    )


@contextlib.contextmanager
def get_client(
    client: Client | None = None,
    scheduler: str | None = None,
    *,
    security: Any = None,
    verbose: bool = False,
) -> Iterator[Client]:
    """Yield the client to run on, closing only what this call started.

    The order is: ``client`` if given; the current distributed client;
    ``scheduler`` or ``$DASK_EM_SCHEDULER`` as an address; a new
    LocalCluster on 127.0.0.1 whose dashboard link is printed.

    Parameters
    ----------
    client : distributed.Client, optional
        Use this client as it is.
    scheduler : str, optional
        Address such as ``tcp://10.0.0.5:8786`` or ``tls://...``.
    security : distributed.Security, optional
        TLS settings for a ``tls://`` address.
    verbose : bool
        Print the dashboard link of a cluster started here.
    """
    if client is not None:
        yield client
        return
    current = _current_client()
    if current is not None and scheduler is None:
        yield current
        return
    address = scheduler or os.environ.get(SCHEDULER_ENV)
    if address:
        with Client(address, security=security, set_as_default=False) as started:
            yield started
        return
    with local_cluster() as cluster, Client(cluster, set_as_default=False) as started:
        if verbose:
            print(f"dask-em: started a LocalCluster, dashboard at {started.dashboard_link}", file=sys.stderr)
        yield started


def _memory_limits(client: Client) -> list[float]:
    info = client.scheduler_info(n_workers=-1)
    return [float(w.get("memory_limit") or 0) for w in info["workers"].values()]


def cluster_memory(client: Client) -> float:
    """Total memory limit of the client's workers in bytes (0 if unknown)."""
    return sum(_memory_limits(client))


def worker_memory(client: Client) -> float:
    """Memory limit of the smallest worker in bytes (0 if unknown or unlimited)."""
    limits = [m for m in _memory_limits(client) if m > 0]
    return min(limits) if limits else 0.0
