"""PyTorch weights in and out, without PyTorch and without pickle.

    load_torch_state_dict(model, "resnet18.safetensors")   # or .npz, or a dict of arrays
    arrays = torch_state_dict(model)                        # the other way: torch's names and layouts
    write_safetensors("resnet18.safetensors", arrays)       # torch.load_state_dict-ready

A PyTorch ``state_dict()`` maps module paths to tensors: ``conv1.weight``,
``layer1.0.bn1.running_var``, ``layer2.0.downsample.0.weight``, ``fc.bias``.
``torch.save`` pickles it (a ``.pt`` file can run code when loaded), so minires
reads only the two pickle-free ways of storing one:

  .safetensors  the format of Hugging Face's ``safetensors`` package, read here
                with the standard library and NumPy (no package needed):
                    8 bytes    N, the header's length, unsigned little-endian
                    N bytes    a JSON object (UTF-8, maybe padded with spaces):
                               {"conv1.weight": {"dtype": "F32", "shape": [64, 3, 3, 3],
                                                 "data_offsets": [begin, end]}, ...,
                                "__metadata__": {"format": "pt"}}   (optional, str -> str)
                    the rest   the raw little-endian, C-order bytes of every tensor,
                               tensor k at [8 + N + begin, 8 + N + end)
                The reader refuses what the format forbids (safetensors' own
                checks): unknown dtypes, a shape whose size does not match its
                byte range, ranges outside the data, ranges that overlap, gaps
                or trailing bytes (the ranges must tile the data exactly), and
                a name given twice (JSON would silently keep the last one);
                the header's length is checked against the file's size before
                it is read, and the header before any tensor's bytes.
                Writing from PyTorch: ``safetensors.torch.save_file(model.state_dict(), path)``.
  .npz          ``np.savez(path, **{k: v.numpy() for k, v in model.state_dict().items()})``,
                read through ``minires.io.npz`` (as minires's checkpoints are):
                keys from the zip's directory, shapes and dtypes from each
                entry's .npy header, before any data is inflated; nothing
                is unpickled.

How a state dict maps onto minires: the model's layers are named after the
PyTorch module paths (``minires.applications.TorchResNet18`` is), so layer
``layer2.0.downsample.0`` takes the keys that start with it:

    PyTorch key                      minires parameter               layout change
    <conv>.weight (out, in, kh, kw)  Conv2D kernel (kh, kw, in, out) transpose(2, 3, 1, 0)
    <conv>.bias (out,)               Conv2D bias                     none
    <bn>.weight / .bias              gamma / beta                    none
    <bn>.running_mean / running_var  moving_mean / moving_variance   none
    <bn>.num_batches_tracked ()      -- (checked, then dropped)      minires keeps no count
    <linear>.weight (out, in)        Dense kernel (in, out)          transpose
    <linear>.bias                    Dense bias                      none

``num_batches_tracked`` only matters to a PyTorch BN built with momentum=None
(a cumulative average); minires's BN has a fixed momentum, so the count is
checked where present (an integer scalar), may be absent, and is not stored.
``torch_state_dict`` writes 0 for it, so ``torch_model.load_state_dict(...)``
(strict) takes minires's export whole.

Loading is strict and all-or-nothing: every key of the state dict must be used
and every parameter of the model must get one, every shape must match, every
weight must be floating point, and all the problems found, from the file's
metadata before any tensor is read, are reported in one TorchWeightsError (one
per line, the first MAX_LISTED_PROBLEMS of them, and how many more).  Values
are cast to the model's dtype (a float64 file into a float32 model, bf16
widened exactly) and must then be finite (NaN, inf, and a float64 beyond
float32's range are refused).  The model is changed only once everything has
been checked and read.
"""
import contextlib
import functools
import json
import math
import os
from collections import Counter, namedtuple
from collections.abc import Mapping

import numpy as np

from ..backend import like, to_device
from ..layers import BatchNormalization, Conv2D, Dense
from .atomic import atomic_write
from .npz import NpzArchive
from .validate import (MAX_LISTED_PROBLEMS, cast_checked, check_regular_file, dtype_problem,
                       listing, quoted, require_built, shape_problem)


