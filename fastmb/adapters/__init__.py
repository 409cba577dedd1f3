"""Adapters: other libraries' objects translated into fastmb's API and back. Each imports its
library only inside itself (an optional extra): :mod:`.dask` (``pip install "fastmb[dask]"``).
"""
