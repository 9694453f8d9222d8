"""Real ``dask scheduler`` / ``dask worker`` processes on 127.0.0.1 for tests.

Every process is started with a random port (``--port 0``; the scheduler
writes its address to a scheduler file), every wait is bounded, and
:class:`RealCluster` kills whatever it started when it is closed, even
after a failed test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The ``dask`` command line, as installed with the package (``dask scheduler`` etc.).
DASK_CLI = [sys.executable, "-m", "dask"]

#: Seconds to wait for a process to come up before the test fails.
START_TIMEOUT = 60.0


@dataclass(frozen=True)
class TLSFiles:
    """CA certificate and one certificate/key pair signed by it (PEM files)."""

    ca_file: str
    cert: str
    key: str

    def cli_args(self) -> list[str]:
        """The ``--tls-*`` options of ``dask scheduler``, ``dask worker`` and ``dask-em``."""
        return ["--tls-ca-file", self.ca_file, "--tls-cert", self.cert, "--tls-key", self.key]


def make_tls_files(directory: str | Path) -> TLSFiles:
    """A throw-away CA and a certificate for 127.0.0.1 / localhost, made with ``openssl``.

    The same certificate serves the scheduler, the workers and the client
    (Dask requires client certificates from every peer).
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        import pytest

        pytest.skip("the openssl command is needed to make test certificates")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = d / "ca.key", d / "ca.pem"
    key, csr, crt, ext = d / "node.key", d / "node.csr", d / "node.pem", d / "node.ext"
    ext.write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=dask-em test CA",
        "-keyout", str(ca_key), "-out", str(ca_crt))
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(csr))
    run("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
        "-days", "2", "-extfile", str(ext), "-out", str(crt))
    return TLSFiles(ca_file=str(ca_crt), cert=str(crt), key=str(key))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DASK_EM_SCHEDULER", None)
    # One BLAS thread per worker process, as in a LocalCluster's nannies.
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = "1"
    env["PYTHONWARNINGS"] = "ignore"
    # Workers must import the test models, as a real cluster must have the user's code.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), env.get("PYTHONPATH")]))
    return env