class TorchWeightsError(ValueError):
    """A state-dict file that cannot be read, or a state dict that does not fit
    the model. ``problems``: each problem found, one string each."""

    def __init__(self, message, problems=()):
        super().__init__(message)
        self.problems = list(problems)


# --- safetensors -------------------------------------------------------------------
# safetensors dtype name -> NumPy dtype (explicitly little-endian, whatever this machine is)
SAFETENSORS_DTYPES = {
    "BOOL": np.dtype("?"), "U8": np.dtype("u1"), "I8": np.dtype("i1"),
    "U16": np.dtype("<u2"), "I16": np.dtype("<i2"), "F16": np.dtype("<f2"),
    "U32": np.dtype("<u4"), "I32": np.dtype("<i4"), "F32": np.dtype("<f4"),
    "U64": np.dtype("<u8"), "I64": np.dtype("<i8"), "F64": np.dtype("<f8"),
    "BF16": np.dtype("<u2"),     # no NumPy bfloat16: read as bits, widened to float32 below
}
_NAMES_BY_DTYPE = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items() if name != "BF16"}
MAX_HEADER_BYTES = 16 << 20    # read whole, parsed into Python objects of several times its
                               # size: 16 MiB describe 200,000 tensors (the safetensors package
                               # allows 100 MiB; ResNet-152's header takes 100 kB)
MAX_TENSORS = 100_000          # tensors in one file (ResNet-152's state dict has about 1,000)
_METADATA_KEY = "__metadata__"

# One tensor of a state dict, known before its data is read: its shape, the dtype
# ``read()`` returns it in, and ``read``, which reads it.
Tensor = namedtuple("Tensor", "shape dtype read")


def read_safetensors(path):
    """{name: NumPy array} of every tensor in the ``.safetensors`` file ``path``,
    in header order; ValueError (a TorchWeightsError) naming the file, and the
    tensor where there is one, for anything the format does not allow."""
    with SafetensorsFile(path) as file:
        return {name: tensor.read() for name, tensor in file.tensors.items()}


class SafetensorsFile:
    """A ``.safetensors`` file opened read-only, its header read and checked at
    once against the file's size (``tensors``: {name: Tensor}, in header
    order); a tensor's bytes are read only by its ``read``.  Use as a context
    manager, which closes it."""

    def __init__(self, path):
        self.path = os.fspath(path)
        check_regular_file(self.path, "state dict", TorchWeightsError)
        self._handle = open(self.path, "rb")
        try:
            self._entries, self._start = _safetensors_header(self._handle, self.path)
        except BaseException:
            self.close()
            raise
        self.tensors = {name: Tensor(shape, _returned_dtype(dtype_name),
                                     functools.partial(self._read, name))
                        for name, (dtype_name, shape, _, _) in self._entries.items()}

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self):
        self._handle.close()

    def _read(self, name):
        dtype_name, shape, begin, end = self._entries[name]
        dtype = SAFETENSORS_DTYPES[dtype_name]
        raw = np.empty(math.prod(shape), dtype)
        self._handle.seek(self._start + begin)
        if self._handle.readinto(raw.view(np.uint8)) != end - begin:
            raise TorchWeightsError(f"{self.path}: tensor {name!r} is cut short (the file "
                                    "changed while it was read)")
        if dtype_name == "BF16":      # bfloat16 is the top half of a float32: shift the bits back
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        return raw.astype(raw.dtype.newbyteorder("="), copy=False).reshape(shape)


def _returned_dtype(dtype_name):
    """The NumPy dtype a tensor of safetensors dtype ``dtype_name`` is read as."""
    dtype = np.dtype(np.float32) if dtype_name == "BF16" else SAFETENSORS_DTYPES[dtype_name]
    return dtype.newbyteorder("=")


