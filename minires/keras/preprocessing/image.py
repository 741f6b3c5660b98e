"""keras.preprocessing.image."""
from ...imagenet import img_to_array, load_img  # noqa: F401
from ..coverage import missing_from

__all__ = ["img_to_array", "load_img"]

__getattr__ = missing_from(__name__, __all__)
