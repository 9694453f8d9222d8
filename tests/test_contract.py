"""The model contract and bit-identical resume, over every shipped model, in one place.

Two tables:

- ``test_check_model*``: :func:`dask_em.testing.check_model` (additivity,
  purity, pickling, non-decreasing log-likelihood, chunking invariance and
  a stop and resume from a checkpoint, bit for bit) on every model of
  ``dask_em.models``, in this process (no cluster): tiny data and three
  iterations for the rows added here, the data and iterations of the
  model's own tests for the rows moved from them.
- ``test_sigkill_and_resume_is_bit_identical``: an estimator's fit killed
  with SIGKILL and resumed from its checkpoint ends bit-identical
  (:func:`dask_em.testing.assert_resume_bit_identical`), on the cluster.

A new model adds a row to the first table (and, for a new estimator
with checkpoints of its own, to the second).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from _toy_models import blobs

import dask_em
from dask_em.data.groups import grouped_blocks
from dask_em.data.sequences import sequence_blocks
from dask_em.models.experts import MixtureOfExpertsModel
from dask_em.models.factor import FactorModel
from dask_em.models.gmm import GaussianMixtureModel
from dask_em.models.gmm_missing import GaussianMixtureMissingModel
from dask_em.models.hmm import (
    CategoricalHMMModel,
    CategoricalHMMParams,
    GaussianHMMModel,
    GaussianHMMParams,
    PoissonHMMModel,
    PoissonHMMParams,
)
from dask_em.models.kmeans import KMeansModel
from dask_em.models.mixtures import BernoulliMixtureModel, CategoricalMixtureModel, PoissonMixtureModel
from dask_em.models.mvn_missing import MVNMissingModel
from dask_em.models.random_effects import RandomEffectsModel
from dask_em.storage.snapshots import read_checkpoint
from dask_em.testing import assert_resume_bit_identical, check_loglik_nondecreasing, check_model, final_snapshots

N_ITER = 3  # the contract needs a few iterations, not convergence


# --------------------------------------------------------------------------- tiny data


def _gaussian_rows(n: int = 240, d: int = 2, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0] * d, [4.0] * d, [-3.0, 3.0, *[0.0] * (d - 2)]])
    return centres[rng.integers(0, 3, n)] + rng.normal(size=(n, d))


def _hmm_case(kind: str, covariance_type: str = "diag") -> tuple[object, object, list[object]]:
    """A small HMM model, its parameters, and the same sequences in 3 and 2 partitions."""
    rng = np.random.default_rng(3)
    lengths = np.array([40, 25, 35, 30, 45, 25])
    states = rng.integers(0, 2, lengths.sum())
    startprob, transmat = np.array([0.6, 0.4]), np.array([[0.8, 0.2], [0.3, 0.7]])
    if kind == "gaussian":
        D = 3  # the sizes of hmmlearn's own tests (tests/peer): their compiled kernels are shared
        X = np.where(states[:, None] == 0, -1.0, 2.0) + rng.normal(size=(lengths.sum(), D))
        covars = {"spherical": np.array([1.0, 1.5]), "diag": np.ones((2, D)),
                  "full": np.stack([np.eye(D), 1.5 * np.eye(D)]), "tied": np.eye(D)}[covariance_type]
        model = GaussianHMMModel(n_components=2, covariance_type=covariance_type)
        params = GaussianHMMParams(startprob, transmat, np.array([[-0.5, 0.0, 0.5], [1.5, 1.0, 2.0]]), covars)
    elif kind == "categorical":
        X = np.where(states == 0, rng.integers(0, 2, lengths.sum()), rng.integers(1, 3, lengths.sum()))[:, None]
        model = CategoricalHMMModel(n_components=2, n_features=3)
        params = CategoricalHMMParams(startprob, transmat, np.array([[0.5, 0.3, 0.2], [0.1, 0.4, 0.5]]))
    else:
        X = rng.poisson(np.where(states[:, None] == 0, 1.0, 5.0), size=(lengths.sum(), 3)).astype(float)
        model = PoissonHMMModel(n_components=2)
        params = PoissonHMMParams(startprob, transmat, np.array([[1.5, 2.0, 1.0], [4.0, 3.0, 5.0]]))
    blocks = [sequence_blocks(X, lengths, n_partitions=n) for n in (3, 2)]
    return model, params, blocks


# Models of dask_em.models whose own tests had no contract row: (model factory, data factory,
# check_model keywords). The others (MAP GMM, VBGMM, factor models, missing-data models, discrete
# mixtures, experts, Bayesian network, random effects) are the rows below, moved from their test files.
CASES = {
    **{
        f"gmm-{ct}": (lambda ct=ct: GaussianMixtureModel(3, ct, 1e-6), _gaussian_rows, {})
        for ct in ("full", "tied", "diag", "spherical")
    },
    "kmeans": (lambda: KMeansModel(3), _gaussian_rows, {}),
}
HMM_CASES = [("gaussian", ct) for ct in ("spherical", "diag", "full", "tied")] + [("categorical", ""), ("poisson", "")]


@pytest.mark.parametrize("name", list(CASES))
def test_check_model(name):
    make_model, make_data, kwargs = CASES[name]
    check_model(make_model(), make_data(), client=None, n_iter=N_ITER, **kwargs)


@pytest.mark.parametrize("kind, covariance_type", HMM_CASES, ids=[f"{k}-{c}".rstrip("-") for k, c in HMM_CASES])
def test_check_model_hmm(kind, covariance_type):
    model, params, (blocks, other) = _hmm_case(kind, covariance_type)
    check_model(model, blocks, params, client=None, n_iter=N_ITER, chunkings=[other], rtol=1e-9)


def test_check_model_random_effects():
    from test_random_effects import _mixed_data

    X, y, g, Z = _mixed_data()
    blocks = grouped_blocks(X, y, g, Z, n_partitions=4)
    other = grouped_blocks(X, y, g, Z, n_partitions=3)
    block = blocks.compute(blocks.parts[0])[0]
    for method in ("ml", "reml"):
        model = RandomEffectsModel(method)
        params = model.init_params(block, np.random.default_rng(0))
        check_model(model, blocks, params, client=None, block=block, n_iter=6, chunkings=[other])
        check_loglik_nondecreasing(model, blocks, params, client=None, n_iter=10)


# --------------------------------------------------------------------------- moved here from the model test files


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_contract_suite_on_the_map_model(covariance_type):
    from test_gmm_map import K, prior_values
    from test_gmm_map import blobs as map_blobs

    model = GaussianMixtureModel(K, covariance_type, 0.0, **prior_values(covariance_type))
    check_model(model, map_blobs(1200), client=None, n_iter=4)


@pytest.mark.parametrize("ct, pt", [("full", "dirichlet_process"), ("tied", "dirichlet_distribution")])
def test_contract_vbgmm(ct, pt):
    """Additivity, purity, pickling, non-decreasing ELBO, chunking invariance, in-process resume."""
    from test_vbgmm import X, _model_and_start

    model = _model_and_start(ct, pt)[0]
    check_model(model, X, client=None, n_iter=6, rtol=1e-9)


@pytest.mark.parametrize("noise", ["isotropic", "diagonal"])
def test_contract_suite_factor(noise):
    from test_factor import _data

    X = _data(n=2000, d=6, q=2, seed=5, diagonal=noise == "diagonal")
    X[np.arange(0, 2000, 11), np.arange(0, 2000, 11) % 6] = np.nan  # missing values go through the contract too
    check_model(FactorModel(2, noise), X, client=None, rtol=1e-9)


@pytest.mark.parametrize("which", ["mvn", "gmm-full"])
def test_missing_data_models_keep_the_plug_in_contract(which):
    from test_missing import _two_clusters

    X = _two_clusters(5)
    rng = np.random.default_rng(6)
    X[rng.random(X.shape) < 0.2] = np.nan
    X = X[~np.isnan(X).all(axis=1)]
    model = {"mvn": MVNMissingModel(), "gmm-full": GaussianMixtureMissingModel(2, "full")}[which]
    check_model(model, X, client=None, n_iter=4, rtol=1e-9)


@pytest.mark.parametrize("family", ["poisson", "bernoulli", "categorical"])
def test_discrete_mixtures_keep_the_plug_in_contract(family):
    from test_mixtures import CASES as MIXTURE_CASES

    X, _, _ = MIXTURE_CASES[family][2](np.random.default_rng(7), n=600)
    model = {"poisson": PoissonMixtureModel, "bernoulli": BernoulliMixtureModel,
             "categorical": CategoricalMixtureModel}[family](n_components=2)
    check_model(model, X, client=None, n_iter=4)


def test_contract_suite_experts():
    from test_experts import piecewise

    x, y = piecewise(1200)
    for gating, cov in (("gaussian", "full"), ("constant", "full")):
        model = MixtureOfExpertsModel(2, n_targets=1, gating=gating, covariance_type=cov)
        check_model(model, np.hstack([x, y[:, None]]), client=None, n_iter=4, rtol=1e-9, resume=gating == "gaussian")


def test_plug_in_contract_bayesnet():
    from test_bayesnet import _model, _simulate

    model, _, df = _simulate(900, missing=0.1)
    check_model(model, df.to_numpy(), client=None, n_iter=4)
    # with pseudo-counts the objective is the log posterior, which must not decrease either
    check_loglik_nondecreasing(_model(pseudo_counts=2.0, prior_type="bdeu"), df.to_numpy(), client=None, n_iter=4)


# --------------------------------------------------------------------------- kill and resume (estimators)


@pytest.mark.parametrize(
    "factory",
    ["_toy_models:make_gmm_full", "_toy_models:make_gmm_tied", "_toy_models:make_gmm_diag",
     "_toy_models:make_gmm_spherical", "_toy_models:make_kmeans"],
)
def test_sigkill_and_resume_is_bit_identical(client, tmp_path, factory):
    # Three kill points where the snapshot's content differs most (restarts and k-means state):
    # the full mixture and k-means; one kill for the other covariance types, whose snapshots
    # differ from the full one's only in the covariance arrays (keeps the suite's time down).
    n_kills = 3 if factory.endswith(("full", "kmeans")) else 1
    report = assert_resume_bit_identical(factory, blobs(600), client=client, tmp_path=tmp_path, seed=0,
                                         n_kills=n_kills)
    assert len({r["kill_after"] for r in report}) == n_kills
    if factory.endswith("kmeans"):
        assert set(final_snapshots(tmp_path / "reference.zarr")) == {"run-0", "run-1"}


def make_map_gmm() -> dask_em.GaussianMixture:
    """A MAP mixture whose prior defaults come from its k-means initialisation pass."""
    from test_gmm_map import K

    return dask_em.GaussianMixture(
        K, covariance_type="full", max_iter=6, tol=0.0, random_state=5, n_init=2, weight_concentration_prior=2.0
    )


def test_resume_is_bit_identical_with_data_derived_prior(client, tmp_path):
    from test_gmm_map import D
    from test_gmm_map import blobs as map_blobs

    report = assert_resume_bit_identical(make_map_gmm, map_blobs(600), client=client, tmp_path=tmp_path, seed=1,
                                         n_kills=2)
    assert len(report) == 2
    config = read_checkpoint(tmp_path / "reference.zarr").info["model"]["config"]  # one fit: restarts share passes
    assert config["mean_precision_prior"] == 0.01 and config["degrees_of_freedom_prior"] == D + 2
    assert len(config["mean_prior"]) == D and len(config["covariance_prior"]) == D


def make_vbgmm() -> dask_em.BayesianGaussianMixture:
    """A fit whose prior defaults come from the data (recorded in the checkpoint)."""
    return dask_em.BayesianGaussianMixture(3, covariance_type="diag", init_params="random", max_iter=6, tol=0.0,
                                           random_state=4)


def test_resume_after_sigkill_is_bit_identical_vbgmm(client, tmp_path):
    from test_vbgmm import X

    report = assert_resume_bit_identical(make_vbgmm, X, client=client, tmp_path=tmp_path, seed=5, n_kills=1)
    assert len(report) == 1


def make_ppca() -> dask_em.PPCA:
    """PPCA with missing values, a few iterations from a seeded start."""
    return dask_em.PPCA(2, max_iter=6, tol=0.0, random_state=3)


def test_resume_is_bit_identical_ppca(client, tmp_path):
    from test_factor import _data

    X = _data(n=1500, d=6, q=2, seed=6)
    X[np.arange(0, 1500, 13), np.arange(0, 1500, 13) % 6] = np.nan
    report = assert_resume_bit_identical(make_ppca, X, client=client, tmp_path=tmp_path, seed=2, n_kills=2)
    assert len(report) == 2


def make_experts() -> dask_em.MixtureOfExperts:
    return dask_em.MixtureOfExperts(2, max_iter=4, tol=0.0, random_state=0)


def test_resume_after_sigkill_is_bit_identical_experts(client, tmp_path):
    from test_experts import piecewise

    x, y = piecewise(2000)
    assert_resume_bit_identical(
        "tests.test_contract:make_experts", np.hstack([x, y[:, None]]), client=client, tmp_path=tmp_path,
        fit_kwargs={"target_columns": [-1]}, kill_after=[2], seed=0,
    )


def make_network() -> dask_em.DiscreteBayesianNetwork:
    """Factory for the SIGKILL resume test (imported by the subprocess)."""
    from test_bayesnet import CARDS, EDGES, OBSERVED

    return dask_em.DiscreteBayesianNetwork(EDGES, latent={"L": 2}, cardinality={k: CARDS[k] for k in OBSERVED},
                                           max_iter=8, tol=0.0, random_state=0)


def test_resume_after_sigkill_is_bit_identical_bayesnet(client, tmp_path):
    from test_bayesnet import OBSERVED, _simulate

    _, _, df = _simulate(2000, missing=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = assert_resume_bit_identical("tests.test_contract:make_network", df.to_numpy(), client=client,
                                             tmp_path=tmp_path, fit_kwargs={"columns": OBSERVED}, n_kills=1,
                                             seed=0)
    assert len(report) == 1


# --------------------------------------------------------------------------- the optional hooks


def test_hooks_of_a_plug_in_that_inherits_nothing():
    from dask_em.contract import HOOKS, ModelHooks, hooks
    from dask_em.models.mixtures import PoissonMixtureModel

    class PlugIn:  # only one hook of its own
        def describe_invalid(self, n_invalid):
            return f"{n_invalid} bad counts"

    stats = {"n": np.array(2.0), "loglik": np.array(-1.0)}
    assert hooks(PlugIn()).describe_invalid(3) == "3 bad counts"
    assert hooks(PlugIn()).finish_stats(stats, None) is stats
    assert hooks(PlugIn()).prepare_e_step("params", None) == "params"
    assert hooks(PlugIn()).describe_invalid.__self__.__class__ is PlugIn
    assert hooks(object()).describe_invalid(4) == ModelHooks().describe_invalid(4) == (
        "4 values are outside the model's support"
    )
    assert hooks(PoissonMixtureModel(2)).describe_invalid(1) != ModelHooks().describe_invalid(1)
    with pytest.raises(AttributeError, match="not an optional hook"):
        hooks(PlugIn()).e_step
    assert HOOKS == {"describe_invalid", "finish_stats", "prepare_e_step", "param_constraints",
                     "complete_params", "recenter_stats"}
