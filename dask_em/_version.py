"""The one version string of dask-em (read by the package, by files it writes, and by pyproject.toml)."""

__version__ = "0.1.0"
