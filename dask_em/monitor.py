"""Convergence monitoring: log-likelihood history, tolerance, decrease warnings."""

from __future__ import annotations

import contextlib
import contextvars
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

from .errors import LikelihoodDecreaseWarning


@dataclass
class ConvergenceMonitor:
    """Keep the history of the monitored log-likelihood and decide when to stop.

    Parameters
    ----------
    tol : float
        EM has converged when the absolute change of the monitored value
        between two iterations is below ``tol`` (with ``signed``: when the
        change itself is, so that a decrease also stops the fit).
    max_iter : int
        Stop after this many iterations whatever the change.
    decrease_rtol : float
        A decrease larger than this, relative to the value, is warned about.
    signed : bool
        Compare the signed change with ``tol`` (hmmlearn's rule) instead of
        its absolute value (scikit-learn's).

    Attributes
    ----------
    history : list of float
        The monitored value after each iteration (the log-likelihood of the
        parameters that entered that iteration).
    """

    tol: float
    max_iter: int
    decrease_rtol: float = 1e-9
    signed: bool = False
    history: list[float] = field(default_factory=list)
    #: Set when a model-specific stopping rule (``fit_em(stop=...)``) was met.
    stopped: bool = False
    #: The value before the first iteration: a warm start compares its first
    #: iteration with the previous fit's last value, as scikit-learn does.
    start: float = -math.inf
    #: Passes whose value was not recorded (extrapolations refused by
    #: accelerated EM's safeguard); they count towards ``max_iter``.
    refused: int = 0
    #: False when the last recorded value came from an extrapolated point:
    #: its change from the one before is not an EM step's, so it says
    #: nothing about convergence.
    last_is_em_step: bool = True

    @property
    def iter(self) -> int:
        """Number of iterations recorded so far."""
        return len(self.history)

    @property
    def converged(self) -> bool:
        """Whether the last change was below ``tol`` or a stopping rule was met."""
        if self.stopped or not self.history:
            return self.stopped
        if not self.last_is_em_step:
            return False
        previous = self.history[-2] if len(self.history) >= 2 else self.start
        change = self.history[-1] - previous
        return (change if self.signed else abs(change)) < self.tol

    @property
    def done(self) -> bool:
        """Whether the loop should stop (converged or out of iterations)."""
        return self.converged or self.iter + self.refused >= self.max_iter

    def report(self, value: float, em_step: bool = True) -> None:
        """Record the value of one iteration, warning if it decreased.

        ``em_step=False`` marks a value reached by extrapolation rather than
        by one EM step from the previous one; it is not tested for convergence.
        """
        self.last_is_em_step = em_step
        if self.history:
            previous = self.history[-1]
            if value < previous - self.decrease_rtol * max(abs(previous), 1.0):
                warnings.warn(
                    f"log-likelihood decreased from {previous!r} to {value!r} at iteration "
                    f"{self.iter + 1}. Plain EM never decreases it; regularisation (reg_covar, "
                    "min_covar) can lower it slightly, and a larger decrease points to a numerical "
                    "problem (try a larger reg_covar or scaling the data)",
                    LikelihoodDecreaseWarning,
                    stacklevel=2,
                )
        self.history.append(float(value))


@dataclass
class PassCount:
    """Passes over the data made inside :func:`counting_passes` (``n``)."""

    n: int = 0


_passes: contextvars.ContextVar[PassCount | None] = contextvars.ContextVar("dask_em_passes", default=None)


@contextlib.contextmanager
def counting_passes() -> Iterator[PassCount]:
    """Count the passes over the data made inside the block (an estimator's ``n_passes_``).

    Nested counts add to the outer one too, so a fit that calls other fits
    (restarts, initialisations) reports all of their passes.
    """
    outer = _passes.get()
    count = PassCount()
    token = _passes.set(count)
    try:
        yield count
    finally:
        _passes.reset(token)
        if outer is not None:
            outer.n += count.n


def count_pass(n: int = 1) -> None:
    """Record ``n`` passes over the data (every code path that reads all blocks calls this)."""
    count = _passes.get()
    if count is not None:
        count.n += n
