"""keras.saving: Keras 3's .keras files, read and written without Keras."""
from ..io.keras_file import KerasFileError, load_model, save_model  # noqa: F401
from .coverage import missing_from

__all__ = ["KerasFileError", "load_model", "save_model"]

__getattr__ = missing_from(__name__, __all__)
