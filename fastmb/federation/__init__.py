"""The federation engine: data sets (:mod:`.data`), partitions among clients
(:mod:`.partition`), the rounds and their executors (:mod:`.rounds`) and the simulation that
runs them (:mod:`.simulation`)."""

from . import data, partition
from .simulation import Faults, Simulation

__all__ = ["Faults", "Simulation", "data", "partition"]
