"""hmmlearn's own tests of GaussianHMM, CategoricalHMM and PoissonHMM, run against dask-em.

The installed files are loaded with only ``hmm`` swapped for ``dask_em``
(see ``_adapter.py``); skipped tests and their reasons are in ``peer_skips.py``.
"""

from __future__ import annotations

import pytest
from _adapter import expose, load_suite

pytest.importorskip("hmmlearn")

PEER = "hmmlearn"
#: Each file and the line that imports hmmlearn's models in it.
SUITES = {
    "test_gaussian_hmm": "from .. import hmm",
    "test_categorical_hmm": "from hmmlearn import hmm",
    "test_poisson_hmm": "from hmmlearn import hmm",
}

pytestmark = pytest.mark.filterwarnings("ignore::dask_em.errors.ConvergenceWarning")

for _name, _line in SUITES.items():
    expose(load_suite(f"hmmlearn.tests.{_name}", {_line: "import dask_em as hmm"}), globals())
