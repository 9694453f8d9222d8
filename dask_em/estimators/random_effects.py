"""``RandomEffects``: the linear mixed model by EM on grouped data, ML or REML."""

from __future__ import annotations

from typing import Any

import dask
import numpy as np

from ..engine import expected_stats
from ..data.groups import GroupedBlocks, grouped_blocks
from ..models.random_effects import RandomEffectsModel, RandomEffectsParams, blup_frame
from ._base import Checkpointing, EMEstimator, store_params


class RandomEffects(EMEstimator):
    """Linear mixed model ``y = X b + Z u + e`` fitted by EM (Laird & Ware 1982).

    Each group ``i`` has random effects ``u_i ~ N(0, G)`` and residuals
    ``e_i ~ N(0, s^2 I)``. EM works on the complete-data statistics with the
    fixed effects at their GLS value (Laird, Lange & Stram 1987); each
    iteration is one pass over the data, with whole groups partitioned
    across the workers. The attribute names follow statsmodels'
    ``MixedLMResults``.

    EM is monotone but converges linearly, slowly when the random effects
    are poorly determined by their groups (few rows per group, small ``G``
    relative to ``s^2``); no acceleration is applied, so every iteration is
    a plain EM step and the log-likelihood never decreases.

    Parameters
    ----------
    method : {"reml", "ml"}, default="reml"
        Restricted or plain maximum likelihood.
    max_iter : int, default=1000
        Maximum number of EM iterations.
    tol : float, default=1e-9
        Stop when the (restricted) log-likelihood per observation changes by
        less than this.
    $em_options

    Attributes
    ----------
    fe_params_ : ndarray of shape (n_fixed,)
        Fixed effects ``b``: GLS at the final variance components.
    bse_fe_ : ndarray of shape (n_fixed,)
        Standard errors of ``fe_params_``, ``sqrt(diag((sum X' V^-1 X)^-1))``.
    cov_re_ : ndarray of shape (n_random, n_random)
        ``G``.
    scale_ : float
        ``s^2``.
    llf_ : float
        Log-likelihood (ML) or restricted log-likelihood (REML) at the
        fitted parameters.
    random_effects_ : pandas.DataFrame or dask.dataframe.DataFrame
        Posterior means of each group's random effects (the BLUPs), one row
        per group, indexed by group id; lazy for Dask or Zarr input.
    lower_bounds_ : list of float
        (Restricted) log-likelihood per observation at each iteration.
    lower_bound_ : float
    $n_passes_
    n_iter_ : int
    converged_ : bool
    n_groups_ : int or None
    n_features_in_ : int
        Number of fixed-effect columns.
    """

    def __init__(
        self, method: str = "reml", *, max_iter: int = 1000, tol: float = 1e-9, accelerate: str | None = None,
        verbose: bool = False,
    ) -> None:
        store_params(self, locals())

    def _model(self) -> RandomEffectsModel:
        return RandomEffectsModel(method=str(self.method).lower())

    def fit(self, X: Any, y: Any = None, groups: Any = None, Z: Any = None, *, client: Any = None,
            n_partitions: int | None = None, checkpoint: str | None = None, checkpoint_every: int = 1,
            resume: bool | None = None, force: bool = False) -> RandomEffects:
        """Fit the mixed model.

        Parameters
        ----------
        X : array-like, dask array, zarr array, DataFrame or str
            Fixed-effect design of shape (n_samples, n_fixed) (include a
            column of ones for an intercept); or a pandas/Dask DataFrame,
            then ``y`` and ``groups`` are column names, ``Z`` a list of
            column names and the other columns the fixed effects; or a Zarr
            group path with arrays ``X``, ``y``, ``groups`` and optionally ``Z``.
        y : array-like of shape (n_samples,) or str
            Response.
        groups : array-like of shape (n_samples,) or str
            Group id of each row. Rows of a group need not be adjacent.
        Z : array-like of shape (n_samples, n_random), list of str, or None
            Random-effect design; None is a random intercept.
        client : distributed.Client, optional
            Where to run (see :func:`dask_em.executor.where`); by default this process.
        n_partitions : int, optional
            Number of blocks of whole groups (default: about 16 MiB each,
            at least two per worker).
        checkpoint, checkpoint_every, resume, force
            The fit's snapshots (:class:`~dask_em.estimators._base.Checkpointing`).

        Returns
        -------
        self
        """
        if isinstance(X, str) and y is None and groups is None:
            pass  # a Zarr group holding X, y, groups
        elif y is None or groups is None:
            raise ValueError("RandomEffects.fit needs y and groups (arrays, or column names of a DataFrame)")
        return self._fit(X, client=client, checkpointing=Checkpointing(checkpoint, checkpoint_every, resume, force),
                         y=y, groups=groups, Z=Z, n_partitions=n_partitions)

    # -- the fit loop's hooks (EMEstimator._fit) --------------------------------
    _input_checks = None  # grouped_blocks checks the columns

    def _fit_data(self, X: Any, model: RandomEffectsModel, client: Any, **inputs: Any) -> tuple[Any, RandomEffectsModel]:
        return grouped_blocks(X, client=client, **inputs), model

    def _initial_params(self, model: RandomEffectsModel, blocks: Any, rng: np.random.Generator, client: Any) -> Any:
        first = blocks.compute(blocks.parts[0])[0]
        return model.init_params(first, np.random.default_rng(0))

    def _score_run(self, result: Any, model: RandomEffectsModel, data: Any, client: Any) -> float:
        # The fixed effects, their covariance and the log-likelihood at the
        # final variance components: one more pass; then the BLUPs.
        final = expected_stats(model, data, result.params, client)
        params = RandomEffectsParams(np.asarray(final["fe_gls"]), result.params.cov_re, result.params.scale)
        result.extra.update(final=final, params=params, random_effects=_random_effects(data, params, client))
        return float(result.lower_bound)

    def _set_fitted(self, result: Any, model: RandomEffectsModel, blocks: Any) -> None:
        final, params = result.extra["final"], result.extra["params"]
        self.random_effects_ = result.extra["random_effects"]
        self.fe_params_ = np.asarray(params.fe_params)
        self.bse_fe_ = np.sqrt(np.diag(np.asarray(final["fe_cov"])))
        self.cov_re_ = np.asarray(params.cov_re)
        self.scale_ = float(params.scale)
        self.llf_ = float(final["loglik"])
        self.n_groups_ = int(final["n_groups"])
        self.n_samples_ = int(final["n"])
        self.n_features_in_ = blocks.n_fixed
        self.fixed_names_ = list(blocks.fixed_names)
        self.random_names_ = list(blocks.random_names)

    def predict(self, X: Any) -> Any:
        """Marginal predictions ``X b`` (no random effects)."""
        self._check_fitted("fe_params_")
        return X @ self.fe_params_


def _random_effects(blocks: GroupedBlocks, params: RandomEffectsParams, client: Any) -> Any:
    """BLUPs per group: pandas for in-memory input, a lazy Dask DataFrame otherwise."""
    import pandas as pd

    columns = list(blocks.random_names)
    if not blocks.lazy:
        frames = blocks.compute(*[dask.delayed(blup_frame)(p, params, columns) for p in blocks.parts])
        return pd.concat(frames) if frames else pd.DataFrame(columns=columns)
    import dask.dataframe as dd

    params_d = dask.delayed(params, traverse=False)
    meta = pd.DataFrame(
        {c: np.zeros(0) for c in columns}, index=pd.Index(np.zeros(0, blocks.label_dtype or np.int64), name="group")
    )
    return dd.from_delayed([dask.delayed(blup_frame)(p, params_d, columns) for p in blocks.source_parts], meta=meta)
