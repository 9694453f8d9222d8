"""Gaussian mixture model: pure numpy E-step and M-step.

The M-step follows scikit-learn's ``GaussianMixture`` formula for formula
(``nk = sum_resp + 10 * eps``, ``reg_covar`` added to the diagonal), so a
fit from the same initial parameters matches it to rounding.

Statistics are sums of ``x - c`` where ``c`` is a reference point fixed by
the parameters entering the iteration (:func:`reference_point`, the
mixture's mean), the same for every block. Second moments taken about a
point near the data do not lose digits to cancellation when the data sits
far from the origin.

The E-step works on sub-blocks of rows so that every temporary stays in
cache. Log-probabilities and responsibilities are held transposed, (K,
rows), so that their normalisation
(:func:`dask_em.models._gaussian.normalize_columns`, the kernel model
selection uses too) runs along rows in SIMD lanes. For ``full``
covariances the whole block is one compiled call
(:func:`dask_em.models.gmm_kernels._e_step_full`). For the other types the
statistics come from ``respT @ Y`` products. Covariance types, Cholesky
factors and log-determinants come from :mod:`dask_em.models._gaussian`.

A component whose responsibilities sum to less than :data:`EMPTY_MASS`
(it has lost all its points) keeps its previous mean and covariance and
its weight becomes ``10 * eps / n_samples``, about zero, so it never turns
into NaN; it can win points back if the data moves towards it.

With a conjugate prior (any ``*_prior`` field set) the M-step is the
maximum a posteriori (MAP) one of Fraley & Raftery (2007), "Bayesian
regularization for normal mixture estimation and model-based clustering",
Journal of Classification 24, 155-181: a Dirichlet prior on the weights and
a normal-inverse-Wishart prior on each component (normal-inverse-gamma per
feature for ``diag``, on one variance for ``spherical``, one inverse-Wishart
for the shared ``tied`` covariance; :mod:`dask_em.models.gmm_prior`). The
E-step is the same; the prior only changes the M-step and adds the log prior
density to the monitored objective (:meth:`GaussianMixtureModel.finish_stats`), so EM increases the
log posterior. Every component then has a well-defined mean and covariance,
also one with no points or a single point.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ._gaussian import (
    EPS10,
    LOG_2PI,
    feature_precisions,
    from_tied,
    is_square,
    log_det_cholesky,
    logsumexp_rows,
    normalize_columns,
    normalize_rows,
    pooled_stats,
    precisions_cholesky_from_covariances,
    recenter_moments,
    zero_stats,
)
from ..contract import Stats, split_weights
from .gmm_kernels import (
    _e_step_full,
    _log_prob_full,
    _log_prob_shared,
    _moments_full,
    _transpose_into,
    full_kernel_rows,
    padded,
)
from .gmm_prior import MAPPrior
from .kmeans import kmeans_plusplus

#: A component with less responsibility than this (in samples) is empty.
EMPTY_MASS = 1e-10

#: Rows per sub-block in the E-step: keeps the (rows, K*D) temporaries in cache.
SUB_BLOCK_ROWS = 2048


def sub_block_rows(n_components: int, n_features: int, covariance_type: str) -> int:
    """Rows per sub-block of the loops in Python (about 1 MiB for each
    (rows, K*D) buffer of the full type; the other types, whose temporaries
    are (rows, K), run fastest at about 4,000).

    The full E-step of a whole block runs in one compiled call with its own
    sub-blocks (:func:`.gmm_kernels.full_kernel_rows`).
    """
    if covariance_type == "full":
        return int(min(8192, max(256, 2**17 // (n_components * n_features))))
    return 4096


@dataclass(frozen=True)
class GMMParams:
    """Parameters of a Gaussian mixture.

    Attributes
    ----------
    weights : ndarray of shape (n_components,)
    means : ndarray of shape (n_components, n_features)
    covariances : ndarray
        (n_components, n_features, n_features) for ``full``,
        (n_features, n_features) for ``tied``, (n_components, n_features)
        for ``diag`` and (n_components,) for ``spherical``.
    precisions_cholesky : ndarray
        Cholesky factors of the precision matrices, same shape as
        ``covariances`` (scikit-learn's ``precisions_cholesky_``).
    """

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    precisions_cholesky: np.ndarray


def reference_point(params: GMMParams) -> np.ndarray:
    """The point statistics are centred on: the mixture mean ``weights @ means``."""
    return np.asarray(params.weights, np.float64) @ np.asarray(params.means, np.float64)

@dataclass(frozen=True)
class _Prepared:
    """Per-iteration constants of the E-step (no data involved, cheap)."""

    center: np.ndarray  # (D,) reference point
    const: np.ndarray  # (K,) log weight + log det - D/2 log 2 pi
    factors: np.ndarray  # full: (K, P, P) Cholesky factors zero-padded to P = 4 ceil(D/4); tied: (D, D)
    offsets: np.ndarray  # full: (K, P) a_k @ L_k, zero-padded; tied: (K, D); diag/spherical: (K, D) a_k
    scale: np.ndarray  # tied: ones (K, D); diag/spherical: (K, D) precisions
    # full: for each group of 4 columns of the factors, the end of their
    # nonzero rows (a multiple of 4): the E-step skips the zero triangle.
    row_end: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


class _Workspace:
    """Buffers reused across the sub-blocks of one block.

    Allocating them once matters inside Dask workers, whose allocator hands
    freed memory back to the system eagerly (``MALLOC_TRIM_THRESHOLD_``):
    fresh temporaries per sub-block there cost page faults on every use.

    The E-step holds log-probabilities and responsibilities transposed,
    (K, rows), in ``respT`` (:meth:`resp_t` gives the view for a sub-block
    of ``n`` rows, contiguous whatever ``n``), so that the normalisation
    runs along rows in SIMD lanes; for ``full`` covariances the centred
    rows are held transposed too, in ``Yt``.
    """

    def __init__(self, rows: int, K: int, D: int, covariance_type: str) -> None:
        rows = max(rows, 1)
        self.K = K
        self.Y = np.empty((rows, D))
        self.Y2 = np.empty((rows, D)) if covariance_type in ("diag", "spherical") else None
        self.log_prob = np.empty((rows, K))
        self.row_loglik = np.empty(rows)
        self.Z = np.empty((rows, D)) if covariance_type == "tied" else None
        full = covariance_type == "full"
        # full: centred rows transposed, (P, rows) with zero rows below D, and
        # scratch of the compiled kernels (_log_prob_full, _moments_full)
        self.Yt = np.zeros((padded(D), rows)) if full else None
        self.Zt = np.empty((4, rows)) if full else None
        self.Wt = np.empty((padded(D), rows)) if full else None
        self.respT = np.empty(K * rows)
        # scratch of normalize_columns
        self.bounds = np.array([0, K], np.int64)
        self.top = np.empty(rows)
        self.total = np.empty(rows)
        self.spare = np.empty(rows)
        self.scale_bits = np.empty(rows, np.int64)
        self.bad = np.empty((1, rows), np.bool_)

    def resp_t(self, n: int) -> np.ndarray:
        """The (K, n) transposed log-probability/responsibility buffer of ``n`` rows."""
        return self.respT[: self.K * n].reshape(self.K, n)


@dataclass(frozen=True)
class GaussianMixtureModel(MAPPrior):
    """A mixture of ``n_components`` Gaussians.

    Parameters
    ----------
    n_components : int
        Number of mixture components.
    covariance_type : {"full", "tied", "diag", "spherical"}
        Form of the covariance matrices, as in scikit-learn.
    reg_covar : float
        Non-negative regularisation added to the diagonal of covariances
        (after the MAP formulas too, when there is a prior).
    weight_concentration_prior : float, optional
        alpha > 0 of a symmetric Dirichlet(alpha) prior on the weights
        (None with a prior on: 1, a flat prior that leaves the weights
        at their maximum-likelihood values).
    mean_precision_prior : float, optional
        kappa0 > 0: the prior on a component's mean is
        N(mean_prior, covariance / kappa0) (None with a prior on: 0.01).
    mean_prior : tuple of float of length n_features, optional
        m0, the prior mean of the component means.
    degrees_of_freedom_prior : float, optional
        nu0 of the inverse-Wishart (full, tied) or of the inverse-gamma
        (diag, spherical, shape nu0 / 2) prior (None with a prior on:
        n_features + 2). Values that make the prior improper are accepted
        as long as every MAP denominator stays positive (nu0 > -(D + 2)
        for full and spherical, > -(D + K + 1) for tied, > -3 for diag):
        they give the maximum-likelihood M-step in the limit; the log prior
        then lacks its normalising constant.
    covariance_prior : float or tuple, optional
        Psi0, the scale of the inverse-Wishart: a (D, D) positive-definite
        matrix (nested tuples) for full and tied, D positive values (the
        inverse-gamma scales, twice their rate parameters) for diag, one
        positive value for spherical.

    The model has a prior when any ``*_prior`` field is set; it then
    needs ``mean_prior`` and ``covariance_prior`` (see
    :meth:`with_prior_defaults`, which fills them from data moments), and
    the other fields default as above. Arrays given for the prior fields
    are stored as tuples of floats, so the configuration stays JSON-able
    and exact.

    Notes
    -----
    Statistics returned by :meth:`e_step`, with ``x`` measured from
    :func:`reference_point` of the parameters:

    - ``sum_resp`` (K,): responsibilities summed over rows.
    - ``sum_x`` (K, D): responsibility-weighted sums of ``x``.
    - ``sum_xxT``: (K, D, D) weighted outer products for ``full``; the
      unweighted total (D, D) for ``tied``.
    - ``sum_xx`` (K, D): weighted squares for ``diag`` and ``spherical``.
    - ``n``, ``loglik`` and ``n_invalid`` (NaN or infinite values).
    """

    # -- the contract -------------------------------------------------------

    def init_params(self, sample: np.ndarray, rng: np.random.Generator) -> GMMParams:
        """k-means++ centres from ``sample``, then one hard-assignment M-step on it."""
        sample = np.asarray(sample, np.float64)
        sample = sample[np.isfinite(sample).all(axis=1)]
        centers = kmeans_plusplus(sample, self.n_components, rng, uniform_draws=True)
        hard = HardAssignment(centers=centers, covariance_type=self.covariance_type)
        return self.params_from_stats(hard.e_step(sample, None), centers)

    def e_step(self, block: Any, params: GMMParams) -> Stats:
        """Sums of responsibilities and moments of one block (see class notes).

        Rows with NaN or infinite values are counted in ``n_invalid`` and
        add nothing; finite rows whose densities overflow make ``loglik``
        -inf (the engine reports it with what to try).
        """
        return self.e_step_prepared(block, self.prepare(params))

    def e_step_prepared(self, block: Any, prep: _Prepared) -> Stats:
        """:meth:`e_step` with the constants of :meth:`prepare` given (for
        models that change the per-component constants, such as the
        variational mixture of :mod:`dask_em.models.vbgmm`)."""
        X, w = split_weights(block)
        X = np.asarray(X)
        K, D = self.n_components, prep.center.shape[0]
        stats = self._zero_stats(D)
        loglik = np.zeros(1)
        if self.covariance_type == "full" and w is None and X.ndim == 2 and X.shape[1] == D:
            if X.dtype.kind != "f":
                X = X.astype(np.float64)
            work = _Workspace(min(full_kernel_rows(D), X.shape[0]), K, D, "full")
            # the whole block in one compiled call: no per-sub-block dispatch
            n_bad, n_invalid, overflow = _e_step_full(
                X, work.Yt.shape[1], prep.center, prep.factors, prep.offsets, prep.row_end, prep.const,
                work.Yt, work.respT, work.Zt, work.Wt, work.bounds, work.top, work.total,
                work.scale_bits, work.spare, work.bad, loglik,
                stats["sum_resp"], stats["sum_x"], stats["sum_xxT"],
            )
            stats["n"] = np.array(float(X.shape[0] - n_bad))
            stats["loglik"] = np.array(-np.inf if overflow else float(loglik[0]))
            stats["n_invalid"] = np.array(int(n_invalid))
            return stats
        rows = sub_block_rows(K, D, self.covariance_type)
        work = _Workspace(min(rows, X.shape[0]), K, D, self.covariance_type)
        overflow = False
        n_bad = 0
        n_invalid = 0
        weighted_loglik = weight_bad = 0.0
        for start in range(0, X.shape[0], rows):
            part = X[start : start + rows]
            n = part.shape[0]
            Y = np.subtract(part, prep.center, out=work.Y[:n])
            respT = self._log_prob_into(Y, prep, work)
            if w is not None:  # the rows' log-likelihoods, before normalising overwrites them
                row_w = w[start : start + rows]
                weighted_loglik += _row_weighted_loglik(respT, row_w)
            if normalize_columns(
                respT, n, work.bounds, work.top, work.total, work.scale_bits, work.spare, work.bad, loglik
            ):
                bad = work.bad[0, :n]
                n_bad += int(bad.sum())
                nonfinite = ~np.isfinite(part[bad])
                n_invalid += int(nonfinite.sum())
                if not nonfinite.any(axis=1).all():
                    overflow = True
                respT[:, bad] = 0.0
                Y[bad] = 0.0
                if w is not None:
                    weight_bad += float(row_w[bad].sum())
            if w is not None:
                respT *= row_w
            self._accumulate_t(stats, Y, respT, work, None if w is None else row_w)
        if w is not None:
            stats["n"] = np.array(float(w.sum()) - weight_bad)
            loglik[0] = weighted_loglik
        else:
            stats["n"] = np.array(float(X.shape[0] - n_bad))
        stats["loglik"] = np.array(-np.inf if overflow else float(loglik[0]))
        stats["n_invalid"] = np.array(n_invalid)
        return stats

    def m_step(self, stats: Stats, params: GMMParams) -> GMMParams:
        """New parameters by scikit-learn's formulas; empty components keep theirs.

        With a prior, the MAP formulas (:meth:`_estimate_map`); every
        component, empty or not, then has a well-defined mean and covariance.
        """
        center = reference_point(params)
        if self.has_prior:
            weights, means, covariances = self._estimate_map(stats, center)
            prec_chol = precisions_cholesky_from_covariances(covariances, self.covariance_type)
            return GMMParams(weights=weights, means=means, covariances=covariances, precisions_cholesky=prec_chol)
        new = self._estimate(stats, center)
        weights, means, covariances = new
        empty = np.asarray(stats["sum_resp"]) < EMPTY_MASS
        if empty.any():
            means = np.where(empty[:, None], params.means, means)
            if self.covariance_type != "tied":
                covariances = covariances.copy()
                covariances[empty] = np.asarray(params.covariances)[empty]
        prec_chol = precisions_cholesky_from_covariances(covariances, self.covariance_type)
        return GMMParams(weights=weights, means=means, covariances=covariances, precisions_cholesky=prec_chol)

    def param_constraints(self, params: GMMParams) -> dict[str, str]:
        """How accelerated EM may move each parameter (see :mod:`dask_em.accelerate`)."""
        square = is_square(self.covariance_type)
        return {"weights": "simplex", "covariances": "spd" if square else "positive", "precisions_cholesky": "derived"}

    def complete_params(self, params: GMMParams) -> GMMParams:
        """``params`` with the precision factors recomputed from the covariances."""
        prec_chol = precisions_cholesky_from_covariances(params.covariances, self.covariance_type)
        return replace(params, precisions_cholesky=prec_chol)

    def recenter_stats(self, stats: Stats, old: GMMParams, new: GMMParams) -> Stats:
        """Statistics taken about ``old``'s reference point, moved to ``new``'s (for online EM)."""
        return recenter_moments(stats, reference_point(old) - reference_point(new))

    def describe_invalid(self, n_invalid: int) -> str:
        """The error message for ``n_invalid`` NaN or infinite values."""
        return (
            f"the data contains {n_invalid} NaN or infinite value{'s' if n_invalid != 1 else ''}; "
            "a Gaussian mixture needs finite values. Remove or impute them, or fit a model "
            "that treats NaN as missing: dask_em.MultivariateNormal or "
            "dask_em.GaussianMixture(missing='em')."
        )

    # -- helpers --------------------------------------------------------------

    def params_from_stats(self, stats: Stats, center: np.ndarray, previous: GMMParams | None = None) -> GMMParams:
        """Parameters from statistics taken about ``center`` (used by initialisations).

        Components without points get the pooled within-component
        covariance (or ``previous``' values when given) and their mean is
        left at ``previous.means`` or, without it, ``center``. With a
        prior, the MAP estimate (well-defined for empty components too).
        """
        if self.has_prior:
            weights, means, covariances = self._estimate_map(stats, np.asarray(center, np.float64))
            prec_chol = precisions_cholesky_from_covariances(covariances, self.covariance_type)
            return GMMParams(weights=weights, means=means, covariances=covariances, precisions_cholesky=prec_chol)
        weights, means, covariances = self._estimate(stats, np.asarray(center, np.float64))
        empty = np.asarray(stats["sum_resp"]) < EMPTY_MASS
        if empty.any():
            fallback_means = previous.means if previous is not None else np.broadcast_to(center, means.shape)
            means = np.where(empty[:, None], fallback_means, means)
            if self.covariance_type != "tied":
                if previous is not None:
                    fallback = np.asarray(previous.covariances)
                else:
                    pooled = GaussianMixtureModel(self.n_components, "tied", self.reg_covar)
                    tied_stats = pooled_stats(stats, self.covariance_type)
                    tied = pooled._estimate(tied_stats, np.asarray(center, np.float64))[2]
                    fallback = from_tied(tied, self.covariance_type, self.n_components)
                covariances = covariances.copy()
                covariances[empty] = fallback[empty]
        prec_chol = precisions_cholesky_from_covariances(covariances, self.covariance_type)
        return GMMParams(weights=weights, means=means, covariances=covariances, precisions_cholesky=prec_chol)

    def _estimate(self, stats: Stats, center: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """scikit-learn's ``_estimate_gaussian_parameters`` from centred sums."""
        sum_resp = np.asarray(stats["sum_resp"], np.float64)
        sum_x = np.asarray(stats["sum_x"], np.float64)
        nk = sum_resp + EPS10
        means = (sum_x + sum_resp[:, None] * center) / nk[:, None]
        a = means - center  # means about the reference point
        D = means.shape[1]
        ct = self.covariance_type
        if ct == "full":
            S = np.asarray(stats["sum_xxT"], np.float64)
            cross = sum_x[:, :, None] * a[:, None, :]
            cov = S - cross - cross.transpose(0, 2, 1) + sum_resp[:, None, None] * (a[:, :, None] * a[:, None, :])
            cov /= nk[:, None, None]
            cov[:, np.arange(D), np.arange(D)] += self.reg_covar
        elif ct == "tied":
            S = np.asarray(stats["sum_xxT"], np.float64)
            cov = (S - (nk[:, None] * a).T @ a) / nk.sum()
            cov[np.arange(D), np.arange(D)] += self.reg_covar
        else:
            S = np.asarray(stats["sum_xx"], np.float64)
            cov = (S - 2 * a * sum_x + sum_resp[:, None] * a * a) / nk[:, None] + self.reg_covar
            if ct == "spherical":
                cov = cov.mean(axis=1)
        weights = nk / nk.sum()
        return weights, means, cov

    def _zero_stats(self, D: int) -> Stats:
        return zero_stats(self.covariance_type, self.n_components, D)

    def prepare(self, params: GMMParams, log_weights: np.ndarray | None = None) -> _Prepared:
        """Constants of the E-step under ``params`` (cheap: no data involved).

        ``log_weights`` (K,), when given, replaces ``log(params.weights)``
        in the per-component constants; the statistics stay centred on
        :func:`reference_point` of ``params``.
        """
        weights = np.asarray(params.weights, np.float64)
        means = np.asarray(params.means, np.float64)
        prec_chol = np.asarray(params.precisions_cholesky, np.float64)
        K, D = means.shape
        center = reference_point(params)
        a = means - center
        ct = self.covariance_type
        if log_weights is not None:
            log_w = np.asarray(log_weights, np.float64)
        else:
            with np.errstate(divide="ignore"):
                log_w = np.log(weights)
        none = np.zeros((0, 0))
        const = log_w + log_det_cholesky(prec_chol, ct, D) - 0.5 * D * LOG_2PI
        if ct == "full":
            P = padded(D)
            factors = np.zeros((K, P, P))
            factors[:, :D, :D] = prec_chol
            offsets = np.zeros((K, P))
            offsets[:, :D] = np.einsum("ki,kij->kj", a, prec_chol)
            # last nonzero row of each group of 4 columns, over all components
            used = (factors != 0).any(axis=0).reshape(P, P // 4, 4).any(axis=2)  # (rows, column groups)
            last = np.where(used.any(axis=0), P - 1 - np.argmax(used[::-1], axis=0), -1)
            row_end = (-(-(last + 1) // 4) * 4).astype(np.int64)
            return _Prepared(center, const, factors, offsets, none, row_end)
        if ct == "tied":
            return _Prepared(center, const, np.ascontiguousarray(prec_chol), a @ prec_chol, np.ones((K, D)))
        prec = feature_precisions(prec_chol, ct, D)
        return _Prepared(center, const, none, np.ascontiguousarray(a), np.ascontiguousarray(prec))

    def _log_prob_into(self, Y: np.ndarray, prep: _Prepared, work: _Workspace) -> np.ndarray:
        """log(w_k) + log N(x | mu_k, Sigma_k) for centred rows ``Y``, written
        transposed to the workspace: a contiguous (K, n) view."""
        n = Y.shape[0]
        outT = work.resp_t(n)
        ct = self.covariance_type
        if ct == "full":
            _transpose_into(Y, np.zeros(Y.shape[1]), 0, n, work.Yt)
            _log_prob_full(work.Yt, n, prep.factors, prep.offsets, prep.row_end, prep.const, outT, work.Zt)
        elif ct == "tied":
            Z = work.Z[:n]
            np.matmul(Y, prep.factors, out=Z)
            _log_prob_shared(Z, prep.offsets, prep.scale, prep.const, outT)
        else:
            _log_prob_shared(Y, prep.offsets, prep.scale, prep.const, outT)
        return outT

    def _accumulate(self, stats: Stats, Y: np.ndarray, resp: np.ndarray, work: _Workspace) -> None:
        """Add the sums of rows ``Y`` with responsibilities ``resp`` (n, K)."""
        self._accumulate_t(stats, Y, resp.T, work)

    def _accumulate_t(
        self, stats: Stats, Y: np.ndarray, respT: np.ndarray, work: _Workspace, row_w: np.ndarray | None = None
    ) -> None:
        """Add the sums of rows ``Y`` with transposed responsibilities ``respT`` (K, n).

        ``row_w``: the rows' weights, already multiplied into ``respT``; the
        tied covariance's sum over all rows needs them on its own.
        """
        n, D = Y.shape
        ct = self.covariance_type
        if ct == "full":
            _transpose_into(Y, np.zeros(D), 0, n, work.Yt)
            _moments_full(respT, work.Yt, n, work.Wt, stats["sum_resp"], stats["sum_x"], stats["sum_xxT"])
            return
        stats["sum_resp"] += respT.sum(axis=1)
        stats["sum_x"] += respT @ Y
        if ct == "tied":
            stats["sum_xxT"] += Y.T @ Y if row_w is None else (Y * row_w[:, None]).T @ Y
        else:
            Y2 = np.multiply(Y, Y, out=work.Y2[:n]) if work.Y2 is not None else Y * Y
            stats["sum_xx"] += respT @ Y2

    def weighted_log_prob(self, X: np.ndarray, params: GMMParams) -> np.ndarray:
        """log(w_k) + log N(x | mu_k, Sigma_k) for every row: (n_samples, K).

        Raises
        ------
        InvalidDataError
            If ``X`` has NaN or infinite values.
        """
        return self.weighted_log_prob_prepared(X, self.prepare(params))

    def weighted_log_prob_prepared(self, X: np.ndarray, prep: _Prepared) -> np.ndarray:
        """:meth:`weighted_log_prob` with the constants of :meth:`prepare` given."""
        from ..errors import InvalidDataError

        X = np.asarray(X)
        K, D = self.n_components, prep.center.shape[0]
        out = np.empty((X.shape[0], self.n_components))
        rows = sub_block_rows(K, D, self.covariance_type)
        work = _Workspace(min(rows, X.shape[0]), K, D, self.covariance_type)
        for start in range(0, X.shape[0], rows):
            part = X[start : start + rows]
            Y = np.subtract(part, prep.center, out=work.Y[: part.shape[0]])
            out[start : start + rows] = self._log_prob_into(Y, prep, work).T
        if not np.isfinite(out).all():
            bad = ~np.isfinite(out).all(axis=1)
            raise InvalidDataError(self.describe_invalid(int((~np.isfinite(X[bad])).sum())))
        return out


def _row_weighted_loglik(log_probT: np.ndarray, weights: np.ndarray) -> float:
    """sum_i w_i logsumexp_k log_probT[k, i] over the rows whose value is finite (weighted fits only)."""
    row = logsumexp_rows(log_probT.T)
    good = np.isfinite(row)
    return float(weights[good] @ row[good])



@dataclass(frozen=True)
class HardAssignment:
    """Each row wholly to its nearest centre: the statistics scikit-learn's
    k-means initialisation feeds to the M-step, in one pass.

    Parameters
    ----------
    centers : ndarray of shape (n_components, n_features)
    covariance_type : str
        Which second moments to return (as :class:`GaussianMixtureModel`).

    Statistics are taken about the mean of the centres
    (:meth:`reference`); ``loglik`` is minus the inertia.
    """

    centers: np.ndarray
    covariance_type: str = "full"

    def reference(self) -> np.ndarray:
        """The point statistics are centred on."""
        return np.asarray(self.centers, np.float64).mean(axis=0)

    def init_params(self, sample: Any, rng: np.random.Generator) -> None:  # pragma: no cover - unused
        return None

    def e_step(self, block: Any, params: Any) -> Stats:
        """Hard-assignment sums of one block."""
        X = np.asarray(block)
        centers = np.asarray(self.centers, np.float64)
        K, D = centers.shape
        center = self.reference()
        c = centers - center
        c_sq = (c * c).sum(axis=1)
        model = GaussianMixtureModel(K, self.covariance_type)
        stats = model._zero_stats(D)
        work = _Workspace(min(SUB_BLOCK_ROWS, X.shape[0]), K, D, self.covariance_type)
        inertia = 0.0
        n_valid = 0
        n_invalid = 0
        for start in range(0, X.shape[0], SUB_BLOCK_ROWS):
            Y = np.subtract(X[start : start + SUB_BLOCK_ROWS], center, dtype=np.float64)
            y_sq = (Y * Y).sum(axis=1)
            dist = y_sq[:, None] - 2.0 * (Y @ c.T) + c_sq
            bad = ~np.isfinite(y_sq)
            if bad.any():
                n_invalid += int((~np.isfinite(Y[bad])).sum())
                Y[bad] = 0.0
                dist[bad] = 0.0
            labels = dist.argmin(axis=1)
            resp = np.zeros((Y.shape[0], K))
            resp[np.arange(Y.shape[0]), labels] = 1.0
            resp[bad] = 0.0
            inertia += float(np.maximum(dist[~bad, :].min(axis=1), 0).sum())
            n_valid += int((~bad).sum())
            model._accumulate(stats, Y, resp, work)
        stats["n"] = np.array(float(n_valid))
        stats["loglik"] = np.array(-inertia)
        stats["n_invalid"] = np.array(n_invalid)
        return stats

    def m_step(self, stats: Stats, params: Any) -> Any:  # pragma: no cover - one pass only
        return params

    def describe_invalid(self, n_invalid: int) -> str:
        """Same message as the mixture model's."""
        return GaussianMixtureModel(len(self.centers), self.covariance_type).describe_invalid(n_invalid)


# -- per-block outputs of a fitted mixture (run on workers: pure numpy) --


def _rows_output(block: np.ndarray, model: GaussianMixtureModel, params: GMMParams, what: str) -> np.ndarray:
    """Per-row outputs of one block, computed in sub-blocks."""
    block = np.asarray(block)
    log_prob = model.weighted_log_prob(block, params)
    if what == "predict":
        return log_prob.argmax(axis=1).astype(np.int64)
    row = np.empty(log_prob.shape[0])
    normalize_rows(log_prob, row)
    out = log_prob if what == "predict_proba" else row
    return out.astype(np.float32 if block.dtype == np.float32 else np.float64, copy=False)


def _with_index(index: int, block: Any) -> tuple[int, Any]:
    return index, block
