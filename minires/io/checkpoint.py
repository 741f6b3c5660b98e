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
error mid-save leaves any earlier checkpoint at ``path`` as it was.  The
file lands at ``path`` exactly as given (no '.npz' is added); a name ending
in '.h5', '.hdf5' or '.keras' is refused, since those promise Keras's HDF5.

Loading reads the file's metadata before any data (through
``minires.io.npz``, which the PyTorch .npz reader shares): the zip's
directory (the name and size of every entry) and the ``.npy`` header of each
entry it will read (its shape and dtype, a few hundred bytes), never
inflating an array to look at it.  Everything is checked from that (format,
architecture, keys, shapes, float dtypes, that every entry holds exactly the
bytes its shape needs, and that all the arrays to read fit in ``max_bytes``)
before any array is read; every array read is checked finite once cast to
its parameter's dtype, and everything is read before any weight is written,
so a load that fails costs little and leaves the model unchanged.
"""
import os

import numpy as np

from ..backend import like, to_device
from .atomic import atomic_write
from .npz import NpzArchive
from .validate import cast_checked, dtype_problem, quoted, require_built

FORMAT_VERSION = 1
_FORMAT_KEY = "__format__"
_ARCHITECTURE_KEY = "__architecture__"
_EXTRA_PREFIX = "__extra__/"
_LISTED = 10               # how many missing/unexpected keys an error message names
_MAX_NAME = 1024           # characters of an architecture name
_SPARE_BYTES = 64 << 20    # the default max_bytes: 8 x the model's parameters + this
_HDF5_NAMES = (".h5", ".hdf5", ".keras")

ZIP_SIGNATURE = b"PK\x03\x04"                 # how a .npz file (a zip) starts
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"         # how a Keras .h5 file starts


def parameter_key(layer, name):
    """The checkpoint key of a parameter: 'conv1/kernel'."""
    return f"{layer.name}/{name}"


def file_kind(path):
    """'npz' or 'hdf5' from the first bytes of the file at ``path`` (whatever its
    name), or None: missing, unreadable, not a regular file (opening a pipe
    would wait for a writer), or neither."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as handle:
            start = handle.read(len(HDF5_SIGNATURE))
    except OSError:
        return None
    if start.startswith(ZIP_SIGNATURE):
        return "npz"
    if start == HDF5_SIGNATURE:
        return "hdf5"
    return None


# --- saving ----------------------------------------------------------------------
def save_checkpoint(model, path, extra=None):
    """Write every parameter of ``model`` (and ``extra``) to the ``.npz`` file ``path``.

    ``extra``: optional dict of name -> NumPy/CuPy array or scalar (int, float,
    bool, str), stored under ``__extra__/<name>`` and returned by
    ``load_checkpoint``.  Object arrays (lists of mixed things, None ...)
    would need pickling and are refused with a TypeError.

    ``path`` is used exactly as given: unlike ``np.savez``, no '.npz' is added
    to a name without it.  A name ending in '.h5', '.hdf5' or '.keras' (any
    case) is refused with a ValueError: a file so named would mislead Keras
    and h5py (``Model.save_weights`` writes Keras's formats for those names),
    and so are an empty name and a directory.  A model not built yet (a Sequential or subclassed model
    never called) has no weights: refused with a ValueError.  GPU (CuPy)
    arrays are copied to the host.
    """
    path = check_checkpoint_path(path)
    require_built(model, "save")
    arrays = _checkpoint_arrays(model, extra)        # every check before any file is touched
    with atomic_write(path, suffix=".npz") as handle:
        np.savez(handle, **arrays)                   # a file object: no '.npz' appended


def check_checkpoint_path(path):
    """``path`` as a string, or a ValueError if it cannot name a checkpoint file:
    empty, a directory, or a Keras HDF5 file."""
    path = os.fsdecode(path)                         # str, bytes or os.PathLike
    if not path:
        raise ValueError("the checkpoint path is empty (''): give a file name, e.g. 'weights.npz'")
    if path.endswith(("/", os.sep)) or os.path.isdir(path):
        raise ValueError(f"{path} is a directory: give the checkpoint a file name in it, e.g. "
                         f"{os.path.join(path, 'weights.npz')!r}")
    if path.lower().endswith(_HDF5_NAMES):
        suffix = next(s for s in _HDF5_NAMES if path.lower().endswith(s))
        raise ValueError(f"{path}: minires writes its checkpoints as .npz files, never as HDF5, "
                         f"and a name ending in {suffix!r} says HDF5 to Keras and h5py; use a "
                         f"name ending in '.npz' (e.g. {os.path.splitext(path)[0] + '.npz'!r})")
    return path


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
def load_checkpoint(model, path, strict=True, max_bytes=None, validate=None):
    """Load the weights in checkpoint ``path`` into ``model``, in place; return its ``extra``.

    ``extra`` comes back as a dict: scalars as Python scalars (int, float,
    bool, str), arrays as NumPy arrays (the caller moves them to the GPU).

    strict=True (the default) requires the checkpoint to be of this
    architecture (its stored name equals ``model.name``) and to hold exactly
    the model's parameters: every one present, none left over.
    strict=False loads whatever parameters the file and the model share
    (e.g. a backbone into a model with a new head) and accepts another
    architecture name; at least one parameter must match.  The file's other
    parameters are not read.

    max_bytes: the most memory, in bytes, that the arrays to be read (the
    parameters to load, ``extra`` and the metadata) may declare, all together.
    None (the default): 8 times the bytes of the model's parameters, plus
    64 MiB: room for float64 weights and an optimiser's state.  Checked from
    the file's metadata, before any array is read.

    validate: optional function called with the ``extra`` dict once the file
    has passed every check, before any weight is written; whatever it raises
    propagates, with the model unchanged (train.restore checks the optimiser
    state there).

    Raises FileNotFoundError for a missing file, and ValueError (naming the
    file) for a model not built yet, a file that is not a readable
    checkpoint, an unknown format version, another architecture, missing or
    unexpected keys, a shape that does not fit, weights that are not floats
    (integers, booleans: never cast silently), NaN or inf (also once cast:
    a float64 beyond float32's range), or arrays larger than ``max_bytes``.
    Values are cast to each parameter's dtype.
    """
    path = os.fspath(path)
    require_built(model, "load into")
    slots = {parameter_key(layer, name): (layer, name)
             for layer, name in model.parameters(trainable_only=False)}
    with NpzArchive(path, "minires checkpoint", ValueError) as archive:
        _check_format(archive, path)
        _check_architecture(archive, model, path, strict)
        weights = [key for key in archive.keys if not _is_metadata(key)]
        _check_keys(slots, weights, model, path, strict)
        to_load = {key: archive.entry(key) for key in weights if key in slots}
        for key, entry in to_load.items():
            _check_fits(entry, *slots[key], path)
        extras = {key: archive.entry(key) for key in archive.keys if key.startswith(_EXTRA_PREFIX)}
        _check_size([archive.entry(_FORMAT_KEY), archive.entry(_ARCHITECTURE_KEY),
                     *to_load.values(), *extras.values()], model, max_bytes, path)
        ready = [(layer.params[name], _read_weight(archive, key, layer.params[name]))
                 for key, (layer, name) in slots.items() if key in to_load]
        extra = {key[len(_EXTRA_PREFIX):]: archive.read(key) for key in extras}
    extra = {name: (value.item() if value.ndim == 0 else value) for name, value in extra.items()}
    if validate is not None:
        validate(extra)
    for param, value in ready:                       # nothing below can fail: all checked
        param[...] = value
    model.weights_changed()                          # written in place: folded inference plans are stale
    return extra


