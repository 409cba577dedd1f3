"""asv benchmarks of the robust aggregation rules beside their NumPy formulations.

Data and peers come from ``fastmb.bench`` (see ``bench_core``); ``setup`` runs each
call once, so compilation never lands inside a timing.
"""

import fastmb
from fastmb.cli import bench as B

from .bench_core import _peer, _prepared


class CoordinateRules:
    """Coordinate median and trimmed mean, K=64 x P=1,000,000 float32."""

    params = [["median", "trimmed_mean"], ["fastmb", "numpy"]]
    param_names = ["rule", "impl"]
    timeout = 180

    def setup(self, rule, impl):
        (U,) = B.robust_data()
        if impl == "fastmb":
            fast = fastmb.coordinate_median if rule == "median" else fastmb.trimmed_mean
            self.call = _prepared(lambda: fast(U))
        else:
            self.call = _peer(B.PEERS[rule][0][1], U)

    def time_rule(self, rule, impl):
        self.call()


class Krum:
    """Krum with f=10 of K=100 updates, P=1,000,000 float32."""

    params = [["fastmb", "numpy"]]
    param_names = ["impl"]
    timeout = 180

    def setup(self, impl):
        (U,) = B.robust_data(K=100)
        if impl == "fastmb":
            self.call = _prepared(lambda: fastmb.krum(U, 10))
        else:
            self.call = _peer(B.numpy_krum, U, 10)

    def time_krum(self, impl):
        self.call()
