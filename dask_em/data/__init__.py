"""The data layer: user input turned into blocks the engine maps the E-step over.

- :mod:`.arrays`: numpy, Dask and Zarr arrays and Zarr paths or URLs ->
  :class:`Blocks`; the one rule for when data is persisted
  (:func:`should_persist`).
- :mod:`.files`: files named on the command line (``.npy``, CSV, Parquet,
  sequence lengths) read lazily.
- :mod:`.sequences`: sequences for the HMMs (Zarr sequence stores, bags,
  arrays with lengths); :mod:`.groups`: grouped rows for random effects.

The names below are those of
:mod:`.arrays`, which the engine, the estimators and the benchmarks use.
"""

from .arrays import (
    PERSIST_FRACTION,
    TARGET_BLOCK_BYTES,
    Blocks,
    absolute_path,
    array_blocks,
    as_dask_array,
    check_chunks_present,
    check_sample_weight,
    check_visible_to_workers,
    computed_values,
    in_memory_blocks,
    is_local_path,
    local_path,
    open_zarr_array,
    prepare_blocks,
    should_persist,
    weighted_blocks,
)

__all__ = [
    "PERSIST_FRACTION",
    "TARGET_BLOCK_BYTES",
    "Blocks",
    "absolute_path",
    "array_blocks",
    "as_dask_array",
    "check_chunks_present",
    "check_sample_weight",
    "check_visible_to_workers",
    "computed_values",
    "in_memory_blocks",
    "is_local_path",
    "local_path",
    "open_zarr_array",
    "prepare_blocks",
    "should_persist",
    "weighted_blocks",
]
