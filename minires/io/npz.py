"""Reading an .npz file nobody vouches for: every entry known from metadata
before any data is inflated.

An .npz file is a zip of .npy arrays.  ``np.load`` trusts it: an entry that
is not .npy comes back as bytes, a name given twice silently keeps the last,
and an entry's data is inflated whole before anyone can look at its shape
(half a megabyte of deflated zeros may inflate to gigabytes).  ``NpzArchive``
reads metadata first, in three steps, each only for the keys the caller still
wants:

1. ``keys``: the zip's directory (names and sizes), at once; an entry that is
   not ``<key>.npy``, or a key given twice, is refused;
2. ``entry(key)``: that entry's .npy header (shape and dtype, a few hundred
   bytes inflated); refused: a header longer than numpy's limit, a .npy
   version other than 1.0 or 2.0, pickled Python objects, a negative shape
   or one no array can hold, and an entry whose size in the zip's directory
   is not exactly its header and the bytes its shape and dtype need (the zip
   reader inflates an entry only up to that size: this bounds ``read``);
3. ``read(key)``: the data.

So a caller checks keys against what it expects, then shapes and dtypes,
before it inflates anything (and a file of 100,000 keys costs a directory,
not 100,000 headers).  Every problem raises the caller's error class, naming
the file and the entry.  The file is opened read-only.
"""
import io
import math
import struct
import zipfile
import zlib
from collections import namedtuple

import numpy as np

from .validate import check_regular_file, quoted, shape_problem

MAX_HEADER_BYTES = 10_000      # bytes of one .npy header (numpy's own limit)

# Errors that reading a damaged or foreign file can raise, from zipfile, zlib and numpy
# (NotImplementedError: an unknown compression; RuntimeError: an encrypted entry).
READ_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, struct.error,
               NotImplementedError, RuntimeError)


class Entry(namedtuple("Entry", "info shape dtype")):
    """One .npy entry as its header describes it: the zip entry, shape, dtype."""

    @property
    def nbytes(self):
        return math.prod(self.shape) * self.dtype.itemsize


class NpzArchive:
    """An .npz file opened read-only: ``keys`` (in file order) from its directory
    at once, headers through ``entry``, data through ``read``.  ``noun`` names
    the kind of file in messages ('minires checkpoint'); ``error``: the
    exception class raised for a file that cannot be read.  Use as a context
    manager."""

    def __init__(self, path, noun, error):
        self.path, self.noun, self.error = path, noun, error
        check_regular_file(path, noun, error)
        try:
            self._zip = zipfile.ZipFile(path)
        except READ_ERRORS as problem:
            raise self.unreadable(f"empty, truncated or another kind of file "
                                  f"({problem})") from None
        self._headers = {}
        try:
            self._infos = self._read_directory()
        except BaseException:
            self.close()
            raise
        self.keys = list(self._infos)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self):
        self._zip.close()

    def unreadable(self, why):
        return self.error(f"{self.path} is not a readable {self.noun}: {why}")

    def _read_directory(self):
        """{key: ZipInfo} of every entry, each a .npy array, no key twice."""
        infos = {}
        for info in self._zip.infolist():
            if not info.filename.endswith(".npy"):
                raise self.unreadable(f"its entry {quoted(info.filename)} is not a .npy array")
            key = info.filename[:-len(".npy")]
            if key in infos:
                raise self.unreadable(f"it holds two entries named {quoted(info.filename)} (which "
                                      "one is meant?)")
            infos[key] = info
        return infos

    def entry(self, key):
        """The Entry of ``key`` (one of ``keys``), from its header (read once)."""
        if key not in self._headers:
            self._headers[key] = self._read_header(self._infos[key])
        return self._headers[key]

    def _read_header(self, info):
        """One entry's shape and dtype from its .npy header, after which the
        entry must hold exactly the bytes they need (as its zip directory says)."""
        name = quoted(info.filename)
        try:
            with self._zip.open(info) as stream:
                version = np.lib.format.read_magic(stream)
                if version not in ((1, 0), (2, 0)):
                    raise ValueError(f".npy format version {version[0]}.{version[1]} "
                                     "(minires reads 1.0 and 2.0)")
                size_field = stream.read(2 if version == (1, 0) else 4)
                length = int.from_bytes(size_field, "little")
                if length > MAX_HEADER_BYTES:
                    raise ValueError(f"a header of {length} bytes (at most {MAX_HEADER_BYTES} "
                                     "are read)")
                header = stream.read(length)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(io.BytesIO(size_field + header))
        except READ_ERRORS as problem:
            raise self.unreadable(f"entry {name}: {problem}") from None
        if dtype.hasobject:
            raise self.unreadable(f"entry {name} holds pickled Python objects (dtype {dtype}), "
                                  "which minires never loads")
        if any(n < 0 for n in shape):
            raise self.unreadable(f"entry {name} has shape {shape}")
        problem = shape_problem(shape, dtype.itemsize)
        if problem:
            raise self.unreadable(f"entry {name}: {problem}")
        entry = Entry(info, shape, dtype)
        needed = np.lib.format.MAGIC_LEN + len(size_field) + length + entry.nbytes
        if info.file_size != needed:
            raise self.unreadable(f"entry {name} declares {info.file_size:,} bytes, but its "
                                  f"shape {shape} of {dtype} needs {needed:,} with its header (the "
                                  "file is damaged or was not written by numpy)")
        return entry

    def read(self, key):
        """The array of entry ``key``, its header checked first, read in full."""
        entry = self.entry(key)
        try:
            with self._zip.open(entry.info) as stream:
                array = np.lib.format.read_array(stream, allow_pickle=False)
        except READ_ERRORS as problem:
            raise self.unreadable(f"entry {quoted(entry.info.filename)}: {problem}") from None
        if array.shape != entry.shape or array.dtype != entry.dtype:   # its header, read twice
            raise self.unreadable(f"entry {quoted(entry.info.filename)} changed while it was read")
        return array
