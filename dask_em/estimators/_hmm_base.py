"""What the HMM estimators share: hmmlearn's vocabulary over the models of :mod:`dask_em.models.hmm`.

:class:`_BaseHMM` holds the hooks by which the HMMs fit through the loop
of :class:`~dask_em.estimators._base.EMEstimator` (one pass an iteration,
restarts stacked into shared passes, segments of long sequences), online EM, inference
(``score``, ``predict``, ``predict_proba``, ``decode``, ``sample``) on
in-memory and lazy input, and hmmlearn's parameter handling
(``params``/``init_params`` letters, ``*_init``, attributes set by hand).
The emission-specific faces are in :mod:`dask_em.estimators.hmm`; the
per-block functions they map over partitions in
:mod:`dask_em.models.hmm.workers`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import string
from typing import Any

import dask
import numpy as np

from ..errors import InvalidDataError
from ..models.hmm.base import _prior
from ..models.hmm.segments import SegmentedHMM, SegmentedStackedHMM
from ..models.hmm.workers import (
    part_posteriors,
    part_score,
    part_viterbi_logp,
    part_viterbi_states,
    seq_predict,
    seq_predict_proba,
    seq_score,
    seq_viterbi_logp,
)
from ..data.sequences import SequenceBlocks, _as_2d, _is_bag, check_lengths, sequence_blocks
from ._base import SHARED_DOCS, Checkpointing, EMEstimator, run_rngs, shared_restarts
from ._online import PartialFitMixin

#: Steps read to initialise the parameters.
INIT_SAMPLE = 20_000
#: hmmlearn's forward-backward variants; both name the same scaled recursion here.
IMPLEMENTATIONS = ("log", "scaling")

_log = logging.getLogger(__name__)


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
    """What the HMM estimators share (see the module docstring).

    An emission's estimator names its model class and its emission
    parameters, and supplies a few small hooks: :meth:`_model_options`
    (the model's emission options), :meth:`_emission_init`,
    :meth:`_emission_scalars` and, where its shapes need it,
    :meth:`_check_given`, :meth:`_set_emission_attributes` and
    :meth:`_current_emission`.
    """

    #: The model class (:mod:`dask_em.models.hmm`); its ``params_class`` holds the parameters.
    _model_class: Any = None
    #: The emission's parameters, in the order of the parameter class.
    _emission_params: tuple[str, ...] = ()
    #: hmmlearn's one-letter codes of the parameters (``params="stmc"``).
    _letters: dict[str, str] = {"s": "startprob", "t": "transmat"}
    _values_dtype: Any = np.float64

    @property
    def _all_params(self) -> tuple[str, ...]:
        return ("startprob", "transmat") + self._emission_params

    @property
    def _emission_attribute(self) -> str:
        """The fitted attribute that gives ``n_features`` (along its last axis)."""
        return f"{self._emission_params[0]}_"

    @property
    def _params_cls(self) -> type:
        return self._model_class.params_class

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
        shape, expected = np.shape(value), self._emission_shape_doc
        if len(shape) != expected.count(",") + 1:
            raise ValueError(f"{name} must have shape {expected}, got shape {shape}")
        self.n_features = int(shape[-1])

    #: The shape of the emission attribute, as its error message says it.
    _emission_shape_doc = "(n_components, n_features)"

    def _make_model(self, n_features: int) -> Any:
        return self._model_class(
            n_components=int(self.n_components),
            startprob_prior=_prior(self.startprob_prior),
            transmat_prior=_prior(self.transmat_prior),
            params=self._names(self.params, "params"),
            **self._model_options(n_features),
        )

    def _model_options(self, n_features: int) -> dict[str, Any]:
        """The model's emission options (priors, sizes) from the estimator's parameters."""
        raise NotImplementedError

    def _emission_init(self, model: Any, sample: np.ndarray, rng: np.random.Generator, blocks: SequenceBlocks, client: Any, run: int, given: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _emission_scalars(self) -> dict[str, int]:
        """Free scalars of each emission parameter (hmmlearn's count)."""
        raise NotImplementedError

    def _given_emission(self) -> dict[str, Any]:
        return {name: getattr(self, f"{name}_init") for name in self._emission_params}

    def _set_emission_attributes(self, params: Any, model: Any) -> None:
        for name in self._emission_params:
            setattr(self, f"{name}_", np.asarray(getattr(params, name)))

    def _current_emission(self, model: Any) -> dict[str, np.ndarray]:
        return {name: np.asarray(getattr(self, f"{name}_"), float) for name in self._emission_params}

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

    def _start_params(self, model: Any, blocks: SequenceBlocks, client: Any, given: dict[str, np.ndarray],
                      max_iter: int, rngs: list[np.random.Generator] | None = None) -> Any:
        """The start of a fit: the best of ``n_init`` candidates after shared restarts (one when all is given).

        ``rngs`` are the fit's generators, one per restart (drawn from
        ``random_state`` when None).
        """
        needs_random = any(name not in given for name in self._all_params)
        n_runs = max(1, int(self.n_init)) if needs_random else 1
        rngs = run_rngs(self.random_state, n_runs) if rngs is None else rngs[:n_runs]
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

    # -- fit: the hooks of EMEstimator._fit -----------------------------------
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
        $fit_options

        Returns
        -------
        self
        """
        return self._fit(X, client=client, checkpointing=Checkpointing(checkpoint, checkpoint_every, resume, force),
                         lengths=lengths)

    def _init(self, X: Any, lengths: Any = None) -> None:
        """Initialise the parameters from ``X`` as ``fit`` does, without EM (hmmlearn's name)."""
        self._fit(X, client=None, checkpointing=Checkpointing(), lengths=lengths, max_iter=0)

    # hmmlearn measures tol on the total log-likelihood; sequences are checked by sequence_blocks
    _tol_on = "total"
    _input_checks = None

    def _fit_model(self) -> None:
        self._check_hyperparameters()
        self._check_implementation()
        return None  # the model needs the number of features: built in _fit_data

    def _fit_data(self, X: Any, model: Any, client: Any, lengths: Any = None,
                  max_iter: int | None = None) -> tuple[SequenceBlocks, Any]:
        blocks = sequence_blocks(
            X, lengths, client=client, n_partitions=self.n_partitions, dtype=self._values_dtype,
            segment_length=getattr(self, "segment_length", None),
        )
        # read once: CategoricalHMM may need a pass over the data to find it
        self._fit_n_features = self._n_features_of(blocks)
        self._fit_max_iter = self._max_iter if max_iter is None else int(max_iter)
        return blocks, self._make_model(self._fit_n_features)

    def _start(self, model: Any, blocks: Any, data: Any, rngs: list[np.random.Generator], client: Any,
               checkpointing: Any) -> tuple[Any, Any]:
        given = self._given()
        self._check_given(model, given, self._fit_n_features)
        max_iter = self._fit_max_iter
        return _engine_model(model, blocks), lambda: self._start_params(model, blocks, client, given, max_iter, rngs)

    def _em_options(self, blocks: Any, client: Any, run: int, n_runs: int) -> dict[str, Any]:
        # signed change: a fit stops at the same iteration as hmmlearn's
        return {**super()._em_options(blocks, client, run, n_runs), "max_iter": self._fit_max_iter,
                "signed_change": True}

    def _set_result(self, result: Any) -> None:
        self.converged_ = bool(result.converged)
        self.n_iter_ = int(result.n_iter)
        self.history_ = list(result.history)
        self.lower_bound_ = float(result.lower_bound)

    def _set_fitted(self, result: Any, model: Any, blocks: Any) -> None:
        if isinstance(model, SegmentedHMM):
            model = model.model
        params = result.params
        self.n_features = self._fit_n_features
        self.startprob_ = np.asarray(params.startprob)
        self.transmat_ = np.asarray(params.transmat)
        self._set_emission_attributes(params, model)

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
        return model, self._start_params(model, blocks, client, given, self._max_iter)

    def _online_set(self, state: Any) -> None:
        params = state.params
        self.n_features = self._n_features_of_params(params)
        self.startprob_ = np.asarray(params.startprob)
        self.transmat_ = np.asarray(params.transmat)
        self._set_emission_attributes(params, state.model)
        self.converged_ = False
        self.lower_bound_ = state.loglik

    def _n_features_of_params(self, params: Any) -> int:
        return int(np.shape(getattr(params, self._emission_params[0]))[-1])

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
        self._check_fitted("startprob_")  # before n_features, which only a fit (or a load) sets
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
            seq_func = {part_posteriors: seq_predict_proba, part_viterbi_states: seq_predict}[func]
            return X.map(seq_func, model, params) if isinstance(X, db.Bag) else X
        blocks = self._lazy_blocks(X, lengths)
        model, params = _segmented(model, params, blocks, "decode" if func is part_viterbi_states else "proba")
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
            return float(X.map(seq_score, model, params).sum().compute())
        blocks = self._lazy_blocks(X, lengths)
        model, params = _segmented(model, params, blocks, "proba")
        return float(sum(dask.compute(*blocks.map_parts(part_score, model, params))))

    def predict_proba(self, X: Any, lengths: Any = None) -> Any:
        """Posterior state probabilities, shape (n_samples, n_components); lazy for lazy input."""
        block = self._in_memory(X, lengths)
        if block is None:
            return self._lazy_rows(X, lengths, part_posteriors, self.n_components, np.float64)
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
            logp = X.map(seq_viterbi_logp, model, params).sum()
            return logp, X.map(seq_predict, model, params)
        blocks = self._lazy_blocks(X, lengths)
        model, params = _segmented(model, params, blocks, "decode")
        logp = dask.delayed(sum)(blocks.map_parts(part_viterbi_logp, model, params))
        return logp, self._lazy_rows(X, lengths, part_viterbi_states, None, np.int64)

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
        return model.sample(params, n_samples, rng, currstate)


def _common_doc() -> str:
    # the class is already created when this is appended: substitute the shared descriptions here
    return string.Template(_COMMON_DOC).safe_substitute(SHARED_DOCS)


_COMMON_DOC = """
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
    $accelerate
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
        data an iteration; see :mod:`dask_em.models.hmm.segments`). By
        default sequences of more than about 32 MiB are cut; 0 never cuts.
    """