def _safetensors_header(handle, path):
    """({name: (dtype name, shape, begin, end)}, where the data starts), all checked
    against the file's size before any tensor's bytes are read."""
    def fail(problem, name=None):
        where = f" (tensor {quoted(name)})" if name is not None else ""
        raise TorchWeightsError(f"{path} is not a valid .safetensors file{where}: {problem}")

    size = os.fstat(handle.fileno()).st_size
    if size < 8:
        fail(f"it has {size} bytes, fewer than the 8 of the header length")
    header_len = int.from_bytes(handle.read(8), "little")
    if header_len > MAX_HEADER_BYTES:
        fail(f"the header length is {header_len} bytes, more than the {MAX_HEADER_BYTES} allowed")
    if 8 + header_len > size:
        fail(f"the header length is {header_len} bytes, but only {size - 8} follow it "
             "(truncated, or another kind of file)")
    header = _parse_header(handle.read(header_len), fail)
    if len(header) > MAX_TENSORS:
        fail(f"the header lists {len(header):,} tensors, more than the {MAX_TENSORS:,} allowed")
    metadata = header.pop(_METADATA_KEY, None)
    if metadata is not None and (not isinstance(metadata, dict)
                                 or not all(isinstance(v, str) for v in metadata.values())):
        fail(f"{_METADATA_KEY!r} must map strings to strings")
    n_data = size - 8 - header_len
    entries = {name: _safetensors_entry(info, n_data, lambda p, n=name: fail(p, n))
               for name, info in header.items()}
    _check_tiling(entries, n_data, fail)
    return entries, 8 + header_len


def _check_tiling(entries, n_data, fail):
    """The byte ranges must tile [0, n_data): sorted by start, each begins where
    the last ended (no overlap, no gap, nothing after the last)."""
    end_so_far, last = 0, None
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda e: (e[1][2], e[1][3])):
        if begin < end_so_far:
            fail(f"its bytes [{begin}, {end}) overlap those of tensor {quoted(last)}", name)
        if begin > end_so_far:
            fail(f"bytes [{end_so_far}, {begin}) before it belong to no tensor", name)
        end_so_far, last = end, name
    if end_so_far != n_data:
        fail(f"{n_data - end_so_far} bytes after the last tensor belong to no tensor")


