"""scikit-learn style estimators wrapping the pure models."""

from ._base import EMEstimator

__all__ = ["EMEstimator"]
