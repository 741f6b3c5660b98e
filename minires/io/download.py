"""Downloading and caching the Keras ResNet-50 weight files, verified by MD5.

Four files are known (see ``RESNET50_WEIGHTS``): two generations, 'legacy'
(Keras 1 / Keras 2.0-2.3, layer names ``conv1``, ``res2a_branch2a``, ...) and
'current' (tf.keras / Keras 3, ``conv1_conv``, ``conv2_block1_1_conv``, ...),
each with and without the classifier ("top").  Both generations use the SAME
file names, so each generation has its own subdirectory of the cache::

    <cache>/legacy/resnet50_weights_tf_dim_ordering_tf_kernels.h5
    <cache>/legacy/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5
    <cache>/current/resnet50_weights_tf_dim_ordering_tf_kernels.h5
    <cache>/current/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5

Where the cache is (``cache_dir()``):

1. ``$MINIRES_HOME`` if that variable is set (an explicit choice wins);
2. otherwise, in a source checkout (the repository root, two levels above
   this file's ``minires/io`` folder, holds both a ``weights/`` directory and
   ``setup.cfg``): ``<repo>/weights/`` (git-ignored, see ``weights/README.md``);
3. otherwise ``$XDG_CACHE_HOME/minires`` if that variable is set;
4. otherwise ``~/.cache/minires``.

A download goes to a temporary file in the target's own directory, is hashed
while it streams, checked against the announced Content-Length and the
expected MD5, flushed to disk and only then renamed onto the target
(``os.replace``, atomic).  Whatever goes wrong (network error, connection cut,
MD5 mismatch, Ctrl-C), the temporary file is removed and the target is never
left holding a bad file.  An existing target whose MD5 is wrong is never
used: it is replaced by a good download, or deleted if the download fails.

Offline, download the file by hand (the error messages say which URL and
where to put it), or pass any local copy with ``--weights PATH``.
"""
import hashlib
import os
import sys
import urllib.error
import urllib.request
from collections import namedtuple
from http.client import HTTPException

from .atomic import atomic_write

try:                                      # optional: a nicer progress bar
    from tqdm import tqdm as _tqdm
except ImportError:                       # pragma: no cover - depends on the environment
    _tqdm = None

CHUNK_SIZE = 1 << 16                      # bytes read, hashed and written at a time

WeightsFile = namedtuple("WeightsFile", "filename url md5")

_TOP = "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
_NOTOP = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
_LEGACY_BASE = "https://github.com/fchollet/deep-learning-models/releases/download/v0.2/"
_CURRENT_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"

# (generation, include_top) -> WeightsFile.  Values from Keras (REFERENCE.md section 1).
RESNET50_WEIGHTS = {
    ("legacy", True): WeightsFile(_TOP, _LEGACY_BASE + _TOP, "a7b3fe01876f51b976af0dea6bc144eb"),
    ("legacy", False): WeightsFile(_NOTOP, _LEGACY_BASE + _NOTOP, "a268eb855778b3df3c7506639542a6af"),
    ("current", True): WeightsFile(_TOP, _CURRENT_BASE + _TOP, "2cb95161c43110f7111970584f804107"),
    ("current", False): WeightsFile(_NOTOP, _CURRENT_BASE + _NOTOP, "4d473c1dd8becc155b73f8504c6f6626"),
}
GENERATIONS = ("legacy", "current")


class WeightsDownloadError(OSError):
    """A weights file could not be downloaded or failed its MD5 check.
    The message says what went wrong and how to get the file by hand."""


class WeightsNotFoundError(FileNotFoundError):
    """No verified weights file in the cache, and downloading was not allowed."""


# ---------------------------------------------------------------- where files go

def _checkout_weights_dir(root=None):
    """``<root>/weights`` if ``root`` (default: the repository root this module
    sits in) is a source checkout, i.e. holds ``weights/`` and ``setup.cfg``;
    else None (an installed package)."""
    if root is None:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    weights = os.path.join(root, "weights")
    if os.path.isdir(weights) and os.path.isfile(os.path.join(root, "setup.cfg")):
        return weights
    return None


def cache_dir():
    """The folder weight files are cached in (see the module docstring for the rules).
    It is not created here; downloading creates it."""
    if os.environ.get("MINIRES_HOME"):
        return os.path.abspath(os.path.expanduser(os.environ["MINIRES_HOME"]))
    checkout = _checkout_weights_dir()
    if checkout is not None:
        return checkout
    if os.environ.get("XDG_CACHE_HOME"):
        return os.path.join(os.path.abspath(os.path.expanduser(os.environ["XDG_CACHE_HOME"])), "minires")
    return os.path.join(os.path.expanduser("~"), ".cache", "minires")


def _weights_file(generation, include_top):
    """The table entry, or a ValueError naming the allowed values."""
    if generation not in GENERATIONS:
        raise ValueError(f"unknown weights generation {generation!r}: expected one of {GENERATIONS}")
    return RESNET50_WEIGHTS[(generation, bool(include_top))]


def resnet50_path(generation="current", include_top=True):
    """Where the ResNet-50 weights file of this generation is cached (it may not exist)."""
    entry = _weights_file(generation, include_top)
    return os.path.join(cache_dir(), generation, entry.filename)


# ---------------------------------------------------------------- messages

def _manual_instructions(url, md5, path):
    """How to get one file by hand: the single source of the instructions text."""
    return (f"To get the file by hand, download\n    {url}\n"
            f"(MD5 {md5}; check it with `md5sum`) and save it as\n    {path}\n"
            "or pass the path of a copy you already have with --weights PATH.")


def manual_download_message(generation="current", include_top=True):
    """The manual-download instructions for one of the four ResNet-50 files."""
    entry = _weights_file(generation, include_top)
    return _manual_instructions(entry.url, entry.md5, resnet50_path(generation, include_top))


