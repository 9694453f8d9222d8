"""dask-em: Expectation-Maximization on data larger than memory, on Dask."""

from .engine import EMResult, IterationInfo, expected_stats, fit_em
from .estimators.kmeans import KMeans
from .estimators.missing import MultivariateNormal
from .models.base import EMModel, Stats

__version__ = "0.1.0"

__all__ = [
    "EMModel",
    "EMResult",
    "IterationInfo",
    "KMeans",
    "MultivariateNormal",
    "Stats",
    "__version__",
    "expected_stats",
    "fit_em",
]
