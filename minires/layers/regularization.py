"""Dropout: in training, each unit is zeroed with probability ``rate``.

Inverted dropout (Keras's): in training
    y = x * m / (1 - rate),    m ~ Bernoulli(1 - rate), drawn anew at every call
so E[y] = x * E[m] / (1 - rate) = x: the scaling happens here, in training, and
at inference y = x with nothing to undo.

Backward: for the call's mask, y is x times a constant, so
    dL/dx = dL/dy * m / (1 - rate)
the same scaled mask, which is all the cache holds: a unit dropped in the
forward pass gets no gradient. At inference dL/dx = dL/dy.

noise_shape (Keras's): the shape of m, broadcast against x; None takes x's
size on that axis. For x (N, H, W, C), noise_shape=(None, 1, 1, None) draws one
m per example and channel, so whole feature maps drop together; backward
broadcasts the mask the same way.
"""
import numbers

import numpy as np

from .. import initializers
from ..backend import like
from .base import Layer, is_int


class Dropout(Layer):
    """Dropout(rate): y = x * m / (1 - rate) in training, m ~ Bernoulli(1 - rate); y = x at inference.

    The layer owns a NumPy Generator, seeded from ``seed``, or when seed is None
    from minires's global stream (reset by ``set_random_seed``), so a run repeats.
    The mask is drawn with it on the CPU and moved to x's device.
    """

    def __init__(self, rate, noise_shape=None, seed=None, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        if not isinstance(rate, numbers.Real) or isinstance(rate, bool) or not 0 <= rate < 1:
            raise ValueError(f"layer {self.name!r}: rate must be a number in [0, 1) (the fraction "
                             f"of units dropped), got {rate!r}")
        if seed is not None and not (is_int(seed) and seed >= 0):
            raise ValueError(f"layer {self.name!r}: seed must be None or a non-negative int, "
                             f"got {seed!r}")
        self.rate = float(rate)
        self.noise_shape = self._checked_noise_shape(noise_shape)
        self.seed = seed
        self.generator = np.random.default_rng(self._generator_seed(seed))

    def forward(self, x, training=False):
        x = self._prepare(x)
        if not training or self.rate == 0:
            return x, None                   # the identity: nothing for backward to remember
        keep = self.generator.random(self._mask_shape(x.shape)) < 1 - self.rate
        scaled_mask = like((keep / (1 - self.rate)).astype(x.dtype), x)
        return x * scaled_mask, scaled_mask

    def backward(self, dy, scaled_mask):
        if scaled_mask is None:
            return dy
        if dy.ndim != scaled_mask.ndim or any(m not in (1, d) for m, d in
                                              zip(scaled_mask.shape, dy.shape)):
            raise ValueError(f"layer {self.name!r}: backward got a gradient of shape "
                             f"{tuple(dy.shape)}, which its mask of shape "
                             f"{tuple(scaled_mask.shape)} does not fit")
        return dy * scaled_mask

    def _mask_shape(self, shape):
        """noise_shape with its None entries taken from x's shape."""
        if self.noise_shape is None:
            return shape
        if len(self.noise_shape) != len(shape) or any(
                m is not None and m not in (1, d) for m, d in zip(self.noise_shape, shape)):
            raise ValueError(f"layer {self.name!r}: noise_shape {self.noise_shape} does not "
                             f"broadcast to the input's shape {tuple(shape)}")
        return tuple(d if m is None else m for m, d in zip(self.noise_shape, shape))

    def _checked_noise_shape(self, noise_shape):
        if noise_shape is None:
            return None
        if not isinstance(noise_shape, (tuple, list)) or not all(
                m is None or (is_int(m) and m >= 1) for m in noise_shape):
            raise ValueError(f"layer {self.name!r}: noise_shape must be None or a tuple of "
                             f"positive ints and Nones, got {noise_shape!r}")
        return tuple(noise_shape)

    @staticmethod
    def _generator_seed(seed):
        """``seed``, or one drawn from the global stream the unseeded initialisers use."""
        return seed if seed is not None else initializers.draw_seed()
