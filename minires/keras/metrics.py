"""keras.metrics."""
from ..metrics import *  # noqa: F401,F403
from ..metrics import __all__  # noqa: F401
from .coverage import missing_from

__getattr__ = missing_from(__name__, __all__)
