"""minires's own checkpoints: every weight of a model in one NumPy ``.npz`` file.

    save_checkpoint(model, "run/epoch3.npz", extra={"epoch": 3})
    extra = load_checkpoint(model, "run/epoch3.npz")      # {"epoch": 3}

The file is an ordinary ``.npz`` (a zip of ``.npy`` arrays), readable with
``np.load(path, allow_pickle=False)`` and nothing else; nothing in it is
pickled, so loading a checkpoint cannot run code.  Its keys:

    <layer name>/<param name>   every parameter, BatchNormalization's moving
                                statistics included: conv1/kernel, bn_conv1/moving_variance
    __format__                  the format version, an integer (now 1)
    __architecture__            the model's name, a string (e.g. 'resnet50')
    __extra__/<name>            whatever the caller passed as ``extra`` (an
                                epoch, optimiser state ...): arrays or scalars

Saving is atomic: the file is written under a temporary name in the same
directory and renamed over ``path`` only once complete, so a crash or an
error mid-save leaves any earlier checkpoint at ``path`` as it was.

Loading checks everything (format, architecture, keys, shapes, dtypes) before
writing any weight, so a load that fails leaves the model unchanged.
"""
import os
import zipfile

import numpy as np

from ..backend import like, to_device
from .atomic import atomic_write

FORMAT_VERSION = 1
_FORMAT_KEY = "__format__"
_ARCHITECTURE_KEY = "__architecture__"
_EXTRA_PREFIX = "__extra__/"
_LISTED = 10               # how many missing/unexpected keys an error message names


def parameter_key(layer, name):
    """The checkpoint key of a parameter: 'conv1/kernel'."""
    return f"{layer.name}/{name}"


# --- saving ----------------------------------------------------------------------
def save_checkpoint(model, path, extra=None):
    """Write every parameter of ``model`` (and ``extra``) to the ``.npz`` file ``path``.

    ``extra``: optional dict of name -> NumPy/CuPy array or scalar (int, float,
    bool, str), stored under ``__extra__/<name>`` and returned by
    ``load_checkpoint``.  Object arrays (lists of mixed things, None ...)
    would need pickling and are refused with a TypeError.

    ``path`` is used exactly as given: unlike ``np.savez``, no '.npz' is added
    to a name without it.  GPU (CuPy) arrays are copied to the host.
    """
    path = os.fspath(path)
    arrays = _checkpoint_arrays(model, extra)        # every check before any file is touched
    with atomic_write(path, suffix=".npz") as handle:
        np.savez(handle, **arrays)                   # a file object: no '.npz' appended


def _checkpoint_arrays(model, extra):
    """{key: host NumPy array} for the whole checkpoint."""
    arrays = {_FORMAT_KEY: np.array(FORMAT_VERSION, dtype=np.int64),
              _ARCHITECTURE_KEY: np.array(str(model.name))}
    for layer, name in model.parameters(trainable_only=False):
        if layer.name.startswith("__"):
            raise ValueError(f"model {model.name!r}: layer name {layer.name!r} starts with '__', "
                             "which checkpoints reserve for their metadata")
        arrays[parameter_key(layer, name)] = to_device(layer.params[name], "cpu")
    if extra is None:
        extra = {}
    if not isinstance(extra, dict):
        raise TypeError(f"extra must be a dict of name -> array or scalar, got {type(extra).__name__}")
    for name, value in extra.items():
        arrays[_EXTRA_PREFIX + _extra_name(name)] = _extra_array(name, value)
    return arrays


def _extra_name(name):
    if not isinstance(name, str) or not name:
        raise TypeError(f"extra: names must be non-empty strings, got {name!r}")
    return name


def _extra_array(name, value):
    """``value`` as a host NumPy array that ``np.save`` writes without pickling."""
    array = to_device(value, "cpu")                  # CuPy -> NumPy; scalars -> 0-d arrays
    if array.dtype.hasobject:
        raise TypeError(f"extra[{name!r}]: {type(value).__name__} becomes an object array, "
                        "which would need pickling; store numbers, strings or numeric arrays")
    return array


