"""keras.losses: the cross-entropies, by class or by Keras's string names."""
from ..losses import CategoricalCrossentropy, SparseCategoricalCrossentropy, get  # noqa: F401
from .coverage import missing_from

__all__ = ["CategoricalCrossentropy", "SparseCategoricalCrossentropy", "get"]

__getattr__ = missing_from(__name__, __all__)
