"""Model slicing: layer ranges of a model run, trained and served on their own.

:mod:`.depth` runs layers ``[start, stop)`` forward and backward (the depth slices of split
learning: what crosses a cut is an explicit array each way); :mod:`.split` trains a model
split between a client and a server (vanilla and U-shaped), bit for bit as ``fastmb.sgd``,
with micro-batches through the cut; :mod:`.pipeline` lays those out in time (GPipe, 1F1B);
:mod:`.width` cuts sub-models of every hidden layer's first (or a rolling window of) units
for weaker devices, and aggregates them per parameter; :mod:`.compact` prunes a model and
stores it (or a slice) sparse, int8 or half, and runs inference on that form.
"""

from .compact import CompactModel, masked_sgd, prune, prune_finetune
from .depth import backward, check_cut, check_range, forward, loss_head, param_range
from .pipeline import Timeline, timeline
from .split import CutMessage, Party, SplitFedResult, SplitResult, split_sgd, splitfed
from .width import (
    WidthMean,
    WidthSlice,
    evaluate_width,
    multiply_adds,
    train_width_clients,
    width_slice,
)

__all__ = ["CompactModel", "CutMessage", "Party", "SplitFedResult", "SplitResult", "Timeline",
           "WidthMean", "WidthSlice", "backward", "check_cut", "check_range", "evaluate_width",
           "forward", "loss_head", "masked_sgd", "multiply_adds", "param_range", "prune",
           "prune_finetune", "split_sgd", "splitfed", "timeline", "train_width_clients",
           "width_slice"]
