"""keras.models: the model classes."""
from ..models import Model, Sequential  # noqa: F401

__all__ = ["Model", "Sequential"]
