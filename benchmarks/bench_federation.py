"""asv benchmarks of a federated round: fastmb's Simulation beside a hand-written NumPy loop.

The workload of ``benchmarks/flower_comparison.py`` (digits, softmax regression, K IID
clients, one local epoch of batches of 16, FedAvg, test accuracy each round). ``setup``
runs one round first, so compile and load time never land inside a timing;
``TimeFirstRound`` measures a cold start on purpose, in a fresh process.
"""

import subprocess
import sys

from .flower_comparison import fastmb_simulation, numpy_round, numpy_setup


class FederatedRound:
    """One round (train K clients, FedAvg, evaluate) of the Flower comparison workload."""

    params = [["fastmb", "numpy"], [10, 100]]
    param_names = ["impl", "clients"]
    timeout = 120

    def setup(self, impl, clients):
        if impl == "fastmb":
            sim = fastmb_simulation(clients)
            sim.step()
            self.call = sim.step
        else:
            st = numpy_setup(clients)
            numpy_round(st)
            self.call = lambda: numpy_round(st)

    def time_round(self, impl, clients):
        self.call()


class TimeFirstRound:
    """Start-up: import fastmb, build the default simulation and run its first round, in a
    fresh process (kernels loaded from the on-disk cache, or compiled on a cold cache)."""

    timeout = 600
    number = 1
    repeat = 3

    def time_fresh_process_first_round(self):
        code = ("import fastmb; d = fastmb.data.digits(); "
                "p = fastmb.partition.dirichlet(d.y, 100, 0.5); "
                "fastmb.Simulation(fastmb.MLP([64, 64, 10]), d, p, fraction=0.2).step()")
        subprocess.run([sys.executable, "-c", code], check=True)
