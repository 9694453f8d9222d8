"""scikit-learn style estimators wrapping the pure models."""

from ._base import EMEstimator
from .kmeans import KMeans, kmeans_centers

__all__ = ["EMEstimator", "KMeans", "kmeans_centers"]
