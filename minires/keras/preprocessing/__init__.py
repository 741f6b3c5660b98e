"""keras.preprocessing."""
from . import image  # noqa: F401
from ..coverage import missing_from

__all__ = ["image"]

__getattr__ = missing_from(__name__, __all__)
