"""dask-em: Expectation-Maximization on data larger than memory, on Dask."""

from .engine import EMResult, IterationInfo, expected_stats, fit_em
from .estimators.gmm import GaussianMixture
from .estimators.hmm import CategoricalHMM, GaussianHMM, PoissonHMM
from .estimators.kmeans import KMeans
from .estimators.missing import MultivariateNormal
from .estimators.factor import PPCA, FactorAnalysis
from .estimators.random_effects import RandomEffects
from .io import describe, load, save
from .estimators.mixtures import BernoulliMixture, CategoricalMixture, PoissonMixture
from .models.base import EMModel, Stats
from .select import ModelSelection, select
from .sequences import sequence_blocks, to_zarr_sequences

__version__ = "0.1.0"

__all__ = [
    "CategoricalHMM",
    "FactorAnalysis",
    "PPCA",
    "RandomEffects",
    "EMModel",
    "EMResult",
    "GaussianHMM",
    "GaussianMixture",
    "IterationInfo",
    "KMeans",
    "ModelSelection",
    "MultivariateNormal",
    "BernoulliMixture",
    "CategoricalMixture",
    "PoissonMixture",
    "PoissonHMM",
    "Stats",
    "__version__",
    "expected_stats",
    "fit_em",
    "describe",
    "load",
    "save",
    "select",
    "sequence_blocks",
    "to_zarr_sequences",
]
