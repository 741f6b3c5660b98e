"""Reading an HDF5 file nobody vouches for: nothing followed, nothing read before its size is known.

An HDF5 file is more than named arrays.  A name may be a soft link (another path
in the file, possibly a loop) or an external link (an object in another file); a
dataset may keep its bytes in other files (external storage, virtual datasets);
its shape is whatever the file declares, and a kilobyte of gzip data may inflate
to a gigabyte.  Names, link kinds, shapes, types, layouts and filters are
metadata, which HDF5 reads without touching the data, so every check comes first:

- a name is looked up one component at a time, and each step must be a hard
  link: soft and external links are refused, never followed (so no loop, and no
  other file is ever opened);
- a dataset must hold real numbers (integers or floats: no text, no complex
  numbers, which h5py stores as compound records, no enums such as booleans),
  keep its bytes in this file (contiguous, compact or chunked layout; no
  external storage, no virtual dataset) and use no filter but gzip (deflate),
  shuffle and fletcher32;
- its data is read only on request (``StoredArray.read``), into an array whose
  shape the caller has checked; its chunks must fit its data, each gzip chunk
  is first inflated here, up to the chunk's declared size and no further (HDF5
  itself keeps inflating a chunk that lies about its size), and NaN or inf
  values are refused;
- attributes must be text of bounded size, known before the text is read
  (for variable-length strings, from the lengths stored in the attribute
  message: ``minires.io.h5_headers``);
- the heaps that hold names and variable-length text are walked first
  (``check_heaps``): one damaged size or offset there sends HDF5 1.14 into an
  endless loop.

Every problem raises WeightsFileError naming the file and the HDF5 path.  So does
anything h5py raises on a damaged file (OSError mostly, but also KeyError,
TypeError, ValueError, RuntimeError, UnicodeDecodeError, MemoryError ...), so a
caller catches one exception type.  Files are opened read-only: nothing here
ever writes to them.
"""
import contextlib
import math
import mmap
import os
import zlib
from collections import namedtuple

import h5py
import numpy as np
from h5py import h5d, h5l, h5o, h5s, h5t, h5z

from .h5_headers import HeaderError, base_address, vlen_string_lengths
from .validate import check_regular_file, non_finite

MAX_TEXT_ITEMS = 100_000          # names in one attribute (ResNet-152 has about 500 layers)
MAX_TEXT_BYTES = 16 << 20         # bytes one text attribute may take in the file
MAX_CHUNKS = 1 << 16              # chunks one dataset may be cut into
CHUNK_SLACK = 1 << 20             # a chunk may be larger than its dataset's data up to this size
MAX_HEAP_STEPS = 1_000_000        # heap objects walked per file (check_heaps)

FILTERS = {h5z.FILTER_DEFLATE: "gzip", h5z.FILTER_SHUFFLE: "shuffle",
           h5z.FILTER_FLETCHER32: "fletcher32"}
NOT_NUMBERS = {h5t.STRING: "text", h5t.COMPOUND: "compound records", h5t.ENUM: "enumerated values",
               h5t.ARRAY: "fixed-size arrays", h5t.VLEN: "variable-length sequences",
               h5t.OPAQUE: "opaque bytes", h5t.REFERENCE: "object references",
               h5t.BITFIELD: "bit fields", h5t.TIME: "time values"}


class WeightsFileError(ValueError):
    """A weights file that cannot be read, or whose contents do not fit the model."""


def _describe(error):
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@contextlib.contextmanager
def reading(filepath, key):
    """Whatever h5py raises while reading ``key`` becomes one WeightsFileError.

    h5py reports a damaged file with many exception types (see the module
    docstring), so everything but our own error is caught here; only h5py and
    NumPy calls run inside these blocks."""
    try:
        yield
    except WeightsFileError:
        raise
    except UnicodeDecodeError as error:
        raise WeightsFileError(f"{filepath}: {key} is not UTF-8 text ({error})") from None
    except Exception as error:  # noqa: BLE001 - see the docstring
        raise WeightsFileError(f"{filepath} is damaged: cannot read {key}: {_describe(error)}") from None


