"""Small models written against the plug-in contract, for the checkpoint and contract tests.

They live in their own module so that a subprocess started by
``dask_em.testing.assert_resume_bit_identical`` can import them.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dask_em.storage.format import register_class
from dask_em.estimators import EMEstimator


@register_class  # a class outside dask-em that checkpoints may name
@dataclasses.dataclass(frozen=True)
class MixParams:
    """Weights, means and variances of a 1-D Gaussian mixture, each of shape (n_components,)."""

    weights: np.ndarray
    means: np.ndarray
    variances: np.ndarray


@dataclasses.dataclass(frozen=True)
class Mixture1D:
    """A 1-D Gaussian mixture on the first column of the data."""

    n_components: int = 2
    reg: float = 1e-6

    def init_params(self, sample, rng):
        x = np.asarray(sample)[:, 0]
        means = np.sort(rng.choice(x, self.n_components, replace=False))
        return MixParams(
            np.full(self.n_components, 1.0 / self.n_components), means, np.full(self.n_components, x.var())
        )

    def _log_joint(self, x, params):
        return (
            np.log(params.weights)
            - 0.5 * np.log(2 * np.pi * params.variances)
            - 0.5 * (x[:, None] - params.means) ** 2 / params.variances
        )

    def e_step(self, block, params):
        x = np.asarray(block, dtype=np.float64)[:, 0]
        log_joint = self._log_joint(x, params)
        top = log_joint.max(axis=1, keepdims=True)
        log_norm = top[:, 0] + np.log(np.exp(log_joint - top).sum(axis=1))
        resp = np.exp(log_joint - log_norm[:, None])
        return {
            "n": np.array(float(len(x))),
            "loglik": np.array(log_norm.sum()),
            "n_invalid": np.array(float(np.isnan(x).sum())),
            "sum_resp": resp.sum(axis=0),
            "sum_x": resp.T @ x,
            "sum_xx": resp.T @ (x * x),
        }

    def m_step(self, stats, params):
        nk = stats["sum_resp"]
        means = stats["sum_x"] / nk
        variances = stats["sum_xx"] / nk - means**2 + self.reg
        return MixParams(nk / nk.sum(), means, variances)

    def describe_invalid(self, n):
        return f"{n} values are NaN; this model has no missing-data support"


def make_mixture():
    """Factory used by the kill-and-resume tests."""
    return Mixture1D(n_components=3)


@register_class
class ToyMixture(EMEstimator):
    """A minimal estimator around :class:`Mixture1D`, to test saving and resuming estimators."""

    def __init__(self, n_components: int = 2, max_iter: int = 20, tol: float = 0.0, random_state=None):
        self.n_components = n_components
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state

    def fit(self, X, y=None, *, checkpoint=None, checkpoint_every=1, resume=None, force=False, client=None):
        from dask_em import fit_em

        result = fit_em(
            Mixture1D(self.n_components), X, max_iter=self.max_iter, tol=self.tol,
            random_state=self.random_state, client=client, checkpoint=checkpoint,
            checkpoint_every=checkpoint_every, resume=resume, force=force,
            checkpoint_meta=self.checkpoint_meta(), warn_not_converged=False,
        )
        self.weights_ = result.params.weights
        self.means_ = result.params.means
        self.variances_ = result.params.variances
        self.n_iter_ = result.n_iter
        self.converged_ = result.converged
        self.lower_bound_ = result.lower_bound
        return self

    def predict(self, X):
        self._check_fitted("means_")
        x = np.asarray(X, dtype=np.float64)
        params = MixParams(self.weights_, self.means_, self.variances_)
        return Mixture1D(self.n_components)._log_joint(x[:, 0], params).argmax(axis=1)


def make_toy_estimator():
    """Factory used by the kill-and-resume tests."""
    return ToyMixture(n_components=3, max_iter=14, random_state=3)


def mixture_data(n=3000, seed=0):
    """Samples of a well separated three-component 1-D mixture, shape (n, 1)."""
    rng = np.random.default_rng(seed)
    z = rng.choice(3, n, p=[0.3, 0.5, 0.2])
    return (np.array([-4.0, 0.0, 5.0])[z] + rng.normal(size=n) * np.array([1.0, 0.7, 1.5])[z])[:, None]


def blobs(n=900, n_features=2, seed=0):
    """Three Gaussian blobs, shape (n, n_features)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=4.0, size=(3, n_features))
    z = rng.choice(3, n)
    return centers[z] + rng.normal(size=(n, n_features)) * rng.uniform(0.5, 1.5, size=(3, n_features))[z]


def _gmm(covariance_type):
    from dask_em import GaussianMixture

    # tol=0: run all max_iter iterations so every kill point leaves work to do
    return GaussianMixture(
        3, covariance_type=covariance_type, max_iter=8, tol=0.0, random_state=7, init_params="random_from_data"
    )


def make_gmm_full():
    return _gmm("full")


def make_gmm_tied():
    return _gmm("tied")


def make_gmm_diag():
    return _gmm("diag")


def make_gmm_spherical():
    return _gmm("spherical")


def make_kmeans():
    from dask_em import KMeans

    # two restarts: the kill may land in either, each resumes from its own sub-checkpoint
    return KMeans(3, init="k-means++", n_init=2, max_iter=4, tol=0.0, random_state=11)
