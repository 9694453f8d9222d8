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

Adding an emission (as :mod:`.gmm` was added) touches:

1. one new module here: its parameter dataclass; its kernel ``NamedTuple``
   and three compiled pieces (``work``, ``probs``, ``stats``) registered
   with :func:`.recursions.register_emission`, plus the cached ``_fused``
   entry point; a model subclassing :class:`.base.HMMModel` with the
   three-pass hooks (``log_emission``, ``emission_stats``), ``m_step``,
   ``describe_invalid`` and ``sample_emission``; export it below;
2. one estimator class in :mod:`dask_em.estimators.hmm` (its ``__init__``,
   model options, initial values, shape checks, parameter count);
3. one line each in the public table of :mod:`dask_em` and in
   :mod:`dask_em.estimators` (the command line's model list follows).

Segments, restarts, online EM, checkpoints, inference and the per-block
worker functions need no change: they see only the model's hooks.
"""

from ..stacked import Stacked as StackedHMM
from ..stacked import StackedParams
from .base import HMMModel, HMMParams
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
    "HMMParams",
    "PoissonHMMModel",
    "PoissonHMMParams",
    "StackedHMM",
    "StackedParams",
    "forward_backward",
    "fused_e_step",
    "viterbi",
]
