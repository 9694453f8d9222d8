"""Factor analysis and probabilistic PCA by EM, with missing values (NaN).

Both are the linear-Gaussian model ``x = W z + mu + eps`` with
``z ~ N(0, I_q)``; the noise ``eps ~ N(0, Psi)`` is diagonal for factor
analysis and isotropic (``Psi = sigma^2 I``) for probabilistic PCA
(Tipping & Bishop 1999; Roweis 1998; Rubin & Thayer 1982).

The E-step uses ``M = I + W' Psi^-1 W`` (q x q): ``E[z | x] = M^-1 W'
Psi^-1 (x - mu)`` and ``Cov[z | x] = M^-1``. The M-step is a regression
of ``x`` on ``z~ = [z, 1]``, so ``W`` and ``mu`` are updated together (a
proper EM step); without missing values the mean is set to the sample
mean directly (an ECME step, also monotone), which converges much faster.

Missing entries are handled exactly: the complete data are the *observed*
entries and ``z``, so a row with observed set ``o`` uses ``M_o = I +
W_o' Psi_o^-1 W_o`` and contributes to the regression of feature ``j``
only where ``j`` is observed (Tipping & Bishop 1999, appendix; Ilin &
Raiko 2010). Rows without missing values share ``M`` and go through
BLAS products on cache-sized sub-blocks; rows with missing values are
solved in batches.

Statistics (``q1 = q + 1``, deviations taken from the ``mu`` that
entered the iteration):

* ``n`` rows with at least one observed value, ``loglik``,
* ``n_invalid`` infinite values,
* ``sum_zz (q1, q1)`` sum of ``E[z~ z~']`` over complete rows,
* ``sum_xz (d, q1)`` sum of ``x_c E[z~]'`` over observed entries,
* ``sum_xx (d,)`` sum of ``x_c^2`` over observed entries,
* ``n_obs (d,)`` observed entries per feature,
* ``sum_zz_missing (d, q1, q1)`` sum of ``E[z~ z~']`` over incomplete rows
  where feature ``j`` is observed,
* ``sum_zz_incomplete (q1, q1)`` sum of ``E[z~ z~']`` over incomplete rows,
* ``n_missing ()`` number of missing entries.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np

from ._gaussian import LOG_2PI as _LOG_2PI
from ._gaussian import inverse_and_logdet
from ..contract import Stats

#: Rows per sub-block of the E-step: keeps (rows x features) temporaries in cache.
SUB_BLOCK_ROWS = 4096
#: Smallest noise variance, as scikit-learn's factor analysis.
MIN_NOISE_VARIANCE = 1e-12


@dataclasses.dataclass(frozen=True)
class FactorParams:
    """Parameters of the linear-Gaussian factor model.

    Attributes
    ----------
    mean : ndarray of shape (n_features,)
    loadings : ndarray of shape (n_features, n_components)
        ``W``; the model's covariance is ``W W' + diag(noise_variance)``.
    noise_variance : ndarray of shape (n_features,)
        Diagonal of ``Psi`` (all equal for probabilistic PCA).
    """

    mean: np.ndarray
    loadings: np.ndarray
    noise_variance: np.ndarray

    #: How accelerated EM may move each field (:mod:`dask_em.accelerate`).
    constraints: ClassVar[dict[str, str]] = {"noise_variance": "positive"}


@dataclasses.dataclass(frozen=True)
class FactorModel:
    """Factor analysis (``noise="diagonal"``) or probabilistic PCA (``noise="isotropic"``).

    Parameters
    ----------
    n_components : int
        Dimension ``q`` of the latent space.
    noise : {"diagonal", "isotropic"}
        Diagonal noise (factor analysis) or one noise variance (PPCA).
    """

    n_components: int
    noise: str = "diagonal"

    def __post_init__(self) -> None:
        if self.noise not in ("diagonal", "isotropic"):
            raise ValueError(f"noise must be 'diagonal' or 'isotropic', got {self.noise!r}")
        if int(self.n_components) < 1:
            raise ValueError(f"n_components must be at least 1, got {self.n_components}")

    # ------------------------------------------------------------------ init
    def init_params(self, sample: Any, rng: np.random.Generator) -> FactorParams:
        """Start from the principal components of an in-memory sample.

        Missing entries of the sample are filled with their column means.
        """
        X = np.asarray(sample, dtype=np.float64)
        d, q = X.shape[1], int(self.n_components)
        if q > d:
            raise ValueError(f"n_components={q} must not exceed n_features={d}")
        X = np.where(np.isfinite(X), X, np.nan)
        mean = np.nanmean(X, axis=0) if np.isnan(X).any() else X.mean(axis=0)
        mean = np.where(np.isfinite(mean), mean, 0.0)
        Xc = np.where(np.isnan(X), 0.0, X - mean)
        cov = Xc.T @ Xc / max(len(X), 1)
        eigval, eigvec = np.linalg.eigh(cov)
        eigval, eigvec = eigval[::-1], eigvec[:, ::-1]
        scale = max(float(np.trace(cov)) / d, 1e-12)
        if q < d:
            sigma2 = max(float(eigval[q:].mean()), 1e-3 * scale)
        else:
            sigma2 = 1e-3 * scale
        loadings = eigvec[:, :q] * np.sqrt(np.maximum(eigval[:q] - sigma2, 1e-3 * scale))
        if self.noise == "isotropic":
            noise = np.full(d, sigma2)
        else:
            noise = np.maximum(np.diag(cov) - (loadings**2).sum(axis=1), 1e-3 * np.maximum(np.diag(cov), 1e-12))
        return FactorParams(mean, loadings, noise)

    # ---------------------------------------------------------------- E-step
    def e_step(self, block: Any, params: FactorParams) -> Stats:
        """Expected sufficient statistics of the rows of ``block``."""
        X = np.asarray(block)
        mean = np.asarray(params.mean, np.float64)
        W = np.asarray(params.loadings, np.float64)
        psi = np.asarray(params.noise_variance, np.float64)
        d, q = W.shape
        q1 = q + 1
        inv_psi = 1.0 / psi
        Wp = W * inv_psi[:, None]  # Psi^-1 W
        M = np.eye(q) + W.T @ Wp
        M_inv, logdet_M = inverse_and_logdet(M)
        log_psi = np.log(psi)
        logdet_psi = float(log_psi.sum())
        WW = (W[:, :, None] * W[:, None, :]).reshape(d, q * q)

        sum_zz = np.zeros((q1, q1))
        sum_xz = np.zeros((d, q1))
        sum_xx = np.zeros(d)
        n_obs = np.zeros(d)
        sum_zz_missing = np.zeros((d, q1 * q1))
        sum_zz_incomplete = np.zeros((q1, q1))
        loglik = 0.0
        n_rows = 0
        n_missing = 0
        n_invalid = 0
        for start in range(0, X.shape[0], SUB_BLOCK_ROWS):
            x = np.asarray(X[start : start + SUB_BLOCK_ROWS], dtype=np.float64)
            finite = np.isfinite(x)
            if not finite.all():
                n_invalid += int(np.isinf(x).sum())
                missing = ~finite
                rows_missing = missing.any(axis=1)
            else:
                missing = None
                rows_missing = None
            if rows_missing is None or not rows_missing.any():
                xc = x - mean
                full = xc
            else:
                full = x[~rows_missing] - mean
            # Complete rows: one M for all.
            if len(full):
                t = full @ Wp
                Ez = t @ M_inv
                quad = float(np.einsum("ij,ij->", full * inv_psi, full)) - float(np.einsum("ij,ij->", t, Ez))
                r = len(full)
                loglik += -0.5 * (r * (d * _LOG_2PI + logdet_psi + logdet_M) + quad)
                sum_zz[:q, :q] += Ez.T @ Ez + r * M_inv
                ez_sum = Ez.sum(axis=0)
                sum_zz[:q, q] += ez_sum
                sum_zz[q, :q] += ez_sum
                sum_zz[q, q] += r
                sum_xz[:, :q] += full.T @ Ez
                sum_xz[:, q] += full.sum(axis=0)
                sum_xx += np.einsum("ij,ij->j", full, full)
                n_obs += r
                n_rows += r
            if rows_missing is not None and rows_missing.any():
                part = x[rows_missing]
                obs = finite[rows_missing]
                keep = obs.any(axis=1)  # rows with nothing observed carry no information
                part, obs = part[keep], obs[keep]
                n_missing += int((~obs).sum())
                if len(part):
                    o, xc, chol, Ez, logpdf = _observed_posterior(part, obs, mean, W, WW, inv_psi, log_psi)
                    Mo_inv = _chol_inv(chol)
                    loglik += float(logpdf.sum())
                    ezz = np.empty((len(part), q1, q1))
                    ezz[:, :q, :q] = Mo_inv + Ez[:, :, None] * Ez[:, None, :]
                    ezz[:, :q, q] = Ez
                    ezz[:, q, :q] = Ez
                    ezz[:, q, q] = 1.0
                    sum_zz_missing += o.T @ ezz.reshape(len(part), q1 * q1)
                    sum_zz_incomplete += ezz.sum(axis=0)
                    sum_xz[:, :q] += xc.T @ Ez
                    sum_xz[:, q] += xc.sum(axis=0)
                    sum_xx += np.einsum("ij,ij->j", xc, xc)
                    n_obs += o.sum(axis=0)
                    n_rows += len(part)
        return {
            "n": np.array(float(n_rows)),
            "loglik": np.array(loglik),
            "n_invalid": np.array(n_invalid),
            "n_missing": np.array(float(n_missing)),
            "n_obs": n_obs,
            "sum_zz": sum_zz,
            "sum_xz": sum_xz,
            "sum_xx": sum_xx,
            "sum_zz_missing": sum_zz_missing.reshape(d, q1, q1),
            "sum_zz_incomplete": sum_zz_incomplete,
        }

    def describe_invalid(self, n: int) -> str:
        """The error message for ``n`` infinite values."""
        return (
            f"the data contain {n} infinite values; factor models accept finite values and NaN "
            "(missing). Replace infinities with NaN or remove those rows."
        )

    # ---------------------------------------------------------------- M-step
    def m_step(self, stats: Stats, params: FactorParams) -> FactorParams:
        """Regress each feature on ``[z, 1]``; noise from the expected residuals."""
        d, q = np.asarray(params.loadings).shape
        sum_xz = np.asarray(stats["sum_xz"], np.float64)
        sum_xx = np.asarray(stats["sum_xx"], np.float64)
        n_obs = np.asarray(stats["n_obs"], np.float64)
        if np.any(n_obs == 0):
            empty = np.flatnonzero(n_obs == 0)
            raise ValueError(
                f"features {empty.tolist()} have no observed value; remove them before fitting"
            )
        common = np.asarray(stats["sum_zz"], np.float64)
        if float(stats["n_missing"]) > 0:
            # Joint regression on [z, 1]: the mean's estimate is not the
            # sample mean when values are missing.
            A = common[None] + np.asarray(stats["sum_zz_missing"], np.float64)
            coef = np.linalg.solve(A, sum_xz[:, :, None])[:, :, 0]  # (d, q1), A symmetric
            residual = sum_xx - np.einsum("jk,jk->j", coef, sum_xz)
            loadings, offset = coef[:, :q], coef[:, q]
            rows = common + np.asarray(stats["sum_zz_incomplete"], np.float64)
            n = rows[q, q]
            eta = rows[:q, q] / n
            sigma_z = rows[:q, :q] / n - np.outer(eta, eta)
            offset = offset + loadings @ eta
        else:
            # Without missing values the likelihood is maximised by the
            # sample mean whatever W and Psi are (an ECME step, Liu & Rubin
            # 1994): move the statistics to mu = mean(x) exactly, since
            # E[z | x] is affine in mu, then regress on z alone. A joint
            # regression on [z, 1] would move the mean only by a fraction
            # of its error per iteration along the strong components.
            n = common[q, q]
            offset = sum_xz[:, q] / n
            W = np.asarray(params.loadings, np.float64)
            inv_psi = 1.0 / np.asarray(params.noise_variance, np.float64)
            M = np.eye(q) + W.T @ (W * inv_psi[:, None])
            shift = np.linalg.solve(M, W.T @ (inv_psi * offset))
            sum_z = common[:q, q]
            szz = common[:q, :q] - np.outer(shift, sum_z) - np.outer(sum_z, shift) + n * np.outer(shift, shift)
            sxz = sum_xz[:, :q] - np.outer(offset, sum_z)
            loadings = np.linalg.solve(szz, sxz.T).T
            residual = sum_xx - n * offset**2 - np.einsum("jk,jk->j", loadings, sxz)
            sigma_z = szz / n
        # Parameter expansion (PX-EM, Liu, Rubin & Wu 1998): let z have a
        # free mean and covariance in the M-step and map back. Still a
        # monotone EM, and it removes the slow convergence of the loadings'
        # scale along strong components (rate 1 - 2 sigma^2 / lambda).
        loadings = loadings @ np.linalg.cholesky(sigma_z)
        if self.noise == "isotropic":
            noise = np.full(d, max(float(residual.sum() / n_obs.sum()), MIN_NOISE_VARIANCE))
        else:
            noise = np.maximum(residual / n_obs, MIN_NOISE_VARIANCE)
        mean = np.asarray(params.mean, np.float64) + offset
        return FactorParams(mean, np.ascontiguousarray(loadings), noise)


# ---------------------------------------------------------------------------
# Per-row outputs (also used by the estimators' transform / score_samples).
# ---------------------------------------------------------------------------


def posterior_block(X: np.ndarray, mean: np.ndarray, loadings: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means ``E[z | x_o]`` and log-densities of the observed entries of each row.

    Returns
    -------
    Ez : ndarray of shape (n_rows, n_components)
        Zero for rows with nothing observed.
    logpdf : ndarray of shape (n_rows,)
        Zero for rows with nothing observed.
    """
    X = np.asarray(X, dtype=np.float64)
    d, q = loadings.shape
    inv_psi = 1.0 / noise
    log_noise = np.log(noise)
    WW = (loadings[:, :, None] * loadings[:, None, :]).reshape(d, q * q)
    Ez = np.zeros((len(X), q))
    logpdf = np.zeros(len(X))
    for start in range(0, len(X), SUB_BLOCK_ROWS):
        x = X[start : start + SUB_BLOCK_ROWS]
        obs = ~np.isnan(x)
        ez, lp = _observed_posterior(x, obs, mean, loadings, WW, inv_psi, log_noise)[3:]
        any_obs = obs.any(axis=1)
        Ez[start : start + len(x)] = np.where(any_obs[:, None], ez, 0.0)
        logpdf[start : start + len(x)] = np.where(any_obs, lp, 0.0)
    return Ez, logpdf


