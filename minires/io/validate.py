"""The checks every weight loader shares, so that one fault gets one message
whatever the file's format (Keras HDF5, minires .npz checkpoint, PyTorch
.safetensors or .npz, a dict of arrays):

- the path is a regular file (a pipe would block the reader forever);
- the model has been built (a Sequential or subclassed model has no weights
  before its first call, so there is nothing to load into or to save);
- a declared shape is one NumPy can hold, a declared dtype is floating point
  (weights are never cast from integers, booleans or text);
- values are finite once cast to the model's dtype (a float64 beyond
  float32's range becomes inf);
- an error message lists the first MAX_LISTED_PROBLEMS problems and counts the
  rest, and quotes a name or value from a file at most MAX_QUOTED characters long.
"""
import math
import os

import numpy as np

from ..backend import quiet_overflow

MAX_LISTED_PROBLEMS = 20       # problems spelled out in one error message
MAX_QUOTED = 200               # characters of one name or value from a file, in a message
MAX_DIMS = 32                  # dimensions of one array: NumPy 1's limit (a weight has at most 4)
MAX_ARRAY_BYTES = 1 << 62      # bytes of one array, zero-size dimensions counted as 1 (NumPy's
                               # own limit is 2**63, checked on its way to a MemoryError)


def check_regular_file(path, noun, error):
    """FileNotFoundError if nothing is at ``path``; ``error`` naming it if it is a
    directory or not a regular file (a pipe, a device)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{noun} not found: {path}")
    if os.path.isdir(path):
        raise error(f"{path} is a directory, not a {noun}")
    if not os.path.isfile(path):
        raise error(f"{path} is not a regular file (a device, a pipe, a socket ...)")


def require_built(model, action):
    """ValueError unless ``model`` has been built: a model not built yet has no
    weights, so there is nothing to ``action`` ('load into', 'save')."""
    if not getattr(model, "built", True):
        raise ValueError(f"model {model.name!r} has not been built yet, so it has no weights to "
                         f"{action}: build it first (call it on a batch, or "
                         "model.build(input_shape))")


def listing(problems, limit=MAX_LISTED_PROBLEMS):
    """The first ``limit`` problems, one a line, and how many more."""
    shown = "\n  ".join(problems[:limit])
    if len(problems) > limit:
        shown += f"\n  ... and {len(problems) - limit:,} more"
    return shown


def quoted(value):
    """``repr(value)``, cut to MAX_QUOTED characters: what a hostile file names
    (a key, an entry, a header value) may be megabytes long."""
    text = repr(value)
    if len(text) <= MAX_QUOTED:
        return text
    return f"{text[:MAX_QUOTED]}... ({len(text):,} characters)"


def shape_problem(shape, itemsize):
    """Why no array of ``shape`` (non-negative ints) and items of ``itemsize``
    bytes can be made, or None."""
    if len(shape) > MAX_DIMS:
        return f"its shape has {len(shape)} dimensions, more than the {MAX_DIMS} an array may have"
    if math.prod(max(n, 1) for n in shape) * itemsize > MAX_ARRAY_BYTES:
        return (f"its shape {tuple(shape)} multiplies to more than 2**62 bytes, more than "
                "any array can hold")
    return None


def dtype_problem(dtype):
    """Why values of ``dtype`` cannot be weights (only floats can), or None."""
    if np.dtype(dtype).kind != "f":
        return f"dtype {dtype}, not floating point (weights are never cast from other types)"
    return None


def non_finite(array):
    """'holds 3 non-finite value(s) ...' if a float ``array`` holds NaN or inf, else None."""
    finite = np.isfinite(array)
    if finite.all():
        return None
    bad = array.size - int(np.count_nonzero(finite))
    return f"holds {bad:,} non-finite value(s) (NaN or inf, as {array.dtype}) among {array.size:,}"


def cast_checked(value, dtype):
    """(``value`` as a new C-ordered array of ``dtype``, why it cannot be a weight or
    None): NaN and inf are refused after the cast, which turns a float64 beyond
    float32's range into inf."""
    with quiet_overflow():                                      # found below, and named
        array = np.array(value, dtype=dtype, order="C")
    return array, non_finite(array)
