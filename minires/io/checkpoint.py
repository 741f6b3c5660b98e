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

Loading reads the file's metadata before any data: the zip's directory (the
size of every entry) and each ``.npy`` entry's header (its shape and dtype,
a few hundred bytes), never inflating an array to look at it.  Everything is
checked from that (format, architecture, keys, shapes, dtypes, that every
entry holds exactly the bytes its shape needs, and that all the arrays to
read fit in ``max_bytes``) before any array is read, and everything is read
before any weight is written, so a load that fails costs little and leaves
the model unchanged.
"""
import io
import math
import os
import struct
import zipfile
import zlib
from collections import namedtuple

import numpy as np

from ..backend import like, to_device
from .atomic import atomic_write

FORMAT_VERSION = 1
_FORMAT_KEY = "__format__"
_ARCHITECTURE_KEY = "__architecture__"
_EXTRA_PREFIX = "__extra__/"
_LISTED = 10               # how many missing/unexpected keys an error message names
_MAX_HEADER = 10_000       # bytes of one .npy header (numpy's own limit)
_MAX_NAME = 1024           # characters of an architecture name
_SPARE_BYTES = 64 << 20    # the default max_bytes: 8 x the model's parameters + this
_HDF5_NAMES = (".h5", ".hdf5", ".keras")

ZIP_SIGNATURE = b"PK\x03\x04"                 # how a .npz file (a zip) starts
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"         # how a Keras .h5 file starts

# One .npy entry of the file, as its header describes it.
_Entry = namedtuple("_Entry", "info shape dtype")


def parameter_key(layer, name):
    """The checkpoint key of a parameter: 'conv1/kernel'."""
    return f"{layer.name}/{name}"


def file_kind(path):
    """'npz' or 'hdf5' from the first bytes of the file at ``path`` (whatever its
    name), or None: missing, unreadable, or neither."""
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
    case) is refused with a ValueError: minires never writes HDF5, and a file
    so named would mislead Keras and h5py.  GPU (CuPy) arrays are copied to
    the host.
    """
    path = check_checkpoint_path(path)
    arrays = _checkpoint_arrays(model, extra)        # every check before any file is touched
    with atomic_write(path, suffix=".npz") as handle:
        np.savez(handle, **arrays)                   # a file object: no '.npz' appended


def check_checkpoint_path(path):
    """``path`` as a string, or a ValueError if it names a Keras HDF5 file."""
    path = os.fspath(path)
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
    file) for a file that is not a readable checkpoint, an unknown format
    version, another architecture, missing or unexpected keys, a shape that
    does not fit, or arrays larger than ``max_bytes``.  Values are cast to
    each parameter's dtype.
    """
    path = os.fspath(path)
    slots = {parameter_key(layer, name): (layer, name)
             for layer, name in model.parameters(trainable_only=False)}
    with _open_zip(path) as archive:
        entries = _read_entries(archive, path)
        _check_format(archive, entries, path)
        _check_architecture(archive, entries, model, path, strict)
        weights = {key: entry for key, entry in entries.items() if not _is_metadata(key)}
        _check_keys(slots, weights, model, path, strict)
        to_load = [(key, entry) for key, entry in weights.items() if key in slots]
        for key, entry in to_load:
            _check_fits(entry, *slots[key], path)
        extras = {key: entry for key, entry in entries.items() if key.startswith(_EXTRA_PREFIX)}
        _check_size([entries[_FORMAT_KEY], entries[_ARCHITECTURE_KEY], *dict(to_load).values(),
                     *extras.values()], model, max_bytes, path)
        ready = []
        for key, entry in to_load:
            layer, name = slots[key]
            param = layer.params[name]
            value = _read_array(archive, entry, key, path)
            ready.append((param, like(value.astype(param.dtype, copy=False), param)))
        extra = {key[len(_EXTRA_PREFIX):]: _read_array(archive, entry, key, path)
                 for key, entry in extras.items()}
    extra = {name: (value.item() if value.ndim == 0 else value) for name, value in extra.items()}
    if validate is not None:
        validate(extra)
    for param, value in ready:                       # nothing below can fail: all checked
        param[...] = value
    model.weights_changed()                          # written in place: folded inference plans are stale
    return extra


def _is_metadata(key):
    return key in (_FORMAT_KEY, _ARCHITECTURE_KEY) or key.startswith(_EXTRA_PREFIX)


def _unreadable(path, why):
    return ValueError(f"{path} is not a readable minires checkpoint: {why}")


# Errors that reading a damaged or foreign file can raise, from zipfile, zlib and numpy
# (NotImplementedError: an unknown compression; RuntimeError: an encrypted entry).
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, struct.error,
                NotImplementedError, RuntimeError)


def _open_zip(path):
    """The checkpoint as a ZipFile (only its directory is read now)."""
    try:
        return zipfile.ZipFile(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {path}") from None
    except _READ_ERRORS as error:
        raise ValueError(f"{path} is not a readable minires checkpoint (empty, truncated, "
                         f"or another kind of file): {error}") from None


def _read_entries(archive, path):
    """{key: _Entry} of every entry in the file, from its header alone."""
    entries = {}
    for info in archive.infolist():
        if not info.filename.endswith(".npy"):
            raise _unreadable(path, f"its entry {info.filename!r} is not a .npy array")
        key = info.filename[:-len(".npy")]
        if key in entries:
            raise _unreadable(path, f"it holds two entries named {info.filename!r}")
        entries[key] = _read_header(archive, info, path)
    return entries


def _read_header(archive, info, path):
    """One entry's shape and dtype from its .npy header: the first few hundred
    bytes inflated, never the data. The entry must hold exactly the header
    and the bytes its shape and dtype need, no more (the zip's directory says
    how many it holds)."""
    name = info.filename
    try:
        with archive.open(info) as stream:
            version = np.lib.format.read_magic(stream)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f".npy format version {version[0]}.{version[1]} "
                                 "(minires reads 1.0 and 2.0)")
            size_field = stream.read(2 if version == (1, 0) else 4)
            length = int.from_bytes(size_field, "little")
            if length > _MAX_HEADER:
                raise ValueError(f"a header of {length} bytes (at most {_MAX_HEADER} are read)")
            header = stream.read(length)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read_header(io.BytesIO(size_field + header))
    except _READ_ERRORS as error:
        raise _unreadable(path, f"entry {name!r}: {error}") from None
    if dtype.hasobject:
        raise _unreadable(path, f"entry {name!r} holds pickled Python objects (dtype {dtype}), "
                                "which minires never loads")
    if any(n < 0 for n in shape):
        raise _unreadable(path, f"entry {name!r} has shape {shape}")
    needed = np.lib.format.MAGIC_LEN + len(size_field) + length + math.prod(shape) * dtype.itemsize
    if info.file_size != needed:
        raise _unreadable(path, f"entry {name!r} declares {info.file_size:,} bytes, but its shape "
                                f"{shape} of {dtype} needs {needed:,} with its header (the file is "
                                "damaged or was not written by numpy)")
    return _Entry(info, shape, dtype)


def _nbytes(entry):
    return math.prod(entry.shape) * entry.dtype.itemsize


def _read_array(archive, entry, key, path):
    """The array of one entry (already checked from its header), read in full."""
    try:
        with archive.open(entry.info) as stream:
            array = np.lib.format.read_array(stream, allow_pickle=False)
    except _READ_ERRORS as error:
        raise ValueError(f"{path} is not a readable minires checkpoint (damaged): entry "
                         f"{key!r}: {error}") from None
    if array.shape != entry.shape or array.dtype != entry.dtype:   # the same header, read twice
        raise _unreadable(path, f"entry {key!r} changed while it was read")
    return array


def _read_small(archive, entries, key, path):
    """A 0-d metadata entry's value (its header already checked to be small)."""
    return _read_array(archive, entries[key], key, path)


