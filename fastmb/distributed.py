"""The Dask executor under its first name: see :mod:`fastmb.adapters.dask`."""

from .adapters.dask import DaskExecutor

__all__ = ["DaskExecutor"]
