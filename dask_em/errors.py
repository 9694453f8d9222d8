"""The library's exceptions and warnings.

``NotFittedError`` and ``ConvergenceWarning`` subclass scikit-learn's, so
code written for scikit-learn (``except sklearn.exceptions.NotFittedError``,
``warnings.filterwarnings("ignore", category=sklearn.exceptions.ConvergenceWarning)``)
catches and filters dask-em's unchanged.
"""

from __future__ import annotations

from sklearn.exceptions import ConvergenceWarning as _SklearnConvergenceWarning
from sklearn.exceptions import NotFittedError as _SklearnNotFittedError


class DaskEMError(Exception):
    """Base class of every error raised by dask-em."""


class InvalidDataError(DaskEMError, ValueError):
    """The data is outside what the model accepts (NaN, wrong shape or support)."""


class InvalidParameterError(DaskEMError, ValueError):
    """A hyper-parameter or prior value no fit accepts (exit code 2 on the command line)."""

    exit_code = 2


class NotFittedError(DaskEMError, _SklearnNotFittedError):
    """A method that needs a fitted model was called before ``fit``."""


class ConvergenceWarning(_SklearnConvergenceWarning):
    """EM stopped at ``max_iter`` before the change in log-likelihood fell below ``tol``."""


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
