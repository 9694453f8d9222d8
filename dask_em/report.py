"""Reports of fitted models: PNG pictures and an HTML page that shows them.

:func:`make_report` draws, for any fitted estimator that has them:

- the convergence curve (``lower_bounds_`` or ``history_``) with the
  change per iteration on a log scale;
- for mixtures (and Gaussian HMMs) a 2-D projection of a data sample
  coloured by the most likely component, with every component's mean,
  weight and covariance ellipses (1 and 2 standard deviations) projected
  onto the same plane;
- for variational mixtures (``BayesianGaussianMixture``) the expected
  weight of every component, the active ones coloured;
- for HMMs the transition matrix as a heat map and a decoded sample
  sequence (Viterbi states shaded behind the observations);
- for mixtures of linear experts each expert's fitted line over its gate,
  the conditional mean, and the sample coloured by the most probable expert.

The data sample is a few whole blocks read into memory (``sample_size``
rows in all), never a pass over all the data.

matplotlib is optional (``pip install 'dask-em[report]'``); figures are
drawn on Agg canvases, without pyplot, so no display and no global
backend state are involved.
"""

from __future__ import annotations

import base64
import html
import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MissingDependencyError", "make_report"]

#: Steps of the decoded HMM sequence that are drawn.
MAX_SEQUENCE_STEPS = 400
#: Observation features drawn in the decoded sequence plot.
MAX_SEQUENCE_FEATURES = 3
#: Figure resolution (dots per inch).
DPI = 100


class MissingDependencyError(ImportError):
    """matplotlib is needed for reports and is not installed (exit code 1 in the CLI)."""

    exit_code = 1


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise MissingDependencyError(
            "reports need matplotlib, which is not installed; install it with "
            "pip install 'dask-em[report]' (or pip install matplotlib)"
        ) from None
    return matplotlib


def _figure(width: float, height: float) -> Any:
    """A matplotlib Figure on an Agg canvas (no pyplot, no display needed)."""
    _matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["turbo"](i / max(n - 1, 1)) for i in range(n)]


# -- what the estimator holds ---------------------------------------------------------


def _convergence(est: Any) -> tuple[np.ndarray, str] | None:
    """The log-likelihood per iteration and what it is, or None."""
    if getattr(est, "weight_concentration_", None) is not None and len(getattr(est, "lower_bounds_", ())):
        return np.asarray(est.lower_bounds_, dtype=float), "lower bound (ELBO, total)"
    if getattr(est, "lower_bounds_", None) is not None and len(est.lower_bounds_):
        return np.asarray(est.lower_bounds_, dtype=float), "log-likelihood per sample"
    if getattr(est, "history_", None) is not None and len(est.history_):
        return np.asarray(est.history_, dtype=float), "total log-likelihood"
    return None


def _full_covariances(covariances: np.ndarray, covariance_type: str, n_components: int, n_features: int) -> np.ndarray:
    c = np.asarray(covariances, dtype=float)
    if covariance_type == "full":
        return c
    if covariance_type == "tied":
        return np.broadcast_to(c, (n_components, n_features, n_features)).copy()
    if covariance_type == "diag":
        return np.stack([np.diag(v) for v in c])
    if covariance_type == "spherical":
        return np.stack([v * np.eye(n_features) for v in c])
    raise ValueError(f"unknown covariance_type {covariance_type!r}")


def _stationary(transmat: np.ndarray) -> np.ndarray:
    """Stationary distribution of a transition matrix (the long-run share of each state)."""
    values, vectors = np.linalg.eig(np.asarray(transmat, dtype=float).T)
    v = np.abs(np.real(vectors[:, np.argmin(np.abs(values - 1.0))]))
    total = v.sum()
    return v / total if total > 0 else np.full(len(v), 1.0 / len(v))


@dataclass
class _Components:
    """Component locations of a fitted model, in the data's coordinates."""

    means: np.ndarray  # (K, D)
    covariances: np.ndarray | None  # (K, D, D) or None when not Gaussian-like
    weights: np.ndarray | None  # (K,)
    label: str  # "component", "state" or "cluster"
    weight_name: str  # what the weights are
    kind: str  # "gaussian", "poisson" or "other": how 1-D densities are drawn


