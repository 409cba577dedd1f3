"""Model slicing: layer ranges of a model run, trained and served on their own.

:mod:`.depth` runs layers ``[start, stop)`` forward and backward (the depth slices of split
learning: what crosses a cut is an explicit array each way).
"""

from .depth import backward, check_cut, check_range, forward, loss_head, param_range

__all__ = ["backward", "check_cut", "check_range", "forward", "loss_head", "param_range"]
