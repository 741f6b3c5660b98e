"""Merging branches: Add (the residual connection), Concatenate (inception),
and Average, Multiply, Maximum, Minimum.

Each takes a LIST of inputs and its backward returns a list of gradients, one
per input, in the same order.  ``add([...])``, ``concatenate([...])`` and the
others in lower case are Keras's functional shortcuts.
"""
import itertools

from ..backend import get_array_module
from .base import Layer


class _Merge(Layer):
    def _prepare_all(self, inputs):
        """Arrays of the right dtype, after the same shape checks as a symbolic call."""
        self._check_list(inputs)
        arrays = [self.as_float_array(x) for x in inputs]
        self.compute_output_shape([x.shape for x in arrays])
        return arrays

    def _check_list(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) < 2:
            raise ValueError(f"layer {self.name!r} ({type(self).__name__}) must be called on a "
                             f"list of at least 2 inputs, got {type(inputs).__name__}")

    def _check_ranks(self, shapes):
        if len({len(s) for s in shapes}) != 1:
            raise ValueError(f"layer {self.name!r}: inputs have different ranks, shapes "
                             f"{[tuple(s) for s in shapes]}")


def _agree(a, b):
    """Sizes agree when equal or when either is unknown (None)."""
    return a is None or b is None or a == b


def _first_known(shapes, axis):
    """The size on ``axis`` that some input knows, else None."""
    return next((s[axis] for s in shapes if s[axis] is not None), None)


class _Elementwise(_Merge):
    """Merges inputs of one shape value by value."""

    def compute_output_shape(self, input_shape):
        self._check_list(input_shape)
        self._check_ranks(input_shape)
        first = input_shape[0]
        if not all(_agree(a, b) for shape in input_shape[1:] for a, b in zip(first, shape)):
            raise ValueError(f"layer {self.name!r} ({type(self).__name__}) needs inputs of one "
                             f"shape, got shapes {[tuple(s) for s in input_shape]}")
        return tuple(_first_known(input_shape, a) for a in range(len(first)))


class Add(_Elementwise):
    """y = x_1 + x_2 + ... + x_k, all of the same shape.

    Backward: dy/dx_i = 1 for every i, so every input receives dy unchanged;
    this is how the shortcut of a residual block passes its gradient straight
    through.  (The returned list holds the same array k times: do not modify it
    in place.)  If two inputs are one tensor, its total gradient is the SUM of
    the branch gradients, which the caller adds up (minires.models.Model does).
    """

    def forward(self, inputs, training=False):
        arrays = self._prepare_all(inputs)
        total = arrays[0] + arrays[1]
        for x in arrays[2:]:
            total += x
        return total, (len(arrays), total.shape)

    def backward(self, dy, cache):
        count, output_shape = cache
        return [self._check_grad(dy, output_shape)] * count


class Average(_Elementwise):
    """y = (x_1 + ... + x_k) / k. Backward: every input receives dy / k."""

    def forward(self, inputs, training=False):
        arrays = self._prepare_all(inputs)
        return sum(arrays[1:], arrays[0]) / len(arrays), (len(arrays), arrays[0].shape)

    def backward(self, dy, cache):
        count, output_shape = cache
        return [self._check_grad(dy, output_shape) / count] * count


class Multiply(_Elementwise):
    """y = x_1 * x_2 * ... * x_k. Backward: dx_i = dy * (the product of the
    other inputs), computed as such rather than y / x_i, which a zero breaks."""

    def forward(self, inputs, training=False):
        arrays = self._prepare_all(inputs)
        return _product(arrays), arrays

    def backward(self, dy, arrays):
        dy = self._check_grad(dy, arrays[0].shape)
        return [dy * _product(arrays[:i] + arrays[i + 1:]) for i in range(len(arrays))]


def _product(arrays):
    total = arrays[0]
    for x in arrays[1:]:
        total = total * x
    return total


class Maximum(_Elementwise):
    """y = the largest of x_1 ... x_k, value by value. Backward: dy goes to the
    input that held it (the first of them on a tie, as max pooling does)."""
    pick = "argmax"

    def forward(self, inputs, training=False):
        arrays = self._prepare_all(inputs)
        stacked = get_array_module(*arrays).stack(arrays)
        winner = getattr(stacked, self.pick)(axis=0)        # which input holds each value
        y = get_array_module(stacked).take_along_axis(stacked, winner[None], axis=0)[0]
        return y, (winner, len(arrays))

    def backward(self, dy, cache):
        winner, count = cache
        dy = self._check_grad(dy, winner.shape)
        zero = get_array_module(dy).zeros((), dy.dtype)
        return [get_array_module(dy).where(winner == i, dy, zero) for i in range(count)]


class Minimum(Maximum):
    """y = the smallest of x_1 ... x_k. Backward: dy goes to the input that held it."""
    pick = "argmin"


class Concatenate(_Merge):
    """y = [x_1, x_2, ...] joined along ``axis`` (default the channels, -1).

    Backward: each input's values sit in its own slice of y, so its gradient
    is that slice of dy.
    """

    def __init__(self, axis=-1, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.axis = axis

    def compute_output_shape(self, input_shape):
        self._check_list(input_shape)
        self._check_ranks(input_shape)
        ndim = len(input_shape[0])
        if not -ndim <= self.axis < ndim:
            raise ValueError(f"layer {self.name!r}: axis {self.axis} is out of range for "
                             f"inputs of rank {ndim}")
        axis = self.axis % ndim
        first = input_shape[0]
        if not all(_agree(first[a], s[a]) for s in input_shape for a in range(ndim) if a != axis):
            raise ValueError(f"layer {self.name!r} (Concatenate) needs inputs that agree on every "
                             f"axis but {self.axis}, got shapes {[tuple(s) for s in input_shape]}")
        sizes = [s[axis] for s in input_shape]
        output = [_first_known(input_shape, a) for a in range(ndim)]
        output[axis] = None if None in sizes else sum(sizes)
        return tuple(output)

    def forward(self, inputs, training=False):
        arrays = self._prepare_all(inputs)
        axis = self.axis % arrays[0].ndim
        y = get_array_module(*arrays).concatenate(arrays, axis=axis)
        return y, ([x.shape[axis] for x in arrays], y.shape)

    def backward(self, dy, cache):
        sizes, output_shape = cache
        dy = self._check_grad(dy, output_shape)
        boundaries = list(itertools.accumulate(sizes))[:-1]
        return get_array_module(dy).split(dy, boundaries, axis=self.axis)


def add(inputs, **kwargs):
    """Functional form of Add: ``add([x, shortcut])``."""
    return Add(**kwargs)(inputs)


def concatenate(inputs, axis=-1, **kwargs):
    """Functional form of Concatenate: ``concatenate([a, b], axis=-1)``."""
    return Concatenate(axis=axis, **kwargs)(inputs)


def average(inputs, **kwargs):
    """Functional form of Average."""
    return Average(**kwargs)(inputs)


def multiply(inputs, **kwargs):
    """Functional form of Multiply."""
    return Multiply(**kwargs)(inputs)


def maximum(inputs, **kwargs):
    """Functional form of Maximum."""
    return Maximum(**kwargs)(inputs)


def minimum(inputs, **kwargs):
    """Functional form of Minimum."""
    return Minimum(**kwargs)(inputs)
