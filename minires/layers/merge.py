"""Merging branches: Add (the residual connection) and Concatenate (inception).

Both take a LIST of inputs and their backward returns a list of gradients, one
per input, in the same order.
"""
import itertools

from ..backend import get_array_module
from .base import Layer


class _Merge(Layer):
    def _prepare_all(self, inputs):
        """Check that ``inputs`` is a list of two or more arrays of one rank."""
        if not isinstance(inputs, (list, tuple)) or len(inputs) < 2:
            raise ValueError(f"layer {self.name!r} ({type(self).__name__}) must be called on a "
                             f"list of at least 2 inputs, got {type(inputs).__name__}")
        arrays = [self._as_float_array(x) for x in inputs]
        if len({x.ndim for x in arrays}) != 1:
            raise ValueError(f"layer {self.name!r}: inputs have different ranks, shapes "
                             f"{[tuple(x.shape) for x in arrays]}")
        return arrays


class Add(_Merge):
    """y = x_1 + x_2 + ... + x_k, all of the same shape.

    Backward: dy/dx_i = 1 for every i, so every input receives dy unchanged;
    this is how the shortcut of a residual block passes its gradient straight
    through.  (The returned list holds the same array k times: do not modify it
    in place.)  If two inputs are one tensor, its total gradient is the SUM of
    the branch gradients, which is the caller's job (see the Add test).
    """

    def forward(self, inputs, training=False):
        arrays = self._prepare_all(inputs)
        if len({tuple(x.shape) for x in arrays}) != 1:
            raise ValueError(f"layer {self.name!r} (Add) needs inputs of one shape, got shapes "
                             f"{[tuple(x.shape) for x in arrays]}")
        self.count, self.output_shape = len(arrays), arrays[0].shape
        total = arrays[0] + arrays[1]
        for x in arrays[2:]:
            total += x
        return total

    def backward(self, dy):
        count = self._require_forward("count")
        return [self._check_grad(dy, self.output_shape)] * count


class Concatenate(_Merge):
    """y = [x_1, x_2, ...] joined along ``axis`` (default the channels, -1).

    Backward: each input's values sit in its own slice of y, so its gradient
    is that slice of dy.
    """

    def __init__(self, axis=-1, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.axis = axis

    def forward(self, inputs, training=False):
        arrays = self._prepare_all(inputs)
        ndim = arrays[0].ndim
        if not -ndim <= self.axis < ndim:
            raise ValueError(f"layer {self.name!r}: axis {self.axis} is out of range for "
                             f"inputs of rank {ndim}")
        axis = self.axis % ndim
        others = {tuple(s for a, s in enumerate(x.shape) if a != axis) for x in arrays}
        if len(others) != 1:
            raise ValueError(f"layer {self.name!r} (Concatenate) needs inputs that agree on every "
                             f"axis but {self.axis}, got shapes {[tuple(x.shape) for x in arrays]}")
        self.sizes = [x.shape[axis] for x in arrays]
        y = get_array_module(*arrays).concatenate(arrays, axis=axis)
        self.output_shape = y.shape
        return y

    def backward(self, dy):
        sizes = self._require_forward("sizes")
        dy = self._check_grad(dy, self.output_shape)
        boundaries = list(itertools.accumulate(sizes))[:-1]
        return get_array_module(dy).split(dy, boundaries, axis=self.axis)