def _components(est: Any) -> _Components | None:
    """Means, covariances and weights of the components, or None for other models."""
    if hasattr(est, "transmat_"):
        if getattr(est, "means_", None) is None or getattr(est, "covars_", None) is None:
            return None
        return _Components(np.asarray(est.means_, float), np.asarray(est.covars_, float),
                           _stationary(est.transmat_), "state", "stationary share", "gaussian")
    weights = getattr(est, "weights_", None)
    weights = None if weights is None else np.asarray(weights, dtype=float)
    if getattr(est, "means_", None) is not None and getattr(est, "covariances_", None) is not None:
        means = np.asarray(est.means_, dtype=float)
        K, D = means.shape
        covs = _full_covariances(est.covariances_, getattr(est, "covariance_type", "full"), K, D)
        return _Components(means, covs, weights, "component", "weight", "gaussian")
    if getattr(est, "lambdas_", None) is not None:
        lambdas = np.atleast_2d(np.asarray(est.lambdas_, dtype=float))
        return _Components(lambdas, np.stack([np.diag(v) for v in lambdas]), weights, "component", "weight",
                           "poisson")
    probabilities = getattr(est, "probabilities_", None)
    if probabilities is not None and np.ndim(probabilities) == 2 and type(est).__name__ == "BernoulliMixture":
        p = np.asarray(probabilities, dtype=float)
        return _Components(p, np.stack([np.diag(v * (1 - v)) for v in p]), weights, "component", "weight", "other")
    if getattr(est, "cluster_centers_", None) is not None:
        return _Components(np.asarray(est.cluster_centers_, float), None, None, "cluster", "", "other")
    if getattr(est, "mean_", None) is not None and getattr(est, "covariance_", None) is not None:
        mean = np.atleast_2d(np.asarray(est.mean_, float))
        cov = np.asarray(est.covariance_, float).reshape(1, mean.shape[1], mean.shape[1])
        return _Components(mean, cov, np.ones(1), "component", "weight", "gaussian")
    return None


# -- the data sample -------------------------------------------------------------------


def _compute(client: Any, *collections: Any) -> list[Any]:
    from .executor import compute

    return list(compute(client, *collections))


def _row_sample(data: Any, n: int, rng: np.random.Generator, client: Any) -> np.ndarray:
    """About ``n`` rows of ``data`` in memory, from a few randomly chosen whole blocks."""
    if isinstance(data, np.ndarray):
        X = data if data.ndim == 2 else data.reshape(-1, 1)
        return X[np.sort(rng.choice(len(X), n, replace=False))] if len(X) > n else X
    from .data import as_dask_array

    X = as_dask_array(data)
    chosen, rows = [], 0
    for i in rng.permutation(X.numblocks[0]):
        chosen.append(int(i))
        rows += X.chunks[0][i]
        if rows >= n:
            break
    chosen.sort()
    sample = np.concatenate(_compute(client, *[X.blocks[i] for i in chosen]), axis=0).astype(float, copy=False)
    if len(sample) > n:
        sample = sample[np.sort(rng.choice(len(sample), n, replace=False))]
    return sample