def _check_format(archive, entries, path):
    entry = entries.get(_FORMAT_KEY)
    if entry is None:
        raise ValueError(f"{path} is a .npz file but not a minires checkpoint: it has no "
                         f"{_FORMAT_KEY!r} entry")
    if entry.shape != () or entry.dtype.kind not in "iu":
        raise ValueError(f"{path}: the format version must be an integer, got "
                         f"{entry.dtype} array of shape {entry.shape}")
    version = int(_read_small(archive, entries, _FORMAT_KEY, path))
    if version != FORMAT_VERSION:
        raise ValueError(f"{path} has checkpoint format version {version}; this minires "
                         f"reads version {FORMAT_VERSION}")


def _check_architecture(archive, entries, model, path, strict):
    entry = entries.get(_ARCHITECTURE_KEY)
    if entry is None or entry.shape != () or entry.dtype.kind != "U":
        raise ValueError(f"{path}: {_ARCHITECTURE_KEY!r} is missing or not a string")
    if entry.dtype.itemsize > 4 * _MAX_NAME:
        raise ValueError(f"{path}: {_ARCHITECTURE_KEY!r} is a string of "
                         f"{entry.dtype.itemsize // 4:,} characters, not a model name")
    stored = str(_read_small(archive, entries, _ARCHITECTURE_KEY, path))
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
    return ", ".join(map(repr, keys[:_LISTED])) + more


def _check_fits(entry, layer, name, path):
    """The entry's shape and dtype (from its header) fit ``layer.params[name]``."""
    param = layer.params[name]
    if tuple(entry.shape) != tuple(param.shape):
        raise ValueError(f"{path}: layer {layer.name!r} parameter {name!r} has shape "
                         f"{tuple(entry.shape)} in the file, but {tuple(param.shape)} in the model")
    if entry.dtype.kind not in "biuf":
        raise ValueError(f"{path}: layer {layer.name!r} parameter {name!r} has non-numeric "
                         f"dtype {entry.dtype} in the file")


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
    total = sum(_nbytes(entry) for entry in entries)
    if total > limit:
        largest = max(entries, key=_nbytes)
        raise ValueError(f"{path}: its arrays would take {total:,} bytes, more than max_bytes="
                         f"{limit:,} ({why}); the largest is {largest.info.filename!r}, "
                         f"shape {largest.shape} of {largest.dtype}. Pass a larger max_bytes "
                         "to load_checkpoint if the file is trusted")
