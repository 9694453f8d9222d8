"""Pure models: ``init_params`` / ``e_step`` / ``m_step``, no Dask inside."""

from ..contract import EMModel, Stats

__all__ = ["EMModel", "Stats"]
