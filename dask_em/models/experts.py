"""Mixtures of linear experts: pure numpy E-step and M-step.

Two models share this code, told apart by ``gating``:

- ``"gaussian"``: the Gaussian-gated mixture of linear experts of Xu,
  Jordan & Hinton (1995), "An alternative model for mixtures of experts",
  NIPS 7. The joint density of inputs ``x`` (D) and targets ``y`` (T) is
  ``sum_k w_k N(x | mu_k, Sigma_k) N(y | B_k x + b_k, diag(s2_k))``; the
  gates ``g_k(x) = w_k N(x | mu_k, Sigma_k) / sum_j w_j N(x | mu_j, Sigma_j)``
  are a normalised radial-basis-function layer and the conditional mean
  ``E[y | x] = sum_k g_k(x) (B_k x + b_k)`` a normalised RBF network.
  Maximising the joint likelihood makes the M-step closed form: a Gaussian
  mixture on the inputs (:class:`dask_em.models.gmm.GaussianMixtureModel`'s
  own M-step) and a weighted least-squares regression per expert.
- ``"constant"``: the gates are the weights ``w_k`` whatever ``x`` (a
  mixture of linear regressions, latent-class regression as R's flexmix
  fits it); the likelihood is the conditional one, ``p(y | x)``.

A block is one 2-D array whose first ``D`` columns are the inputs and last
``n_targets`` columns the targets, so that every array-level tool (chunking,
streaming from Zarr, fingerprints, the contract suite) applies unchanged.

Statistics are taken about reference points fixed by the parameters that
enter the iteration (:func:`reference_points`): inputs about the mixture
mean of the gate means, targets about the mixture mean of the experts'
predictions there, so second moments do not lose digits to cancellation.
With ``u = x - c`` and ``v = y - r``, and responsibilities ``r_ik``:

- ``sum_resp`` (K,), ``sum_x`` (K, D), ``sum_xxT`` (K, D, D): the input
  moments (the weighted normal equations' ``[1, u]^T W [1, u]`` too);
- ``sum_y`` (K, T), ``sum_xy`` (K, D, T): ``[1, u]^T W v``;
- ``sum_yy`` (K, T): weighted squares of ``v`` (the noise variances);
- ``n``, ``loglik``, ``n_invalid`` (NaN or infinite values in x or y).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numba
import numpy as np

from ..contract import Stats
from ._gaussian import (
    COVARIANCE_TYPES,
    EPS10,
    is_square,
    logsumexp_rows,
    moments_from_full,
    n_parameters,
    normalize_columns,
    normalize_rows,
    precisions_cholesky_from_covariances,
)
from .gmm import EMPTY_MASS, GaussianMixtureModel, GMMParams, _Workspace, sub_block_rows
from .gmm_kernels import _weigh_rows
from .kmeans import kmeans_plusplus

GATINGS = ("gaussian", "constant")
INITS = ("kmeans", "random")


@dataclass(frozen=True)
class ExpertsParams(GMMParams):
    """Parameters of a mixture of linear experts: the gates' Gaussian mixture (:class:`~dask_em.models.gmm.GMMParams`) and

    Attributes
    ----------
    coef : ndarray of shape (n_components, n_targets, n_features)
    intercept : ndarray of shape (n_components, n_targets)
    noise_variance : ndarray of shape (n_components, n_targets)
        Variance of each target's Gaussian noise in each expert.

    Notes
    -----
    With constant gates, ``means`` are the responsibility-weighted mean
    input of each expert (only the reference point uses them), and
    ``covariances`` and ``precisions_cholesky`` are empty arrays of shape (0,).
    """

    coef: np.ndarray
    intercept: np.ndarray
    noise_variance: np.ndarray


def reference_points(params: ExpertsParams) -> tuple[np.ndarray, np.ndarray]:
    """The points inputs and targets are centred on: ``c = w @ means`` and
    ``r = sum_k w_k (intercept_k + coef_k c)``."""
    weights = np.asarray(params.weights, np.float64)
    c = weights @ np.asarray(params.means, np.float64)
    at_c = np.asarray(params.intercept, np.float64) + np.asarray(params.coef, np.float64) @ c
    return c, weights @ at_c


@dataclass(frozen=True)
class MixtureOfExpertsModel:
    """A mixture of ``n_components`` linear experts of ``n_targets`` targets.

    Parameters
    ----------
    n_components : int
    n_targets : int
        The last ``n_targets`` columns of a block are the targets.
    covariance_type : {"full", "tied", "diag", "spherical"}
        Form of the gate covariances (unused with constant gates).
    reg_covar : float
        Added to the diagonal of the gate covariances and to every noise
        variance, so that neither collapses onto a few points.
    gating : {"gaussian", "constant"}
        Gaussian gates on the inputs, or constant gates (mixture of
        linear regressions).
    init : {"kmeans", "random"}
        Initial responsibilities of :meth:`init_params`: hard k-means++
        clusters of the standardised ``(x, y)`` rows, or random ones.
    """

    n_components: int
    n_targets: int = 1
    covariance_type: str = "full"
    reg_covar: float = 1e-6
    gating: str = "gaussian"
    init: str = "kmeans"

    def __post_init__(self) -> None:
        if int(self.n_components) < 1:
            raise ValueError(f"n_components must be at least 1, got {self.n_components}")
        if int(self.n_targets) < 1:
            raise ValueError(f"n_targets must be at least 1, got {self.n_targets}")
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, got {self.covariance_type!r}")
        if not self.reg_covar >= 0:
            raise ValueError(f"reg_covar must be non-negative, got {self.reg_covar}")
        if self.gating not in GATINGS:
            raise ValueError(f"gating must be one of {GATINGS}, got {self.gating!r}")
        if self.init not in INITS:
            raise ValueError(f"init_params must be one of {INITS}, got {self.init!r}")

    @property
    def gate(self) -> GaussianMixtureModel:
        """The Gaussian mixture on the inputs whose M-step the gates use."""
        return GaussianMixtureModel(self.n_components, self.covariance_type, self.reg_covar)

    def _split(self, block: Any) -> tuple[np.ndarray, np.ndarray]:
        A = np.asarray(block)
        T = int(self.n_targets)
        if A.ndim != 2 or A.shape[1] <= T:
            raise ValueError(
                f"a block must have n_features + n_targets = more than {T} columns, got shape {A.shape}"
            )
        return A[:, :-T], A[:, -T:]

    @staticmethod
    def _gmm_params(params: ExpertsParams) -> GMMParams:
        return GMMParams(params.weights, params.means, params.covariances, params.precisions_cholesky)

    # -- the contract -------------------------------------------------------

    def init_params(self, sample: Any, rng: np.random.Generator) -> ExpertsParams:
        """Parameters from responsibilities on an in-memory sample (see ``init``)."""
        X, y = self._split(sample)
        keep = np.isfinite(X).all(axis=1) & np.isfinite(y).all(axis=1)
        X, y = np.asarray(X[keep], np.float64), np.asarray(y[keep], np.float64)
        K = int(self.n_components)
        if len(X) < K:
            raise ValueError(f"initialisation needs at least n_components = {K} finite rows, got {len(X)}")
        if self.init == "kmeans":
            joint = np.hstack([X, y])
            scale = joint.std(axis=0)
            joint = (joint - joint.mean(axis=0)) / np.where(scale > 0, scale, 1.0)
            centers = kmeans_plusplus(joint, K, rng, uniform_draws=True)
            labels = ((joint[:, None, :] - centers[None]) ** 2).sum(axis=2).argmin(axis=1)
            respT = np.zeros((K, len(X)))
            respT[labels, np.arange(len(X))] = 1.0
        else:
            respT = rng.uniform(size=(K, len(X)))
            respT /= respT.sum(axis=0)
        c, r = X.mean(axis=0), y.mean(axis=0)
        stats = self._zero_stats(X.shape[1])
        self._accumulate(stats, X - c, y - r, respT, np.empty((len(X), K * X.shape[1])))
        return self._estimate(stats, c, r, None)

    def e_step(self, block: Any, params: ExpertsParams) -> Stats:
        """Sums of one block (see the module notes).

        Rows with NaN or infinite values are counted in ``n_invalid`` and
        add nothing.
        """
        X, y = self._split(block)
        K = int(self.n_components)
        D = X.shape[1]
        c, r = reference_points(params)
        gaussian = self.gating == "gaussian"
        gate = self.gate
        prep = gate.prepare(self._gmm_params(params)) if gaussian else None
        coef = np.asarray(params.coef, np.float64)
        stacked = np.ascontiguousarray(coef.transpose(2, 0, 1).reshape(D, -1))  # (D, K*T)
        offset = np.asarray(params.intercept, np.float64) + coef @ c - r  # expert k's mean of v at u = 0
        precision = 1.0 / np.asarray(params.noise_variance, np.float64)  # (K, T)
        const = -0.5 * np.log(2 * np.pi * np.asarray(params.noise_variance, np.float64)).sum(axis=1)
        with np.errstate(divide="ignore"):
            const = const + (0.0 if gaussian else np.log(np.asarray(params.weights, np.float64)))
        rows = sub_block_rows(K, D, "full")
        work = _Workspace(min(rows, X.shape[0]), K, D, self.covariance_type)
        W = np.empty((min(rows, X.shape[0]), K * D))
        P = np.empty((min(rows, X.shape[0]), stacked.shape[1]))  # every expert's slope term, side by side
        stats = self._zero_stats(D)
        loglik = np.zeros(1)
        n_bad = n_invalid = 0
        overflow = False
        for start in range(0, X.shape[0], rows):
            part_x, part_y = X[start : start + rows], y[start : start + rows]
            n = part_x.shape[0]
            U = np.subtract(part_x, c, out=work.Y[:n])
            V = np.subtract(part_y, r, dtype=np.float64)
            if gaussian:
                respT = gate._log_prob_into(U, prep, work)
            else:
                respT = work.resp_t(n)
                respT[...] = 0.0
            np.matmul(U, stacked, out=P[:n])
            _add_expert_log_prob(P[:n], V, offset, precision, const, respT)
            if normalize_columns(
                respT, n, work.bounds, work.top, work.total, work.scale_bits, work.spare, work.bad, loglik
            ):
                bad = work.bad[0, :n]
                n_bad += int(bad.sum())
                nonfinite = ~np.isfinite(np.hstack([part_x[bad], part_y[bad]]))
                n_invalid += int(nonfinite.sum())
                if not nonfinite.any(axis=1).all():
                    overflow = True
                respT[:, bad] = 0.0
                U[bad] = 0.0
                V[bad] = 0.0
            self._accumulate(stats, U, V, respT, W[:n])
        stats["n"] = np.array(float(X.shape[0] - n_bad))
        stats["loglik"] = np.array(-np.inf if overflow else float(loglik[0]))
        stats["n_invalid"] = np.array(n_invalid)
        return stats

    def m_step(self, stats: Stats, params: ExpertsParams) -> ExpertsParams:
        """Gates by the Gaussian mixture M-step, experts by weighted least squares.

        An expert with less responsibility than ``EMPTY_MASS`` keeps its
        coefficients and noise (the gate's M-step keeps its centre).
        """
        c, r = reference_points(params)
        return self._estimate(stats, c, r, params)

    def param_constraints(self, params: ExpertsParams) -> dict[str, str]:
        """Constraint of each parameter field, for accelerated EM (:mod:`dask_em.accelerate`)."""
        if self.gating == "constant":
            gates = {"covariances": "fixed", "precisions_cholesky": "fixed"}
        else:
            shape = "spd" if is_square(self.covariance_type) else "positive"
            gates = {"covariances": shape, "precisions_cholesky": "derived"}
        return {"weights": "simplex", "noise_variance": "positive", **gates}

    def complete_params(self, params: ExpertsParams) -> ExpertsParams:
        """``params`` with the gates' precision Cholesky factors recomputed from their covariances."""
        if self.gating == "constant":
            return params
        prec_chol = precisions_cholesky_from_covariances(params.covariances, self.covariance_type)
        return replace(params, precisions_cholesky=prec_chol)

    def describe_invalid(self, n_invalid: int) -> str:
        """The error message for ``n_invalid`` NaN or infinite values."""
        return (
            f"the inputs or targets contain {n_invalid} NaN or infinite value{'s' if n_invalid != 1 else ''}; "
            "a mixture of linear experts needs finite values. Remove or impute those rows."
        )

    # -- helpers --------------------------------------------------------------

    def _zero_stats(self, D: int) -> Stats:
        K, T = int(self.n_components), int(self.n_targets)
        return {
            "sum_resp": np.zeros(K),
            "sum_x": np.zeros((K, D)),
            "sum_xxT": np.zeros((K, D, D)),
            "sum_y": np.zeros((K, T)),
            "sum_xy": np.zeros((K, D, T)),
            "sum_yy": np.zeros((K, T)),
        }

    @staticmethod
    def _accumulate(stats: Stats, U: np.ndarray, V: np.ndarray, respT: np.ndarray, W: np.ndarray) -> None:
        """Add the sums of centred rows ``U``, ``V`` with responsibilities ``respT`` (K, n)."""
        K = respT.shape[0]
        D, T = U.shape[1], V.shape[1]
        _weigh_rows(respT, U, W)  # W[i, kD + j] = r_ik u_ij
        stats["sum_resp"] += respT.sum(axis=1)
        stats["sum_x"] += respT @ U
        stats["sum_xxT"] += (W.T @ U).reshape(K, D, D)
        stats["sum_y"] += respT @ V
        stats["sum_xy"] += (W.T @ V).reshape(K, D, T)
        stats["sum_yy"] += respT @ (V * V)

    def _estimate(self, stats: Stats, c: np.ndarray, r: np.ndarray, previous: ExpertsParams | None) -> ExpertsParams:
        """Parameters from sums taken about ``c`` (inputs) and ``r`` (targets)."""
        sum_resp = np.asarray(stats["sum_resp"], np.float64)
        sum_x = np.asarray(stats["sum_x"], np.float64)
        K, D = sum_x.shape
        T = int(self.n_targets)
        empty = sum_resp < EMPTY_MASS
        if self.gating == "gaussian":
            gate = self.gate
            gate_stats = moments_from_full(stats, self.covariance_type)
            if previous is None:
                g = gate.params_from_stats(gate_stats, c)
            else:
                g = gate.m_step(gate_stats, self._gmm_params(previous))
            weights, means, covariances, prec_chol = g.weights, g.means, g.covariances, g.precisions_cholesky
        else:
            nk = sum_resp + EPS10
            weights = nk / nk.sum()
            means = sum_x / nk[:, None] + c
            if previous is not None:
                means = np.where(empty[:, None], previous.means, means)
            covariances = prec_chol = np.zeros(0)
        # Weighted normal equations [1, u]^T W [1, u] beta = [1, u]^T W v, per expert.
        A = np.empty((K, D + 1, D + 1))
        A[:, 0, 0] = sum_resp
        A[:, 0, 1:] = sum_x
        A[:, 1:, 0] = sum_x
        A[:, 1:, 1:] = stats["sum_xxT"]
        B = np.concatenate([np.asarray(stats["sum_y"], np.float64)[:, None, :], np.asarray(stats["sum_xy"], np.float64)], axis=1)
        coef = np.empty((K, T, D))
        intercept = np.empty((K, T))
        noise = np.empty((K, T))
        for k in range(K):
            if empty[k] and previous is not None:
                coef[k], intercept[k], noise[k] = previous.coef[k], previous.intercept[k], previous.noise_variance[k]
                continue
            try:
                beta = np.linalg.solve(A[k], B[k])
            except np.linalg.LinAlgError:  # collinear inputs within an expert: minimum-norm solution
                beta = np.linalg.lstsq(A[k], B[k], rcond=None)[0]
            slopes = beta[1:].T  # (T, D)
            coef[k] = slopes
            intercept[k] = beta[0] + r - slopes @ c
            residual = np.asarray(stats["sum_yy"], np.float64)[k] - (beta * B[k]).sum(axis=0)
            noise[k] = np.maximum(residual, 0.0) / (sum_resp[k] + EPS10) + self.reg_covar
        if not np.all(noise > 0):
            raise ValueError(
                "an expert's noise variance is zero (it fits its points exactly); increase reg_covar "
                "or decrease n_components"
            )
        return ExpertsParams(
            weights=np.asarray(weights, np.float64),
            means=np.asarray(means, np.float64),
            covariances=np.asarray(covariances, np.float64),
            precisions_cholesky=np.asarray(prec_chol, np.float64),
            coef=coef,
            intercept=intercept,
            noise_variance=noise,
        )

    # -- per-row outputs ----------------------------------------------------

    def gates_block(self, X: np.ndarray, params: ExpertsParams) -> np.ndarray:
        """Gate values ``g_k(x)`` of each row, shape (n_samples, n_components)."""
        X = np.asarray(X, np.float64)
        if self.gating == "constant":
            return np.broadcast_to(np.asarray(params.weights, np.float64), (len(X), self.n_components)).copy()
        log_prob = np.ascontiguousarray(self.gate.weighted_log_prob(X, self._gmm_params(params)))
        normalize_rows(log_prob, np.empty(len(log_prob)))
        return log_prob

    def predict_block(self, X: np.ndarray, params: ExpertsParams) -> np.ndarray:
        """Conditional mean ``sum_k g_k(x) (coef_k x + intercept_k)``, shape (n_samples, n_targets)."""
        X = np.asarray(X, np.float64)
        gates = self.gates_block(X, params)
        experts = np.einsum("ktd,id->ikt", params.coef, X) + params.intercept[None]
        return np.einsum("ik,ikt->it", gates, experts)

    def log_prob_block(self, block: np.ndarray, params: ExpertsParams) -> np.ndarray:
        """log w_k + log p(x | k) + log p(y | x, k) per row, shape (n_samples, n_components).

        The input term is left out with constant gates (a conditional density).
        """
        X, y = self._split(block)
        X, y = np.asarray(X, np.float64), np.asarray(y, np.float64)
        if self.gating == "gaussian":
            out = self.gate.weighted_log_prob(X, self._gmm_params(params))
        else:
            with np.errstate(divide="ignore"):
                out = np.broadcast_to(np.log(params.weights), (len(X), self.n_components)).copy()
        resid = y[:, None, :] - np.einsum("ktd,id->ikt", params.coef, X) - params.intercept[None]
        var = np.asarray(params.noise_variance, np.float64)
        out += -0.5 * (resid * resid / var[None] + np.log(2 * np.pi * var)[None]).sum(axis=2)
        return out

    def posterior_block(self, block: np.ndarray, params: ExpertsParams) -> np.ndarray:
        """Posterior probability of each expert given ``(x, y)``, shape (n_samples, n_components)."""
        log_prob = np.ascontiguousarray(self.log_prob_block(block, params))
        normalize_rows(log_prob, np.empty(len(log_prob)))
        return log_prob

    def score_samples_block(self, block: np.ndarray, params: ExpertsParams) -> np.ndarray:
        """Log-likelihood of each row: joint (Gaussian gates) or conditional (constant gates)."""
        return logsumexp_rows(self.log_prob_block(block, params))

    def n_parameters(self, n_features: int) -> int:
        """Number of free parameters (for BIC/AIC)."""
        K, D, T = int(self.n_components), int(n_features), int(self.n_targets)
        experts = K * T * (D + 2)
        if self.gating == "constant":
            return experts + K - 1
        return experts + n_parameters(K, D, self.covariance_type)


@numba.njit(cache=True, fastmath={"reassoc", "contract"}, nogil=True)
def _add_expert_log_prob(P, V, offset, precision, const, respT):  # pragma: no cover - compiled
    """respT[k, i] += const[k] - sum_t precision[k, t] (V[i, t] - offset[k, t] - P[i, kT + t])^2 / 2.

    One pass over the rows for all experts, with no (rows, K, T) temporaries.
    """
    K, n = respT.shape
    T = V.shape[1]
    for i in range(n):
        for k in range(K):
            s = 0.0
            for t in range(T):
                r = V[i, t] - offset[k, t] - P[i, k * T + t]
                s += precision[k, t] * r * r
            respT[k, i] += const[k] - 0.5 * s
