"""Accelerated EM: SQUAREM and Anderson acceleration, one data pass per map evaluation.

Plain EM converges linearly, and slowly where the fraction of missing
information is large (overlapping components, sticky HMM states, many
missing values). SQUAREM (Varadhan & Roland 2008, *Scand. J. Statist.* 35,
scheme S3, with the step-length rules of their R package) treats the EM map
``F`` as a fixed-point iteration and extrapolates along the two most recent
steps::

    p1 = F(p0);  p2 = F(p1);  r = p1 - p0;  v = p2 - 2 p1 + p0
    alpha = clip(|r| / |v|, step_min, step_max)
    p' = p0 + 2 alpha r + alpha^2 v        (p' = p2 when alpha = 1)

then evaluates ``F(p')``. Each evaluation of ``F`` is one E-step over the
data and one M-step, so a cycle costs three passes (two when the step is 1)
and usually advances like many EM iterations.

The extrapolation runs in an unconstrained vector (:func:`to_vector`):
simplex rows as logarithms, positive values as logarithms, positive-definite
matrices as Cholesky factors with logarithmic diagonals, so every
extrapolated point maps back to valid parameters. A model declares the
constraint of each parameter field once (see :func:`constraints_of`).

**Monotone safeguard.** The extrapolated point is accepted only if its
log-likelihood (which its own pass computes) is finite and at least that of
``p1``; otherwise its pass is discarded and the plain EM point ``p2`` is
taken, and the largest step shrinks. So the recorded log-likelihood never
decreases, just as in plain EM.

**Anderson acceleration** (:class:`Anderson`; Anderson 1965, for EM as in
Henderson & Varadhan 2019, *J. Comput. Graph. Statist.* 28, "DAAREM") uses
every pass: each proposes the point that best cancels the last ``m``
residuals ``F(p) - p`` by a least-squares combination of the stored EM
images, so no pass is spent on a plain step inside a cycle. The same
monotone safeguard applies: a proposal whose log-likelihood is lower is
refused, its pass discarded, and the fit continues from the last accepted
point's EM image with the memory cleared.

This module is pure (no Dask): the engine calls the accelerator's ``step``
after each pass with the point it evaluated, that point's log-likelihood and
the M-step's result, and evaluates whatever point it returns next.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .contract import hooks

#: The accelerators ``fit_em(accelerate=...)`` and the estimators accept.
ACCELERATORS = ("squarem", "anderson")

#: The kinds of constraint a parameter field may declare.
CONSTRAINTS = ("real", "positive", "unit", "simplex", "spd", "derived", "fixed")

#: Values below this are treated as this before taking logarithms (a
#: probability or variance of exactly zero stays, in effect, zero).
_TINY = 1e-300


def constraints_of(model: Any, params: Any) -> dict[str, str]:
    """The constraint of each parameter field.

    The model's ``param_constraints(params)`` when it has one (the kind may
    depend on its configuration, e.g. a covariance type), else the
    parameter class's ``constraints`` mapping; fields not named are
    ``"real"``. Kinds:

    - ``"real"``: unconstrained;
    - ``"positive"``: elementwise positive (variances, rates);
    - ``"unit"``: elementwise in (0, 1) (Bernoulli probabilities);
    - ``"simplex"``: non-negative, summing to one along the last axis;
    - ``"spd"``: symmetric positive-definite matrices in the last two axes;
    - ``"derived"``: computed from the others by the model's
      ``complete_params(params)`` (e.g. Cholesky factors of precisions);
    - ``"fixed"``: not extrapolated (integers, flags, data-derived constants).

    Non-floating fields are always ``"fixed"``.
    """
    declared = hooks(model).param_constraints(params)
    kinds = {}
    for f in dataclasses.fields(params):
        value = np.asarray(getattr(params, f.name))
        kind = declared.get(f.name, "real")
        if kind not in CONSTRAINTS:
            raise ValueError(f"unknown constraint {kind!r} for parameter {f.name!r}; use one of {CONSTRAINTS}")
        kinds[f.name] = kind if np.issubdtype(value.dtype, np.floating) else "fixed"
    return kinds


def _forward(value: np.ndarray, kind: str) -> np.ndarray:
    value = np.asarray(value, np.float64)
    if kind == "real":
        return value.ravel()
    if kind in ("positive", "simplex"):
        return np.log(np.maximum(value, _TINY)).ravel()
    if kind == "unit":
        return (np.log(np.maximum(value, _TINY)) - np.log(np.maximum(1.0 - value, _TINY))).ravel()
    if kind == "spd":
        chol = np.linalg.cholesky(value)
        diag = np.arange(value.shape[-1])
        chol[..., diag, diag] = np.log(chol[..., diag, diag])
        rows, cols = np.tril_indices(value.shape[-1])
        return chol[..., rows, cols].ravel()
    raise AssertionError(kind)


def _size(value: np.ndarray, kind: str) -> int:
    if kind == "spd":
        d = value.shape[-1]
        return int(np.prod(value.shape[:-2], dtype=np.int64)) * d * (d + 1) // 2
    return int(value.size)


def _backward(flat: np.ndarray, like: np.ndarray, kind: str) -> np.ndarray:
    if kind == "real":
        return flat.reshape(like.shape)
    if kind == "positive":
        return np.exp(flat).reshape(like.shape)
    if kind == "unit":
        return (1.0 / (1.0 + np.exp(-flat))).reshape(like.shape)
    if kind == "simplex":
        logs = flat.reshape(like.shape)
        out = np.exp(logs - logs.max(axis=-1, keepdims=True))
        return out / out.sum(axis=-1, keepdims=True)
    if kind == "spd":
        d = like.shape[-1]
        rows, cols = np.tril_indices(d)
        chol = np.zeros(like.shape)
        chol[..., rows, cols] = flat.reshape(*like.shape[:-2], -1)
        diag = np.arange(d)
        chol[..., diag, diag] = np.exp(chol[..., diag, diag])
        return chol @ np.swapaxes(chol, -1, -2)
    raise AssertionError(kind)


def _fields_state(prefix: str, params: Any) -> dict[str, np.ndarray]:
    """The fields of ``params`` as ``"<prefix>.<field>"`` arrays, exactly (no vector round trip), or nothing."""
    if params is None:
        return {}
    return {f"{prefix}.{f.name}": np.asarray(getattr(params, f.name)) for f in dataclasses.fields(params)}


def _params_from_state(prefix: str, state: Mapping[str, Any], like: Any) -> Any:
    """The parameters :func:`_fields_state` wrote under ``prefix``, shaped as ``like``; None if absent."""
    head = prefix + "."
    fields = {k[len(head):]: np.asarray(v) for k, v in state.items() if k.startswith(head)}
    return dataclasses.replace(like, **fields) if fields else None


def to_vector(model: Any, params: Any) -> np.ndarray:
    """The extrapolated fields of ``params`` as one unconstrained float64 vector."""
    kinds = constraints_of(model, params)
    parts = [
        _forward(getattr(params, name), kind) for name, kind in kinds.items() if kind not in ("derived", "fixed")
    ]
    return np.concatenate(parts) if parts else np.zeros(0)


def from_vector(model: Any, vector: np.ndarray, like: Any) -> Any:
    """Parameters of the same class and shapes as ``like`` from :func:`to_vector`'s output.

    Fixed fields are taken from ``like``; derived fields are recomputed by
    the model's ``complete_params``.
    """
    kinds = constraints_of(model, like)
    changes = {}
    start = 0
    for name, kind in kinds.items():
        if kind in ("derived", "fixed"):
            continue
        old = np.asarray(getattr(like, name))
        size = _size(old, kind)
        changes[name] = _backward(vector[start : start + size], old, kind).astype(old.dtype, copy=False)
        start += size
    params = dataclasses.replace(like, **changes)
    return hooks(model).complete_params(params)


@dataclasses.dataclass
class Squarem:
    """The state of a SQUAREM (S3) fit between passes.

    Parameters
    ----------
    model : EMModel
        Supplies the constraints and ``complete_params``.
    step_max0, mstep : float
        Initial largest step and the factor it grows (or shrinks) by, as in
        the R package ``SQUAREM`` (1 and 4).

    Attributes
    ----------
    stage : int
        Which point the next pass evaluates: 0 the cycle's start ``p0``,
        1 its EM image ``p1``, 2 the extrapolated point.
    n_rejected : int
        Extrapolated points refused by the monotone safeguard.
    """

    name = "squarem"
    #: A change of the log-likelihood into an extrapolated point is not an
    #: EM step's and says nothing about convergence: only plain steps are tested.
    tests_extrapolated = False

    model: Any
    step_max0: float = 1.0
    mstep: float = 4.0
    step_max: float = 1.0
    stage: int = 0
    n_rejected: int = 0
    _p0: np.ndarray | None = None
    _p1: np.ndarray | None = None
    _p2: Any = None
    _loglik1: float = -math.inf
    _alpha: float = 1.0

    def __post_init__(self) -> None:
        self.step_max = max(self.step_max, self.step_max0)

    @property
    def extrapolating(self) -> bool:
        """Whether the next pass evaluates an extrapolated point (which may be invalid)."""
        return self.stage == 2

    def step(self, evaluated: Any, loglik: float, image: Any) -> tuple[Any, bool]:
        """Advance after one pass.

        Parameters
        ----------
        evaluated : params
            The point the pass evaluated (the E-step's parameters).
        loglik : float
            Its log-likelihood, from the same pass (may be non-finite at an
            extrapolated point).
        image : params or None
            The M-step's result ``F(evaluated)`` (None if the M-step failed,
            which only an extrapolated point may cause).

        Returns
        -------
        next_params : params
            The point the next pass must evaluate.
        accepted : bool
            Whether ``loglik`` belongs to the fit's monotone history; False
            only for an extrapolated point refused by the safeguard.
        """
        if self.stage == 0:
            self._p0 = to_vector(self.model, evaluated)
            self.stage = 1
            return image, True
        if self.stage == 1:
            self._p1 = to_vector(self.model, evaluated)
            self._loglik1 = loglik
            p2 = to_vector(self.model, image)
            r = self._p1 - self._p0
            v = p2 - 2.0 * self._p1 + self._p0
            sv2 = float(v @ v)
            alpha = math.sqrt(float(r @ r) / sv2) if sv2 > 0 else 1.0
            self._alpha = alpha = max(1.0, min(self.step_max, alpha))
            self._p2 = image
            if abs(alpha - 1.0) <= 0.01 or not np.all(np.isfinite(r)):
                return self._accept(image)  # the extrapolation is the EM point itself
            self.stage = 2
            try:
                return from_vector(self.model, self._p0 + 2.0 * alpha * r + alpha * alpha * v, image), True
            except (np.linalg.LinAlgError, ValueError, FloatingPointError):
                return self._reject()
        # stage 2: the extrapolated point's own pass
        if image is None or not (math.isfinite(loglik) and loglik >= self._loglik1):
            return self._reject()
        return self._accept(image)

    def _accept(self, image: Any) -> tuple[Any, bool]:
        """Start the next cycle at ``image``; a step at the largest length lets it grow."""
        if self._alpha == self.step_max:
            self.step_max *= self.mstep
        self.stage, self._p2 = 0, None
        return image, True

    def _reject(self) -> tuple[Any, bool]:
        """Take the plain EM point ``p2``; a refused step at the largest length shrinks it."""
        self.n_rejected += 1
        if self._alpha == self.step_max:
            self.step_max = max(self.step_max0, self.step_max / self.mstep)
        self._alpha = 1.0
        p2 = self._p2
        self._accept(p2)
        return p2, False

    def state(self) -> dict[str, Any]:
        """What a checkpoint must hold to continue bit-identically: a flat dict of numbers and arrays.

        ``p2`` is kept as the M-step left it (``"p2.<field>"``): a round
        trip through the unconstrained vector would round it.
        """
        return {
            "stage": self.stage,
            "step_max": self.step_max,
            "n_rejected": self.n_rejected,
            "loglik1": self._loglik1,
            "alpha": self._alpha,
            "p0": self._p0,
            "p1": self._p1,
            **_fields_state("p2", self._p2),
        }

    def restore(self, state: Mapping[str, Any], like: Any) -> None:
        """Continue from :meth:`state` (``like`` gives the parameter class and shapes).

        Raises
        ------
        ValueError
            If the state is not one this class writes (a damaged or crafted file).
        """
        stage = int(state["stage"])
        if stage not in (0, 1, 2) or (stage >= 1 and state.get("p0") is None) or (stage == 2 and "p1" not in state):
            raise ValueError(f"accelerated EM state with stage {stage!r} is incomplete")
        vectors = {}
        size = to_vector(self.model, like).size
        for key in ("p0", "p1"):
            value = state.get(key)
            if value is not None:
                value = np.asarray(value, np.float64)
                if value.shape != (size,) or not np.all(np.isfinite(value)):
                    raise ValueError(f"accelerated EM state {key!r} is not a finite vector of length {size}")
            vectors[key] = value
        self.stage = stage
        self.step_max = float(state["step_max"])
        self.n_rejected = int(state["n_rejected"])
        self._loglik1 = float(state["loglik1"])
        self._alpha = float(state["alpha"])
        self._p0, self._p1 = vectors["p0"], vectors["p1"]
        self._p2 = _params_from_state("p2", state, like)
        if stage == 2 and self._p2 is None:
            raise ValueError("accelerated EM state at stage 2 lacks the EM point p2")


@dataclasses.dataclass
class Anderson:
    """The state of an Anderson-accelerated EM fit between passes.

    Each accepted pass adds its point ``x`` and EM image ``g = F(x)`` (as
    unconstrained vectors) to a memory of the last ``memory + 1``; the next
    point is ``g_k - dG @ gamma`` where ``gamma`` minimises
    ``|f_k - dF @ gamma|^2 + ridge * trace * |gamma|^2`` over the columns of
    differences of residuals ``f = g - x`` (``dF``) and of images (``dG``):
    Anderson's type-II update, which reduces to plain EM with an empty memory.

    Parameters
    ----------
    model : EMModel
        Supplies the constraints and ``complete_params``.
    memory : int
        How many past differences the least-squares step combines (``m``).
    ridge : float
        Tikhonov regularisation of the least-squares step, relative to the
        trace of ``dF.T @ dF`` (keeps nearly collinear residuals stable).

    Attributes
    ----------
    n_rejected : int
        Proposals refused by the monotone safeguard.
    """

    model: Any
    memory: int = 5
    ridge: float = 1e-10
    n_rejected: int = 0
    _extrapolating: bool = False
    _x: list[np.ndarray] = dataclasses.field(default_factory=list)
    _g: list[np.ndarray] = dataclasses.field(default_factory=list)
    _loglik: float = -math.inf
    _image: Any = None

    name = "anderson"
    #: Every accepted point is a step of the accelerated sequence: its change
    #: of log-likelihood is the one tested against ``tol``.
    tests_extrapolated = True

    @property
    def extrapolating(self) -> bool:
        """Whether the next pass evaluates a proposal rather than a plain EM image."""
        return self._extrapolating

    def step(self, evaluated: Any, loglik: float, image: Any) -> tuple[Any, bool]:
        """Advance after one pass (the arguments and results of :meth:`Squarem.step`)."""
        if self._extrapolating and (image is None or not (math.isfinite(loglik) and loglik >= self._loglik)):
            self.n_rejected += 1
            # the memory led astray: start it again from plain EM steps
            self._x, self._g, self._extrapolating = [], [], False
            return self._image, False
        self._loglik, self._image = loglik, image
        self._x = [*self._x, to_vector(self.model, evaluated)][-(self.memory + 1):]
        self._g = [*self._g, to_vector(self.model, image)][-(self.memory + 1):]
        proposal = self._proposal()
        self._extrapolating = proposal is not None
        if proposal is None:
            return image, True
        try:
            return from_vector(self.model, proposal, image), True
        except (np.linalg.LinAlgError, ValueError, FloatingPointError):
            self._extrapolating = False
            return image, True

    def _proposal(self) -> np.ndarray | None:
        """The Anderson point from the memory, or None when it is the EM image itself."""
        if len(self._x) < 2:
            return None
        G = np.array(self._g)
        F = G - np.array(self._x)
        dF, dG = np.diff(F, axis=0).T, np.diff(G, axis=0).T
        gram = dF.T @ dF
        scale = float(np.trace(gram))
        if not (math.isfinite(scale) and scale > 0):
            return None
        gram[np.diag_indices_from(gram)] += self.ridge * scale
        try:
            gamma = np.linalg.solve(gram, dF.T @ F[-1])
        except np.linalg.LinAlgError:
            return None
        proposal = G[-1] - dG @ gamma
        return proposal if np.all(np.isfinite(proposal)) else None

    def state(self) -> dict[str, Any]:
        """What a checkpoint must hold to continue bit-identically (see :meth:`Squarem.state`)."""
        return {
            "extrapolating": int(self._extrapolating),
            "n_rejected": self.n_rejected,
            "loglik": self._loglik,
            "x": np.array(self._x) if self._x else None,
            "g": np.array(self._g) if self._g else None,
            **_fields_state("image", self._image),
        }

    def restore(self, state: Mapping[str, Any], like: Any) -> None:
        """Continue from :meth:`state`; ``like`` and the errors as in :meth:`Squarem.restore`."""
        size = to_vector(self.model, like).size
        memory = []
        for key in ("x", "g"):
            value = state.get(key)
            value = np.zeros((0, size)) if value is None else np.asarray(value, np.float64)
            if value.ndim != 2 or value.shape[1] != size or len(value) > self.memory + 1 or not np.all(
                np.isfinite(value)
            ):
                raise ValueError(f"Anderson state {key!r} is not a finite array of rows of length {size}")
            memory.append([row.copy() for row in value])
        if len(memory[0]) != len(memory[1]):
            raise ValueError("Anderson state holds different numbers of points and images")
        image = _params_from_state("image", state, like)
        self._extrapolating = bool(int(state["extrapolating"]))
        if self._extrapolating and image is None:
            raise ValueError("Anderson state with a pending proposal lacks the last EM image")
        self.n_rejected = int(state["n_rejected"])
        self._loglik = float(state["loglik"])
        self._x, self._g = memory
        self._image = image


def make_accelerator(name: str | None, model: Any) -> Squarem | Anderson | None:
    """The accelerator ``fit_em(accelerate=name)`` runs, or None for plain EM."""
    if name in (None, "none"):
        return None
    if name == "squarem":
        return Squarem(model)
    if name == "anderson":
        return Anderson(model)
    raise ValueError(f"accelerate must be None, 'none' or one of {ACCELERATORS}, got {name!r}")