# --- loading -----------------------------------------------------------------------
def load_checkpoint(model, path, strict=True):
    """Load the weights in checkpoint ``path`` into ``model``, in place; return its ``extra``.

    ``extra`` comes back as a dict: scalars as Python scalars (int, float,
    bool, str), arrays as NumPy arrays (the caller moves them to the GPU).

    strict=True (the default) requires the checkpoint to be of this
    architecture (its stored name equals ``model.name``) and to hold exactly
    the model's parameters: every one present, none left over.
    strict=False loads whatever parameters the file and the model share
    (e.g. a backbone into a model with a new head) and accepts another
    architecture name; at least one parameter must match.

    Raises FileNotFoundError for a missing file, and ValueError (naming the
    file) for a file that is not a readable checkpoint, an unknown format
    version, another architecture, missing or unexpected keys, or a shape
    that does not fit.  Values are cast to each parameter's dtype.
    """
    path = os.fspath(path)
    arrays = _read_npz(path)
    _check_format(arrays, path)
    _check_architecture(arrays, model, path, strict)
    slots = {parameter_key(layer, name): (layer, name)
             for layer, name in model.parameters(trainable_only=False)}
    weights = {k: v for k, v in arrays.items() if not _is_metadata(k)}
    _check_keys(slots, weights, model, path, strict)
    ready = []
    for key, value in weights.items():
        if key in slots:
            layer, name = slots[key]
            ready.append((layer.params[name], _fitted(value, layer, name, path)))
    for param, value in ready:                       # nothing below can fail: all checked
        param[...] = value
    return {k[len(_EXTRA_PREFIX):]: (v.item() if v.ndim == 0 else v)
            for k, v in arrays.items() if k.startswith(_EXTRA_PREFIX)}


def _is_metadata(key):
    return key in (_FORMAT_KEY, _ARCHITECTURE_KEY) or key.startswith(_EXTRA_PREFIX)


def _read_npz(path):
    """Every array in the ``.npz`` file ``path`` as {key: array}, read in full now
    (np.load reads members lazily, and a damaged member fails only when read)."""
    try:
        with open(path, "rb") as handle:
            data = np.load(handle, allow_pickle=False)
            if isinstance(data, np.ndarray):
                raise ValueError("it holds a single .npy array, not a .npz archive")
            with data:
                return {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {path}") from None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise ValueError(f"{path} is not a readable minires checkpoint (empty, truncated, "
                         f"or another kind of file): {error}") from None


def _check_format(arrays, path):
    if _FORMAT_KEY not in arrays:
        raise ValueError(f"{path} is a .npz file but not a minires checkpoint: it has no "
                         f"{_FORMAT_KEY!r} entry")
    version = arrays[_FORMAT_KEY]
    if version.ndim != 0 or version.dtype.kind not in "iu":
        raise ValueError(f"{path}: the format version must be an integer, got "
                         f"{version.dtype} array of shape {version.shape}")
    if int(version) != FORMAT_VERSION:
        raise ValueError(f"{path} has checkpoint format version {int(version)}; this minires "
                         f"reads version {FORMAT_VERSION}")


def _check_architecture(arrays, model, path, strict):
    stored = arrays.get(_ARCHITECTURE_KEY)
    if stored is None or stored.ndim != 0 or stored.dtype.kind != "U":
        raise ValueError(f"{path}: {_ARCHITECTURE_KEY!r} is missing or not a string")
    if strict and str(stored) != model.name:
        raise ValueError(f"{path} is a checkpoint of architecture {str(stored)!r}, but the model "
                         f"is named {model.name!r} (pass name= when building the model, or "
                         "strict=False to load the parameters the two share)")


def _check_keys(slots, weights, model, path, strict):
    """Strict: the file's parameters are exactly the model's. Either way,
    at least one parameter to load."""
    if strict:
        missing = sorted(set(slots) - set(weights))
        unexpected = sorted(set(weights) - set(slots))
        if missing or unexpected:
            raise ValueError(f"{path} does not fit model {model.name!r}: "
                             f"missing from the file: {_listing(missing)}; "
                             f"unexpected in the file: {_listing(unexpected)}")
    if slots and not set(slots) & set(weights):
        raise ValueError(f"{path} shares no parameter with model {model.name!r} "
                         f"(the model has e.g. {_listing(sorted(slots))})")


def _listing(keys):
    """'none', or the first few keys and how many more."""
    if not keys:
        return "none"
    more = f" and {len(keys) - _LISTED} more" if len(keys) > _LISTED else ""
    return ", ".join(map(repr, keys[:_LISTED])) + more


def _fitted(value, layer, name, path):
    """``value`` checked against ``layer.params[name]``, cast to its dtype, on its device."""
    param = layer.params[name]
    if tuple(value.shape) != tuple(param.shape):
        raise ValueError(f"{path}: layer {layer.name!r} parameter {name!r} has shape "
                         f"{tuple(value.shape)} in the file, but {tuple(param.shape)} in the model")
    if value.dtype.kind not in "biuf":
        raise ValueError(f"{path}: layer {layer.name!r} parameter {name!r} has non-numeric "
                         f"dtype {value.dtype} in the file")
    return like(value.astype(param.dtype, copy=False), param)
