"""keras.preprocessing.image."""
from ...imagenet import img_to_array, load_img  # noqa: F401

__all__ = ["img_to_array", "load_img"]
