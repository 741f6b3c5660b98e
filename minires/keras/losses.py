"""keras.losses: the cross-entropies, by class or by Keras's string names."""
from ..losses import CategoricalCrossentropy, SparseCategoricalCrossentropy, get  # noqa: F401

__all__ = ["CategoricalCrossentropy", "SparseCategoricalCrossentropy", "get"]