def open_file(filepath):
    """The HDF5 file at ``filepath``, opened read-only (an h5py.File, to be closed)."""
    path = os.fspath(filepath)
    check_regular_file(path, "weights file", WeightsFileError)
    try:
        handle = h5py.File(path, "r")
    except Exception as error:  # noqa: BLE001 - h5py's errors for files that are not HDF5
        raise WeightsFileError(f"{path} is not a readable HDF5 file (empty, truncated or another "
                               f"format): {_describe(error)}") from None
    try:
        with reading(path, "its superblock"):
            offset_size, length_size = handle.id.get_create_plist().get_sizes()
            file_size = handle.id.get_filesize()
        with reading(path, "its heaps"):
            check_heaps(path, offset_size, length_size, file_size)
    except BaseException:
        handle.close()
        raise
    return handle


def check_heaps(path, offset_size=8, length_size=8, file_size=0):
    """Refuse the damaged heaps that send HDF5 (1.14) into an endless loop.

    HDF5 keeps names and variable-length strings in heaps, and walks two of
    their lists without checking that it moves on (both found by
    tests/test_byte_flips.py; HDF5 loops, allocating, until killed):

    - a global heap collection ('GCOL', version 1, 3 reserved bytes, its size;
      then objects: index, 2 bytes; reference count, 2; reserved, 4; size;
      data padded to 8 bytes; index 0 is the free space, whose size counts its
      header), which holds variable-length strings (Keras 3's names, str
      attributes h5py writes): a free-space object of size 0 (zeros, also past
      the end of the file, which HDF5 reads as zeros), or a size larger than
      the collection (which wraps the pointer);
    - a local heap ('HEAP', version 0, 3 reserved bytes, data size, offset of
      the first free block, address of the data), which holds a group's link
      names: a free list (each free block starts with the offset of the next;
      1 ends the list) that comes back to a block it has visited.

    Every heap in the file is walked here first, the way HDF5 walks it, in
    plain Python: at most MAX_HEAP_STEPS steps in all (a weights file needs a
    few thousand).  ``file_size``: HDF5's idea of it (reads stop there).
    """
    with mapped(path) as data:
        walk = _HeapWalk(path, data, offset_size, length_size, max(len(data), file_size))
        for signature, check in ((b"GCOL", walk.global_heap), (b"HEAP", walk.local_heap)):
            start = data.find(signature)
            while start != -1:
                check(start)
                start = data.find(signature, start + 1)


@contextlib.contextmanager
def mapped(path):
    """The bytes of the file at ``path``, mapped read-only."""
    with open(path, "rb") as handle, contextlib.closing(
            mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)) as data:
        yield data


