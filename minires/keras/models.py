"""keras.models: the model classes."""
from ..models import Model, Sequential  # noqa: F401
from .coverage import missing_from

__all__ = ["Model", "Sequential"]

__getattr__ = missing_from(__name__, __all__)
