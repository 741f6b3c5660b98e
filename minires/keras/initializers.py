"""keras.initializers: seeded and repeatable (``glorot_uniform(seed=0)``)."""
from ..initializers import (GlorotNormal, GlorotUniform, HeNormal, HeUniform, Initializer, Ones,  # noqa: F401
                            VarianceScaling, Zeros, get, glorot_normal, glorot_uniform, he_normal,
                            he_uniform, ones, zeros)
from .coverage import missing_from

__all__ = ["GlorotNormal", "GlorotUniform", "HeNormal", "HeUniform", "Initializer", "Ones",
           "VarianceScaling", "Zeros", "get", "glorot_normal", "glorot_uniform", "he_normal",
           "he_uniform", "ones", "zeros"]

__getattr__ = missing_from(__name__, __all__)