# ---------------------------------------------------------------- hashing

def _new_md5():
    """An MD5 hasher; MD5 here checks integrity, not security (allowed on FIPS systems)."""
    try:
        return hashlib.md5(usedforsecurity=False)
    except TypeError:                     # pragma: no cover - Pythons without the flag
        return hashlib.md5()


def md5sum(path, chunk_size=CHUNK_SIZE):
    """The MD5 of a file as 32 lowercase hex digits, read in chunks (any size of file)."""
    digest = _new_md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------- progress bar

class _PercentLine:
    """Fallback progress bar without tqdm: one ``name: 42%`` line on stderr,
    rewritten in place when the whole percentage changes."""

    def __init__(self, total, desc):
        self.total, self.desc, self.done, self.shown = total, desc, 0, None

    def update(self, n):
        self.done += n
        percent = int(100 * self.done / self.total) if self.total else None
        if percent is not None and percent != self.shown:
            self.shown = percent
            sys.stderr.write(f"\r{self.desc}: {percent:3d}%")
            sys.stderr.flush()

    def close(self):
        if self.shown is not None:
            sys.stderr.write("\n")
            sys.stderr.flush()


class _NoProgress:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress_bar(total, desc, enabled):
    """tqdm if installed, else a percent line on stderr; nothing if disabled."""
    if not enabled:
        return _NoProgress()
    if _tqdm is not None:
        return _tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024)
    return _PercentLine(total, desc)


# ---------------------------------------------------------------- downloading

def _remove_quietly(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _stream(url, handle, timeout, progress, desc):
    """Copy ``url`` into the open file ``handle``; return the MD5 of what was written.
    Raises WeightsDownloadError (without instructions) if fewer bytes arrive than
    the Content-Length header announced."""
    digest = _new_md5()
    with urllib.request.urlopen(url, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        received = 0
        bar = _progress_bar(expected, desc, progress)
        try:
            for chunk in iter(lambda: response.read(CHUNK_SIZE), b""):
                handle.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        finally:
            bar.close()
    if expected is not None and received != expected:
        raise WeightsDownloadError(f"download of {url} was cut short: the connection closed after "
                                   f"{received} of {expected} bytes")
    return digest.hexdigest()


def _download_to(url, md5, path, timeout, progress):
    """Download into a temporary file next to ``path``, verify, rename onto ``path``.
    On any failure the temporary file is removed and the exception propagates."""
    with atomic_write(path, suffix=".part") as handle:
        got = _stream(url, handle, timeout, progress, os.path.basename(path))
        if got != md5.lower():
            raise WeightsDownloadError(f"MD5 mismatch for {url}: expected {md5.lower()}, got {got} "
                                       "(the file on the server is not the expected one, or "
                                       "the download was corrupted)")


def get_file(url, md5, path, progress=True, timeout=30):
    """Return ``path`` holding the file from ``url`` with MD5 ``md5``, downloading it if needed.

    - ``path`` exists and its MD5 matches: returned as is, nothing is downloaded.
    - ``path`` exists with another MD5: it is not trusted.  It is downloaded again
      and replaced only once the good file is complete; if that download fails,
      the bad file is deleted (so it can never be loaded by mistake) and the error
      says so.
    - Any failure raises WeightsDownloadError (an OSError) saying what went wrong
      and how to get the file by hand; KeyboardInterrupt propagates unchanged.
      In every case no temporary file is left behind and ``path`` never holds a
      file with the wrong MD5.

    ``progress``: show a progress bar (tqdm if installed) on stderr.
    ``timeout``: seconds to wait for the server at each step (connect, each read).
    """
    stale = None
    if os.path.exists(path):
        stale = md5sum(path)
        if stale == md5.lower():
            return path
    try:
        _download_to(url, md5, path, timeout, progress)
    except BaseException as error:
        if isinstance(error, urllib.error.HTTPError):
            error.close()                     # an HTTP error response holds an open socket
        removed = ""
        if stale is not None:
            _remove_quietly(path)
            removed = (f"\nThe existing file {path} had MD5 {stale} instead of {md5.lower()} "
                       "and was deleted.")
        if isinstance(error, WeightsDownloadError):
            reason = str(error)
        elif isinstance(error, (OSError, HTTPException, ValueError)):
            reason = f"could not download {url}: {error}"
        else:                                 # KeyboardInterrupt, SystemExit, bugs
            raise
        raise WeightsDownloadError(f"{reason}{removed}\n{_manual_instructions(url, md5, path)}") from error
    return path


def resnet50_weights_path(generation="current", include_top=True, download=True, progress=True):
    """The path of a verified Keras ResNet-50 weights file, downloading it if needed.

    ``generation``: 'current' (tf.keras / Keras 3 names) or 'legacy' (Keras 1/2 names).
    ``include_top``: the file with the 1000-class classifier, or the ``_notop`` one.
    ``download=False``: never touch the network or the cache; a missing file raises
    WeightsNotFoundError, and so does a file whose MD5 is wrong (it is left alone).
    """
    entry = _weights_file(generation, include_top)
    path = resnet50_path(generation, include_top)
    if download:
        return get_file(entry.url, entry.md5, path, progress=progress)
    if not os.path.exists(path):
        raise WeightsNotFoundError(f"ResNet-50 weights not found at {path} and download=False.\n"
                                   f"{manual_download_message(generation, include_top)}")
    got = md5sum(path)
    if got != entry.md5:
        raise WeightsNotFoundError(f"the file at {path} has MD5 {got}, not the expected {entry.md5} "
                                   "(incomplete or a different file); download=False, so it was "
                                   f"not replaced.\n{manual_download_message(generation, include_top)}")
    return path
