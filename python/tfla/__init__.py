"""tfla: Tiled Flash Linear Attention (TFLA) kernels for the mLSTM, written in Rust.

- ``tfla.torch``: the kernels as PyTorch ops (``mlstm_chunkwise``, ``mlstm_step``,
  ``get_mlstm_kernel``); needs torch and an NVIDIA driver (Hopper).
- ``tfla.reference``: the float64 CPU reference every kernel is checked against (numpy).

Importing ``tfla`` needs neither a GPU nor torch: the CUDA driver is loaded when a kernel
first runs.
"""

from . import _tfla, reference

__version__ = "0.1.0"

#: The PTX modules this build carries: sm_90a (Hopper, with the ``wgmma`` kernels) and sm_80
#: (every card from Ampere on); the runtime loads the one that fits the device.
PTX_ARCHES: tuple = tuple(_tfla.PTX_ARCHES)
#: The chunk sizes the kernels take.
CHUNK_SIZES: tuple = tuple(_tfla.CHUNK_SIZES)

__all__ = ["reference", "PTX_ARCHES", "CHUNK_SIZES", "__version__"]
