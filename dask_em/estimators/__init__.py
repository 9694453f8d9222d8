"""scikit-learn style estimators wrapping the pure models."""

from ._base import EMEstimator
from .gmm import GaussianMixture
from .hmm import CategoricalHMM, GaussianHMM, PoissonHMM
from .kmeans import KMeans, kmeans_centers
from .missing import MultivariateNormal
from .mixtures import BernoulliMixture, CategoricalMixture, PoissonMixture

__all__ = [
    "CategoricalHMM",
    "EMEstimator",
    "GaussianHMM",
    "GaussianMixture",
    "KMeans",
    "MultivariateNormal",
    "PoissonHMM",
    "kmeans_centers",
]
