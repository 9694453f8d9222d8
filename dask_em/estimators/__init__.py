"""scikit-learn style estimators wrapping the pure models."""

from ._base import EMEstimator
from .kmeans import KMeans, kmeans_centers
from .missing import MultivariateNormal

__all__ = ["EMEstimator", "KMeans", "MultivariateNormal", "kmeans_centers"]
