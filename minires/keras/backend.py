"""keras.backend: names reset, default float type."""
from ..backend import floatx, set_floatx  # noqa: F401
from ..layers.base import clear_session  # noqa: F401
from .coverage import missing_from

__all__ = ["clear_session", "floatx", "set_floatx"]

__getattr__ = missing_from(__name__, __all__)
