"""``python -m dask_em.cli``: the ``dask-em`` command."""

import sys

from . import main

sys.exit(main())
