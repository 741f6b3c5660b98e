"""keras.optimizers (PyTorch's update conventions: see minires.optim)."""
from ..optim import SGD, Adam, RMSprop  # noqa: F401
from .coverage import missing_from

__all__ = ["SGD", "Adam", "RMSprop"]

__getattr__ = missing_from(__name__, __all__)
