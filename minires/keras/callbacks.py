"""keras.callbacks."""
from ..callbacks import *  # noqa: F401,F403
from ..callbacks import __all__  # noqa: F401
from .coverage import missing_from

__getattr__ = missing_from(__name__, __all__)
