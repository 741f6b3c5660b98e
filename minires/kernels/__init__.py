"""The hot loops behind conv and pooling, kept apart from the layers.

Every kernel takes an already padded (N, H, W, C) array and a window
(kh, kw) with strides (sh, sw); it never knows which layer calls it.
The versions here use only array slicing, so they run on NumPy and CuPy.
"""
from .im2col import col2im, im2col
from .pooling import max_pool_backward, max_pool_forward

__all__ = ["im2col", "col2im", "max_pool_forward", "max_pool_backward"]
