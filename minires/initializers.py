"""Weight initialisers with Keras's names, formulas and defaults.

Each returns a NumPy array; the layer moves it to its device.  A seeded
initialiser gives the same values every call (as in Keras); an unseeded one
draws from minires's global generator, reset by ``set_random_seed``.

Variance scaling: n = fan_in, fan_out or their mean (for a conv kernel
(kh, kw, in, out): fan_in = kh*kw*in, fan_out = kh*kw*out), then
  uniform:          U(-limit, limit) with limit = sqrt(3 * scale / n)
  truncated normal: N(0, sigma) cut at 2 sigma, sigma = sqrt(scale / n) / 0.8796...
                    (the cut shrinks the std by that factor; dividing restores it)
glorot = scale 1 over fan_avg; he = scale 2 over fan_in.
"""
import math
import numbers
import random

import numpy as np

_global_rng = np.random.default_rng()
_TRUNCATED_STD = 0.87962566103423978   # std of N(0, 1) truncated to [-2, 2]


def set_random_seed(seed):
    """Seed every generator a training script draws from, as keras.utils.set_random_seed:
    Python's ``random``, NumPy's global one (np.random.*) and minires's own (the
    unseeded initialisers, so model building, and Dropout's seeds). ``seed``: an
    integer in [0, 2**32), what np.random.seed takes."""
    global _global_rng
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**32:
        raise ValueError(f"set_random_seed: seed must be an integer in [0, 2**32), got {seed!r} "
                         f"({type(seed).__name__})")
    random.seed(int(seed))
    np.random.seed(int(seed))
    _global_rng = np.random.default_rng(int(seed))


def draw_seed():
    """A seed from the global generator: repeatable after ``set_random_seed``
    (Dropout seeds its own generator with one when given none)."""
    return int(_global_rng.integers(2**63))


def _fans(shape):
    if len(shape) < 2:
        return shape[0] if shape else 1, shape[0] if shape else 1
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


class Initializer:
    def __init__(self, seed=None):
        self.seed = seed

    def _rng(self):
        return _global_rng if self.seed is None else np.random.default_rng(self.seed)

    def __call__(self, shape, dtype="float32"):
        raise NotImplementedError


class Zeros(Initializer):
    def __call__(self, shape, dtype="float32"):
        return np.zeros(shape, dtype=dtype)


class Ones(Initializer):
    def __call__(self, shape, dtype="float32"):
        return np.ones(shape, dtype=dtype)


class VarianceScaling(Initializer):
    def __init__(self, scale=1.0, mode="fan_in", distribution="truncated_normal", seed=None):
        super().__init__(seed)
        if mode not in ("fan_in", "fan_out", "fan_avg"):
            raise ValueError(f"VarianceScaling: unknown mode {mode!r}")
        if distribution not in ("uniform", "truncated_normal"):
            raise ValueError(f"VarianceScaling: unknown distribution {distribution!r}")
        self.scale, self.mode, self.distribution = scale, mode, distribution

    def __call__(self, shape, dtype="float32"):
        fan_in, fan_out = _fans(tuple(shape))
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[self.mode]
        variance = self.scale / max(1.0, n)
        rng = self._rng()
        if self.distribution == "uniform":
            limit = math.sqrt(3.0 * variance)
            return rng.uniform(-limit, limit, size=shape).astype(dtype)
        return (_truncated_normal(rng, shape) * math.sqrt(variance) / _TRUNCATED_STD).astype(dtype)


def _truncated_normal(rng, shape):
    """Standard normal samples, those beyond 2 redrawn until all lie in [-2, 2]
    (drawn in float32: an initial value needs no more, and ResNet-50 has 25 M)."""
    z = rng.standard_normal(shape, dtype=np.float32)
    outside = np.abs(z) > 2
    while outside.any():
        z[outside] = rng.standard_normal(int(outside.sum()), dtype=np.float32)
        outside = np.abs(z) > 2
    return z


class GlorotUniform(VarianceScaling):
    def __init__(self, seed=None):
        super().__init__(1.0, "fan_avg", "uniform", seed)


class GlorotNormal(VarianceScaling):
    def __init__(self, seed=None):
        super().__init__(1.0, "fan_avg", "truncated_normal", seed)


class HeNormal(VarianceScaling):
    def __init__(self, seed=None):
        super().__init__(2.0, "fan_in", "truncated_normal", seed)


class HeUniform(VarianceScaling):
    def __init__(self, seed=None):
        super().__init__(2.0, "fan_in", "uniform", seed)


# Keras accepts both spellings: glorot_uniform(seed=0) and GlorotUniform(seed=0).
zeros, ones = Zeros, Ones
glorot_uniform, glorot_normal = GlorotUniform, GlorotNormal
he_normal, he_uniform = HeNormal, HeUniform

_BY_NAME = {
    "zeros": Zeros, "ones": Ones,
    "glorot_uniform": GlorotUniform, "glorot_normal": GlorotNormal,
    "he_normal": HeNormal, "he_uniform": HeUniform,
}


def get(identifier, owner="layer"):
    """An initialiser from a name ('he_normal') or an initialiser object."""
    if isinstance(identifier, Initializer):
        return identifier
    if isinstance(identifier, str) and identifier in _BY_NAME:
        return _BY_NAME[identifier]()
    raise ValueError(f"{owner}: unknown initializer {identifier!r}; "
                     f"use an Initializer or one of {sorted(_BY_NAME)}")
