"""keras.losses: the cross-entropies, by class, function or Keras's string names."""
from ..losses import (CategoricalCrossentropy, SparseCategoricalCrossentropy,  # noqa: F401
                      categorical_crossentropy, get, sparse_categorical_crossentropy)
from .coverage import missing_from

__all__ = ["CategoricalCrossentropy", "SparseCategoricalCrossentropy", "categorical_crossentropy",
           "sparse_categorical_crossentropy", "get"]

__getattr__ = missing_from(__name__, __all__)
