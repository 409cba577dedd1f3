"""The counter-based random numbers of ``fastmb.kernels._rng``, as CUDA device functions.

Same source, same bits: a client shuffled or a noise vector drawn on the GPU equals the
CPU's draw for the same key.
"""

from .. import _rng as R
from ._jit import device_twin

mix64 = device_twin(R.mix64)
hash2 = device_twin(R.hash2, mix64=mix64)
randbelow = device_twin(R.randbelow, hash2=hash2)
shuffle = device_twin(R.shuffle, randbelow=randbelow)
_uniform53 = device_twin(R._uniform53)
_normal_slow = device_twin(R._normal_slow, hash2=hash2, _uniform53=_uniform53)
normal = device_twin(R.normal, hash2=hash2, _uniform53=_uniform53, _normal_slow=_normal_slow)
