"""The model names of ``dask-em fit``, derived from the estimator classes of :mod:`dask_em.estimators`.

Every estimator class is reachable by its class name in kebab case
(``poisson-mixture``, ``gaussian-hmm``); a few common ones also by a short
name (:data:`ALIASES`). A new estimator exported by
:mod:`dask_em.estimators` is a model of the command line without any change
here. The estimators are imported only when a model is looked up or the
list is shown, so ``dask-em --help`` stays quick.
"""

from __future__ import annotations

import functools
import inspect
import re
from typing import Any

from .common import NotAvailableError, UsageError

#: Short command-line names of common models (the class names are names too).
ALIASES: dict[str, str] = {
    "gmm": "GaussianMixture",
    "vbgmm": "BayesianGaussianMixture",
    "kmeans": "KMeans",
    "hmm": "GaussianHMM",
    "mvn": "MultivariateNormal",
    "experts": "MixtureOfExperts",
    "linear-regressions": "MixtureOfLinearRegressions",
    "bayesnet": "DiscreteBayesianNetwork",
}

#: Inputs of ``fit`` that the command line has no option for: an estimator
#: whose ``fit`` takes one of them (RandomEffects' groups) is not offered.
NOT_GIVEN = frozenset({"groups"})

#: Names of the hyper-parameter that ``-k/--n-components`` sets, by preference.
SIZE_PARAMETERS = ("n_components", "n_clusters")


def kebab(name: str) -> str:
    """``PoissonHMM`` -> ``poisson-hmm``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", name).lower()


def size_parameter(cls: type) -> str | None:
    """The hyper-parameter of ``cls`` that ``-k`` sets (None when it has none)."""
    params = inspect.signature(cls.__init__).parameters
    return next((p for p in SIZE_PARAMETERS if p in params), None)


def _fittable(cls: type) -> bool:
    return not NOT_GIVEN & set(inspect.signature(cls.fit).parameters)


@functools.cache
def models() -> dict[str, tuple[str, str | None]]:
    """Model name -> (estimator class name, name of its size parameter or None).

    The estimator classes are those :mod:`dask_em.estimators` exports,
    except ones whose ``fit`` needs an input the command line cannot give.
    """
    from .. import estimators

    classes = {
        name: cls
        for name in estimators.__all__
        if isinstance(cls := getattr(estimators, name), type)
        and issubclass(cls, estimators.EMEstimator)
        and cls is not estimators.EMEstimator
        and _fittable(cls)
    }
    found = {alias: (name, size_parameter(classes[name])) for alias, name in ALIASES.items() if name in classes}
    aliased = set(ALIASES.values())
    found.update((kebab(name), (name, size_parameter(cls))) for name, cls in classes.items() if name not in aliased)
    return found


def estimator_class(name: str) -> tuple[type, str | None]:
    """The estimator class for a model name or a class name of dask_em, and its size parameter."""
    import dask_em
    import dask_em.estimators as estimators

    known = models()
    class_name, _ = known.get(name, (name, None))
    cls = getattr(estimators, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, estimators.EMEstimator)):
        if name in known:
            raise NotAvailableError(
                f"model {name!r} ({class_name}) is not available in this installation of dask-em "
                f"{dask_em.__version__}"
            )
        raise UsageError(f"unknown model {name!r}; choose one of {', '.join(known)} or a class name of dask_em")
    return cls, size_parameter(cls)


def __getattr__(name: str) -> Any:
    if name == "MODELS":  # the table, built on first use
        return models()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