def _sequence_sample(data: Any, lengths: Any, n: int, rng: np.random.Generator, client: Any, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """About ``n`` steps of whole sequences (values, lengths) from a few partitions."""
    from .data.sequences import sequence_blocks

    blocks = sequence_blocks(data, lengths, client=client, persist=False, dtype=dtype)
    parts = blocks.sample_parts(n, rng)
    values = np.concatenate([np.asarray(v) for v, _ in parts], axis=0)
    seq_lengths = np.concatenate([np.asarray(ln, dtype=np.int64) for _, ln in parts])
    return values, seq_lengths


# -- the pictures ------------------------------------------------------------------------


def plot_convergence(est: Any) -> Any:
    """Log-likelihood per iteration and its change on a log scale; None without a history."""
    found = _convergence(est)
    if found is None:
        return None
    values, what = found
    fig = _figure(8.0, 3.4)
    left, right = fig.subplots(1, 2)
    iterations = np.arange(1, len(values) + 1)
    left.plot(iterations, values, marker="o", markersize=3, color="#1f77b4")
    left.set_xlabel("iteration")
    left.set_ylabel(what)
    left.set_title("log-likelihood")
    left.grid(alpha=0.3)
    left.ticklabel_format(axis="y", useOffset=False)
    from matplotlib.ticker import MaxNLocator

    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(values) > 1:
        change = np.diff(values)
        shown = np.abs(change)
        shown[shown == 0] = np.nan
        right.semilogy(iterations[1:], shown, marker="o", markersize=3, color="#2ca02c", label="|change|")
        decreases = change < 0
        if decreases.any():
            right.semilogy(iterations[1:][decreases], shown[decreases], "v", color="#d62728", label="decrease")
        tol = getattr(est, "tol", None)
        if isinstance(tol, (int, float)) and tol > 0:
            right.axhline(tol, color="0.4", linestyle="--", linewidth=1, label=f"tol = {tol:g}")
        right.legend(loc="upper right", fontsize=8, frameon=False)
    else:
        right.text(0.5, 0.5, "one iteration", ha="center", va="center", transform=right.transAxes)
    right.set_xlim(left.get_xlim())  # the same iterations line up in both panels
    right.set_xlabel("iteration")
    right.set_title("change per iteration")
    right.grid(alpha=0.3, which="both")
    converged = getattr(est, "converged_", None)
    status = "" if converged is None else (" - converged" if converged else " - did not converge")
    fig.suptitle(f"{type(est).__name__}: {len(values)} iterations{status}", fontsize=11)
    return fig


def _projection(sample: np.ndarray | None, comps: _Components) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A 2-D projection (center, (2, D) directions, axis labels): PCA of the sample, else of the model."""
    D = comps.means.shape[1]
    if D == 2:
        return np.zeros(2), np.eye(2), ["feature 0", "feature 1"]
    if sample is not None and len(sample) > 2:
        center = sample.mean(axis=0)
        cov = np.cov(sample - center, rowvar=False)
        source = "of the data sample"
    else:
        w = comps.weights if comps.weights is not None else np.full(len(comps.means), 1.0 / len(comps.means))
        center = w @ comps.means
        deviations = comps.means - center
        # The covariance the model implies: between components plus within them.
        cov = (deviations.T * w) @ deviations
        if comps.covariances is not None:
            cov = cov + np.einsum("k,kij->ij", w, comps.covariances)
        source = "of the fitted model"
    values, vectors = np.linalg.eigh(np.atleast_2d(cov))
    order = np.argsort(values)[::-1][:2]
    directions = vectors[:, order].T
    # Deterministic signs: the largest loading of each direction is positive.
    signs = np.sign(directions[np.arange(2), np.abs(directions).argmax(axis=1)])
    directions = directions * np.where(signs == 0, 1.0, signs)[:, None]
    share = values[order] / max(values.sum(), 1e-300)
    labels = [f"PC{i + 1} ({100 * share[i]:.0f}% of variance {source})" for i in range(2)]
    return center, directions, labels


def _ellipse(ax: Any, center: np.ndarray, cov: np.ndarray, n_std: float, color: Any, **kwargs: Any) -> None:
    from matplotlib.patches import Ellipse

    values, vectors = np.linalg.eigh(cov)
    values = np.clip(values, 0.0, None)
    angle = math.degrees(math.atan2(vectors[1, 1], vectors[0, 1]))
    ax.add_patch(Ellipse(tuple(center), 2 * n_std * math.sqrt(values[1]), 2 * n_std * math.sqrt(values[0]),
                         angle=angle, color=color, **kwargs))


def _predict(est: Any, sample: np.ndarray) -> np.ndarray | None:
    try:
        labels = est.predict(sample)
        if hasattr(labels, "compute"):
            labels = labels.compute()
        return np.asarray(labels, dtype=np.int64)
    except Exception:  # colouring is a nicety; points are drawn grey without it
        return None


def plot_projection(est: Any, sample: np.ndarray | None = None, labels: np.ndarray | None = None) -> Any:
    """Data sample and components on a 2-D plane (1-D: histogram and densities); None if not a mixture."""
    comps = _components(est)
    if comps is None:
        return None
    K, D = comps.means.shape
    colors = _colors(K)
    if labels is None and sample is not None:
        labels = _predict(est, sample)
    if D == 1:
        return _plot_1d(est, comps, sample, labels, colors)
    center, P, axis_labels = _projection(sample, comps)
    fig = _figure(7.0, 5.6)
    ax = fig.subplots()
    if sample is not None:
        points = (sample - center) @ P.T
        point_colors = "0.6" if labels is None else [colors[int(j) % K] for j in labels]
        ax.scatter(points[:, 0], points[:, 1], s=4, c=point_colors, alpha=0.35, linewidths=0, rasterized=True)
    means = (comps.means - center) @ P.T
    max_weight = float(comps.weights.max()) if comps.weights is not None else 1.0
    for k in range(K):
        if comps.covariances is not None:
            cov = P @ comps.covariances[k] @ P.T
            _ellipse(ax, means[k], cov, 1.0, colors[k], fill=True, alpha=0.18, linewidth=0)
            _ellipse(ax, means[k], cov, 1.0, colors[k], fill=False, linewidth=1.8)
            _ellipse(ax, means[k], cov, 2.0, colors[k], fill=False, linewidth=1.0, linestyle="--")
        size = 60 + 240 * (comps.weights[k] / max_weight if comps.weights is not None else 0.5)
        label = f"{comps.label} {k}"
        if comps.weights is not None:
            label += f"  ({comps.weight_name} {comps.weights[k]:.3f})"
        ax.scatter(*means[k], s=size, marker="X", color=colors[k], edgecolors="black", linewidths=1.0,
                   zorder=5, label=label)
        ax.annotate(str(k), means[k], textcoords="offset points", xytext=(7, 7), fontsize=9, fontweight="bold",
                    zorder=6)
    ax.autoscale_view()
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    if D == 2:
        ax.set_aspect("equal", adjustable="datalim")
    ax.grid(alpha=0.3)
    if K <= 12:
        ax.legend(loc="best", fontsize=8, framealpha=0.85, markerscale=0.6)
    what = f"{len(sample):,} sampled rows" if sample is not None else "no data given: components only"
    shapes = "; ellipses at 1 and 2 standard deviations" if comps.covariances is not None else ""
    ax.set_title(f"{type(est).__name__}: {K} {comps.label}s\n{what}{shapes}", fontsize=10)
    return fig


def _plot_1d(est: Any, comps: _Components, sample: np.ndarray | None, labels: np.ndarray | None, colors: list[Any]) -> Any:
    from scipy import stats

    K = comps.means.shape[0]
    if sample is None and comps.kind not in ("gaussian", "poisson"):
        return None
    fig = _figure(7.0, 4.2)
    ax = fig.subplots()
    weights = comps.weights if comps.weights is not None else np.full(K, 1.0 / K)
    if sample is not None:
        x = sample[:, 0]
        lo, hi = float(x.min()), float(x.max())
        bins = np.arange(math.floor(lo) - 0.5, math.ceil(hi) + 1.5) if comps.kind == "poisson" and hi - lo < 80 else 60
        if labels is not None:
            ax.hist([x[labels == k] for k in range(K)], bins=bins, density=False, stacked=True, color=colors,
                    alpha=0.45, weights=[np.full((labels == k).sum(), 1.0 / (len(x) * _bin_width(bins, x)))
                                         for k in range(K)])
        else:
            ax.hist(x, bins=bins, density=True, color="0.7")
    else:
        spread = np.sqrt(comps.covariances[:, 0, 0]) if comps.covariances is not None else np.ones(K)
        lo = float((comps.means[:, 0] - 4 * spread).min())
        hi = float((comps.means[:, 0] + 4 * spread).max())
    if comps.kind == "gaussian" and comps.covariances is not None:
        grid = np.linspace(lo, hi, 400)
        sd = np.sqrt(comps.covariances[:, 0, 0])
        parts = [weights[k] * stats.norm.pdf(grid, comps.means[k, 0], sd[k]) for k in range(K)]
        for k in range(K):
            ax.plot(grid, parts[k], color=colors[k], linewidth=1.6,
                    label=f"{comps.label} {k}  ({comps.weight_name} {weights[k]:.3f})")
        ax.plot(grid, np.sum(parts, axis=0), color="black", linewidth=1.2, linestyle="--", label="mixture")
    elif comps.kind == "poisson":
        grid = np.arange(max(0, math.floor(lo)), math.ceil(hi) + 1)
        parts = [weights[k] * stats.poisson.pmf(grid, comps.means[k, 0]) for k in range(K)]
        for k in range(K):
            ax.plot(grid, parts[k], "o-", markersize=3, color=colors[k], linewidth=1.2,
                    label=f"{comps.label} {k}  ({comps.weight_name} {weights[k]:.3f})")
        ax.plot(grid, np.sum(parts, axis=0), color="black", linewidth=1.2, linestyle="--", label="mixture")
    ax.set_xlabel("feature 0")
    ax.set_ylabel("density")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8, frameon=False)
    what = f"{len(sample):,} sampled rows" if sample is not None else "components only"
    ax.set_title(f"{type(est).__name__}: {K} {comps.label}s, {what}", fontsize=10)
    return fig


def _bin_width(bins: Any, x: np.ndarray) -> float:
    if isinstance(bins, int):
        span = float(x.max() - x.min())
        return span / bins if span > 0 else 1.0
    return float(bins[1] - bins[0])


def _is_experts(est: Any) -> bool:
    """A mixture of linear experts (coefficients of shape (K, T, D))."""
    return np.ndim(getattr(est, "coef_", None)) == 3


def _experts_sample(est: Any, data: Any) -> Any:
    """For a mixture of experts, a Zarr group of arrays ``X`` and ``y`` read as one table (targets last)."""
    if isinstance(data, (str, os.PathLike)):
        from .errors import InvalidDataError
        from .estimators.experts import xy_array

        try:
            return xy_array(data)[0]
        except InvalidDataError:  # one array: its last columns are the targets
            pass
    return data


def plot_experts(est: Any, sample: np.ndarray | None = None) -> Any:
    """Each expert's fitted line against the input feature whose slopes differ most, per target (up to 3).

    Along that feature the other inputs are held at the expert's gate
    centre; each line spans its gate (centre +/- 2 standard deviations, or
    the sampled rows of the expert with constant gates). The sample is
    ``[inputs, targets]`` rows coloured by the most probable expert given
    both, with the conditional mean ``predict`` drawn over them when there
    is one input.
    """
    coef, intercept = np.asarray(est.coef_, float), np.asarray(est.intercept_, float)
    K, T, D = coef.shape
    j = int(np.argmax(coef.std(axis=0).max(axis=0))) if K > 1 else 0
    targets = list(range(min(T, 3)))
    colors = _colors(K)
    fig = _figure(6.0 * len(targets), 4.6)
    axes = np.atleast_1d(fig.subplots(1, len(targets)))
    labels = None
    if sample is not None and sample.shape[1] == D + T:
        labels = np.asarray(est.predict_proba(sample[:, :D], sample[:, D:])).argmax(axis=1)
    means = np.asarray(est.means_, float)
    cov = np.asarray(getattr(est, "covariances_", np.zeros(0)), float)
    for ax, t in zip(axes, targets):
        if labels is not None:
            ax.scatter(sample[:, j], sample[:, D + t], s=4, c=[colors[k] for k in labels], alpha=0.35,
                       linewidths=0, rasterized=True)
        for k in range(K):
            if cov.size:
                sd = math.sqrt(float(_full_covariances(cov, est.covariance_type, K, D)[k][j, j]))
                lo, hi = means[k, j] - 2 * sd, means[k, j] + 2 * sd
            elif labels is not None and (labels == k).any():
                lo, hi = float(sample[labels == k, j].min()), float(sample[labels == k, j].max())
            else:
                lo, hi = means[k, j] - 1.0, means[k, j] + 1.0
            grid = np.linspace(lo, hi, 50)
            base = intercept[k, t] + coef[k, t] @ means[k] - coef[k, t, j] * means[k, j]
            ax.plot(grid, base + coef[k, t, j] * grid, color=colors[k], linewidth=2.2,
                    label=f"expert {k} (weight {est.weights_[k]:.3f}): slope {coef[k, t, j]:.3g}")
        if D == 1 and sample is not None and cov.size:  # constant gates: no input-dependent mean worth drawing
            grid = np.linspace(float(sample[:, 0].min()), float(sample[:, 0].max()), 200)
            mean = np.asarray(est.predict(grid[:, None])).reshape(len(grid), -1)[:, t]
            ax.plot(grid, mean, color="black", linewidth=1.2, linestyle="--", label="E[y | x]")
        ax.set_xlabel(f"input {j}")
        ax.set_ylabel(f"target {t}")
        ax.grid(alpha=0.3)
        if K <= 12:
            ax.legend(loc="best", fontsize=8, framealpha=0.85)
    what = f"{len(sample):,} sampled rows" if labels is not None else "no data given: the lines only"
    fig.suptitle(f"{type(est).__name__}: {K} experts; {what}", fontsize=10)
    return fig


#: A variational mixture's component is active when its expected weight is at least this.
ACTIVE_WEIGHT = 1e-3


def plot_active_components(est: Any) -> Any:
    """Expected weights of a variational mixture's components, the active ones coloured; None for other models."""
    if getattr(est, "weight_concentration_", None) is None or getattr(est, "weights_", None) is None:
        return None
    weights = np.asarray(est.weights_, dtype=float)
    K = len(weights)
    active = weights >= ACTIVE_WEIGHT
    colors = _colors(K)
    fig = _figure(min(3.0 + 0.35 * K, 10.0), 3.4)
    ax = fig.subplots()
    ax.bar(np.arange(K), np.maximum(weights, 1e-300), color=[colors[k] if active[k] else "0.75" for k in range(K)])
    ax.axhline(ACTIVE_WEIGHT, color="0.4", linestyle="--", linewidth=1, label=f"active: weight >= {ACTIVE_WEIGHT:g}")
    ax.set_yscale("log")
    ax.set_ylim(max(min(float(weights.min()), ACTIVE_WEIGHT) / 10, 1e-12), 1.5)
    ax.set_xlabel("component")
    ax.set_ylabel("expected weight")
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    kind = getattr(est, "weight_concentration_prior_type", "")
    ax.set_title(f"{type(est).__name__}: {int(active.sum())} of {K} components active ({kind})", fontsize=10)
    return fig


def plot_transitions(est: Any) -> Any:
    """The transition matrix of an HMM as a heat map; None for other models."""
    transmat = getattr(est, "transmat_", None)
    if transmat is None:
        return None
    A = np.asarray(transmat, dtype=float)
    K = A.shape[0]
    side = min(2.0 + 0.55 * K, 9.0)
    fig = _figure(side + 1.4, side)
    ax = fig.subplots()
    image = ax.imshow(A, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="probability")
    if K <= 12:
        for i in range(K):
            for j in range(K):
                ax.text(j, i, f"{A[i, j]:.2f}", ha="center", va="center", fontsize=9 if K <= 8 else 7,
                        color="black" if A[i, j] > 0.6 else "white")
    ticks = np.arange(K) if K <= 20 else np.linspace(0, K - 1, 11).astype(int)
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xlabel("to state")
    ax.set_ylabel("from state")
    ax.set_title(f"{type(est).__name__}: transition probabilities", fontsize=10)
    return fig


def plot_decoded(est: Any, values: np.ndarray, states: np.ndarray) -> Any:
    """Observations of one sequence with the decoded states shaded behind them."""
    from matplotlib.colors import ListedColormap

    K = int(est.transmat_.shape[0])
    colors = _colors(K)
    values = values.reshape(len(values), -1)
    n_show = min(values.shape[1], MAX_SEQUENCE_FEATURES)
    fig = _figure(9.0, 1.2 + 1.5 * n_show)
    axes = np.atleast_1d(fig.subplots(n_show, 1, sharex=True, squeeze=False)[:, 0])
    T = len(states)
    t = np.arange(T)
    means = getattr(est, "means_", None)
    lambdas = getattr(est, "lambdas_", None)
    cmap = ListedColormap(colors)
    for f, ax in enumerate(axes):
        y = values[:, f]
        lo, hi = float(np.min(y)), float(np.max(y))
        pad = 0.08 * (hi - lo) if hi > lo else 1.0
        ax.imshow(states[None, :], aspect="auto", cmap=cmap, vmin=-0.5, vmax=K - 0.5, alpha=0.28,
                  interpolation="nearest", extent=(-0.5, T - 0.5, lo - pad, hi + pad), origin="lower")
        if type(est).__name__ == "CategoricalHMM":
            ax.scatter(t, y, s=6, c=[colors[int(s)] for s in states], zorder=3)
            ax.set_ylabel("symbol")
            from matplotlib.ticker import MaxNLocator

            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        else:
            ax.plot(t, y, color="black", linewidth=0.8, zorder=3)
            level = means if means is not None else lambdas
            if level is not None:
                ax.step(t, np.asarray(level)[states, f], where="mid", color="#d62728", linewidth=1.2, zorder=4,
                        label="mean of the decoded state")
            ax.set_ylabel(f"feature {f}")
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_xlim(-0.5, T - 0.5)
    axes[-1].set_xlabel("step")
    from matplotlib.patches import Patch

    handles = [Patch(color=colors[k], alpha=0.5, label=f"state {k}") for k in range(K)] if K <= 12 else []
    extra = axes[0].get_legend_handles_labels()[0]
    if handles or extra:
        axes[0].legend(handles=handles + extra, loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8,
                       frameon=False)
    shown = f" (first {n_show} of {values.shape[1]} features)" if values.shape[1] > n_show else ""
    fig.suptitle(f"{type(est).__name__}: a sample sequence of {T} steps, Viterbi states shaded{shown}",
                 fontsize=10)
    return fig


# -- the page --------------------------------------------------------------------------------


def _format_value(value: Any) -> str:
    if isinstance(value, np.ndarray) or (isinstance(value, list) and value and not isinstance(value[0], str)):
        arr = np.asarray(value)
        with np.printoptions(precision=4, suppress=True, linewidth=110, threshold=120, edgeitems=4):
            return np.array2string(arr)
    if isinstance(value, float):
        return f"{value:.10g}"
    return repr(value) if isinstance(value, str) else str(value)


def _shape(value: Any) -> str:
    if isinstance(value, (np.ndarray, list)):
        return " x ".join(str(s) for s in np.shape(value)) or "scalar"
    return ""


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1000px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { border: 1px solid #ddd; padding: 0.3em 0.6em; vertical-align: top; text-align: left; }
th { background: #f4f4f4; }
pre { margin: 0; font-size: 0.92em; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: 0.9em; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
"""


def _cpd_tables(est: Any) -> str:
    """A Bayesian network's conditional probability tables: one row per state, one column per parent state."""
    cpds, parents, cards = (getattr(est, k, None) for k in ("cpds_", "parents_", "cardinalities_"))
    if not (isinstance(cpds, dict) and isinstance(parents, dict) and isinstance(cards, dict)):
        return ""
    esc = html.escape
    out = ["<h3>Conditional probability tables</h3>"]
    for name, table in cpds.items():
        pa = parents.get(name, [])
        configs = list(itertools.product(*(range(cards[p]) for p in pa)))  # the last parent varies fastest
        head = "".join(f"<th>{esc(', '.join(f'{p}={s}' for p, s in zip(pa, c))) or 'P'}</th>" for c in configs)
        body = "".join(
            f"<tr><th>{esc(name)}={i}</th>" + "".join(f"<td>{v:.4g}</td>" for v in row) + "</tr>"
            for i, row in enumerate(np.asarray(table))
        )
        given = f" | {', '.join(pa)}" if pa else ""
        out.append(f"<p>P({esc(name)}{esc(given)})</p><table><tr><th></th>{head}</tr>{body}</table>")
    return "".join(out)


def _html(est: Any, title: str, images: list[tuple[str, str, str]], notes: list[str]) -> str:
    """The page: summary, pictures (src, caption, alt) and tables of parameters."""
    esc = html.escape
    name = type(est).__name__
    rows = []
    for key in ("n_iter_", "converged_", "lower_bound_", "inertia_", "n_features_in_"):
        if hasattr(est, key):
            rows.append(f"<tr><th>{esc(key)}</th><td>{esc(_format_value(getattr(est, key)))}</td></tr>")
    summary = "<table>" + "".join(rows) + "</table>" if rows else ""
    params = est.get_params() if hasattr(est, "get_params") else {}
    hyper = "".join(
        f"<tr><th>{esc(k)}</th><td><pre>{esc(_format_value(v))}</pre></td></tr>"
        for k, v in params.items() if v is not None and not isinstance(v, np.ndarray)
    )
    state = est.fitted_state() if hasattr(est, "fitted_state") else {}
    skip = {"n_iter_", "converged_", "lower_bound_", "inertia_", "n_features_in_", "lower_bounds_", "history_",
            "precisions_", "precisions_cholesky_", "labels_"}
    fitted = "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(_shape(v))}</td><td><pre>{esc(_format_value(v))}</pre></td></tr>"
        for k, v in state.items() if k not in skip
    )
    figures = "".join(
        f'<figure><img src="{esc(src, quote=True)}" alt="{esc(alt, quote=True)}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
        for src, caption, alt in images
    )
    note_html = "".join(f"<p><em>{esc(n)}</em></p>" for n in notes)
    figures += _cpd_tables(est)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{esc(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{esc(title)}</h1>
<p>{esc(name)}, fitted with dask-em.</p>
{summary}
{note_html}
<h2>Pictures</h2>
{figures or "<p>No pictures for this model.</p>"}
<h2>Fitted parameters</h2>
<table><tr><th>attribute</th><th>shape</th><th>value</th></tr>{fitted}</table>
<h2>Hyper-parameters</h2>
<table>{hyper}</table>
</body>
</html>
"""


def make_report(
    estimator_or_path: Any,
    output: str | os.PathLike[str],
    *,
    data: Any = None,
    lengths: Sequence[int] | np.ndarray | None = None,
    sample_size: int = 5000,
    embed: bool = False,
    title: str | None = None,
    random_state: int | None = 0,
    client: Any = None,
) -> list[str]:
    """Write an HTML report of a fitted model, with PNG pictures beside it.

    Parameters
    ----------
    estimator_or_path : EMEstimator or str
        A fitted estimator, or the path/URL of a model saved with
        :func:`dask_em.save`.
    output : str or os.PathLike
        The HTML file to write (``report.html``). The pictures are written
        beside it as ``report-convergence.png``, ``report-projection.png``,
        ``report-components.png``, ``report-transitions.png`` and
        ``report-sequence.png``, as far as
        they apply to the model; existing files are replaced.
    data : array-like, dask array, Zarr path or sequences, optional
        The data (or similar data) the model was fitted to. A sample of
        ``sample_size`` rows is read from a few of its blocks for the
        projection of a mixture; for an HMM, a few whole sequences, one of
        which is decoded. Without data, the projection shows the
        components only (PCA of the covariance the model implies) and no
        sequence is decoded.
    lengths : array-like of int, optional
        Sequence lengths of a concatenated HMM ``data``.
    sample_size : int, default=5000
        Rows (HMM: steps) of the data sample.
    embed : bool, default=False
        Embed the pictures in the HTML as base64, making one self-contained
        file (the PNGs are written all the same).
    title : str, optional
        Title of the page; by default the class name.
    random_state : int, optional
        Seed of the choice of sampled blocks and rows.
    client : distributed.Client, optional
        Where the sample is read; by default Dask's default scheduler.

    Returns
    -------
    list of str
        Paths of the PNG files written.

    Raises
    ------
    MissingDependencyError
        When matplotlib is not installed.
    """
    _matplotlib()
    if not isinstance(sample_size, (int, np.integer)) or sample_size < 1:
        raise ValueError(f"sample_size must be a positive integer, got {sample_size!r}")
    est = estimator_or_path
    if isinstance(est, (str, os.PathLike)):
        from .storage.io import load

        est = load(est)
    if not (hasattr(est, "fitted_state") and est.fitted_state()):
        raise ValueError(f"{type(est).__name__} is not fitted; fit it (or load a saved model) before a report")
    output = os.fspath(output)
    folder = os.path.dirname(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    stem = os.path.splitext(os.path.basename(output))[0]
    rng = np.random.default_rng(random_state)
    is_hmm = hasattr(est, "transmat_")
    notes: list[str] = []

    sample = labels = None
    sequence = None
    if data is not None:
        if is_hmm:
            values, seq_lengths = _sequence_sample(data, lengths, sample_size, rng, client,
                                                   getattr(est, "_values_dtype", None))
            sample = values.astype(float).reshape(len(values), -1)
            first = int(seq_lengths[0])
            sequence = values[: min(first, MAX_SEQUENCE_STEPS)]
            labels = np.asarray(est.decode(values, seq_lengths)[1], dtype=np.int64)
            if first > MAX_SEQUENCE_STEPS:
                notes.append(f"The decoded sequence shows the first {MAX_SEQUENCE_STEPS} of {first} steps.")
        else:
            if _is_experts(est):
                data = _experts_sample(est, data)
            sample = _row_sample(data, sample_size, rng, client)

    pictures: list[tuple[str, Any, str]] = [
        ("convergence", plot_convergence(est), "Convergence: log-likelihood per iteration and its change"),
    ]
    if _is_experts(est):
        pictures.append(("experts", plot_experts(est, sample),
                         "Each expert's fitted line (solid, over its gate) and the conditional mean (dashed), "
                         "with the sample coloured by the most probable expert"))
    elif not is_hmm or getattr(est, "covars_", None) is not None:
        caption = ("Data sample projected on two dimensions, coloured by the most likely component, with every "
                   "component's mean (size by weight) and covariance ellipses")
        pictures.append(("projection", plot_projection(est, sample, labels), caption))
    pictures.append(("components", plot_active_components(est),
                     f"Expected weight of every component (log scale); those at or above {ACTIVE_WEIGHT:g} are active"))
    if is_hmm:
        pictures.append(("transitions", plot_transitions(est), "Transition matrix: row = from state, column = to state"))
        if sequence is not None:
            # Decoded on its own: the states of the window shown.
            states = np.asarray(est.decode(sequence)[1], dtype=np.int64)
            pictures.append(("sequence", plot_decoded(est, np.asarray(sequence), states),
                             "A sample sequence with its Viterbi states shaded behind the observations"))

    written: list[str] = []
    images: list[tuple[str, str, str]] = []
    for name, fig, caption in pictures:
        if fig is None:
            continue
        filename = f"{stem}-{name}.png"
        path = os.path.join(folder, filename)
        fig.savefig(path, dpi=DPI)
        written.append(path)
        if embed:
            with open(path, "rb") as fh:
                src = "data:image/png;base64," + base64.b64encode(fh.read()).decode("ascii")
        else:
            src = filename
        images.append((src, caption, name))
    page = _html(est, title or f"{type(est).__name__} report", images, notes)
    with open(output, "w", encoding="utf-8") as fh:
        fh.write(page)
    return written
