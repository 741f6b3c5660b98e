"""keras.metrics: metric objects (update_state / result / reset_state) and the
per-sample functions, Keras's (y_true, y_pred) order."""
from ..metrics import *  # noqa: F401,F403
from ..metrics import __all__  # noqa: F401
from .coverage import missing_from

__getattr__ = missing_from(__name__, __all__)
