"""Hidden Markov models with hmmlearn's vocabulary, fitted by Baum-Welch on Dask.

Sequences are partitioned across workers (whole sequences per partition,
balanced by total length); every EM iteration is one pass over them.

Initialisation and restarts
---------------------------
EM for HMMs has local optima. By default (``n_init=4``) the estimators draw
``n_init`` initial parameter sets and run ``n_init_iter`` short EM
iterations on all of them *in the same passes over the data* (one stacked
E-step per partition evaluates every set), then continue the set with the
highest log-likelihood to convergence. Parameters given through
``*_init`` are the same in every set; when every parameter is given there
is a single run.

Per-parameter initialisation: Gaussian means by k-means (the library's
out-of-core k-means for the first set, k-means++ plus Lloyd on a sample for
the others), covariances from the sample covariance plus ``min_covar``
(as hmmlearn), symbol probabilities from the data frequencies of a sample
with random multiplicative noise, Poisson rates drawn from a gamma
distribution matching the sample mean and variance (as hmmlearn), start
probabilities uniform-Dirichlet and transition rows a mix of the identity
and a uniform-Dirichlet draw.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import dask
import numpy as np

from ..executor import where
from ..engine import fit_em
from ..errors import InvalidDataError
from ..models.hmm import (
    CategoricalHMMModel,
    CategoricalHMMParams,
    GaussianHMMModel,
    GaussianHMMParams,
    PoissonHMMModel,
    PoissonHMMParams,
)
from ..models.hmm_segments import SegmentedHMM, SegmentedStackedHMM
from ..data.sequences import SequenceBlocks, _as_2d, _is_bag, check_lengths, sequence_blocks
from ._base import EMEstimator, run_rngs, shared_restarts
from ._online import PartialFitMixin

#: Steps read to initialise the parameters.
INIT_SAMPLE = 20_000
#: hmmlearn's forward-backward variants; both name the same scaled recursion here.
IMPLEMENTATIONS = ("log", "scaling")

_log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# Per-partition functions (run on the workers)
# ---------------------------------------------------------------------------


def _part_posteriors(part: Any, model: Any, params: Any) -> np.ndarray:
    return model.posteriors(part, params)[0]


def _part_score(part: Any, model: Any, params: Any) -> float:
    return model.log_likelihood(part, params)


def _part_viterbi(part: Any, model: Any, params: Any) -> tuple[float, np.ndarray]:
    return model.decode(part, params)


def _part_viterbi_states(part: Any, model: Any, params: Any) -> np.ndarray:
    return model.decode(part, params)[1]


def _part_viterbi_logp(part: Any, model: Any, params: Any) -> float:
    return model.decode(part, params)[0]


def _seq_block(seq: Any) -> tuple[np.ndarray, np.ndarray]:
    values = _as_2d(seq)
    return values, np.array([len(values)], dtype=np.int64)


def _seq_predict(seq: Any, model: Any, params: Any) -> np.ndarray:
    return model.decode(_seq_block(seq), params)[1]


def _seq_predict_proba(seq: Any, model: Any, params: Any) -> np.ndarray:
    return model.posteriors(_seq_block(seq), params)[0]


def _seq_score(seq: Any, model: Any, params: Any) -> float:
    return model.log_likelihood(_seq_block(seq), params)


def _engine_model(model: Any, blocks: SequenceBlocks) -> Any:
    """The model the engine fits: segmented (two passes an iteration) when long sequences were cut."""
    return model if blocks.segments is None else SegmentedHMM(model, blocks.segments)


def _segmented(model: Any, params: Any, blocks: SequenceBlocks, what: str) -> tuple[Any, Any]:
    """``(model, params)`` for per-block inference; with segments, after the pass that gives their messages.

    ``what`` is "proba" (posteriors and scores) or "decode" (Viterbi). The
    pass runs now, on the current Dask client if there is one.
    """
    if blocks.segments is None:
        return model, params
    from ..cluster import _current_client
    from ..engine import expected_stats

    seg = SegmentedHMM(model, blocks.segments)
    client = _current_client()

    def run_pass(pass_model: Any, pass_params: Any) -> Any:
        return expected_stats(pass_model, blocks, pass_params, client)

    prepare = seg.prepare_decode if what == "decode" else seg.prepare_e_step
    return seg, prepare(params, run_pass)


# ---------------------------------------------------------------------------
# Initialisation helpers
# ---------------------------------------------------------------------------


def _normalize_rows(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a / a.sum(axis=-1, keepdims=True)


def _kmeans_sample(X: np.ndarray, k: int, rng: np.random.Generator, n_iter: int = 20) -> np.ndarray:
    """k-means++ seeding and a few Lloyd iterations on an in-memory sample."""
    X = np.asarray(X, dtype=np.float64)
    if len(X) < k:
        raise InvalidDataError(f"n_samples={len(X)} should be >= n_components={k}; decrease n_components")
    centers = np.empty((k, X.shape[1]))
    centers[0] = X[rng.integers(len(X))]
    d2 = ((X - centers[0]) ** 2).sum(axis=1)
    for i in range(1, k):
        total = d2.sum()
        j = rng.choice(len(X), p=d2 / total) if total > 0 else rng.integers(len(X))
        centers[i] = X[j]
        d2 = np.minimum(d2, ((X - centers[i]) ** 2).sum(axis=1))
    for _ in range(n_iter):
        dist = ((X[:, None, :] - centers[None]) ** 2).sum(axis=2)
        label = dist.argmin(axis=1)
        new = centers.copy()
        for c in range(k):
            members = X[label == c]
            if len(members):
                new[c] = members.mean(axis=0)
        if np.allclose(new, centers):
            break
        centers = new
    return centers


def _to_json(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    return value


# ---------------------------------------------------------------------------
# The shared estimator
# ---------------------------------------------------------------------------


class _BaseHMM(PartialFitMixin, EMEstimator):
    """What the three HMM estimators share (see the module docstring)."""

    _all_params: tuple[str, ...] = ("startprob", "transmat")
    #: hmmlearn's one-letter codes of the parameters (``params="stmc"``).
    _letters: dict[str, str] = {"s": "startprob", "t": "transmat"}
    #: The fitted attribute that gives ``n_features``.
    _emission_attribute: str = ""
    _values_dtype: Any = np.float64

    # -- hooks ---------------------------------------------------------------
    def _after_load(self) -> None:
        """Restore ``n_features`` (not a fitted attribute) from the emission parameters.

        Also used for parameters set by hand (hmmlearn's tutorial pattern:
        set ``startprob_``, ``transmat_`` and the emission parameters, then
        ``sample``, ``score`` or ``decode`` without ``fit``).
        """
        name = self._emission_attribute
        value = getattr(self, name, None)
        if value is None or getattr(self, "n_features", None) is not None:
            return
        shape = np.shape(value)
        if len(shape) != 2:
            raise ValueError(f"{name} must have shape (n_components, n_features), got shape {shape}")
        self.n_features = int(shape[1])

    def _make_model(self, n_features: int) -> Any:
        raise NotImplementedError

    def _emission_init(self, model: Any, sample: np.ndarray, rng: np.random.Generator, blocks: SequenceBlocks, client: Any, run: int, given: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _given_emission(self) -> dict[str, Any]:
        raise NotImplementedError

    def _set_emission_attributes(self, params: Any, model: Any) -> None:
        raise NotImplementedError

    def _current_emission(self, model: Any) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _n_features_of(self, blocks: SequenceBlocks) -> int:
        return blocks.n_features

    # -- parameters ----------------------------------------------------------
    def _check_params(self) -> None:  # noqa: D102 (see EMEstimator._check_params)
        super()._check_params()
        self._names(self.init_params, "init_params")
        n_features = getattr(self, "n_features", None)
        self._make_model(int(n_features) if isinstance(n_features, int) and n_features > 0 else 1)

    def _names(self, value: Any, what: str) -> tuple[str, ...]:
        """Parameter names from full names or hmmlearn's letter string (``"stmc"``, ``""``)."""
        if value is None:
            return self._all_params
        if isinstance(value, str):
            if value in self._all_params:
                value = (value,)
            elif set(value) <= set(self._letters):
                value = tuple(name for code, name in self._letters.items() if code in value)
            else:
                raise ValueError(
                    f"unknown {what} {value!r}; {type(self).__name__} has parameters {list(self._all_params)} "
                    f"(full names, or hmmlearn's letters {''.join(self._letters)!r})"
                )
        names = tuple(value)
        unknown = sorted(set(names) - set(self._all_params))
        if unknown:
            raise ValueError(
                f"unknown {what} {unknown}; {type(self).__name__} has parameters {list(self._all_params)} "
                f"(full names, or hmmlearn's letters {''.join(self._letters)!r})"
            )
        return names

    def _check_implementation(self) -> None:
        if self.implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {self.implementation!r}")

    @property
    def _max_iter(self) -> int:
        return int(self.n_iter) if getattr(self, "n_iter", None) is not None else int(self.max_iter)

    def checkpoint_meta(self) -> dict[str, Any]:
        meta = super().checkpoint_meta()
        meta["config"] = {k: _to_json(v) for k, v in meta["config"].items() if k != "random_state" or not hasattr(v, "bit_generator")}
        return meta

    def _given(self) -> dict[str, Any]:
        """User-given initial values, from ``*_init`` or (when not in init_params) the attribute.

        As in hmmlearn, a parameter in ``init_params`` overwrites its
        attribute (with a logged warning), and one neither in
        ``init_params`` nor set is initialised all the same.
        """
        init_names = self._names(self.init_params, "init_params")
        given = {"startprob": self.startprob_init, "transmat": self.transmat_init}
        given.update(self._given_emission())
        for name in self._all_params:
            attr = getattr(self, f"{name}_", None)
            if given.get(name) is not None or attr is None:
                continue
            if name in init_names:
                _log.warning(
                    "Even though the '%s_' attribute is set, it will be overwritten during initialization "
                    "because 'init_params' contains %r", name, name,
                )
            else:
                given[name] = attr
        return {k: np.asarray(v, dtype=np.float64) for k, v in given.items() if v is not None}

    def _candidate(self, model: Any, given: dict[str, np.ndarray], sample: np.ndarray, rng: np.random.Generator, blocks: SequenceBlocks, client: Any, run: int) -> Any:
        K = self.n_components
        values: dict[str, np.ndarray] = {}
        values["startprob"] = given["startprob"] if "startprob" in given else rng.dirichlet(np.ones(K))
        if "transmat" in given:
            values["transmat"] = given["transmat"]
        else:
            values["transmat"] = 0.5 * np.eye(K) + 0.5 * rng.dirichlet(np.ones(K), size=K)
        emission = self._emission_init(model, sample, rng, blocks, client, run, given) if run >= 0 else {}
        for name, value in emission.items():
            values[name] = given.get(name, value)
        for name in self._all_params:
            if name in given:
                values[name] = given[name]
        return self._params_cls(**{f.name: np.asarray(values[f.name], dtype=np.float64) for f in dataclasses.fields(self._params_cls)})

    def _check_given(self, model: Any, given: dict[str, np.ndarray], n_features: int) -> None:
        K = self.n_components
        if "startprob" in given and (given["startprob"].shape != (K,) or not np.isclose(given["startprob"].sum(), 1)):
            raise ValueError(f"startprob_init must have shape ({K},) and sum to 1, got shape {given['startprob'].shape}")
        if "transmat" in given and (
            given["transmat"].shape != (K, K) or not np.allclose(given["transmat"].sum(axis=1), 1)
        ):
            raise ValueError(f"transmat_init must have shape ({K}, {K}) with rows summing to 1")

    def _initial_params(self, model: Any, blocks: SequenceBlocks, client: Any, given: dict[str, np.ndarray], max_iter: int) -> Any:
        needs_random = any(name not in given for name in self._all_params)
        n_runs = max(1, int(self.n_init)) if needs_random else 1
        rngs = run_rngs(self.random_state, n_runs)
        sample = blocks.sample(INIT_SAMPLE, rngs[0]) if needs_random else np.empty((0, blocks.n_features))
        candidates = [self._candidate(model, given, sample, rngs[r], blocks, client, r) for r in range(n_runs)]
        self.init_logliks_ = None
        # max_iter=0 initialises only (hmmlearn's n_iter=0): no EM, not even the restarts'
        if n_runs == 1 or self.n_init_iter <= 0 or max_iter == 0:
            return candidates[0]
        stacked = None if blocks.segments is None else SegmentedStackedHMM(_engine_model(model, blocks))
        best, self.init_logliks_ = shared_restarts(
            model, blocks, candidates, n_iter=int(self.n_init_iter), client=client, split_every=self.split_every,
            verbose=bool(self.verbose), stacked=stacked,
        )
        return best

    def _check_hyperparameters(self) -> None:
        """Refuse numbers no fit can use, naming them (as the mixtures do)."""
        for name, minimum in (("n_components", 1), ("n_init", 1), ("max_iter", 0)):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        tol = self.tol
        if not (isinstance(tol, (int, float, np.floating)) and not isinstance(tol, bool) and tol >= 0):
            raise ValueError(f"tol must be a non-negative number, got {tol!r}")

    # -- fit -----------------------------------------------------------------
    def fit(
        self,
        X: Any,
        lengths: Any = None,
        *,
        client: Any = None,
        checkpoint: Any = None,
        checkpoint_every: int = 1,
        resume: bool | None = None,
        force: bool = False,
    ) -> _BaseHMM:
        """Estimate the parameters by Baum-Welch.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), list of arrays, dask bag, or str
            Concatenated sequences (with ``lengths``), a list of sequences,
            a Dask bag of sequences, or the path/URL of a Zarr sequence
            store (see :func:`dask_em.to_zarr_sequences`).
        lengths : array-like of int, optional
            Lengths of the sequences of a concatenated ``X``; their sum must
            be ``n_samples``. By default ``X`` is one sequence.
        client : distributed.Client, optional
            Where to run (see :func:`dask_em.executor.where`); by default this process.
        checkpoint : str, optional
            Zarr path or URL for snapshots; a fit resumes from it.
        checkpoint_every, resume, force
            See :func:`dask_em.fit_em`.

        Returns
        -------
        self
        """
        return self._fit(X, lengths, self._max_iter, client=client, checkpoint=checkpoint,
                         checkpoint_every=checkpoint_every, resume=resume, force=force)

    def _init(self, X: Any, lengths: Any = None) -> None:
        """Initialise the parameters from ``X`` as ``fit`` does, without EM (hmmlearn's name)."""
        self._fit(X, lengths, 0)

    def _fit(self, X: Any, lengths: Any, max_iter: int, *, client: Any = None, checkpoint: Any = None,
             checkpoint_every: int = 1, resume: bool | None = None, force: bool = False) -> _BaseHMM:
        self._check_hyperparameters()
        self._check_implementation()
        with where(client, data=X, verbose=self.verbose) as active:
            blocks = sequence_blocks(
                X, lengths, client=active, n_partitions=self.n_partitions, dtype=self._values_dtype,
                segment_length=getattr(self, "segment_length", None),
            )
            n_features = self._n_features_of(blocks)
            model = self._make_model(n_features)
            given = self._given()
            self._check_given(model, given, n_features)
            result = fit_em(
                _engine_model(model, blocks),
                blocks,
                lambda: self._initial_params(model, blocks, active, given, max_iter),
                max_iter=max_iter,
                tol=self.tol,
                tol_on="total",
                signed_change=True,
                split_every=self.split_every,
                client=active,
                verbose=self.verbose, accelerate=self.accelerate,
                checkpoint=checkpoint,
                checkpoint_every=checkpoint_every,
                resume=resume,
                force=force,
                checkpoint_meta=self.checkpoint_meta(),
            )
        params = result.params
        self.n_features = n_features
        self.startprob_ = np.asarray(params.startprob)
        self.transmat_ = np.asarray(params.transmat)
        self._set_emission_attributes(params, model)
        self.converged_ = bool(result.converged)
        self.n_iter_ = int(result.n_iter)
        self.history_ = list(result.history)
        self.lower_bound_ = float(result.lower_bound)
        return self

    # -- online EM (dask_em.online): a batch of sequences per call -------------
    _online_attr = "startprob_"

    def partial_fit(self, X: Any, lengths: Any = None, *, client: Any = None, alpha: float | None = None) -> _BaseHMM:  # type: ignore[override]
        """Update the fit with one batch of sequences by stepwise (online) EM.

        The first call initialises on its batch as ``fit`` does (restarts
        included); every call then runs one forward-backward pass over its
        sequences under the current parameters, folds the expected counts
        into running statistics with step ``(t + 2) ** -alpha`` and takes
        the M-step from them (Cappé & Moulines 2009; :mod:`dask_em.online`).
        ``fit`` starts a new stream.

        Parameters
        ----------
        X, lengths
            One batch of sequences, as for :meth:`fit`.
        client : distributed.Client, optional
        alpha : float, optional
            Step-size exponent in (0.5, 1], fixed by a stream's first call (default 0.6).

        Returns
        -------
        self
        """
        return self._partial_fit(X, lengths, client, alpha)

    def _online_blocks(self, X: Any, lengths: Any, client: Any, first: bool) -> SequenceBlocks:
        blocks = sequence_blocks(X, lengths, client=client, n_partitions=self.n_partitions, dtype=self._values_dtype)
        if not first and self._n_features_of(blocks) != self.n_features:
            raise InvalidDataError(
                f"X has {self._n_features_of(blocks)} features, but {type(self).__name__} was fitted with "
                f"{self.n_features} features (those of the first partial_fit batch)"
            )
        return blocks

    def _online_start(self, blocks: Any, rng: np.random.Generator, client: Any) -> tuple[Any, Any]:
        self._check_hyperparameters()
        n_features = self._n_features_of(blocks)
        model = self._make_model(n_features)
        given = self._given()
        self._check_given(model, given, n_features)
        return model, self._initial_params(model, blocks, client, given, self._max_iter)

    def _online_set(self, state: Any) -> None:
        params = state.params
        self.n_features = self._n_features_of_params(params)
        self.startprob_ = np.asarray(params.startprob)
        self.transmat_ = np.asarray(params.transmat)
        self._set_emission_attributes(params, state.model)
        self.converged_ = False
        self.lower_bound_ = state.loglik

    @staticmethod
    def _n_features_of_params(params: Any) -> int:
        for name in ("means", "emissionprob", "lambdas"):
            value = getattr(params, name, None)
            if value is not None:
                return int(np.shape(value)[1])
        raise AssertionError("unreachable")  # pragma: no cover

    # -- inference ----------------------------------------------------------
    def _model_and_params(self) -> tuple[Any, Any]:
        """The model and its parameters from the attributes, fitted or set by hand (checked)."""
        self._check_fitted("startprob_")
        self._check_fitted(self._emission_attribute)
        self._check_implementation()
        self._after_load()
        model = self._make_model(int(self.n_features))
        values = {"startprob": np.asarray(self.startprob_, float), "transmat": np.asarray(self.transmat_, float)}
        values.update(self._current_emission(model))
        self._check_given(model, values, int(self.n_features))
        return model, self._params_cls(**values)

    def _check(self) -> None:
        """Validate the parameters set on the estimator (hmmlearn's name); raise ValueError if invalid."""
        self._model_and_params()

    def _n_fit_scalars(self) -> int:
        """Number of free scalars of the parameters in ``params`` (hmmlearn's count)."""
        K = self.n_components
        counts = {"startprob": K - 1, "transmat": K * (K - 1)}
        counts.update(self._emission_scalars())
        return int(sum(counts[name] for name in self._names(self.params, "params")))

    def _emission_scalars(self) -> dict[str, int]:
        raise NotImplementedError

    def _n_steps(self, X: Any, lengths: Any) -> int:
        block = self._in_memory(X, lengths)
        return len(block[0]) if block is not None else int(self._lazy_blocks(X, lengths).n_samples)

    def aic(self, X: Any, lengths: Any = None) -> float:
        """Akaike information criterion of ``X``: ``-2 log L + 2 p`` (p: free scalars of ``params``)."""
        return -2 * self.score(X, lengths) + 2 * self._n_fit_scalars()

    def bic(self, X: Any, lengths: Any = None) -> float:
        """Bayesian information criterion of ``X``: ``-2 log L + p log(n_samples)``."""
        return -2 * self.score(X, lengths) + self._n_fit_scalars() * math.log(self._n_steps(X, lengths))

    def _in_memory(self, X: Any, lengths: Any) -> tuple[np.ndarray, np.ndarray] | None:
        """``(values, lengths)`` for in-memory input, None for lazy input."""
        import dask.array as da

        if _is_bag(X) or isinstance(X, (str, da.Array)) or hasattr(X, "__fspath__") or type(X).__module__.startswith("zarr"):
            return None
        if lengths is None and isinstance(X, (list, tuple)) and len(X) and isinstance(X[0], np.ndarray):
            arrays = [_as_2d(s) for s in X]
            values = np.concatenate(arrays, axis=0)
            lengths = np.array([len(a) for a in arrays])
        else:
            values = _as_2d(np.asarray(X))
            lengths = [len(values)] if lengths is None else lengths
        lengths = check_lengths(lengths, len(values))
        self._check_input(values)
        return values, lengths

    def _check_input(self, values: np.ndarray) -> None:
        if values.shape[1] != self.n_features:
            raise InvalidDataError(
                f"X has {values.shape[1]} features, but {type(self).__name__} was fitted with "
                f"{self.n_features} features"
            )

    def _lazy_blocks(self, X: Any, lengths: Any) -> SequenceBlocks:
        # lazy: nothing is read until the result is computed
        blocks = sequence_blocks(
            X, lengths, client=None, n_partitions=self.n_partitions, dtype=self._values_dtype, persist=False,
            segment_length=getattr(self, "segment_length", None),
        )
        if blocks.n_features != self.n_features:
            raise InvalidDataError(
                f"X has {blocks.n_features} features, but {type(self).__name__} was fitted with {self.n_features} features"
            )
        return blocks

    def _raise_invalid(self, model: Any, block: tuple[np.ndarray, np.ndarray], params: Any) -> None:
        _, n_bad = model.log_emission(block[0], params)
        if n_bad:
            raise InvalidDataError(model.describe_invalid(n_bad))

    def _lazy_rows(self, X: Any, lengths: Any, func: Any, n_columns: int | None, dtype: Any) -> Any:
        import dask.array as da
        import dask.bag as db

        model, params = self._model_and_params()
        if _is_bag(X):
            seq_func = {_part_posteriors: _seq_predict_proba, _part_viterbi_states: _seq_predict}[func]
            return X.map(seq_func, model, params) if isinstance(X, db.Bag) else X
        blocks = self._lazy_blocks(X, lengths)
        model, params = _segmented(model, params, blocks, "decode" if func is _part_viterbi_states else "proba")
        pieces = []
        for part, size in zip(blocks.map_parts(func, model, params), blocks.part_sizes):
            shape = (size,) if n_columns is None else (size, n_columns)
            pieces.append(da.from_delayed(part, shape=shape, dtype=dtype))
        return da.concatenate(pieces, axis=0)

    def score(self, X: Any, lengths: Any = None) -> float:
        """Log-likelihood of ``X`` under the model (computed on the cluster for lazy input)."""
        model, params = self._model_and_params()
        block = self._in_memory(X, lengths)
        if block is not None:
            self._raise_invalid(model, block, params)
            return model.log_likelihood(block, params)
        # lazy input is computed with the default scheduler (the current client if any)
        if _is_bag(X):
            return float(X.map(_seq_score, model, params).sum().compute())
        blocks = self._lazy_blocks(X, lengths)
        model, params = _segmented(model, params, blocks, "proba")
        return float(sum(dask.compute(*blocks.map_parts(_part_score, model, params))))

    def predict_proba(self, X: Any, lengths: Any = None) -> Any:
        """Posterior state probabilities, shape (n_samples, n_components); lazy for lazy input."""
        block = self._in_memory(X, lengths)
        if block is None:
            return self._lazy_rows(X, lengths, _part_posteriors, self.n_components, np.float64)
        model, params = self._model_and_params()
        self._raise_invalid(model, block, params)
        return model.posteriors(block, params)[0]

    def score_samples(self, X: Any, lengths: Any = None) -> tuple[float, Any]:
        """Log-likelihood of ``X`` and the posterior state probabilities."""
        block = self._in_memory(X, lengths)
        if block is None:
            return self.score(X, lengths), self.predict_proba(X, lengths)
        model, params = self._model_and_params()
        self._raise_invalid(model, block, params)
        gamma, stats = model.posteriors(block, params)
        return float(stats["loglik"]), gamma

    def decode(self, X: Any, lengths: Any = None, algorithm: str | None = None) -> tuple[Any, Any]:
        """Most likely states: Viterbi path (``"viterbi"``) or per-step posterior argmax (``"map"``).

        Returns
        -------
        log_prob : float
            Viterbi: log-probability of the best paths; MAP: log-likelihood
            of ``X``. A dask Delayed for lazy input.
        state_sequence : ndarray of shape (n_samples,)
            A lazy Dask array (or bag of arrays for a bag) for lazy input.
        """
        algorithm = algorithm or self.algorithm
        if algorithm not in ("viterbi", "map"):
            raise ValueError(f"algorithm must be 'viterbi' or 'map', got {algorithm!r}")
        block = self._in_memory(X, lengths)
        model, params = self._model_and_params()
        if block is not None:
            self._raise_invalid(model, block, params)
            if algorithm == "viterbi":
                return model.decode(block, params)
            gamma, stats = model.posteriors(block, params)
            return float(stats["loglik"]), gamma.argmax(axis=1)
        if algorithm == "map":
            proba = self.predict_proba(X, lengths)
            states = proba.map(lambda g: g.argmax(axis=1)) if _is_bag(X) else proba.argmax(axis=1)
            return dask.delayed(self.score)(X, lengths), states
        if _is_bag(X):
            logp = X.map(lambda s: model.decode(_seq_block(s), params)[0]).sum()
            return logp, X.map(_seq_predict, model, params)
        blocks = self._lazy_blocks(X, lengths)
        model, params = _segmented(model, params, blocks, "decode")
        logp = dask.delayed(sum)(blocks.map_parts(_part_viterbi_logp, model, params))
        return logp, self._lazy_rows(X, lengths, _part_viterbi_states, None, np.int64)

    def predict(self, X: Any, lengths: Any = None) -> Any:
        """Most likely state of every step (by ``algorithm``)."""
        return self.decode(X, lengths)[1]

    def sample(self, n_samples: int = 1, random_state: Any = None, currstate: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Draw one sequence of ``n_samples`` steps.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        state_sequence : ndarray of shape (n_samples,)
        """
        model, params = self._model_and_params()
        if random_state is None:
            random_state = self.random_state
        if isinstance(random_state, np.random.RandomState):
            # hmmlearn's tests pass a RandomState: draw this sample's seed from it
            random_state = int(random_state.randint(2**31))
        rng = random_state if isinstance(random_state, np.random.Generator) else np.random.default_rng(random_state)
        K = self.n_components
        states = np.empty(n_samples, dtype=np.int64)
        state = rng.choice(K, p=params.startprob) if currstate is None else int(currstate)
        cdf = np.cumsum(params.transmat, axis=1)
        u = rng.random(n_samples)
        for t in range(n_samples):
            if t > 0:
                state = min(int(np.searchsorted(cdf[state], u[t], side="right")), K - 1)
            states[t] = state
        return model.sample_emission(params, states, rng), states


def _common_doc() -> str:
    return """
    n_components : int, default=1
        Number of hidden states.
    startprob_prior, transmat_prior : float or array-like, default=1.0
        Dirichlet concentrations of the start probabilities and of each row
        of the transition matrix (1.0: no prior; ``prior - 1`` is added to
        the expected counts, as in hmmlearn).
    algorithm : {"viterbi", "map"}, default="viterbi"
        Decoder of ``decode``/``predict``.
    implementation : {"log", "scaling"}, default="log"
        Accepted for hmmlearn compatibility: both run the same scaled
        forward-backward, whose emission probabilities are shifted by their
        per-step maximum, so it neither underflows nor needs logarithms.
    max_iter : int, default=100
        Maximum number of EM iterations (``n_iter`` is accepted as an alias);
        0 initialises the parameters without any EM iteration.
    tol : float, default=1e-2
        Stop when the total log-likelihood gains less than this in an
        iteration. As in hmmlearn the change is signed: an iteration that
        lowers the log-likelihood also stops the fit, so fits from the same
        start stop at the same iteration as hmmlearn's.
    random_state : int, Generator or None
        Seed of the initialisation.
    params, init_params : tuple of str or str, optional
        Parameters updated by EM / initialised by ``fit`` (default: all),
        as full names such as ``("startprob", "transmat")`` or hmmlearn's
        letters (``"stmc"``, ``"ste"``, ``"stl"``, ``""``). A parameter
        not in ``init_params`` comes from its ``*_init`` or from the
        attribute already set (``startprob_`` ...), and is initialised
        when neither is set (as hmmlearn); an attribute that is set but
        in ``init_params`` is overwritten, with a logged warning.
    startprob_init, transmat_init : array-like, optional
        User-given initial values.
    n_init : int, default=4
        Number of initial parameter sets tried side by side.
    n_init_iter : int, default=5
        EM iterations run on every set before the best is continued.
    accelerate : {None, "squarem"}, default=None
        ``"squarem"`` extrapolates the EM iterations (SQUAREM, Varadhan &
        Roland 2008; see :mod:`dask_em.accelerate`): the same optimum in a
        fraction of the passes where plain EM is slow, never a lower
        log-likelihood at any recorded step. None runs plain EM, which
        matches the reference libraries iteration by iteration.
    verbose : bool, default=False
        Print a progress line per iteration.
    split_every : int, default=8
        Fan-in of the tree reduction of statistics.
    n_partitions : int, optional
        Number of sequence partitions (default: two per worker thread).
    n_iter : int, optional
        hmmlearn's name of ``max_iter``; overrides it when given.
    segment_length : int, optional
        A sequence with more steps than this is cut into segments fitted
        on different workers, with exact statistics (two passes over the
        data an iteration; see :mod:`dask_em.models.hmm_segments`). By
        default sequences of more than about 32 MiB are cut; 0 never cuts.
    """


class GaussianHMM(_BaseHMM):
    """Hidden Markov model with Gaussian emissions.

    Parameters
    ----------
    covariance_type : {"diag", "spherical", "full", "tied"}, default="diag"
        Form of the state covariances.
    min_covar : float, default=1e-3
        Added to the diagonal of the initial covariances (as hmmlearn).
    means_prior, means_weight, covars_prior, covars_weight : float or array-like
        hmmlearn's priors (defaults 0, 0, 1e-2, 1).
    means_init, covars_init : array-like, optional
        Initial means (n_components, n_features) and covariances in the
        shape of ``covariance_type`` (see ``covars_``).
    (see the module docstring for the others)

    Attributes
    ----------
    startprob_ : ndarray of shape (n_components,)
    transmat_ : ndarray of shape (n_components, n_components)
    means_ : ndarray of shape (n_components, n_features)
    covars_ : ndarray of shape (n_components, n_features, n_features)
        Full matrices whatever ``covariance_type``, as hmmlearn returns them.
    converged_, n_iter_, history_, lower_bound_
        Convergence information (total log-likelihoods).
    """

    _all_params = ("startprob", "transmat", "means", "covars")
    _letters = {"s": "startprob", "t": "transmat", "m": "means", "c": "covars"}
    _emission_attribute = "means_"
    _params_cls = GaussianHMMParams
    _values_dtype = np.float64

    def __init__(
        self,
        n_components: int = 1,
        covariance_type: str = "diag",
        min_covar: float = 1e-3,
        startprob_prior: Any = 1.0,
        transmat_prior: Any = 1.0,
        means_prior: Any = 0.0,
        means_weight: Any = 0.0,
        covars_prior: Any = 1e-2,
        covars_weight: Any = 1.0,
        algorithm: str = "viterbi",
        implementation: str = "log",
        random_state: Any = None,
        max_iter: int = 100,
        tol: float = 1e-2,
        verbose: bool = False,
        params: Any = None,
        init_params: Any = None,
        startprob_init: Any = None,
        transmat_init: Any = None,
        means_init: Any = None,
        covars_init: Any = None,
        n_init: int = 4,
        n_init_iter: int = 5,
        split_every: int = 8,
        n_partitions: int | None = None,
        n_iter: int | None = None,
        accelerate: str | None = None,
        segment_length: int | None = None,
    ) -> None:
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.min_covar = min_covar
        self.startprob_prior = startprob_prior
        self.transmat_prior = transmat_prior
        self.means_prior = means_prior
        self.means_weight = means_weight
        self.covars_prior = covars_prior
        self.covars_weight = covars_weight
        self.algorithm = algorithm
        self.implementation = implementation
        self.random_state = random_state
        self.max_iter = max_iter
        self.tol = tol
        self.verbose = verbose
        self.accelerate = accelerate
        self.params = params
        self.init_params = init_params
        self.startprob_init = startprob_init
        self.transmat_init = transmat_init
        self.means_init = means_init
        self.covars_init = covars_init
        self.n_init = n_init
        self.n_init_iter = n_init_iter
        self.split_every = split_every
        self.n_partitions = n_partitions
        self.n_iter = n_iter
        self.segment_length = segment_length

    def _make_model(self, n_features: int) -> GaussianHMMModel:
        from ..models.hmm import _prior

        return GaussianHMMModel(
            n_components=int(self.n_components),
            startprob_prior=_prior(self.startprob_prior),
            transmat_prior=_prior(self.transmat_prior),
            params=self._names(self.params, "params"),
            covariance_type=self.covariance_type,
            means_prior=_prior(self.means_prior),
            means_weight=_prior(self.means_weight),
            covars_prior=_prior(self.covars_prior),
            covars_weight=_prior(self.covars_weight),
        )

    def _given_emission(self) -> dict[str, Any]:
        return {"means": self.means_init, "covars": self.covars_init}

    def _check_given(self, model: Any, given: dict[str, np.ndarray], n_features: int) -> None:
        super()._check_given(model, given, n_features)
        K, D = self.n_components, n_features
        if "means" in given and given["means"].shape != (K, D):
            raise InvalidDataError(
                f"X has {D} features but means_init has shape {given['means'].shape}; expected ({K}, {D})"
            )
        if "covars" in given:
            given["covars"] = self._compact_covars(given["covars"], D)

    def _compact_covars(self, covars: np.ndarray, D: int) -> np.ndarray:
        """Covariances in the compact shape of ``covariance_type`` (accepts the full form)."""
        K, ct = self.n_components, self.covariance_type
        covars = np.asarray(covars, dtype=np.float64)
        compact = {"spherical": (K,), "diag": (K, D), "full": (K, D, D), "tied": (D, D)}[ct]
        if covars.shape == compact:
            return covars
        if ct == "spherical" and covars.size == K:
            # hmmlearn accepts one variance per state in any shape, e.g. (K, 1) or (K, 1, 1)
            return covars.reshape(K)
        if covars.shape == (K, D, D):
            if ct == "diag":
                return np.array([np.diag(c) for c in covars])
            if ct == "spherical":
                return covars[:, 0, 0].copy()
            if ct == "tied":
                return covars[0].copy()
        raise InvalidDataError(
            f"covariances of shape {covars.shape} do not fit covariance_type={ct!r} with "
            f"{K} components and {D} features; expected {compact}"
        )

    def _emission_init(self, model: Any, sample: np.ndarray, rng: np.random.Generator, blocks: SequenceBlocks, client: Any, run: int, given: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        K = self.n_components
        X = np.asarray(sample, dtype=np.float64)
        # Rows with NaN or inf are left out of the initial values; the first
        # pass counts them and raises the HMM's own message (not k-means').
        X = X[np.isfinite(X).all(axis=1)]
        out: dict[str, np.ndarray] = {}
        if "means" not in given:
            means = None
            if run == 0:
                try:
                    from .kmeans import kmeans_centers

                    means = kmeans_centers(
                        blocks.values_blocks(), K, init="k-means++", max_iter=20, rng=rng, client=client,
                        split_every=self.split_every,
                    )
                except (ImportError, InvalidDataError):  # k-means unavailable, or NaN in the data
                    means = None
            out["means"] = means if means is not None else _kmeans_sample(X, K, rng)
        if "covars" not in given:
            D = X.shape[1]
            cv = np.atleast_2d(np.cov(X.T)) + self.min_covar * np.eye(D)
            ct = self.covariance_type
            out["covars"] = {
                "spherical": np.full(K, cv.diagonal().mean()),
                "diag": np.tile(cv.diagonal(), (K, 1)),
                "full": np.tile(cv, (K, 1, 1)),
                "tied": cv,
            }[ct]
        return out

    def _emission_scalars(self) -> dict[str, int]:
        K, D = self.n_components, int(self.n_features)
        covars = {"spherical": K, "diag": K * D, "full": K * D * (D + 1) // 2, "tied": D * (D + 1) // 2}
        return {"means": K * D, "covars": covars[self.covariance_type]}

    def _set_emission_attributes(self, params: GaussianHMMParams, model: GaussianHMMModel) -> None:
        self.means_ = np.asarray(params.means)
        self.covars_ = model.full_covars(params.covars, self.means_.shape[1])

    def _current_emission(self, model: GaussianHMMModel) -> dict[str, np.ndarray]:
        means = np.asarray(self.means_, float)
        return {"means": means, "covars": self._compact_covars(self.covars_, means.shape[1])}


class CategoricalHMM(_BaseHMM):
    """Hidden Markov model with categorical emissions (symbols ``0 .. n_features - 1``).

    ``X`` holds one column of integer symbols (shape (n_samples, 1) or
    (n_samples,)).

    Parameters
    ----------
    n_features : int, optional
        Number of symbols; inferred from ``emissionprob_init`` or the data.
    emissionprob_prior : float or array-like, default=1.0
        Dirichlet concentration of each row of ``emissionprob_``.
    emissionprob_init : array-like of shape (n_components, n_features), optional
    (see the module docstring for the others)

    Attributes
    ----------
    startprob_, transmat_
    emissionprob_ : ndarray of shape (n_components, n_features)
    converged_, n_iter_, history_, lower_bound_
    """

    _all_params = ("startprob", "transmat", "emissionprob")
    _letters = {"s": "startprob", "t": "transmat", "e": "emissionprob"}
    _emission_attribute = "emissionprob_"
    _params_cls = CategoricalHMMParams
    _values_dtype = None

    def __init__(
        self,
        n_components: int = 1,
        startprob_prior: Any = 1.0,
        transmat_prior: Any = 1.0,
        emissionprob_prior: Any = 1.0,
        n_features: int | None = None,
        algorithm: str = "viterbi",
        implementation: str = "log",
        random_state: Any = None,
        max_iter: int = 100,
        tol: float = 1e-2,
        verbose: bool = False,
        params: Any = None,
        init_params: Any = None,
        startprob_init: Any = None,
        transmat_init: Any = None,
        emissionprob_init: Any = None,
        n_init: int = 4,
        n_init_iter: int = 5,
        split_every: int = 8,
        n_partitions: int | None = None,
        n_iter: int | None = None,
        accelerate: str | None = None,
        segment_length: int | None = None,
    ) -> None:
        self.n_components = n_components
        self.startprob_prior = startprob_prior
        self.transmat_prior = transmat_prior
        self.emissionprob_prior = emissionprob_prior
        self.n_features = n_features
        self.algorithm = algorithm
        self.implementation = implementation
        self.random_state = random_state
        self.max_iter = max_iter
        self.tol = tol
        self.verbose = verbose
        self.accelerate = accelerate
        self.params = params
        self.init_params = init_params
        self.startprob_init = startprob_init
        self.transmat_init = transmat_init
        self.emissionprob_init = emissionprob_init
        self.n_init = n_init
        self.n_init_iter = n_init_iter
        self.split_every = split_every
        self.n_partitions = n_partitions
        self.n_iter = n_iter
        self.segment_length = segment_length

    def _n_features_of(self, blocks: SequenceBlocks) -> int:
        if blocks.n_features != 1:
            raise InvalidDataError(
                f"CategoricalHMM expects one column of integer symbols, got {blocks.n_features} columns"
            )
        if self.emissionprob_init is not None:
            return int(np.asarray(self.emissionprob_init).shape[1])
        if self.n_features is not None:
            return int(self.n_features)
        if getattr(self, "emissionprob_", None) is not None and "emissionprob" not in self._names(self.init_params, "init_params"):
            return int(np.asarray(self.emissionprob_).shape[1])
        # the largest symbol, read from the data (one small pass over the partitions)
        maxima = blocks.compute(*blocks.map_parts(_part_max))
        top = max(float(m) for m in maxima)
        if not np.isfinite(top) or top < 0:
            raise InvalidDataError("cannot infer n_features: the symbols are not non-negative numbers; give n_features")
        return int(math.floor(top)) + 1

    def _make_model(self, n_features: int) -> CategoricalHMMModel:
        from ..models.hmm import _prior

        return CategoricalHMMModel(
            n_components=int(self.n_components),
            startprob_prior=_prior(self.startprob_prior),
            transmat_prior=_prior(self.transmat_prior),
            params=self._names(self.params, "params"),
            n_features=int(n_features),
            emissionprob_prior=_prior(self.emissionprob_prior),
        )

    def _given_emission(self) -> dict[str, Any]:
        return {"emissionprob": self.emissionprob_init}

    def _check_given(self, model: Any, given: dict[str, np.ndarray], n_features: int) -> None:
        super()._check_given(model, given, n_features)
        if "emissionprob" in given and given["emissionprob"].shape != (self.n_components, n_features):
            raise ValueError(
                f"emissionprob_init must have shape ({self.n_components}, {n_features}), got {given['emissionprob'].shape}"
            )

    def _emission_init(self, model: Any, sample: np.ndarray, rng: np.random.Generator, blocks: SequenceBlocks, client: Any, run: int, given: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        M = model.n_features
        x = np.asarray(sample).ravel()
        x = x[np.isfinite(x) & (x >= 0) & (x < M) & (x == np.floor(x))].astype(np.int64)
        freq = np.bincount(x, minlength=M).astype(float) + 1.0
        freq /= freq.sum()
        # data frequencies, perturbed so that the states differ
        return {"emissionprob": _normalize_rows(freq * rng.uniform(0.25, 1.75, size=(self.n_components, M)))}

    def _emission_scalars(self) -> dict[str, int]:
        return {"emissionprob": self.n_components * (int(self.n_features) - 1)}

    def _set_emission_attributes(self, params: CategoricalHMMParams, model: Any) -> None:
        self.emissionprob_ = np.asarray(params.emissionprob)

    def _current_emission(self, model: Any) -> dict[str, np.ndarray]:
        return {"emissionprob": np.asarray(self.emissionprob_, float)}

    def _check_input(self, values: np.ndarray) -> None:
        if values.shape[1] != 1:
            raise InvalidDataError(f"CategoricalHMM expects one column of integer symbols, got {values.shape[1]} columns")

    def _lazy_blocks(self, X: Any, lengths: Any) -> SequenceBlocks:
        blocks = sequence_blocks(
            X, lengths, client=None, n_partitions=self.n_partitions, persist=False,
            segment_length=getattr(self, "segment_length", None),
        )
        self._check_input(np.empty((0, blocks.n_features)))
        return blocks


def _part_max(part: Any) -> float:
    values = np.asarray(part[0])
    return float(np.nanmax(values)) if values.size else -np.inf


class PoissonHMM(_BaseHMM):
    """Hidden Markov model with independent Poisson counts per feature.

    Parameters
    ----------
    lambdas_prior, lambdas_weight : float or array-like, default=0.0
        hmmlearn's gamma prior on the rates.
    lambdas_init : array-like of shape (n_components, n_features), optional
    (see the module docstring for the others)

    Attributes
    ----------
    startprob_, transmat_
    lambdas_ : ndarray of shape (n_components, n_features)
    converged_, n_iter_, history_, lower_bound_
    """

    _all_params = ("startprob", "transmat", "lambdas")
    _letters = {"s": "startprob", "t": "transmat", "l": "lambdas"}
    _emission_attribute = "lambdas_"
    _params_cls = PoissonHMMParams
    _values_dtype = np.float64

    def __init__(
        self,
        n_components: int = 1,
        startprob_prior: Any = 1.0,
        transmat_prior: Any = 1.0,
        lambdas_prior: Any = 0.0,
        lambdas_weight: Any = 0.0,
        algorithm: str = "viterbi",
        implementation: str = "log",
        random_state: Any = None,
        max_iter: int = 100,
        tol: float = 1e-2,
        verbose: bool = False,
        params: Any = None,
        init_params: Any = None,
        startprob_init: Any = None,
        transmat_init: Any = None,
        lambdas_init: Any = None,
        n_init: int = 4,
        n_init_iter: int = 5,
        split_every: int = 8,
        n_partitions: int | None = None,
        n_iter: int | None = None,
        accelerate: str | None = None,
        segment_length: int | None = None,
    ) -> None:
        self.n_components = n_components
        self.startprob_prior = startprob_prior
        self.transmat_prior = transmat_prior
        self.lambdas_prior = lambdas_prior
        self.lambdas_weight = lambdas_weight
        self.algorithm = algorithm
        self.implementation = implementation
        self.random_state = random_state
        self.max_iter = max_iter
        self.tol = tol
        self.verbose = verbose
        self.accelerate = accelerate
        self.params = params
        self.init_params = init_params
        self.startprob_init = startprob_init
        self.transmat_init = transmat_init
        self.lambdas_init = lambdas_init
        self.n_init = n_init
        self.n_init_iter = n_init_iter
        self.split_every = split_every
        self.n_partitions = n_partitions
        self.n_iter = n_iter
        self.segment_length = segment_length

    def _make_model(self, n_features: int) -> PoissonHMMModel:
        from ..models.hmm import _prior

        return PoissonHMMModel(
            n_components=int(self.n_components),
            startprob_prior=_prior(self.startprob_prior),
            transmat_prior=_prior(self.transmat_prior),
            params=self._names(self.params, "params"),
            lambdas_prior=_prior(self.lambdas_prior),
            lambdas_weight=_prior(self.lambdas_weight),
        )

    def _given_emission(self) -> dict[str, Any]:
        return {"lambdas": self.lambdas_init}

    def _check_given(self, model: Any, given: dict[str, np.ndarray], n_features: int) -> None:
        super()._check_given(model, given, n_features)
        if "lambdas" in given and given["lambdas"].shape != (self.n_components, n_features):
            raise InvalidDataError(
                f"X has {n_features} features but lambdas_init has shape {given['lambdas'].shape}; "
                f"expected ({self.n_components}, {n_features})"
            )

    def _emission_init(self, model: Any, sample: np.ndarray, rng: np.random.Generator, blocks: SequenceBlocks, client: Any, run: int, given: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        X = np.asarray(sample, dtype=np.float64)
        X = X[np.isfinite(X).all(axis=1)]
        mean = np.maximum(X.mean(axis=0), 1e-3) if len(X) else np.ones(blocks.n_features)
        var = np.maximum(X.var(axis=0), 1e-3) if len(X) else np.ones(blocks.n_features)
        return {"lambdas": rng.gamma(shape=mean**2 / var, scale=var / mean, size=(self.n_components, len(mean)))}

    def _emission_scalars(self) -> dict[str, int]:
        return {"lambdas": self.n_components * int(self.n_features)}

    def _set_emission_attributes(self, params: PoissonHMMParams, model: Any) -> None:
        self.lambdas_ = np.asarray(params.lambdas)

    def _current_emission(self, model: Any) -> dict[str, np.ndarray]:
        return {"lambdas": np.asarray(self.lambdas_, float)}


for _cls in (GaussianHMM, CategoricalHMM, PoissonHMM):
    _cls.__doc__ = (_cls.__doc__ or "") + "\n    Common parameters\n    -----------------" + _common_doc()

__all__ = ["CategoricalHMM", "GaussianHMM", "PoissonHMM"]
