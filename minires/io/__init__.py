"""Weights in and out: Keras HDF5 files (keras_h5, read only), the Keras
ResNet-50 downloads (download) and minires's own .npz checkpoints (checkpoint)."""
from .checkpoint import load_checkpoint, save_checkpoint
from .keras_h5 import WeightsFileError, load_by_name

__all__ = ["load_checkpoint", "save_checkpoint", "WeightsFileError", "load_by_name"]
