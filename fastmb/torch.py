"""fastmb for PyTorch users: see :mod:`fastmb.adapters.torch` (``pip install "fastmb[torch]"``)."""

from .adapters.torch import TorchModel, from_torch, params_from_state_dict, to_torch, torch_loss

__all__ = ["TorchModel", "from_torch", "params_from_state_dict", "to_torch", "torch_loss"]
