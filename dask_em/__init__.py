"""dask-em: Expectation-Maximization on data larger than memory, on Dask."""

import sys
import types
from typing import TYPE_CHECKING, Any

#: Public name -> submodule defining it. Submodules are imported on first
#: use (PEP 562), so ``import dask_em`` and ``dask-em --help`` stay quick.
_LAZY = {
    "EMResult": "engine",
    "IterationInfo": "engine",
    "expected_stats": "engine",
    "fit_em": "engine",
    "GaussianMixture": "estimators.gmm",
    "DiscreteBayesianNetwork": "estimators.bayesnet",
    "BayesianGaussianMixture": "estimators.vbgmm",
    "CategoricalHMM": "estimators.hmm",
    "GaussianHMM": "estimators.hmm",
    "GMMHMM": "estimators.hmm",
    "PoissonHMM": "estimators.hmm",
    "KMeans": "estimators.kmeans",
    "MultivariateNormal": "estimators.missing",
    "PPCA": "estimators.factor",
    "FactorAnalysis": "estimators.factor",
    "RandomEffects": "estimators.random_effects",
    "MixtureOfExperts": "estimators.experts",
    "MixtureOfLinearRegressions": "estimators.experts",
    "describe": "storage.io",
    "load": "storage.io",
    "save": "storage.io",
    "Checkpoint": "storage.checkpoint",
    "checkpoint_iteration": "storage.snapshots",
    "read_checkpoint": "storage.snapshots",
    "register_class": "storage.format",
    "BernoulliMixture": "estimators.mixtures",
    "CategoricalMixture": "estimators.mixtures",
    "PoissonMixture": "estimators.mixtures",
    "EMModel": "contract",
    "Stats": "contract",
    "ModelSelection": "select",
    "select": "select",
    "sequence_blocks": "data.sequences",
    "to_zarr_sequences": "data.sequences",
}

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from .engine import EMResult, IterationInfo, expected_stats, fit_em
    from .estimators.gmm import GaussianMixture
    from .estimators.bayesnet import DiscreteBayesianNetwork
    from .estimators.vbgmm import BayesianGaussianMixture
    from .estimators.hmm import GMMHMM, CategoricalHMM, GaussianHMM, PoissonHMM
    from .estimators.kmeans import KMeans
    from .estimators.missing import MultivariateNormal
    from .estimators.factor import PPCA, FactorAnalysis
    from .estimators.random_effects import RandomEffects
    from .estimators.experts import MixtureOfExperts, MixtureOfLinearRegressions
    from .storage.checkpoint import Checkpoint
    from .storage.format import register_class
    from .storage.io import describe, load, save
    from .storage.snapshots import checkpoint_iteration, read_checkpoint
    from .estimators.mixtures import BernoulliMixture, CategoricalMixture, PoissonMixture
    from .contract import EMModel, Stats
    from .select import ModelSelection, select
    from .data.sequences import sequence_blocks, to_zarr_sequences


def __getattr__(name: str) -> Any:
    import importlib

    module_name = _LAZY.get(name)
    if module_name is None:
        # A submodule (dask_em.testing, dask_em.storage, ...) loads on first use too,
        # as it did when this package imported its modules eagerly.
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module 'dask_em' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{module_name}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Keeps ``dask_em.select`` the function when the submodule of that name is imported.

    Importing ``dask_em.select`` binds the submodule as an attribute of the
    package; the eager imports this package once had rebound the function
    right after, and this does the same for lazy imports.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "select" and isinstance(value, types.ModuleType) and hasattr(value, "select"):
            value = value.select
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


from ._version import __version__

__all__ = [
    "BayesianGaussianMixture",
    "CategoricalHMM",
    "DiscreteBayesianNetwork",
    "FactorAnalysis",
    "PPCA",
    "RandomEffects",
    "MixtureOfExperts",
    "MixtureOfLinearRegressions",
    "EMModel",
    "EMResult",
    "GaussianHMM",
    "GMMHMM",
    "GaussianMixture",
    "IterationInfo",
    "KMeans",
    "ModelSelection",
    "MultivariateNormal",
    "BernoulliMixture",
    "CategoricalMixture",
    "Checkpoint",
    "PoissonMixture",
    "PoissonHMM",
    "Stats",
    "__version__",
    "checkpoint_iteration",
    "expected_stats",
    "fit_em",
    "describe",
    "load",
    "read_checkpoint",
    "register_class",
    "save",
    "select",
    "sequence_blocks",
    "to_zarr_sequences",
]