@dataclass
class RealCluster:
    """A scheduler and workers run as separate ``dask`` CLI processes.

    Attributes
    ----------
    directory : Path
        Holds the scheduler file, the logs and the workers' local directories.
    tls : TLSFiles or None
        Certificates when the cluster speaks ``tls://``.
    """

    directory: Path
    tls: TLSFiles | None = None
    scheduler: subprocess.Popen | None = None
    workers: list[subprocess.Popen] = field(default_factory=list)
    address: str = ""
    _logs: list[Any] = field(default_factory=list)

    # -- starting -----------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.directory / f"{name}.log", "ab")
        self._logs.append(log)
        return subprocess.Popen(
            [*DASK_CLI, *args], stdout=log, stderr=subprocess.STDOUT, env=_env(),
            cwd=self.directory, start_new_session=True,
        )

    def start_scheduler(self) -> str:
        """Start (or restart) the scheduler on a random port; return its address."""
        scheduler_file = self.directory / "scheduler.json"
        scheduler_file.unlink(missing_ok=True)
        args = ["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                "--scheduler-file", str(scheduler_file)]
        if self.tls is not None:
            args += ["--protocol", "tls", *self.tls.cli_args()]
        self.scheduler = self._spawn("scheduler", args)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.scheduler.poll() is not None:
                raise RuntimeError(f"dask scheduler exited early:\n{self.log('scheduler')}")
            try:
                self.address = json.loads(scheduler_file.read_text())["address"]
                return self.address
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                time.sleep(0.05)
        raise TimeoutError(f"dask scheduler did not start in {START_TIMEOUT} s:\n{self.log('scheduler')}")

    def start_worker(self, nanny: bool = True) -> subprocess.Popen:
        """Start one single-threaded worker process (under a nanny or not)."""
        i = len(self.workers)
        args = ["worker", self.address, "--host", "127.0.0.1", "--nthreads", "1", "--no-dashboard",
                "--memory-limit", "1GiB", "--death-timeout", "30", "--name", f"w{i}",
                "--local-directory", str(self.directory / f"w{i}"), "--nanny" if nanny else "--no-nanny"]
        if self.tls is not None:
            args += self.tls.cli_args()
        proc = self._spawn(f"worker{i}", args)
        self.workers.append(proc)
        return proc

    def security(self) -> Any:
        """A :class:`distributed.Security` for a client of this cluster (None for tcp)."""
        if self.tls is None:
            return None
        from dask_em.cluster import security_from_files

        return security_from_files(self.tls.ca_file, self.tls.cert, self.tls.key)

    def client(self, **kwargs: Any) -> Any:
        """A new client of this cluster (not set as default)."""
        from distributed import Client

        return Client(self.address, security=self.security(), set_as_default=False,
                      timeout=START_TIMEOUT, **kwargs)

    def wait_for_workers(self, n: int) -> None:
        """Block until ``n`` workers are connected (bounded)."""
        with self.client() as c:
            c.wait_for_workers(n, timeout=START_TIMEOUT)

    def worker_pids(self) -> dict[str, int]:
        """Worker address -> pid of the process that runs the tasks (the nanny's child)."""
        with self.client() as c:
            return c.run(os.getpid)

    # -- stopping -----------------------------------------------------------------
    def kill_scheduler(self) -> None:
        """SIGKILL the scheduler process."""
        if self.scheduler is not None and self.scheduler.poll() is None:
            self.scheduler.send_signal(signal.SIGKILL)
            self.scheduler.wait(timeout=30)

    def log(self, name: str) -> str:
        """The tail of one process's log (for failure messages)."""
        path = self.directory / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def close(self) -> None:
        """Kill every process this cluster started (their whole process groups)."""
        for proc in [*self.workers, self.scheduler]:
            if proc is None or proc.poll() is not None:
                continue
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for proc in [*self.workers, self.scheduler]:
            if proc is None:
                continue
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        for log in self._logs:
            log.close()

    def __enter__(self) -> RealCluster:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def start_cluster(directory: str | Path, n_workers: int = 2, *, nanny: bool = True,
                  tls: TLSFiles | None = None) -> RealCluster:
    """Start a scheduler and ``n_workers`` workers; return once all are connected."""
    cluster = RealCluster(directory=Path(directory), tls=tls)
    cluster.directory.mkdir(parents=True, exist_ok=True)
    try:
        cluster.start_scheduler()
        for _ in range(n_workers):
            cluster.start_worker(nanny=nanny)
        cluster.wait_for_workers(n_workers)
    except BaseException:
        cluster.close()
        raise
    return cluster


def wait_until(predicate: Any, timeout: float = 30.0, interval: float = 0.01) -> bool:
    """Poll ``predicate()`` until true or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


# -- a small model whose E-step can be slowed down and observed ---------------------
@dataclass(frozen=True)
class SlowMixtureParams:
    """Parameters of :class:`SlowMixture` (``iteration``, shape (1,), counts M-steps)."""

    weights: Any
    means: Any
    variances: Any
    iteration: Any


@dataclass(frozen=True)
class SlowMixture:
    """A 1-D two-component Gaussian mixture whose E-step sleeps ``delay`` seconds.

    When ``marker_dir`` is set, every E-step task of the iteration whose
    parameters have ``iteration == mark_at`` first writes a file named by
    its process id there, so a test knows which worker is inside an E-step
    right now and can kill it mid-iteration.
    """

    delay: float = 0.0
    marker_dir: str = ""
    mark_at: int = -1

    def init_params(self, sample: Any, rng: Any) -> SlowMixtureParams:
        import numpy as np

        x = np.sort(np.asarray(sample)[:, 0])
        return SlowMixtureParams(
            weights=np.array([0.5, 0.5]),
            means=np.array([x[len(x) // 4], x[3 * len(x) // 4]]),
            variances=np.array([x.var(), x.var()]),
            iteration=np.array([0]),
        )

    def e_step(self, block: Any, params: SlowMixtureParams) -> dict[str, Any]:
        import numpy as np

        if self.marker_dir and int(params.iteration[0]) == self.mark_at:
            (Path(self.marker_dir) / str(os.getpid())).touch()
        if self.delay:
            time.sleep(self.delay)
        x = np.asarray(block, dtype=np.float64)[:, 0]
        log_p = (
            np.log(params.weights) - 0.5 * np.log(2 * np.pi * params.variances)
            - 0.5 * (x[:, None] - params.means) ** 2 / params.variances
        )
        top = log_p.max(axis=1, keepdims=True)
        log_norm = top[:, 0] + np.log(np.exp(log_p - top).sum(axis=1))
        resp = np.exp(log_p - log_norm[:, None])
        return {
            "n": np.array(float(len(x))),
            "loglik": np.array(log_norm.sum()),
            "n_invalid": np.array(int((~np.isfinite(x)).sum())),
            "sum_resp": resp.sum(axis=0),
            "sum_x": resp.T @ x,
            "sum_xx": resp.T @ (x * x),
        }

    def m_step(self, stats: dict[str, Any], params: SlowMixtureParams) -> SlowMixtureParams:
        import numpy as np

        nk = stats["sum_resp"]
        means = stats["sum_x"] / nk
        return SlowMixtureParams(
            weights=nk / nk.sum(),
            means=means,
            variances=stats["sum_xx"] / nk - means**2 + 1e-6,
            iteration=params.iteration + 1,
        )


def wait_for_marker(marker_dir: str | Path, timeout: float = 60.0) -> int:
    """Wait for a :class:`SlowMixture` marker file; return the pid it names."""
    d = Path(marker_dir)
    found: list[Path] = []
    if not wait_until(lambda: found.extend(d.iterdir()) or bool(found), timeout=timeout):
        raise TimeoutError(f"no E-step marked itself in {marker_dir} within {timeout} s")
    return int(found[0].name)


def kill_first_marked(marker_dir: str | Path, timeout: float = 60.0) -> int:
    """SIGKILL the first worker process that marks itself inside an E-step; return its pid."""
    pid = wait_for_marker(marker_dir, timeout)
    os.kill(pid, signal.SIGKILL)
    return pid


def wait_for_pass(client: Any, iteration: int = 3, timeout: float = 120.0,
                  prefix: str = "_run_e_step") -> tuple[str, int]:
    """Wait until a worker holds E-step tasks of the ``iteration``-th pass over the data.

    Works for any fit on the engine: every pass is a new set of
    ``_run_e_step`` keys (their names depend on the parameters), so passes
    are counted from the scheduler's view of what each worker is
    processing. Returns that worker's address and process id.
    """
    pids = client.run(os.getpid)
    previous: set[str] = set()
    passes = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        processing = client.processing()
        current = {str(k) for keys in processing.values() for k in keys if prefix in str(k)}
        if current and not current & previous:
            passes += 1
        if current:
            previous = current
        if passes >= iteration:
            for address, keys in processing.items():
                if any(prefix in str(k) for k in keys) and address in pids:
                    return address, pids[address]
        time.sleep(0.002)
    raise TimeoutError(f"did not see pass {iteration} of the fit within {timeout} s (saw {passes})")


def kill_worker_in_iteration(client: Any, iteration: int = 3, timeout: float = 120.0) -> int:
    """SIGKILL a worker while it holds E-step tasks of the ``iteration``-th pass; return its pid."""
    _, pid = wait_for_pass(client, iteration, timeout)
    os.kill(pid, signal.SIGKILL)
    return pid
