"""``partial_fit`` for every estimator: stepwise EM (:mod:`dask_em.online`) behind three small hooks."""

from __future__ import annotations

from typing import Any

from ..data import Blocks
from ..engine import prepare_blocks
from ..errors import InvalidDataError
from ..executor import where
from ..online import DEFAULT_ALPHA, OnlineEM, check_alpha
from ._base import run_rngs, validate_in_memory


class PartialFitMixin:
    """Online EM on a stream of batches, one pass over each batch per call.

    A subclass supplies:

    - ``_online_start(blocks, rng, client) -> (model, params)``: the model
      and its initial parameters from the first batch (the estimator's
      usual initialisation, run on that batch only);
    - ``_online_set(state)``: the fitted attributes from an
      :class:`~dask_em.online.OnlineEM` state;
    - ``_online_attr``: a fitted attribute ``_online_set`` always assigns
      anew; when ``fit`` has replaced it since, the next ``partial_fit``
      starts a new stream;

    and may override ``_online_blocks(X, extra, client, first)`` (sequences).
    """

    _online_attr: str

    def _online_blocks(self, X: Any, extra: Any, client: Any, first: bool) -> Blocks:
        # scikit-learn's checks of in-memory input; a later batch must have the first one's features
        X = validate_in_memory(self, X, reset=first, ensure_all_finite=False)
        blocks = prepare_blocks(X, client)
        width = int(blocks.array.shape[1])
        if not first and width != getattr(self, "n_features_in_", width):
            raise InvalidDataError(
                f"X has {width} features, but {type(self).__name__} is expecting {self.n_features_in_} "
                "features as input (those of the first partial_fit batch)"
            )
        return blocks

    def _online_start(self, blocks: Blocks, rng: Any, client: Any) -> tuple[Any, Any]:
        raise NotImplementedError

    def _online_set(self, state: OnlineEM) -> None:
        raise NotImplementedError

    def _partial_fit(self, X: Any, extra: Any, client: Any, alpha: float | None) -> Any:
        state: OnlineEM | None = getattr(self, "_online_state", None)
        owner = getattr(self, "_online_owner", None)
        if state is not None and getattr(self, self._online_attr, None) is not owner:
            state = None  # refitted by ``fit`` since: a new stream
        if state is not None and alpha is not None and check_alpha(alpha) != state.alpha:
            raise ValueError(
                f"alpha={alpha!r} differs from the alpha={state.alpha!r} this stream started with; "
                "the step sizes are fixed for a stream. Call fit, or a new estimator, to start another"
            )
        with where(client, data=X, verbose=bool(getattr(self, "verbose", False))) as active:
            blocks = self._online_blocks(X, extra, active, state is None)
            if state is None:
                rng = run_rngs(getattr(self, "random_state", None), 1)[0]
                model, params = self._online_start(blocks, rng, active)
                state = OnlineEM(model, params, check_alpha(DEFAULT_ALPHA if alpha is None else alpha))
            state = state.partial_fit(blocks, active, int(getattr(self, "split_every", 8)))
        self._online_state = state
        self._online_set(state)
        self.n_iter_ = state.n_updates
        self._online_owner = getattr(self, self._online_attr)
        return self

    def partial_fit(self, X: Any, y: Any = None, *, client: Any = None, alpha: float | None = None) -> Any:
        """Update the fit with one batch of rows by stepwise (online) EM.

        The first call initialises on its batch as ``fit`` would on the
        whole data; every call then reads its batch once (one E-step under
        the current parameters), folds the batch's statistics into running
        statistics with step ``(t + 2) ** -alpha`` and takes the M-step
        from them (Cappé & Moulines 2009; see :mod:`dask_em.online`).
        ``fit`` starts a new stream.

        Parameters
        ----------
        X : array-like, dask array, zarr array or path, of shape (n_samples, n_features)
            One batch.
        y : ignored
        client : distributed.Client, optional
            Where to run.
        alpha : float, optional
            Step-size exponent in (0.5, 1], fixed by the first call of a
            stream (default 0.6).

        Returns
        -------
        self
            ``n_iter_`` counts the batches absorbed; ``lower_bound_`` (where
            the estimator has one) is the running average of the batches'
            mean log-likelihood, each under the parameters it met.
        """
        return self._partial_fit(X, None, client, alpha)
