"""scikit-learn style estimators wrapping the pure models."""

from ._base import EMEstimator
from .hmm import CategoricalHMM, GaussianHMM, PoissonHMM
from .kmeans import KMeans, kmeans_centers
from .missing import MultivariateNormal
from .mixtures import BernoulliMixture, CategoricalMixture, PoissonMixture

__all__ = ["CategoricalHMM", "EMEstimator", "GaussianHMM", "PoissonHMM", "KMeans", "MultivariateNormal", "BernoulliMixture", "CategoricalMixture", "PoissonMixture", "kmeans_centers"]
