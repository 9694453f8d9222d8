"""The library's exceptions and warnings.

``NotFittedError`` and ``ConvergenceWarning`` subclass scikit-learn's, so
code written for scikit-learn (``except sklearn.exceptions.NotFittedError``,
``warnings.filterwarnings("ignore", category=sklearn.exceptions.ConvergenceWarning)``)
catches and filters dask-em's unchanged. They are built on first use
(``from dask_em.errors import NotFittedError`` works as usual): importing
scikit-learn costs a process about 190 MiB and several seconds, and Dask
workers, which import this module with every model, never raise them.
"""

from __future__ import annotations

import functools
from typing import Any


class DaskEMError(Exception):
    """Base class of every error raised by dask-em."""


class InvalidDataError(DaskEMError, ValueError):
    """The data is outside what the model accepts (NaN, wrong shape or support)."""


class InvalidParameterError(DaskEMError, ValueError):
    """A hyper-parameter or prior value no fit accepts (exit code 2 on the command line)."""

    exit_code = 2


@functools.cache
def _sklearn_compatible() -> dict[str, type]:
    """``NotFittedError`` and ``ConvergenceWarning`` as subclasses of scikit-learn's (built once)."""
    from sklearn.exceptions import ConvergenceWarning as SklearnConvergenceWarning
    from sklearn.exceptions import NotFittedError as SklearnNotFittedError

    class NotFittedError(DaskEMError, SklearnNotFittedError):
        """A method that needs a fitted model was called before ``fit``."""

    class ConvergenceWarning(SklearnConvergenceWarning):
        """EM stopped at ``max_iter`` before the change in log-likelihood fell below ``tol``."""

    classes = {"NotFittedError": NotFittedError, "ConvergenceWarning": ConvergenceWarning}
    for name, cls in classes.items():  # pickled by reference, like any class of this module
        cls.__module__, cls.__qualname__ = __name__, name
    return classes


def __getattr__(name: str) -> Any:
    if name in ("NotFittedError", "ConvergenceWarning"):
        return _sklearn_compatible()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class LikelihoodDecreaseWarning(UserWarning):
    """The log-likelihood decreased between two iterations (EM never should)."""


class CheckpointError(DaskEMError):
    """A checkpoint could not be read, or does not match the fit asked for."""


class ChunkSizeWarning(UserWarning):
    """Blocks are too large for the workers' memory; rechunk the data."""


class ClusterError(DaskEMError):
    """The Dask cluster failed under the fit (see the two subclasses)."""


class SchedulerLostError(ClusterError, ConnectionError):
    """The connection to the Dask scheduler was lost in the middle of a fit."""


class LostDataError(ClusterError):
    """Blocks scattered from memory were lost with the worker that held them."""