class _HeapWalk:
    """The state of one check_heaps: the file's bytes and sizes, steps taken."""

    def __init__(self, path, data, offset_size, length_size, limit):
        self.path, self.data, self.limit = path, data, limit
        self.offset_size, self.length_size = offset_size, length_size
        self.base = base_address(data, offset_size)
        self.steps = 0

    def number(self, at, size):
        return int.from_bytes(self.data[at:at + size], "little")       # b"" past the end: 0

    def step(self):
        self.steps += 1
        if self.steps > MAX_HEAP_STEPS:
            raise WeightsFileError(f"{self.path}: its heaps hold more than {MAX_HEAP_STEPS:,} "
                                   "objects")

    def global_heap(self, start):
        header = 8 + self.length_size           # the collection's header, and each object's
        size = self.number(start + 8, self.length_size)
        end = start + size
        if self.data[start + 4] != 1 or size < header or end > self.limit:
            return                              # HDF5 refuses it, or it is not a heap
        at = start + header
        while at + header <= end:               # HDF5: a smaller rest is free space
            index, length = self.number(at, 2), self.number(at + 8, self.length_size)
            if length > size or (index == 0 and length == 0):
                raise WeightsFileError(
                    f"{self.path} is damaged: the global heap at byte {start} (which holds "
                    f"variable-length strings) has an object at byte {at} of size {length}, "
                    "on which HDF5 would loop forever")
            self.step()
            at += length if index == 0 else header + -(-length // 8) * 8

    def local_heap(self, start):
        size_at, free_at = start + 8, start + 8 + self.length_size
        size, free = self.number(size_at, self.length_size), self.number(free_at, self.length_size)
        address = self.number(free_at + self.length_size, self.offset_size)
        if self.data[start + 4] != 0:
            return                              # HDF5 refuses it, or it is not a heap
        seen = set()
        while free not in (0, 1) and free < size:   # 1 ends the list; HDF5 refuses 0 or past the end
            if free in seen:
                raise WeightsFileError(
                    f"{self.path} is damaged: the free list of the local heap at byte {start} "
                    f"(which holds a group's names) comes back to offset {free}, on which "
                    "HDF5 would loop forever")
            seen.add(free)
            self.step()
            free = self.number(self.base + address + free, self.length_size)


def path_of(obj):
    """The HDF5 path of ``obj`` ('/conv1/conv1'), for messages; '?' if a damaged
    file hides it."""
    try:
        return obj.name or "?"
    except Exception:  # noqa: BLE001 - only for a message
        return "?"


def _key(group, path):
    return f"'{path_of(group).rstrip('/')}/{path}'"


def find(group, path, filepath, kind):
    """The object at ``path`` below ``group``, or None if there is none.

    Every step of the path must be a hard link (a soft or external link raises
    WeightsFileError, without being followed), and the object must be a ``kind``
    (h5py.Group or h5py.Dataset)."""
    key = _key(group, path)
    parts = path.split("/")
    if "" in parts or "." in parts:
        raise WeightsFileError(f"{filepath}: {key} is not a plain relative name "
                               "(it has an empty or '.' component)")
    node = group
    with reading(filepath, key):
        for part in parts:
            if not isinstance(node, h5py.Group):
                raise WeightsFileError(f"{filepath}: {key}: {node.name!r} is not a group")
            name = part.encode("utf8")
            if not node.id.links.exists(name):
                return None
            link = node.id.links.get_info(name).type
            if link != h5l.TYPE_HARD:
                raise WeightsFileError(f"{filepath}: {key} {_link_kind(node, name, link)}; weight "
                                       "files are read without following links")
            node = node[part]
        if not isinstance(node, kind):
            raise WeightsFileError(f"{filepath}: {key} is a {type(node).__name__}, "
                                   f"not a {kind.__name__}")
    return node


def require(group, path, filepath, kind, listed_in):
    """``find``, and an error saying where the name came from if nothing is there."""
    found = find(group, path, filepath, kind)
    if found is None:
        raise WeightsFileError(f"{filepath} is damaged: {_key(group, path)}, listed in "
                               f"{listed_in}, is missing")
    return found


def names(group, filepath):
    """The link names in ``group`` (nothing is followed), each UTF-8 text."""
    key = repr(path_of(group))
    with reading(filepath, key):
        found = list(group.keys())
    for name in found:
        if not isinstance(name, str):                  # h5py gives bytes it cannot decode
            raise WeightsFileError(f"{filepath}: {key} holds the name {name!r}, which is not "
                                   "UTF-8 text")
    return found


def _link_kind(group, name, link):
    """'is a soft link to ...' in words, for the error message."""
    if link == h5l.TYPE_SOFT:
        target = group.id.links.get_val(name).decode("utf8", "replace")
        return f"is a soft link to {target!r}"
    if link == h5l.TYPE_EXTERNAL:
        filename, target = (part.decode("utf8", "replace") for part in group.id.links.get_val(name))
        return f"is an external link to {target!r} in the file {filename!r}"
    return f"is a user-defined link (type {link})"


def text_attribute(obj, name, filepath, default=None):
    """Attribute ``name`` of ``obj`` as a list of str (bytes are decoded as
    UTF-8; an empty array of any type, as Keras writes for a layer without
    weights, is []), or ``default`` if there is no such attribute.  Its size is
    checked from its metadata before it is read: the bytes it takes in the
    file, or for variable-length strings the lengths stored beside them
    (``text_bytes``)."""
    key = f"attribute {name!r} of {path_of(obj)!r}"
    with reading(filepath, key):
        if name not in obj.attrs:
            return default
        attribute = obj.attrs.get_id(name)
        if attribute.get_space().get_simple_extent_type() == h5s.NULL:
            return []
        count = math.prod(attribute.shape)
        if count == 0:
            return []
        if h5py.check_string_dtype(attribute.dtype) is None:
            raise WeightsFileError(f"{filepath}: {key} holds {attribute.dtype} values, not text")
        size = text_bytes(obj, name, attribute, count, filepath, key)
        if count > MAX_TEXT_ITEMS or size > MAX_TEXT_BYTES:
            raise WeightsFileError(f"{filepath}: {key} declares {count:,} values in {size:,} "
                                   f"bytes, more than any weights file needs (at most "
                                   f"{MAX_TEXT_ITEMS:,} values, {MAX_TEXT_BYTES:,} bytes)")
        values = np.asarray(obj.attrs[name]).ravel()
        return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def text_bytes(obj, name, attribute, count, filepath, key):
    """The bytes text attribute ``name`` takes: fixed-length strings, its storage
    size; variable-length ones, the sum of the lengths stored in its attribute
    message (minires.io.h5_headers), since their storage size counts only the
    16-byte reference of each string and HDF5 reads every string to say more."""
    if not attribute.get_type().is_variable_str():
        return attribute.get_storage_size()              # h5py calls 0 bytes an error
    offset_size, length_size = obj.file.id.get_create_plist().get_sizes()
    try:
        with mapped(filepath) as data:
            lengths = vlen_string_lengths(data, h5o.get_info(obj.id).addr, name.encode("utf8"),
                                          count, offset_size, length_size)
    except HeaderError as error:
        raise WeightsFileError(f"{filepath}: {key} holds variable-length text whose size minires "
                               f"cannot check before reading it: {error}") from None
    return sum(lengths)


class StoredArray(namedtuple("StoredArray", "filepath key shape dtype dataset")):
    """A dataset checked from its metadata (``inspect``): its ``shape`` and the
    NumPy ``dtype`` it is stored as are known; its data is read only by ``read``."""

    @property
    def size(self):
        return math.prod(self.shape)

    def read(self, dtype):
        """The data as a new array of ``dtype`` (HDF5 converts), every gzip chunk
        inflated here first within its bound; NaN and inf raise WeightsFileError."""
        out = np.empty(self.shape, dtype)
        with reading(self.filepath, self.key):
            _check_chunks(self.dataset, self.filepath, self.key)
            if out.size:
                self.dataset.read_direct(out)
        problem = non_finite(out) if out.dtype.kind == "f" else None
        if problem:
            raise WeightsFileError(f"{self.filepath}: {self.key} {problem}")
        return out


def inspect(dataset, filepath):
    """``dataset`` as a StoredArray, after every check of the module docstring
    that its metadata allows; no data is read."""
    key = repr(path_of(dataset))
    with reading(filepath, key):
        space = dataset.id.get_space().get_simple_extent_type()
        type_id = dataset.id.get_type()
        type_class = type_id.get_class()
        plist = dataset.id.get_create_plist()
        layout = plist.get_layout()
        externals = [plist.get_external(i)[0].decode("utf8", "replace")
                     for i in range(plist.get_external_count())]
        filters = [plist.get_filter(i) for i in range(plist.get_nfilters())]
        if space == h5s.NULL:
            raise WeightsFileError(f"{filepath}: {key} holds no data (a null dataspace)")
        if type_class not in (h5t.INTEGER, h5t.FLOAT):
            what = NOT_NUMBERS.get(type_class, f"values of HDF5 type class {type_class}")
            if type_class == h5t.COMPOUND and dataset.dtype.kind == "c":
                what = "complex numbers"
            raise WeightsFileError(f"{filepath}: {key} holds {what}, not real numbers")
        shape, dtype = tuple(dataset.shape), dataset.dtype
    if layout == h5d.VIRTUAL:
        raise WeightsFileError(f"{filepath}: {key} is a virtual dataset (its data lives in other "
                               "datasets or files); weights are read from this file only")
    if externals:
        raise WeightsFileError(f"{filepath}: {key} keeps its data in the external file(s) "
                               f"{externals}; weights are read from this file only")
    if layout not in (h5d.CONTIGUOUS, h5d.COMPACT, h5d.CHUNKED):
        raise WeightsFileError(f"{filepath}: {key} has an unknown storage layout ({layout})")
    for code, _, _, name in filters:
        if code not in FILTERS:
            raise WeightsFileError(
                f"{filepath}: {key} is stored through the HDF5 filter {code} "
                f"({name.decode('utf8', 'replace')}), which minires does not read: only "
                f"{', '.join(FILTERS.values())} (`h5repack -f NONE` writes a copy without filters)")
    return StoredArray(os.fspath(filepath), key, shape, dtype, dataset)


def _check_chunks(dataset, filepath, key):
    """For a chunked dataset: its chunks must fit its data (at most MAX_CHUNKS of
    them, none larger than the data or CHUNK_SLACK), and each gzip-compressed
    chunk is inflated up to its declared size and no further: a chunk that would
    inflate to more (a "zip bomb"), or that is no complete gzip stream, raises
    WeightsFileError before HDF5 reads it."""
    plist = dataset.id.get_create_plist()
    if plist.get_layout() != h5d.CHUNKED:
        return
    shape, chunk = dataset.shape, plist.get_chunk()
    itemsize = dataset.id.get_type().get_size()
    if len(chunk) != len(shape) or min(chunk, default=1) < 1:
        raise WeightsFileError(f"{filepath}: {key} declares chunks {chunk} for its shape {shape}")
    count = math.prod(-(-n // c) for n, c in zip(shape, chunk))
    chunk_bytes, data_bytes = math.prod(chunk) * itemsize, math.prod(shape) * itemsize
    if count > MAX_CHUNKS:
        raise WeightsFileError(f"{filepath}: {key} is cut into {count:,} chunks of shape {chunk}, "
                               f"more than {MAX_CHUNKS:,}")
    if chunk_bytes > max(data_bytes, CHUNK_SLACK):
        raise WeightsFileError(f"{filepath}: {key} declares chunks of {chunk_bytes:,} bytes for "
                               f"{data_bytes:,} bytes of data")
    codes = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    if h5z.FILTER_DEFLATE not in codes:
        return
    for offset, size in _chunk_index(dataset, filepath, key):
        if size > chunk_bytes + chunk_bytes // 64 + 4096:     # gzip of random bytes grows a little
            raise WeightsFileError(f"{filepath}: {key} stores {size:,} bytes for its chunk at "
                                   f"{offset}, more than a chunk of {chunk_bytes:,} bytes needs")
        mask, data = dataset.id.read_direct_chunk(offset)
        for i in reversed(range(len(codes))):                 # undone in reverse order
            if mask & (1 << i):                               # this filter skipped this chunk
                continue
            if codes[i] == h5z.FILTER_FLETCHER32:
                data = data[:-4]                              # the checksum; HDF5 verifies it
            elif codes[i] == h5z.FILTER_DEFLATE:
                data = _inflate(data, chunk_bytes, filepath, f"{key} (chunk at {offset})")
        if len(data) != chunk_bytes:
            raise WeightsFileError(f"{filepath}: {key} chunk at {offset} holds {len(data):,} bytes "
                                   f"once inflated, not its declared {chunk_bytes:,}")


def _chunk_index(dataset, filepath, key):
    """(offset, stored size) of every chunk written, from the chunk index."""
    found = []

    def visit(info):
        found.append((info.chunk_offset, info.size))
        return True if len(found) > MAX_CHUNKS else None      # anything but None stops

    if hasattr(dataset.id, "chunk_iter"):                     # h5py >= 3.8 on HDF5 >= 1.12.3
        dataset.id.chunk_iter(visit)
    else:                                                     # pragma: no cover - older builds
        for i in range(dataset.id.get_num_chunks()):
            info = dataset.id.get_chunk_info(i)
            found.append((info.chunk_offset, info.size))
    if len(found) > MAX_CHUNKS:
        raise WeightsFileError(f"{filepath}: {key} indexes {len(found):,} "
                               f"chunks, more than {MAX_CHUNKS:,}")
    return found


def _inflate(data, limit, filepath, where):
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as error:
        raise WeightsFileError(f"{filepath} is damaged: {where} is not valid gzip data "
                               f"({error})") from None
    if len(out) > limit:
        raise WeightsFileError(f"{filepath}: {where} inflates to more than its declared {limit:,} "
                               "bytes (a compression bomb?)")
    if not inflater.eof:
        raise WeightsFileError(f"{filepath} is damaged: {where} is an incomplete gzip stream")
    return out