def _parse_header(text, fail):
    """The header's JSON object as a dict (names given twice, text that is not
    UTF-8 JSON, and JSON nested beyond Python's recursion limit are refused)."""
    if not text.startswith(b"{"):
        fail("the header does not start with '{' (not a JSON object)")
    header, problem = None, None
    try:
        header = json.loads(text.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except _DuplicateNames as error:
        problem = str(error)
    except RecursionError:
        problem = "the header's JSON is nested too deeply to read (a header is two levels deep)"
    except (UnicodeDecodeError, ValueError) as error:
        problem = f"the header is not valid UTF-8 JSON: {error}"
    if problem is not None:                   # raised here, not inside the except: no chained trace
        fail(problem)
    if not isinstance(header, dict):
        fail("the header is not a JSON object")
    return header


class _DuplicateNames(ValueError):
    pass


def _no_duplicates(pairs):
    """A JSON object as a dict, refusing a name given twice (json keeps the last one)."""
    unique = dict(pairs)
    if len(unique) == len(pairs):
        return unique
    repeated = sorted(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
    if repeated:
        raise _DuplicateNames(f"names given more than once: "
                              f"{', '.join(map(quoted, repeated[:MAX_LISTED_PROBLEMS]))} "
                              f"({len(repeated):,} in all; which one is meant?)")


def _safetensors_entry(info, n_data, fail):
    """(dtype name, shape, begin, end) of one header entry, checked against the data size."""
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        fail("an entry must be an object with exactly 'dtype', 'shape' and 'data_offsets', "
             f"got {quoted(info)}")
    dtype_name, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype_name, str) or dtype_name not in SAFETENSORS_DTYPES:
        fail(f"dtype {quoted(dtype_name)} is not one minires reads ({', '.join(SAFETENSORS_DTYPES)})")
    if not isinstance(shape, list) or not all(_is_count(s) for s in shape):
        fail(f"shape must be a list of non-negative integers, got {quoted(shape)}")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets)
            or offsets[0] > offsets[1]):
        fail(f"data_offsets must be [begin, end] with 0 <= begin <= end, got {quoted(offsets)}")
    itemsize = SAFETENSORS_DTYPES[dtype_name].itemsize
    problem = shape_problem(shape, itemsize)
    if problem:
        fail(problem)
    begin, end = offsets
    if end > n_data:
        fail(f"its bytes [{begin}, {end}) run past the {n_data} bytes of data")
    expected = math.prod(shape) * itemsize
    if end - begin != expected:
        fail(f"shape {shape} of {dtype_name} needs {expected} bytes, but data_offsets "
             f"[{begin}, {end}) hold {end - begin}")
    return dtype_name, tuple(shape), begin, end


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def write_safetensors(path, arrays, metadata=None):
    """Write {name: array} to ``path`` in the .safetensors format, atomically.

    Arrays go to the host and out little-endian and C-ordered, the largest
    items first so that every tensor starts aligned; the header is padded
    with spaces to a multiple of 8 bytes, as the safetensors package does.
    ``metadata``: optional {str: str}, stored as '__metadata__'.
    """
    arrays = {name: np.asarray(to_device(value, "cpu"), order="C") for name, value in arrays.items()}
    header, chunks, offset = {}, [], 0
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("write_safetensors: metadata must map str to str")
        header[_METADATA_KEY] = dict(metadata)
    for name in sorted(arrays, key=lambda n: -arrays[n].dtype.itemsize):   # stable: keeps order
        value = arrays[name]
        little = value.dtype.newbyteorder("<") if value.dtype.itemsize > 1 else value.dtype
        if not isinstance(name, str) or name == _METADATA_KEY or little not in _NAMES_BY_DTYPE:
            raise TypeError(f"write_safetensors: cannot store {name!r} of dtype {value.dtype}")
        raw = value.astype(little, copy=False).tobytes()
        header[name] = {"dtype": _NAMES_BY_DTYPE[little], "shape": list(value.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with atomic_write(os.fspath(path), suffix=".safetensors") as handle:
        handle.write(len(text).to_bytes(8, "little"))
        handle.write(text)
        for raw in chunks:
            handle.write(raw)


# --- state-dict files ------------------------------------------------------------
MAX_READ_BYTES = 2 << 30       # the most read_state_dict reads, all tensors together (None: no bound)
_PICKLED = (".pt", ".pth", ".bin", ".ckpt", ".pkl")


def read_state_dict(path, max_bytes=MAX_READ_BYTES):
    """{key: NumPy array} of every tensor in a ``.safetensors`` or ``.npz`` file
    (by its suffix); their total size, as the file declares it, is checked
    against ``max_bytes`` (None: no bound) before any tensor is read.
    Pickled PyTorch files (.pt, .pth, .bin, .ckpt) are refused: they can run code."""
    with opened_state_dict(path) as (what, tensors):
        total = sum(math.prod(tensor.shape) * tensor.dtype.itemsize for tensor in tensors.values())
        if max_bytes is not None and total > max_bytes:
            raise TorchWeightsError(f"{what} declares {total:,} bytes of tensors, more than "
                                    f"max_bytes={max_bytes:,} (pass a larger max_bytes, or None, "
                                    "if the file is trusted)")
        return {key: tensor.read() for key, tensor in tensors.items()}


@contextlib.contextmanager
def opened_state_dict(source):
    """(what, {key: Tensor}) of a state dict: a ``.safetensors`` or ``.npz`` file,
    its keys, shapes and dtypes read from its metadata, each tensor's data
    only by its ``read``; or a mapping of key -> array. ``what`` names it in
    messages."""
    if isinstance(source, Mapping):
        yield "the state dict", _mapping_tensors(source)
        return
    path = os.fspath(source)
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".safetensors":
        with SafetensorsFile(path) as file:
            yield path, file.tensors
    elif suffix == ".npz":
        with NpzArchive(path, ".npz state dict", TorchWeightsError) as archive:
            yield path, _NpzTensors(archive)
    elif suffix in _PICKLED:
        raise TorchWeightsError(
            f"{path}: minires does not read pickled PyTorch files (loading one can run "
            "arbitrary code); in PyTorch, save the state dict as .safetensors "
            "(safetensors.torch.save_file(model.state_dict(), 'w.safetensors')) or as .npz "
            "(np.savez('w.npz', **{k: v.numpy() for k, v in model.state_dict().items()}))")
    else:
        raise TorchWeightsError(f"{path}: a state dict must be a .safetensors or .npz file, "
                                f"got suffix {suffix or '(none)'!r}")


class _NpzTensors(Mapping):
    """{key: Tensor} of an NpzArchive: its keys from the zip's directory, an
    entry's .npy header read only when its Tensor is asked for."""

    def __init__(self, archive):
        self._archive = archive

    def __getitem__(self, key):
        entry = self._archive.entry(key)
        return Tensor(entry.shape, entry.dtype, functools.partial(self._archive.read, key))

    def __iter__(self):
        return iter(self._archive.keys)

    def __len__(self):
        return len(self._archive.keys)


def _mapping_tensors(source):
    """{key: Tensor} of a mapping of key -> array (or anything NumPy can read)."""
    tensors = {}
    for key, value in source.items():
        if not isinstance(key, str):
            raise TorchWeightsError(f"the state dict's keys must be strings, got {key!r} "
                                    f"({type(key).__name__})")
        try:
            array = np.asarray(value)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TorchWeightsError(f"the state dict's {key!r} is not an array NumPy can read: "
                                    f"{error}") from None
        tensors[key] = Tensor(array.shape, array.dtype, functools.partial(np.asarray, array))
    return tensors


# --- the mapping -------------------------------------------------------------------
_CONV_AXES = (2, 3, 1, 0)            # torch (out, in, kh, kw) -> minires (kh, kw, in, out)
_BN_KEYS = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
            "running_var": "moving_variance"}
COUNTER = "num_batches_tracked"


def torch_slots(model):
    """{PyTorch key: (layer, param name, axes)}: where each key of the model's
    state dict goes; ``axes`` turns the PyTorch array into minires's layout
    (None: same layout). ``num_batches_tracked`` keys are not among them."""
    slots, foreign = {}, []
    for layer, name in model.parameters(trainable_only=False):
        if isinstance(layer, Conv2D):
            key, axes = {"kernel": ("weight", _CONV_AXES), "bias": ("bias", None)}[name]
        elif isinstance(layer, Dense):
            key, axes = {"kernel": ("weight", (1, 0)), "bias": ("bias", None)}[name]
        elif isinstance(layer, BatchNormalization):
            key, axes = {v: k for k, v in _BN_KEYS.items()}[name], None
        else:
            foreign.append(f"{layer.name} ({type(layer).__name__})")
            continue
        slots[f"{layer.name}.{key}"] = (layer, name, axes)
    if foreign:
        raise TorchWeightsError(f"model {model.name!r}: no PyTorch counterpart known for the "
                                f"weights of {', '.join(sorted(set(foreign)))}")
    return slots


def _counter_keys(model):
    return {f"{layer.name}.{COUNTER}" for layer in model.leaf_layers()
            if isinstance(layer, BatchNormalization)}


def _torch_shape(shape, axes):
    """The PyTorch shape of a minires parameter of ``shape``."""
    if axes is None:
        return tuple(shape)
    back = np.argsort(axes)          # the inverse permutation
    return tuple(shape[i] for i in back)


def torch_state_dict(model):
    """The model's weights as a PyTorch state dict: {key: host NumPy array} in
    PyTorch's names and layouts, with ``num_batches_tracked`` = 0 for every BN
    (minires keeps no count), so ``torch_model.load_state_dict`` takes it whole."""
    arrays = {}
    for key, (layer, name, axes) in torch_slots(model).items():
        value = to_device(layer.params[name], "cpu")
        arrays[key] = np.ascontiguousarray(value if axes is None else value.transpose(np.argsort(axes)))
        if name == "moving_variance":             # PyTorch's order: ..., running_var, the count
            arrays[f"{layer.name}.{COUNTER}"] = np.array(0, dtype=np.int64)
    return arrays


def load_torch_state_dict(model, source):
    """Copy a PyTorch state dict into ``model`` in place, strictly (module docstring).

    ``source``: the path of a ``.safetensors`` or ``.npz`` file, or a mapping
    of key -> array (NumPy arrays, or CPU tensors NumPy can read).
    Raises TorchWeightsError (a ValueError) listing every missing key, every
    unexpected key and every shape or dtype that does not fit, all found from
    the file's metadata before any tensor is read; then, every tensor that
    holds NaN or inf once cast to its parameter's dtype.  The model is
    untouched then (and a ValueError for a model not built yet).
    """
    require_built(model, "load into")
    slots = torch_slots(model)
    with opened_state_dict(source) as (what, tensors):
        problems, unexpected = _fit_problems(tensors, slots, _counter_keys(model), what)
        if problems:
            _refuse(f"{what} does not fit model {model.name!r}", problems,
                    _prefix_hint(unexpected, slots))
        ready, problems = _read_fitting(tensors, slots, what)
        if problems:
            _refuse(f"{what} holds weights that are not finite numbers", problems)
    for param, value in ready:                # all checked: nothing below can fail
        param[...] = value
    model.weights_changed()                   # written in place: folded inference plans are stale


def _fit_problems(tensors, slots, counters, what):
    """(problems, unexpected keys): the state dict's keys, shapes and dtypes
    against the model's, from metadata alone (no tensor is read)."""
    problems = [f"missing: {key!r} (for layer {slots[key][0].name!r} {slots[key][1]})"
                for key in sorted(set(slots) - set(tensors))]
    unexpected = sorted(set(tensors) - set(slots) - counters)
    problems += [f"unexpected: {quoted(key)}" for key in unexpected]
    for key in tensors:
        if key in counters:
            tensor = tensors[key]
            if tensor.shape != () or tensor.dtype.kind not in "iu":
                problems.append(f"{key!r}: expected an integer scalar (a batch count), got "
                                f"{tensor.dtype} of shape {tensor.shape}")
        elif key in slots:
            problems += _slot_problems(key, tensors[key], *slots[key], what)
    return problems, unexpected


def _slot_problems(key, tensor, layer, name, axes, what):
    """[why ``tensor`` cannot fill ``layer.params[name]``], from its shape and dtype."""
    expected = _torch_shape(layer.params[name].shape, axes)
    if tensor.shape != expected:
        return [f"{key!r}: shape {tensor.shape} in {what}, but layer {layer.name!r} {name} "
                f"needs {expected}"]
    problem = dtype_problem(tensor.dtype)
    return [f"{key!r}: {problem}"] if problem else []


def _read_fitting(tensors, slots, what):
    """([(parameter, value in its layout, dtype and device)], problems): every
    tensor the model takes, read and cast; NaN or inf (once cast) is a problem."""
    ready, problems = [], []
    for key in (key for key in tensors if key in slots):
        layer, name, axes = slots[key]
        param = layer.params[name]
        value = tensors[key].read()
        value, problem = cast_checked(value if axes is None else value.transpose(axes), param.dtype)
        if problem:
            problems.append(f"{key!r} in {what} {problem}")
        else:
            ready.append((param, like(value, param)))
    return ready, problems


def _refuse(headline, problems, hint=""):
    count = f"{len(problems):,} problem{'s' * (len(problems) > 1)}"
    raise TorchWeightsError(f"{headline} ({count}, nothing loaded){hint}:\n  {listing(problems)}",
                            problems)


def _prefix_hint(unexpected, slots):
    """A hint when the keys only differ by a wrapper's prefix ('module.' of DataParallel)."""
    for prefix in ("module.", "model."):
        if unexpected and all(k.startswith(prefix) for k in unexpected) and \
                any(k[len(prefix):] in slots for k in unexpected):
            return (f"; its keys start with {prefix!r} (a wrapped model): strip it, "
                    f"{{k.removeprefix({prefix!r}): v for k, v in state.items()}}")
    return ""
