"""Discrete Bayesian networks with latent variables and missing values, fitted by EM."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import dask.array as da
import numpy as np

from ..errors import InvalidDataError
from ..models.bayesnet import MAX_VARIABLES, BayesianNetworkModel, BayesNetParams, topological_order
from ._base import Checkpointing, EMEstimator, map_rows, store_params


class DiscreteBayesianNetwork(EMEstimator):
    """Parameter learning for a discrete Bayesian network of known structure, by EM.

    Every variable takes integer states ``0 .. card - 1``. Latent variables
    are absent from the data; observed variables may be missing in some
    rows (NaN, or ``missing_code``). Each iteration infers, exactly, the
    posterior of the unobserved variables of every row (rows with the same
    pattern of observed values share one inference) and re-estimates every
    conditional probability table from the expected counts.

    Parameters
    ----------
    edges : sequence of (str, str)
        The arcs ``(parent, child)`` of the network; it must be acyclic.
    latent : dict of str to int, optional
        Latent variables and their numbers of states.
    cardinality : dict of str to int, optional
        Numbers of states of observed variables (default: the largest code
        in the data plus one, found by one extra pass over the data). A
        variable with no edge (an isolated one) is named here.
    cpds_init : dict of str to array-like, optional
        Initial CPDs of some or all variables, in pgmpy's ``TabularCPD``
        layout: shape (card[v], product of the parents' cards), the parents
        in the order of ``parents_[v]``, the last varying fastest. Others
        start at random.
    pseudo_counts : float, default=0
        Dirichlet pseudo-counts added in the M-step (MAP-EM); with a
        positive value ``lower_bound_`` is the log posterior per row.
    prior_type : {"uniform", "bdeu"}, default="uniform"
        "uniform": ``pseudo_counts`` in every cell; "bdeu": an equivalent
        sample size ``pseudo_counts`` spread evenly over each table's cells.
    missing_code : int, optional
        A code meaning "missing" besides NaN (e.g. -1).
    max_iter : int, default=100
    tol : float, default=1e-3
        Convergence threshold on the mean log-likelihood per row.
    random_state : int or Generator, optional
        Seed of the random initial CPDs.
    $em_options

    Attributes
    ----------
    cpds_ : dict of str to ndarray
        The fitted CPD of each variable, in the layout of ``cpds_init``.
    parents_ : dict of str to list of str
        Each variable's parents, in the order of the CPD's columns.
    cardinalities_ : dict of str to int
    variables_ : list of str
        Every variable, in the network's order (edges, then latent, then cardinality).
    n_iter_, converged_, lower_bound_, lower_bounds_
    """

    _estimator_type = "density_estimator"

    def __init__(self, edges: Sequence[Sequence[str]] = (), latent: Mapping[str, int] | None = None,
                 cardinality: Mapping[str, int] | None = None, cpds_init: Mapping[str, Any] | None = None,
                 pseudo_counts: float = 0.0, prior_type: str = "uniform", missing_code: int | None = None,
                 max_iter: int = 100, tol: float = 1e-3, random_state: Any = None, accelerate: str | None = None,
                 verbose: bool = False) -> None:
        store_params(self, locals())

    # -- structure ---------------------------------------------------------------
    def validate_params(self) -> None:
        """Check the hyper-parameters (edges, cardinalities, prior) without data.

        Raises
        ------
        ValueError
            For a cycle in the edges, a malformed edge or cardinality, or a bad prior.
        """
        self._structure()

    def _structure(self) -> tuple[list[str], dict[str, list[str]]]:
        """Variables in order and each one's parents, checked (pairs of names, no cycle)."""
        variables: list[str] = []
        parents: dict[str, list[str]] = {}

        def add(name: Any) -> str:
            if not isinstance(name, str) or not name:
                raise ValueError(f"variable names must be non-empty strings, got {name!r}")
            if name not in parents:
                variables.append(name)
                parents[name] = []
            return name

        for edge in self.edges:
            if isinstance(edge, str) or len(edge) != 2:
                raise ValueError(f"each edge must be a pair (parent, child), got {edge!r}")
            parent, child = add(edge[0]), add(edge[1])
            if parent not in parents[child]:
                parents[child].append(parent)
        for name in (self.latent or {}):
            add(name)
        for name in (self.cardinality or {}):
            add(name)
        if not variables:
            raise ValueError("the network has no variables; give edges=[(parent, child), ...] or cardinality=")
        if len(variables) > MAX_VARIABLES:
            raise ValueError(f"the network has {len(variables)} variables; at most {MAX_VARIABLES} are supported")
        index = {name: i for i, name in enumerate(variables)}
        try:
            topological_order(tuple(tuple(index[p] for p in parents[v]) for v in variables))
        except ValueError as exc:
            cycle = " -> ".join(variables[int(i)] for i in str(exc).split(" -> "))
            raise ValueError(
                f"the edges contain a cycle {cycle}; a Bayesian network must be acyclic, so reverse or drop an edge"
            ) from None
        for name, card in {**(self.latent or {}), **(self.cardinality or {})}.items():
            if isinstance(card, bool) or not isinstance(card, (int, np.integer)) or card < 1:
                raise ValueError(f"the cardinality of {name!r} must be a positive integer, got {card!r}")
        if self.prior_type not in ("uniform", "bdeu"):
            raise ValueError(f"prior_type must be 'uniform' or 'bdeu', got {self.prior_type!r}")
        if not self.pseudo_counts >= 0:
            raise ValueError(f"pseudo_counts must be non-negative, got {self.pseudo_counts}")
        return variables, parents

    def _model(self, columns: Sequence[str], data: Any = None) -> BayesianNetworkModel:
        variables, parents = self._structure()
        latent = dict(self.latent or {})
        columns = [str(c) for c in columns]
        unknown = [c for c in columns if c not in parents]
        if unknown:
            raise InvalidDataError(
                f"data columns {unknown} are not variables of the network {variables}; drop them, add them to the "
                "edges, or name isolated variables in cardinality={name: n_states}"
            )
        present = sorted(set(columns) & set(latent))
        if present:
            raise InvalidDataError(
                f"latent variables {present} are present in the data; latent variables are never observed, so drop "
                "these columns, or remove them from latent= to treat them as observed (NaN where missing)"
            )
        absent = [v for v in variables if v not in latent and v not in columns]
        if absent:
            raise InvalidDataError(
                f"variables {absent} are neither in the data (columns {columns}) nor latent; add the columns, "
                "or declare them in latent={name: n_states}"
            )
        if len(set(columns)) != len(columns):
            raise InvalidDataError(f"the data has repeated columns: {columns}")
        cards = {**{k: int(v) for k, v in (self.cardinality or {}).items()}, **{k: int(v) for k, v in latent.items()}}
        unsized = [c for c in columns if c not in cards]
        if unsized:
            cards.update(self._infer_cardinalities(data, columns, unsized))
        index = {name: i for i, name in enumerate(variables)}
        return BayesianNetworkModel(
            variables=tuple(variables),
            cardinalities=tuple(cards[v] for v in variables),
            parents=tuple(tuple(index[p] for p in parents[v]) for v in variables),
            columns=tuple(index[c] for c in columns),
            pseudo_counts=float(self.pseudo_counts),
            prior_type=self.prior_type,
            missing_code=None if self.missing_code is None else float(self.missing_code),
        )

    def _infer_cardinalities(self, X: Any, columns: list[str], unsized: list[str]) -> dict[str, int]:
        if X is None:
            raise ValueError(f"the cardinalities of {unsized} are unknown; give cardinality={{name: n_states}}")
        keep = [columns.index(c) for c in unsized]
        part = X[:, keep]
        if self.missing_code is not None:
            part = da.where(part == self.missing_code, np.nan, part) if isinstance(part, da.Array) else np.where(
                part == self.missing_code, np.nan, part)
        top = np.nanmax(part, axis=0) if not isinstance(part, da.Array) else da.nanmax(part, axis=0).compute()
        out = {}
        for name, value in zip(unsized, np.atleast_1d(top)):
            if not np.isfinite(value):
                raise InvalidDataError(f"column {name!r} has no observed value; give its cardinality or drop it")
            out[name] = max(int(value) + 1, 1)
        return out

    # -- data ------------------------------------------------------------------------
    def _as_array(self, data: Any, columns: Sequence[str] | None) -> tuple[Any, list[str]]:
        """A 2-D float array (numpy or Dask) and the name of each of its columns."""
        if hasattr(data, "columns") and hasattr(data, "dtypes") and not isinstance(data, np.ndarray):
            names = [str(c) for c in data.columns]
            if columns is not None:
                data, names = data[list(columns)], [str(c) for c in columns]
            bad = [str(c) for c, t in zip(data.columns, data.dtypes) if not np.issubdtype(np.dtype(t), np.number)]
            if bad:
                raise InvalidDataError(
                    f"columns {bad} are not numeric; encode states as integer codes 0..card-1 "
                    "(e.g. df[col].astype('category').cat.codes, with NaN for missing)"
                )
            if hasattr(data, "to_dask_array"):
                return data.to_dask_array(lengths=True).astype(np.float64), names
            return data.to_numpy(dtype=np.float64, na_value=np.nan), names
        if columns is None:
            raise InvalidDataError(
                "arrays and Zarr stores have no column names; pass columns=[name, ...] to fit (--columns A,B,... "
                "on the command line)"
            )
        names = [str(c) for c in columns]
        from ..data import as_dask_array

        if isinstance(data, (str, da.Array)) or hasattr(data, "__fspath__") or type(data).__module__.startswith("zarr"):
            X = as_dask_array(data)
        else:
            X = np.asarray(data, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(names):
            raise InvalidDataError(f"data of shape {X.shape} does not have the {len(names)} columns {names}")
        return X, names

    def _cpds_start(self, model: BayesianNetworkModel, rng: np.random.Generator) -> BayesNetParams:
        tables = model.split(model.init_params(None, rng).values.copy())
        for name, value in (self.cpds_init or {}).items():
            if name not in model.variables:
                raise ValueError(f"cpds_init names {name!r}, which is not a variable of the network")
            v = model.variables.index(name)
            shape = model.table_shape(v)
            table = np.asarray(value, dtype=np.float64)
            if table.size != math.prod(shape) or table.reshape(shape[0], -1).shape != (shape[0], math.prod(shape[1:])):
                raise ValueError(
                    f"cpds_init[{name!r}] has shape {table.shape}; expected ({shape[0]}, {math.prod(shape[1:])}) "
                    f"(states of {name} x joint states of its parents {self._parent_names(model, v)})"
                )
            table = table.reshape(shape)
            if np.any(table < 0) or not np.allclose(table.sum(axis=0), 1.0):
                raise ValueError(f"cpds_init[{name!r}] must be non-negative with columns summing to 1")
            tables[v] = table
        return model.join(tables)

    @staticmethod
    def _parent_names(model: BayesianNetworkModel, v: int) -> list[str]:
        return [model.variables[p] for p in model.parents[v]]

    # -- fit -------------------------------------------------------------------------
    def fit(self, data: Any, y: Any = None, *, columns: Sequence[str] | None = None, client: Any = None,
            checkpoint: str | None = None, checkpoint_every: int = 1, resume: bool | None = None,
            force: bool = False) -> DiscreteBayesianNetwork:
        """Estimate every CPD by EM.

        Parameters
        ----------
        data : pandas or Dask DataFrame, array-like, dask array, Zarr array or path
            Integer codes ``0 .. card - 1`` of the observed variables, NaN
            (or ``missing_code``) where missing, shape (n_samples, n_columns).
        y : ignored
        columns : sequence of str, optional
            The variable of each column; required for arrays and Zarr stores,
            and selects and orders the columns of a DataFrame.
        $fit_options

        Returns
        -------
        self

        Raises
        ------
        ValueError
            For a cycle in the edges or bad hyper-parameters.
        InvalidDataError
            For a latent variable in the data, unknown columns, or codes
            outside a variable's states (reported after the first pass).
        """
        X, names = self._as_array(data, columns)
        model = self._model(names, X)
        return self._fit(X, client=client, checkpointing=Checkpointing(checkpoint, checkpoint_every, resume, force),
                         network=model)

    # -- the fit loop's hooks (EMEstimator._fit) --------------------------------
    _input_checks = None  # _as_array checks the columns

    def _fit_model(self) -> None:
        return None  # it needs the data's columns: built by fit

    def _fit_data(self, X: Any, model: Any, client: Any, **inputs: Any) -> tuple[Any, BayesianNetworkModel]:
        return super()._fit_data(X, None, client)[0], inputs["network"]

    def _initial_params(self, model: BayesianNetworkModel, blocks: Any, rng: Any, client: Any) -> BayesNetParams:
        state = self.random_state
        return self._cpds_start(model, state if isinstance(state, np.random.Generator) else np.random.default_rng(state))

    def _set_fitted(self, result: Any, model: BayesianNetworkModel, blocks: Any) -> None:
        self._set_network(model, result.params)
        self.columns_ = [model.variables[i] for i in model.columns]

    def _set_network(self, model: BayesianNetworkModel, params: BayesNetParams) -> None:
        self._fitted_model, self._params = model, params
        self.variables_ = list(model.variables)
        self.cardinalities_ = dict(zip(model.variables, model.cardinalities))
        self.parents_ = {name: self._parent_names(model, v) for v, name in enumerate(model.variables)}
        self.cpds_ = {
            name: np.array(table.reshape(table.shape[0], -1))
            for name, table in zip(model.variables, model.split(params.values))
        }

    # -- saving: the structure comes back from the configuration ----------------------
    def fitted_state(self) -> dict[str, Any]:
        """Fitted numbers and arrays: the CPDs as one flat vector with the cardinalities and column order."""
        state = {k: v for k, v in super().fitted_state().items()}
        if hasattr(self, "_params"):
            model = self._fitted_model
            state["cpd_values_"] = np.asarray(self._params.values)
            state["cardinality_values_"] = np.asarray(model.cardinalities, dtype=np.int64)
            state["column_order_"] = np.asarray(model.columns, dtype=np.int64)
        return state

    def _after_load(self) -> None:
        variables, parents = self._structure()
        cards = np.asarray(self.cardinality_values_)
        order = [int(i) for i in np.asarray(self.column_order_)]
        if len(cards) != len(variables) or any(not 0 <= i < len(variables) for i in order):
            raise InvalidDataError("the saved network does not match its configuration; the model is damaged")
        index = {name: i for i, name in enumerate(variables)}
        model = BayesianNetworkModel(
            variables=tuple(variables), cardinalities=tuple(int(c) for c in cards),
            parents=tuple(tuple(index[p] for p in parents[v]) for v in variables), columns=tuple(order),
            pseudo_counts=float(self.pseudo_counts), prior_type=self.prior_type,
            missing_code=None if self.missing_code is None else float(self.missing_code),
        )
        values = np.asarray(self.cpd_values_, dtype=np.float64)
        if values.shape != (sum(math.prod(model.table_shape(v)) for v in range(len(variables))),):
            raise InvalidDataError("the saved CPDs do not match the network's shape; the model is damaged")
        self._set_network(model, BayesNetParams(values))
        self.columns_ = [variables[i] for i in order]

    # -- per-row outputs ---------------------------------------------------------------
    def _rows(self, data: Any, columns: Sequence[str] | None) -> Any:
        """``data`` as a 2-D array with the fitted columns, in their order."""
        self._check_fitted("cpds_")
        X, names = self._as_array(data, columns if columns is not None else (
            None if hasattr(data, "columns") else self.columns_))
        if names != self.columns_:
            if sorted(names) != sorted(self.columns_):
                raise InvalidDataError(f"expected the columns {self.columns_}, got {names}")
            keep = [names.index(c) for c in self.columns_]
            X = X[:, keep]
        return X

    def predict_proba(self, data: Any, variable: str, *, columns: Sequence[str] | None = None) -> Any:
        """Posterior probability of each state of ``variable`` in each row, shape (n_samples, card).

        ``variable`` is latent, or observed (then its posterior is one-hot
        where it is observed). Lazy (a Dask array) for Dask, Zarr or path input.
        """
        X = self._rows(data, columns)
        if variable not in self.cardinalities_:
            raise ValueError(f"{variable!r} is not a variable of the network; choose one of {self.variables_}")
        v = self.variables_.index(variable)
        return map_rows(X, self._fitted_model.predict_proba_block, self._params, v,
                        n_columns=self.cardinalities_[variable])

    def score_samples(self, data: Any, *, columns: Sequence[str] | None = None) -> Any:
        """Log-probability of each row's observed values, shape (n_samples,)."""
        X = self._rows(data, columns)
        return map_rows(X, self._fitted_model.score_samples_block, self._params, n_columns=None)

    def score(self, data: Any, y: Any = None, *, columns: Sequence[str] | None = None) -> float:
        """Mean log-likelihood per row."""
        values = self.score_samples(data, columns=columns)
        return float(values.mean().compute() if hasattr(values, "compute") else values.mean())

    def bic(self, data: Any, *, columns: Sequence[str] | None = None) -> float:
        """Bayesian information criterion on ``data`` (lower is better)."""
        values = self.score_samples(data, columns=columns)
        total = float(values.sum().compute() if hasattr(values, "compute") else values.sum())
        return -2.0 * total + self._fitted_model.n_parameters() * math.log(values.shape[0])

    def sample(self, n_samples: int = 1, random_state: Any = None) -> Any:
        """Draw complete rows (latent variables included) by ancestral sampling, as a pandas DataFrame."""
        import pandas as pd

        self._check_fitted("cpds_")
        if n_samples < 1:
            raise ValueError(f"n_samples must be at least 1, got {n_samples}")
        codes = self._fitted_model.sample(int(n_samples), self._params, np.random.default_rng(random_state))
        return pd.DataFrame(codes, columns=self.variables_)
