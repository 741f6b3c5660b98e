"""keras.initializers: seeded and repeatable (``glorot_uniform(seed=0)``)."""
from ..initializers import (GlorotNormal, GlorotUniform, HeNormal, HeUniform, Initializer, Ones,  # noqa: F401
                            VarianceScaling, Zeros, get, glorot_normal, glorot_uniform, he_normal,
                            he_uniform, ones, zeros)

__all__ = ["GlorotNormal", "GlorotUniform", "HeNormal", "HeUniform", "Initializer", "Ones",
           "VarianceScaling", "Zeros", "get", "glorot_normal", "glorot_uniform", "he_normal",
           "he_uniform", "ones", "zeros"]
