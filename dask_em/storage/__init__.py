"""Storage of fits and fitted models, in layers (each imports only the ones above it).

- :mod:`.format`: the file format: format version, class registry, exact
  JSON for configuration, checksummed arrays, values a fit can produce.
- :mod:`.location`: where a file lives (local path or fsspec URL): the one
  place that reads, writes, lists and deletes objects.
- :mod:`.snapshots`: reading a checkpoint back (pointer, verified
  snapshots, the data fingerprint); :mod:`.lease`: who writes it.
- :mod:`.checkpoint`: writing snapshots during a fit, and resuming.
- :mod:`.io`: saved models (:func:`dask_em.save`, :func:`dask_em.load`,
  :func:`dask_em.describe`).
"""
