"""Hidden Markov models fitted by Baum-Welch: pure models along their seams.

- :mod:`.recursions`: scaled forward-backward, Viterbi and the one fused
  E-step skeleton that takes an emission's compiled pieces;
- :mod:`.base`: blocks, the Markov chain's M-step, the three-pass path;
- one module per emission, each holding its parameters, its compiled
  pieces, its M-step and its sampling: :mod:`.gaussian`,
  :mod:`.categorical`, :mod:`.poisson`, :mod:`.gmm` (Gaussian mixtures);
- :mod:`.segments`: one long sequence cut into segments across blocks;
- :mod:`.workers`: the per-block functions the estimators map over partitions.

Restarts sharing passes use the generic :class:`dask_em.models.stacked.Stacked`.
"""

from ..stacked import Stacked as StackedHMM
from ..stacked import StackedParams
from .base import HMMModel
from .categorical import CategoricalHMMModel, CategoricalHMMParams
from .gaussian import GaussianHMMModel, GaussianHMMParams
from .gmm import GMMHMMModel, GMMHMMParams
from .poisson import PoissonHMMModel, PoissonHMMParams
from .recursions import forward_backward, fused_e_step, viterbi

__all__ = [
    "CategoricalHMMModel",
    "CategoricalHMMParams",
    "GMMHMMModel",
    "GMMHMMParams",
    "GaussianHMMModel",
    "GaussianHMMParams",
    "HMMModel",
    "PoissonHMMModel",
    "PoissonHMMParams",
    "StackedHMM",
    "StackedParams",
    "forward_backward",
    "fused_e_step",
    "viterbi",
]
