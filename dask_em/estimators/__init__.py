"""scikit-learn style estimators wrapping the pure models."""

from ._base import EMEstimator
from .bayesnet import DiscreteBayesianNetwork
from .gmm import GaussianMixture
from .vbgmm import BayesianGaussianMixture
from .hmm import GMMHMM, CategoricalHMM, GaussianHMM, PoissonHMM
from .kmeans import KMeans, kmeans_centers
from .missing import MultivariateNormal
from .factor import PPCA, FactorAnalysis
from .random_effects import RandomEffects
from .experts import MixtureOfExperts, MixtureOfLinearRegressions
from .mixtures import BernoulliMixture, CategoricalMixture, PoissonMixture

__all__ = [
    "BayesianGaussianMixture",
    "BernoulliMixture",
    "CategoricalHMM",
    "CategoricalMixture",
    "DiscreteBayesianNetwork",
    "EMEstimator",
    "FactorAnalysis",
    "PPCA",
    "RandomEffects",
    "MixtureOfExperts",
    "MixtureOfLinearRegressions",
    "GaussianHMM",
    "GMMHMM",
    "GaussianMixture",
    "KMeans",
    "MultivariateNormal",
    "PoissonHMM",
    "PoissonMixture",
    "kmeans_centers",
]