def _read_weight(archive, key, param):
    """The array of ``key``, cast to ``param``'s dtype and device; NaN or inf
    (once cast) raises ValueError naming the file and the key."""
    value, problem = cast_checked(archive.read(key), param.dtype)
    if problem:
        raise ValueError(f"{archive.path}: {key!r} {problem}; a weight must be a finite number "
                         "(nothing loaded)")
    return like(value, param)


def _is_metadata(key):
    return key in (_FORMAT_KEY, _ARCHITECTURE_KEY) or key.startswith(_EXTRA_PREFIX)


def _check_format(archive, path):
    if _FORMAT_KEY not in archive.keys:
        raise ValueError(f"{path} is a .npz file but not a minires checkpoint: it has no "
                         f"{_FORMAT_KEY!r} entry")
    entry = archive.entry(_FORMAT_KEY)
    if entry.shape != () or entry.dtype.kind not in "iu":
        raise ValueError(f"{path}: the format version must be an integer, got "
                         f"{entry.dtype} array of shape {entry.shape}")
    version = int(archive.read(_FORMAT_KEY))
    if version != FORMAT_VERSION:
        raise ValueError(f"{path} has checkpoint format version {version}; this minires "
                         f"reads version {FORMAT_VERSION}")


def _check_architecture(archive, model, path, strict):
    entry = archive.entry(_ARCHITECTURE_KEY) if _ARCHITECTURE_KEY in archive.keys else None
    if entry is None or entry.shape != () or entry.dtype.kind != "U":
        raise ValueError(f"{path}: {_ARCHITECTURE_KEY!r} is missing or not a string")
    if entry.dtype.itemsize > 4 * _MAX_NAME:
        raise ValueError(f"{path}: {_ARCHITECTURE_KEY!r} is a string of "
                         f"{entry.dtype.itemsize // 4:,} characters, not a model name")
    stored = str(archive.read(_ARCHITECTURE_KEY))
    if strict and stored != model.name:
        raise ValueError(f"{path} is a checkpoint of architecture {stored!r}, but the model "
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
    return ", ".join(map(quoted, keys[:_LISTED])) + more


def _check_fits(entry, layer, name, path):
    """The entry's shape and dtype (from its header) fit ``layer.params[name]``."""
    param = layer.params[name]
    if tuple(entry.shape) != tuple(param.shape):
        raise ValueError(f"{path}: layer {layer.name!r} parameter {name!r} has shape "
                         f"{tuple(entry.shape)} in the file, but {tuple(param.shape)} in the model")
    problem = dtype_problem(entry.dtype)
    if problem:
        raise ValueError(f"{path}: layer {layer.name!r} parameter {name!r} has {problem}")


def _check_size(entries, model, max_bytes, path):
    """The arrays about to be read fit in ``max_bytes`` (see load_checkpoint)."""
    params = sum(layer.params[name].size * layer.params[name].dtype.itemsize
                 for layer, name in model.parameters(trainable_only=False))
    if max_bytes is None:
        limit, why = 8 * params + _SPARE_BYTES, (f"the default: 8 x the model's {params:,} bytes "
                                                 "of parameters + 64 MiB")
    elif isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) \
            or max_bytes < 0:
        raise ValueError(f"load_checkpoint: max_bytes must be a number of bytes or None, "
                         f"got {max_bytes!r}")
    else:
        limit, why = int(max_bytes), "as given"
    total = sum(entry.nbytes for entry in entries)
    if total > limit:
        largest = max(entries, key=lambda entry: entry.nbytes)
        raise ValueError(f"{path}: its arrays would take {total:,} bytes, more than max_bytes="
                         f"{limit:,} ({why}); the largest is {quoted(largest.info.filename)}, "
                         f"shape {largest.shape} of {largest.dtype}. Pass a larger max_bytes "
                         "to load_checkpoint if the file is trusted")
