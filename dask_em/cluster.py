"""Which Dask client a fit runs on: one given, the current one, an address,
or this process's own LocalCluster, started only when asked and kept until exit.

Whether a fit needs a client at all is :mod:`dask_em.executor`'s decision.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

import dask
from distributed import Client, LocalCluster, Security

#: Environment variable naming the scheduler address when none is given.
SCHEDULER_ENV = "DASK_EM_SCHEDULER"

#: Environment variables naming the TLS files when none are given (the
#: standard dask configuration ``distributed.comm.tls.*`` is read as well).
TLS_ENV = {"ca_file": "DASK_EM_TLS_CA_FILE", "cert": "DASK_EM_TLS_CERT", "key": "DASK_EM_TLS_KEY"}


def security_from_files(ca_file: str | os.PathLike[str], cert: str | os.PathLike[str], key: str | os.PathLike[str] | None = None) -> Security:
    """A :class:`distributed.Security` for a client of a ``tls://`` scheduler.

    Parameters
    ----------
    ca_file : path
        PEM file of the certificate authority that signed the scheduler's
        and the workers' certificates.
    cert : path
        PEM certificate of this client (Dask clusters check client
        certificates too). It may also hold the key.
    key : path, optional
        PEM private key of ``cert`` when it is a separate file.

    Returns
    -------
    distributed.Security
        With ``require_encryption=True``, so a ``tcp://`` address is refused.

    Raises
    ------
    FileNotFoundError
        If one of the files does not exist, naming it.
    """
    files = {"ca_file": ca_file, "cert": cert, "key": key}
    for name, path in files.items():
        if path is not None and not os.path.isfile(path):
            raise FileNotFoundError(
                f"TLS {name} {os.fspath(path)!r} does not exist; pass the PEM files the "
                "cluster's certificates were issued with (--tls-ca-file, --tls-cert, --tls-key)"
            )
    return Security(
        tls_ca_file=os.fspath(ca_file),
        tls_client_cert=os.fspath(cert),
        tls_client_key=os.fspath(key) if key is not None else None,
        require_encryption=True,
    )


def resolve_security(security: Any = None) -> Security | None:
    """The TLS settings to use: ``security`` if given, else from the environment.

    ``security`` may be a :class:`distributed.Security` or a tuple
    ``(ca_file, cert, key)``. Without it, ``$DASK_EM_TLS_CA_FILE``,
    ``$DASK_EM_TLS_CERT`` and ``$DASK_EM_TLS_KEY`` are used when set; else
    None, and distributed reads its standard configuration
    (``distributed.comm.tls.ca-file``, ``distributed.comm.tls.client.cert``
    and ``.key``, or ``DASK_DISTRIBUTED__COMM__TLS__...`` variables).
    """
    if security is None:
        ca_file, cert, key = (os.environ.get(TLS_ENV[k]) for k in ("ca_file", "cert", "key"))
        if ca_file and cert:
            return security_from_files(ca_file, cert, key)
        if ca_file or cert or key:
            raise ValueError(
                f"set both ${TLS_ENV['ca_file']} and ${TLS_ENV['cert']} (and ${TLS_ENV['key']} "
                "if the key is a separate file) to connect with TLS"
            )
        return None
    if isinstance(security, (tuple, list)):
        return security_from_files(*security)
    return security


def _current_client() -> Client | None:
    try:
        return Client.current()
    except ValueError:
        return None


def local_cluster(n_workers: int | None = None, memory_limit: str | float | None = "auto", **kwargs: Any) -> LocalCluster:
    """A LocalCluster bound to 127.0.0.1: one single-threaded process per core.

    One thread per process keeps BLAS and the GIL from contending: the
    E-step of a block is single-threaded numpy and BLAS work. Logs below
    ERROR are silenced (``silence_logs``), so closing the cluster prints no
    worker shutdown chatter; pass ``silence_logs=False`` to see them.
    """
    n_workers = n_workers or max(1, min(os.cpu_count() or 1, 8))
    kwargs.setdefault("dashboard_address", "127.0.0.1:0")
    kwargs.setdefault("silence_logs", logging.ERROR)
    return LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        memory_limit=memory_limit,
        **kwargs,
    )


#: Environment variable asking for a LocalCluster of this many worker processes.
WORKERS_ENV = "DASK_EM_WORKERS"

_session: tuple[LocalCluster, Client] | None = None
_session_lock = threading.Lock()


def requested_workers() -> int | None:
    """Worker processes asked for by configuration, or None to run in this process.

    Read from ``$DASK_EM_WORKERS`` or Dask's ``dask-em.workers`` setting
    (``dask.config.set({"dask-em.workers": 4})``); 0 means "one per core".
    """
    value = os.environ.get(WORKERS_ENV) or dask.config.get("dask-em.workers", None)
    if value is None or value == "":
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"${WORKERS_ENV} / dask-em.workers must be a whole number of worker processes, got {value!r}") from None
    if n < 0:
        raise ValueError(f"${WORKERS_ENV} / dask-em.workers must be 0 (one per core) or more, got {n}")
    return n


def session_client(n_workers: int | None = None, *, verbose: bool = False) -> Client:
    """The client of this Python process's LocalCluster, started at the first call.

    The cluster is kept for the rest of the process (starting one costs
    several seconds) and closed quietly at exit. A later call asking for a
    different number of workers gets the running cluster.

    Parameters
    ----------
    n_workers : int, optional
        Worker processes of a new cluster (0 or None: one per core, at most 8).
    verbose : bool
        Print the dashboard link when a cluster is started.
    """
    global _session
    with _session_lock:
        if _session is not None and _session[1].status == "running":
            return _session[1]
        cluster = local_cluster(n_workers or None)
        client = Client(cluster, set_as_default=False)
        if _session is None:
            atexit.register(_close_session)
        _session = (cluster, client)
    if verbose:
        print(f"dask-em: started a LocalCluster of {len(cluster.workers)} workers, dashboard at {client.dashboard_link}", file=sys.stderr)
    return client


def _close_session() -> None:
    """Close the session cluster before interpreter shutdown, without log noise."""
    global _session
    if _session is None:
        return
    cluster, client = _session
    _session = None
    with contextlib.suppress(Exception):
        client.close(timeout=10)
    with contextlib.suppress(Exception):
        cluster.close(timeout=10)


def connect(address: str, security: Any = None) -> Client:
    """A client of the scheduler at ``address`` (not set as Dask's default)."""
    return Client(address, security=resolve_security(security), set_as_default=False)


def scheduler_address(scheduler: str | None = None) -> str | None:
    """``scheduler``, else ``$DASK_EM_SCHEDULER``, else Dask's ``scheduler-address``."""
    # Dask's own setting last: the Kubernetes operator's DaskJob and other
    # deployments name the scheduler in $DASK_SCHEDULER_ADDRESS.
    return scheduler or os.environ.get(SCHEDULER_ENV) or dask.config.get("scheduler-address", None)


@contextlib.contextmanager
def get_client(
    client: Client | None = None,
    scheduler: str | None = None,
    *,
    security: Any = None,
    verbose: bool = False,
) -> Iterator[Client]:
    """Yield a distributed client, closing only a connection this call opened.

    The order is: ``client`` if given; the current distributed client;
    ``scheduler``, ``$DASK_EM_SCHEDULER`` or Dask's ``scheduler-address``
    setting (``$DASK_SCHEDULER_ADDRESS``) as an address; this process's
    LocalCluster (:func:`session_client`). Fits do not need a client:
    see :func:`dask_em.executor.where`, which runs them in this process.

    Parameters
    ----------
    client : distributed.Client, optional
        Use this client as it is.
    scheduler : str, optional
        Address such as ``tcp://10.0.0.5:8786`` or ``tls://...``.
    security : distributed.Security or (ca_file, cert, key), optional
        TLS settings for a ``tls://`` address; see :func:`resolve_security`
        for the environment variables and dask configuration read without it.
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
    address = scheduler_address(scheduler)
    if address:
        with connect(address, security) as started:
            yield started
        return
    yield session_client(requested_workers(), verbose=verbose)


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
