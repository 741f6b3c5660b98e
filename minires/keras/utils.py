"""keras.utils: the helpers tutorials call."""
import os

import numpy as np

from ..imagenet import img_to_array, load_img  # noqa: F401
from ..initializers import set_random_seed  # noqa: F401
from ..io.download import cache_dir as minires_cache_dir
from ..io.download import get_file as _verified_download
from ..utils import model_to_dot, plot_model  # noqa: F401
from .coverage import missing_from


def get_file(fname=None, origin=None, file_hash=None, cache_subdir="datasets", cache_dir=None,
             md5_hash=None):
    """``keras.utils.get_file``: ``origin`` downloaded once to
    <cache>/<cache_subdir>/<fname> and its path returned. minires checks every
    download, so the file's MD5 (``file_hash`` or ``md5_hash``) is required."""
    md5 = md5_hash or file_hash
    if md5 is None or len(md5) != 32:
        raise ValueError(f"get_file({fname!r}): minires verifies every download; pass its MD5 "
                         "as file_hash= (32 hex digits; SHA-256 hashes are not supported)")
    if origin is None:
        raise ValueError(f"get_file({fname!r}): origin= (the URL) is required")
    fname = fname or os.path.basename(origin)
    path = os.path.join(cache_dir or minires_cache_dir(), cache_subdir, fname)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return _verified_download(origin, md5, path)


def to_categorical(x, num_classes=None):
    """One-hot rows from class indices, as ``keras.utils.to_categorical``: labels
    of shape (N,) or (N, 1) give (N, num_classes) float64 rows (num_classes: the
    largest label + 1 unless given). A label that is not a whole number in
    [0, num_classes) is refused (NumPy would wrap a negative one around)."""
    labels = np.asarray(x)
    whole = labels.dtype.kind in "iub" or (labels.dtype.kind == "f"
                                           and bool(np.all(labels == np.round(labels))))
    if not whole:
        raise ValueError(f"to_categorical: labels must be whole numbers (class indices), got "
                         f"dtype {labels.dtype}{' with fractions' if labels.dtype.kind == 'f' else ''}")
    shape = labels.shape[:-1] if labels.ndim > 1 and labels.shape[-1] == 1 else labels.shape
    labels = labels.reshape(-1).astype(np.int64)
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.size else 0
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"to_categorical: labels must lie in [0, {num_classes}), got values from "
                         f"{labels.min()} to {labels.max()}")
    one_hot = np.zeros((labels.size, num_classes))
    one_hot[np.arange(labels.size), labels] = 1
    return one_hot.reshape(*shape, num_classes)


__all__ = ["get_file", "img_to_array", "load_img", "model_to_dot", "plot_model", "set_random_seed",
           "to_categorical"]

__getattr__ = missing_from(__name__, __all__)
