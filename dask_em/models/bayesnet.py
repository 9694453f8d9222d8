"""Discrete Bayesian networks of known structure, with latent variables and missing values.

The parameters are one conditional probability table (CPD) per variable,
all flattened into one array. Each table has pgmpy's ``TabularCPD``
layout: shape ``(card[v], card[p1], ..., card[pk])`` with the parents in
the order of ``parents[v]``, so that ``table.reshape(card[v], -1)`` has the
variable's states as rows and the parents' joint states as columns, the
last parent varying fastest.

The E-step is exact inference: the joint probability is a product of the
tables and of one evidence vector per observed column (one-hot for an
observed value, all ones for a missing one); summing it over every
variable is variable elimination, done by ``np.einsum`` along a
contraction order computed once per network. Rows are grouped by their
pattern of observed values first, so that a pattern repeated in a block
costs one inference; the statistics are the expected counts of every
family (a variable and its parents), summed over the rows.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import numba
import numpy as np

from ..contract import Stats, with_log_prior

#: np.einsum names axes with integers below 52; one is the batch of patterns.
MAX_VARIABLES = 51
#: Patterns whose integer keys fit in this many slots are counted with a
#: bincount (linear time) instead of a sort.
_BINCOUNT_SLOTS = 1 << 22
#: Patterns per einsum call: bounds the (patterns x family) temporaries.
_PATTERN_BATCH = 8192


@dataclasses.dataclass(frozen=True)
class BayesNetParams:
    """values (n_values,): every CPD flattened, in variable order (see :class:`BayesianNetworkModel`)."""

    values: np.ndarray


@dataclasses.dataclass(frozen=True)
class BayesianNetworkModel:
    """A discrete Bayesian network for EM.

    Parameters
    ----------
    variables : tuple of str
        Names of the variables, in the order of the tables in the parameters.
    cardinalities : tuple of int
        Number of states of each variable.
    parents : tuple of tuple of int
        Indices (into ``variables``) of each variable's parents, in order.
    columns : tuple of int
        The variable of each data column; variables not listed here are latent.
    pseudo_counts : float
        Dirichlet pseudo-counts added to the expected counts in the M-step.
    prior_type : {"uniform", "bdeu"}
        "uniform" adds ``pseudo_counts`` to every cell; "bdeu" spreads an
        equivalent sample size of ``pseudo_counts`` evenly over the cells of
        each table (``pseudo_counts / (card[v] * parent configurations)``).
    missing_code : float, optional
        A value meaning "missing" besides NaN (e.g. -1).
    """

    variables: tuple[str, ...]
    cardinalities: tuple[int, ...]
    parents: tuple[tuple[int, ...], ...]
    columns: tuple[int, ...]
    pseudo_counts: float = 0.0
    prior_type: str = "uniform"
    missing_code: float | None = None

    # -- layout ------------------------------------------------------------
    def table_shape(self, v: int) -> tuple[int, ...]:
        """Shape of the CPD of variable ``v``: (card[v], card[parent] for each parent)."""
        return (self.cardinalities[v], *(self.cardinalities[p] for p in self.parents[v]))

    def split(self, values: np.ndarray) -> list[np.ndarray]:
        """The CPDs of a flat parameter vector, each in its table shape (views)."""
        tables, start = [], 0
        for v in range(len(self.variables)):
            shape = self.table_shape(v)
            size = math.prod(shape)
            tables.append(values[start : start + size].reshape(shape))
            start += size
        return tables

    def join(self, tables: list[np.ndarray]) -> BayesNetParams:
        """Parameters from a list of CPDs in table shape."""
        return BayesNetParams(np.concatenate([np.asarray(t, dtype=np.float64).ravel() for t in tables]))

    def _cell_prior(self, v: int) -> float:
        shape = self.table_shape(v)
        if self.prior_type == "bdeu":
            return self.pseudo_counts / math.prod(shape)
        return self.pseudo_counts

    # -- the contract ----------------------------------------------------------
    def init_params(self, sample: Any, rng: np.random.Generator) -> BayesNetParams:
        """Random CPDs: every column drawn from a flat Dirichlet (the sample is not used)."""
        tables = []
        for v in range(len(self.variables)):
            shape = self.table_shape(v)
            columns = rng.dirichlet(np.ones(shape[0]), size=math.prod(shape[1:]))  # (configs, card)
            tables.append(columns.T.reshape(shape))
        return self.join(tables)

    def e_step(self, block: Any, params: BayesNetParams) -> Stats:
        """Expected family counts of one block.

        Returns ``n`` (), ``loglik`` (), ``n_invalid`` () (values that are
        neither a state of their variable nor missing), and ``counts``
        (n_values,): the expected number of rows in each cell of each CPD,
        flattened like the parameters.
        """
        patterns, counts, _, n_bad = self._block_patterns(block, inverse=False)
        tables = self.split(params.values)
        compiled = _compile(self)
        log_z = np.empty(len(patterns))
        family = [np.zeros(self.table_shape(v)) for v in range(len(self.variables))]
        for lo in range(0, len(patterns), _PATTERN_BATCH):
            part = slice(lo, lo + _PATTERN_BATCH)
            evidence = self._evidence(patterns[part])
            z = compiled.evaluate(compiled.likelihood, tables, evidence)
            log_z[part] = _log(z)
            with np.errstate(divide="ignore", invalid="ignore"):
                weight = np.where(z > 0, counts[part] / z, 0.0)
            for v in range(len(self.variables)):
                family[v] += compiled.evaluate(compiled.families[v], tables, evidence, weight)
        return {
            "n": np.array(float(counts.sum())),
            "loglik": np.array(float(counts @ log_z)),
            "counts": np.concatenate([f.ravel() for f in family]),
            "n_invalid": np.array(n_bad),
        }

    def m_step(self, stats: Stats, params: BayesNetParams | None) -> BayesNetParams:
        """Normalised expected counts plus pseudo-counts; a parent configuration with no weight is uniform."""
        tables = []
        for v, counts in enumerate(self.split(stats["counts"])):
            counts = counts + self._cell_prior(v)
            total = counts.sum(axis=0, keepdims=True)
            with np.errstate(invalid="ignore", divide="ignore"):
                tables.append(np.where(total > 0, counts / total, 1.0 / counts.shape[0]))
        return self.join(tables)

    # -- MAP objective ---------------------------------------------------------
    @property
    def has_prior(self) -> bool:
        """Whether the pseudo-counts make the objective a log posterior."""
        return self.pseudo_counts > 0

    def log_prior(self, params: BayesNetParams) -> float:
        """Log density, up to a constant, of the Dirichlet whose posterior mode the M-step returns."""
        return float(sum(self._cell_prior(v) * np.sum(_log(t)) for v, t in enumerate(self.split(params.values))))

    def finish_stats(self, stats: Stats, params: BayesNetParams | None) -> Stats:
        """With pseudo-counts, ``loglik`` becomes the log posterior (kept apart in ``loglik_data``)."""
        if not self.has_prior or params is None:
            return stats
        return with_log_prior(stats, self.log_prior(params))

    def describe_invalid(self, n: int) -> str:
        """The message for ``n`` values outside their variable's states."""
        names = ", ".join(f"{self.variables[v]}: 0..{self.cardinalities[v] - 1}" for v in self.columns)
        return (
            f"{n} values are not states of their variable ({names}); codes must be integers from 0 to the "
            "cardinality minus one, with NaN (or missing_code) where a value is missing. Raise the "
            "variable's cardinality or recode the data"
        )

    def n_parameters(self) -> int:
        """Free parameters (for BIC): (card[v] - 1) x parent configurations, summed."""
        return sum((s[0] - 1) * math.prod(s[1:]) for s in map(self.table_shape, range(len(self.variables))))

    # -- per-row outputs ---------------------------------------------------------
    def score_samples_block(self, block: Any, params: BayesNetParams) -> np.ndarray:
        """Log-probability of each row's observed values, shape (n,)."""
        patterns, inverse = self._checked_patterns(block)
        tables, compiled = self.split(params.values), _compile(self)
        out = np.empty(len(patterns))
        for lo in range(0, len(patterns), _PATTERN_BATCH):
            part = slice(lo, lo + _PATTERN_BATCH)
            out[part] = _log(compiled.evaluate(compiled.likelihood, tables, self._evidence(patterns[part])))
        return out[inverse]

    def predict_proba_block(self, block: Any, params: BayesNetParams, variable: int) -> np.ndarray:
        """Posterior of ``variable`` given each row's observed values, shape (n, card[variable])."""
        patterns, inverse = self._checked_patterns(block)
        tables, compiled = self.split(params.values), _compile(self)
        out = np.empty((len(patterns), self.cardinalities[variable]))
        for lo in range(0, len(patterns), _PATTERN_BATCH):
            part = slice(lo, lo + _PATTERN_BATCH)
            joint = compiled.evaluate(compiled.marginals[variable], tables, self._evidence(patterns[part]))
            with np.errstate(invalid="ignore", divide="ignore"):
                out[part] = joint / joint.sum(axis=1, keepdims=True)
        return out[inverse]

    def sample(self, n_samples: int, params: BayesNetParams, rng: np.random.Generator) -> np.ndarray:
        """Ancestral sampling of every variable, shape (n_samples, n_variables), integer codes."""
        tables = self.split(params.values)
        out = np.zeros((n_samples, len(self.variables)), dtype=np.int64)
        for v in topological_order(self.parents):
            table = tables[v].reshape(self.cardinalities[v], -1)
            config = np.zeros(n_samples, dtype=np.int64)
            for p in self.parents[v]:  # last parent fastest, as in the table
                config = config * self.cardinalities[p] + out[:, p]
            cumulative = np.cumsum(table[:, config], axis=0)
            u = rng.random(n_samples) * cumulative[-1]
            out[:, v] = np.minimum((u[None, :] >= cumulative).sum(axis=0), self.cardinalities[v] - 1)
        return out

    # -- helpers -------------------------------------------------------------------
    def _codes(self, block: Any) -> tuple[np.ndarray, int]:
        """Integer codes (n, n_columns) with the cardinality as the missing code; and the invalid count."""
        X = np.asarray(block, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.columns):
            raise ValueError(f"expected blocks of shape (n, {len(self.columns)}), got {X.shape}")
        cards = np.asarray([self.cardinalities[v] for v in self.columns], dtype=np.float64)
        missing = np.isnan(X)
        if self.missing_code is not None:
            missing |= X == self.missing_code
        with np.errstate(invalid="ignore"):
            bad = ~missing & ~((X >= 0) & (X < cards) & (X == np.floor(X)))
        codes = np.where(missing | bad, cards, X).astype(np.int64)
        return codes, int(bad.sum())

    def _checked_patterns(self, block: Any) -> tuple[np.ndarray, np.ndarray]:
        """Distinct patterns of a block and each row's pattern; raises for invalid values."""
        from ..errors import InvalidDataError

        patterns, _, inverse, n_bad = self._block_patterns(block, inverse=True)
        if n_bad:
            raise InvalidDataError(self.describe_invalid(n_bad))
        assert inverse is not None
        return patterns, inverse

    def _radix(self) -> tuple[list[int], int]:
        radix = [self.cardinalities[v] + 1 for v in self.columns]  # +1: the missing code
        return radix, math.prod(radix)

    def _block_patterns(self, block: Any, inverse: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
        """Distinct observed patterns of a block, their counts, each row's pattern if asked, and the invalid count.

        When the patterns' integer keys fit in 62 bits, one compiled pass over
        the block computes the keys and counts invalid values (no per-value
        temporaries); otherwise the rows of codes are sorted.
        """
        radix, slots = self._radix()
        X = np.asarray(block)
        if slots >= 2**62 or X.ndim != 2 or X.shape[1] != len(self.columns) or X.shape[1] == 0:
            codes, n_bad = self._codes(X)
            patterns, counts, index = self._patterns(codes, inverse)
            return patterns, counts, index, n_bad
        weights = np.cumprod([1, *radix[:0:-1]])[::-1].astype(np.int64)  # first column most significant
        missing = np.nan if self.missing_code is None else float(self.missing_code)
        keys, n_bad = _pattern_keys(np.asarray(X, dtype=np.float64), np.asarray(radix, np.int64) - 1,
                                    weights, missing)
        patterns, counts, index = self._unique_keys(keys, radix, weights, slots, inverse)
        return patterns, counts, index, int(n_bad)

    def _patterns(self, codes: np.ndarray, inverse: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Distinct rows of ``codes`` (sorted by key), their counts, and each row's pattern if asked."""
        radix, slots = self._radix()
        if codes.shape[1] == 0:
            return codes[:1], np.array([float(len(codes))]), np.zeros(len(codes), dtype=np.int64)
        if slots >= 2**62:  # keys would overflow: sort the rows themselves
            rows, index, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
            return rows, counts.astype(np.float64), index.ravel() if inverse else None
        weights = np.cumprod([1, *radix[:0:-1]])[::-1].astype(np.int64)  # first column most significant
        return self._unique_keys(codes @ weights, radix, weights, slots, inverse)

    @staticmethod
    def _unique_keys(keys: np.ndarray, radix: list[int], weights: np.ndarray, slots: int,
                     inverse: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        index = None
        if slots <= max(_BINCOUNT_SLOTS, 4 * len(keys)) and not inverse:
            tally = np.bincount(keys, minlength=slots)
            unique = np.flatnonzero(tally)
            counts = tally[unique]
        else:
            unique, index, counts = np.unique(keys, return_inverse=True, return_counts=True)
        rows = (unique[:, None] // weights[None, :]) % np.asarray(radix)[None, :]
        return rows, counts.astype(np.float64), index

    def _evidence(self, patterns: np.ndarray) -> list[np.ndarray]:
        """One (patterns, card) vector per data column: one-hot if observed, ones if missing."""
        out = []
        for c, v in enumerate(self.columns):
            card = self.cardinalities[v]
            code = patterns[:, c]
            out.append(((code[:, None] == np.arange(card)) | (code[:, None] == card)[:, :1]).astype(np.float64))
        return out


@numba.njit(cache=True, nogil=True)
def _pattern_keys(X: np.ndarray, cards: np.ndarray, weights: np.ndarray, missing: float) -> tuple[np.ndarray, int]:
    """Integer key of each row's pattern (missing = the cardinality) and the number of invalid values.

    An invalid value (not an integer state) counts as missing in the key;
    the engine raises after the pass when the count is positive.
    """
    n, c = X.shape
    keys = np.empty(n, dtype=np.int64)
    n_bad = 0
    for i in range(n):
        key = 0
        for j in range(c):
            x = X[i, j]
            code = cards[j]
            if not (np.isnan(x) or x == missing):
                if x >= 0 and x < cards[j] and x == np.floor(x):
                    code = np.int64(x)
                else:
                    n_bad += 1
            key += code * weights[j]
        keys[i] = key
    return keys, n_bad


def _log(a: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(a)


def topological_order(parents: tuple[tuple[int, ...], ...]) -> list[int]:
    """Variables with every parent before its children; raises ValueError naming a cycle."""
    order: list[int] = []
    state = [0] * len(parents)  # 0 new, 1 on the path, 2 done

    def visit(v: int, path: list[int]) -> None:
        if state[v] == 2:
            return
        if state[v] == 1:
            cycle = path[path.index(v) :] + [v]
            raise ValueError(" -> ".join(map(str, cycle)))
        state[v] = 1
        for p in parents[v]:
            visit(p, [*path, v])
        state[v] = 2
        order.append(v)

    for v in range(len(parents)):
        visit(v, [])
    return order


@dataclasses.dataclass(frozen=True)
class _Contraction:
    """One einsum: operand subscripts, output subscript and a fixed contraction path."""

    subscripts: tuple[tuple[int, ...], ...]
    output: tuple[int, ...]
    path: list[Any]
    with_weight: bool


@dataclasses.dataclass(frozen=True)
class _Compiled:
    """The contractions of one network: likelihood per pattern, family counts, marginals."""

    likelihood: _Contraction
    families: list[_Contraction]
    marginals: list[_Contraction]

    @staticmethod
    def evaluate(c: _Contraction, tables: list[np.ndarray], evidence: list[np.ndarray],
                 weight: np.ndarray | None = None) -> np.ndarray:
        operands = [*tables, *evidence, *([weight] if c.with_weight else [])]
        args: list[Any] = []
        for op, sub in zip(operands, c.subscripts):
            args += [op, list(sub)]
        return np.einsum(*args, list(c.output), optimize=c.path)


@functools.lru_cache(maxsize=64)
def _compile(model: BayesianNetworkModel) -> _Compiled:
    """Contraction orders of ``model``'s inferences, found once per network (greedy variable elimination)."""
    n = len(model.variables)
    batch = n  # the axis of the patterns
    table_subs = [(v, *model.parents[v]) for v in range(n)]
    evidence_subs = [(batch, v) for v in model.columns]
    rows = 1024  # a representative number of patterns: the order is valid for any
    shapes = [model.table_shape(v) for v in range(n)] + [(rows, model.cardinalities[v]) for v in model.columns]

    def contraction(output: tuple[int, ...], with_weight: bool) -> _Contraction:
        subs = [*table_subs, *evidence_subs, *([(batch,)] if with_weight else [])]
        dummies = [np.empty(s) for s in shapes] + ([np.empty(rows)] if with_weight else [])
        args: list[Any] = []
        for op, sub in zip(dummies, subs):
            args += [op, list(sub)]
        path, _ = np.einsum_path(*args, list(output), optimize="greedy")
        return _Contraction(tuple(subs), output, path, with_weight)

    return _Compiled(
        likelihood=contraction((batch,), False),
        families=[contraction(table_subs[v], True) for v in range(n)],
        marginals=[contraction((batch, v), False) for v in range(n)],
    )