def transform_block(X: np.ndarray, mean: np.ndarray, loadings: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """``E[z | x_o]`` of each row."""
    return posterior_block(X, mean, loadings, noise)[0]


def score_block(X: np.ndarray, mean: np.ndarray, loadings: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Log-density of the observed entries of each row."""
    return posterior_block(X, mean, loadings, noise)[1]


def _observed_posterior(
    x: np.ndarray, obs: np.ndarray, mean: np.ndarray, loadings: np.ndarray, WW: np.ndarray,
    inv_psi: np.ndarray, log_psi: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The posterior of ``z`` given the observed entries (``obs``) of each row of ``x``.

    ``WW`` holds the outer products of the rows of ``loadings`` (``(d, q*q)``),
    ``inv_psi`` and ``log_psi`` the inverse and log noise variances.

    Returns
    -------
    o, xc : ndarray of shape (n_rows, n_features)
        The observed mask as floats, and the centred rows with zero where unobserved.
    chol : ndarray of shape (n_rows, q, q)
        Cholesky factor of each row's ``I + W_o' Psi_o^-1 W_o``.
    Ez : ndarray of shape (n_rows, q)
    logpdf : ndarray of shape (n_rows,)
        Log-density of each row's observed entries.
    """
    q = loadings.shape[1]
    o = obs.astype(np.float64)
    xc = np.where(obs, x - mean, 0.0)
    Mo = np.eye(q)[None] + ((o * inv_psi) @ WW).reshape(-1, q, q)
    t = (xc * inv_psi) @ loadings
    chol = np.linalg.cholesky(Mo)
    Ez = _chol_solve(chol, t)
    logdet = 2.0 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)
    quad = np.einsum("ij,ij->i", xc * inv_psi, xc) - np.einsum("ij,ij->i", t, Ez)
    logpdf = -0.5 * (o.sum(axis=1) * _LOG_2PI + o @ log_psi + logdet + quad)
    return o, xc, chol, Ez, logpdf


def _chol_solve(chol: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve ``(L L') x = b`` for a batch of lower Cholesky factors and vectors."""
    y = np.linalg.solve(chol, b[:, :, None])
    return np.linalg.solve(np.swapaxes(chol, 1, 2), y)[:, :, 0]


def _chol_inv(chol: np.ndarray) -> np.ndarray:
    inv = np.linalg.inv(chol)
    return np.swapaxes(inv, 1, 2) @ inv
