"""keras.optimizers (PyTorch's update conventions: see minires.optim)."""
from ..optim import SGD, Adam, RMSprop  # noqa: F401

__all__ = ["SGD", "Adam", "RMSprop"]
