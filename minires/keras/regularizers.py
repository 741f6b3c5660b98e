"""keras.regularizers: weight penalties for kernel_regularizer / bias_regularizer."""
from ..regularizers import L1, L1L2, L2, l1, l1_l2, l2  # noqa: F401
from .coverage import missing_from

__all__ = ["L1", "L1L2", "L2", "l1", "l1_l2", "l2"]

__getattr__ = missing_from(__name__, __all__)
