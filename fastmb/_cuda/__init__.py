"""``device="cuda"``: arguments to and from the GPU, launch configurations, the CUDA paths
of the public functions.

Imported only when a caller asks for ``device="cuda"``. numba-cuda is then imported (an
optional extra); a missing package or a missing GPU raises :class:`CUDAUnavailableError`
saying which. ``NUMBA_ENABLE_CUDASIM=1`` runs everything on Numba's CUDA simulator.

Arrays already on the GPU (numba device arrays, and anything that exposes
``__cuda_array_interface__``: CuPy arrays, PyTorch CUDA tensors) are used in place, without a
copy, and the results then stay on the GPU (as numba device arrays; wrap them with
``cupy.asarray`` or ``torch.as_tensor`` for free). NumPy inputs are checked as on the CPU,
copied to the GPU, and the results copied back as NumPy arrays. A device array must
already have the dtype and layout the kernel needs (C-contiguous; the parameters'
float dtype, int64 class labels): converting it would be a hidden copy, so a mismatch
is a ``TypeError`` naming the argument.
"""

from .aggregation import as_updates, finite_rows, rows_nonfinite, weighted_mean
from .arrays import CUDAUnavailableError, cuda, finish, threads
from .compress import topk
from .gradients import loss_grad, per_sample_grad, per_sample_grad_norm
from .model import Batch
from .robust import rank_mean
from .slicing import backward as slice_backward
from .slicing import forward as slice_forward
from .training import train_clients

__all__ = [
           "Batch",
           "CUDAUnavailableError",
           "as_updates",
           "cuda",
           "finish",
           "finite_rows",
           "loss_grad",
           "per_sample_grad",
           "per_sample_grad_norm",
           "rank_mean",
           "rows_nonfinite",
           "slice_backward",
           "slice_forward",
           "threads",
           "topk",
           "train_clients",
           "weighted_mean",
]
