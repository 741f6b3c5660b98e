"""keras.preprocessing."""
from . import image  # noqa: F401
