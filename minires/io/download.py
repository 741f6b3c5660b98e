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

A download goes to a temporary file in the target's own directory
(``.<name>.<host>-<pid>.<random>.part``, see minires.io.atomic), is hashed
while it streams, checked against the announced Content-Length and the
expected MD5, flushed to disk and only then renamed onto the target
(``os.replace``, atomic), so the target only ever holds a verified file.
Whatever goes wrong (network error, connection cut, MD5 mismatch, Ctrl-C),
the temporary file is removed; one left by a process killed outright
(SIGTERM, SIGKILL) is removed by the next download of the same target.

Two limits on time: ``timeout`` for each step (connecting, each read), and
``deadline`` for the whole download (a server sending a byte a second never
lets a read time out).  At the deadline the connection is shut and the
download fails, saying so.

An existing target whose MD5 is wrong is never used: it is replaced by a
good download, or, if the download fails, deleted, but only if it is still
the very file that was checked (another process may have put a good one
there meanwhile: minires never removes a file it has not examined).

Several processes may download the same file at once: each writes its own
temporary file, and each rename puts a verified file in place.

Offline, download the file by hand: the error messages say which URL, which
MD5 and where to put it.
"""
import contextlib
import hashlib
import os
import socket
import sys
import threading
import urllib.error
import urllib.request
from collections import namedtuple
from http.client import HTTPException

from .atomic import atomic_write, temporary_name

try:                                      # optional: a nicer progress bar
    from tqdm import tqdm as _tqdm
except ImportError:                       # pragma: no cover - depends on the environment
    _tqdm = None

CHUNK_SIZE = 1 << 16                      # bytes read, hashed and written at a time
DOWNLOAD_DEADLINE = 3600                  # seconds for a whole download, by default
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
    The message says what went wrong and how to get the file by hand; the
    attributes ``url``, ``md5`` and ``path`` name the file."""


class WeightsNotFoundError(FileNotFoundError):
    """No verified weights file in the cache, and downloading was not allowed
    (attributes ``url``, ``md5`` and ``path`` as WeightsDownloadError's)."""


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

_OWN_COPY = "get_file then finds it there and downloads nothing."
_RESNET50_OWN_COPY = "Or pass the path of a copy you have: ResNet50(weights=PATH)."


def _manual_instructions(url, md5, path, own_copy=_OWN_COPY):
    """How to get one file by hand, in a few short lines: the single source of that text.
    ``own_copy``: what to do with a copy, in the API that was called."""
    return (f"To get the file by hand, download\n    {url}\n"
            f"(MD5 {md5}; check it with `md5sum`) and save it as\n    {path}\n"
            f"{own_copy}")


def manual_download_message(generation="current", include_top=True):
    """The manual-download instructions for one of the four ResNet-50 files."""
    entry = _weights_file(generation, include_top)
    return _manual_instructions(entry.url, entry.md5, resnet50_path(generation, include_top),
                                _RESNET50_OWN_COPY)


def _error(kind, message, url, md5, path):
    """A ``kind`` exception with the file's url, md5 and path as attributes (so a
    command line can add its own advice, e.g. its flag for a local copy)."""
    error = kind(message)
    error.url, error.md5, error.path = url, md5, path
    return error


# ---------------------------------------------------------------- hashing

def _new_md5():
    """An MD5 hasher; MD5 here checks integrity, not security (allowed on FIPS systems)."""
    try:
        return hashlib.md5(usedforsecurity=False)
    except TypeError:                     # pragma: no cover - Pythons without the flag
        return hashlib.md5()


def _md5_of(handle, chunk_size=CHUNK_SIZE):
    digest = _new_md5()
    for chunk in iter(lambda: handle.read(chunk_size), b""):
        digest.update(chunk)
    return digest.hexdigest()


def md5sum(path, chunk_size=CHUNK_SIZE):
    """The MD5 of a file as 32 lowercase hex digits, read in chunks (any size of file)."""
    with open(path, "rb") as handle:
        return _md5_of(handle, chunk_size)


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


# ---------------------------------------------------------------- the deadline

class _Deadline:
    """One deadline for a whole download: ``seconds`` after it starts, a timer
    shuts down every socket the download opened, which ends the read blocked
    on it (a per-read timeout cannot: a byte a second keeps every read alive).

        with _Deadline(60) as deadline:
            deadline.opener().open(url, timeout=30)    # its sockets are watched
    """

    def __init__(self, seconds):
        self.seconds, self.expired, self.sockets = seconds, False, []
        self.lock = threading.Lock()
        self.timer = None

    def __enter__(self):
        if self.seconds is not None:
            self.timer = threading.Timer(self.seconds, self.expire)
            self.timer.daemon = True
            self.timer.start()
        return self

    def __exit__(self, *exc_info):
        if self.timer is not None:
            self.timer.cancel()

    def expire(self):
        with self.lock:
            self.expired = True
            for sock in self.sockets:
                _shut(sock)

    def opened(self, sock):
        """A connection of the download has just been opened, on ``sock``."""
        with self.lock:
            self.sockets.append(sock)
            if self.expired:                 # opened while the timer fired
                _shut(sock)

    def opener(self):
        """A urllib opener (proxies from the environment, redirects...) whose
        HTTP and HTTPS connections report their sockets here."""
        handlers = [_WatchedHTTPHandler(self)]
        if hasattr(urllib.request, "HTTPSHandler"):          # Python built with ssl
            handlers.append(_WatchedHTTPSHandler(self))
        return urllib.request.build_opener(*handlers)


def _shut(sock):
    with contextlib.suppress(Exception):     # already closed: nothing to stop
        sock.shutdown(socket.SHUT_RDWR)


class _Watched:
    """What urllib's HTTP(S) handler does, but each connection it opens tells
    ``self.deadline`` its socket as soon as it is connected."""

    def __init__(self, deadline):
        super().__init__()
        self.deadline = deadline

    def do_open(self, http_class, req, **kwargs):
        deadline = self.deadline

        def watched_connection(*args, **kw):
            connection = http_class(*args, **kw)
            connect = connection.connect

            def connect_and_report():
                connect()
                deadline.opened(connection.sock)

            connection.connect = connect_and_report
            return connection

        return super().do_open(watched_connection, req, **kwargs)


class _WatchedHTTPHandler(_Watched, urllib.request.HTTPHandler):
    pass


if hasattr(urllib.request, "HTTPSHandler"):
    class _WatchedHTTPSHandler(_Watched, urllib.request.HTTPSHandler):
        pass


# ---------------------------------------------------------------- downloading

def _stream(url, handle, timeout, watch, progress, desc):
    """Copy ``url`` into the open file ``handle``; return the MD5 of what was written.
    Raises WeightsDownloadError (without instructions) if fewer bytes arrive than
    the Content-Length header announced."""
    digest = _new_md5()
    with watch.opener().open(url, timeout=timeout) as response:
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
        raise WeightsDownloadError(f"download of {desc} was cut short: the connection closed after "
                                   f"{received:,} of {expected:,} bytes")
    return digest.hexdigest()


def _download_to(url, md5, path, timeout, deadline, progress):
    """Download into a temporary file next to ``path``, verify, rename onto ``path``.
    On any failure the temporary file is removed and the exception propagates."""
    name = os.path.basename(path)
    with _Deadline(deadline) as watch, atomic_write(path, suffix=".part") as handle:
        try:
            got = _stream(url, handle, timeout, watch, progress, name)
            if got != md5:
                raise WeightsDownloadError(f"MD5 mismatch for {name}: expected {md5}, got {got}\n"
                                           "(the file on the server is not the expected one, "
                                           "or the download was corrupted)")
        except Exception as error:
            if watch.expired:               # whatever the cut connection raised
                raise WeightsDownloadError(
                    f"download of {name} stopped at its deadline: {deadline:g} s passed with "
                    f"{handle.tell():,} bytes received.\n(A longer deadline=, in seconds, "
                    "gives it more time; deadline=None, all it takes.)") from error
            raise


def _examine(path):
    """(MD5, os.stat_result) of the file at ``path``, both of one opened file; None if none."""
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return None
    with handle:
        return _md5_of(handle), os.fstat(handle.fileno())


def _same_file(a, b):
    """Whether two os.stat results are of one unchanged file."""
    fields = ("st_dev", "st_ino", "st_size", "st_mtime_ns")
    return all(getattr(a, field) == getattr(b, field) for field in fields)


def _remove_if_unchanged(path, seen):
    """Remove the file at ``path`` if it is still the file ``seen`` (an os.stat
    result); say whether it was removed. Another process's download may have
    replaced it since: that file is put back, never removed."""
    aside = temporary_name(path, ".part")    # a name the sweep knows, should we die here
    try:
        os.rename(path, aside)                # atomic: no one else can reach it now
    except OSError:                           # gone already, or not ours to move
        return False
    if _same_file(os.stat(aside), seen):
        os.remove(aside)
        return True
    os.replace(aside, path)                   # not ours to remove: back where it was
    return False


def get_file(url, md5, path, progress=True, timeout=30, deadline=DOWNLOAD_DEADLINE):
    """Return ``path`` holding the file from ``url`` with MD5 ``md5``, downloading it if needed.

    - ``path`` exists and its MD5 matches: returned as is, nothing is downloaded.
    - ``path`` exists with another MD5: it is not trusted.  It is downloaded again
      and replaced only once the good file is complete; if that download fails,
      the bad file is deleted, if it is still the one checked (so it can never
      be loaded by mistake), and the error says so.
    - Any failure raises WeightsDownloadError (an OSError, with attributes
      ``url``, ``md5`` and ``path``) saying what went wrong and how to get the
      file by hand; KeyboardInterrupt propagates unchanged.  In every case no
      temporary file is left behind and ``path`` never holds a file with the
      wrong MD5.

    ``progress``: show a progress bar (tqdm if installed) on stderr.
    ``timeout``: seconds to wait for the server at each step (connect, each read).
    ``deadline``: seconds for the whole download (default 3600); None: no limit.
    """
    return _get_file(url, md5, path, progress, timeout, deadline, _OWN_COPY)


def _get_file(url, md5, path, progress, timeout, deadline, own_copy):
    md5 = md5.lower()
    found = _examine(path)
    if found is not None and found[0] == md5:
        return path
    try:
        _download_to(url, md5, path, timeout, deadline, progress)
    except BaseException as error:
        if isinstance(error, urllib.error.HTTPError):
            error.close()                     # an HTTP error response holds an open socket
        deleted = found is not None and _remove_if_unchanged(path, found[1])
        if isinstance(error, WeightsDownloadError):
            reason = str(error)
        elif isinstance(error, (OSError, HTTPException, ValueError)):
            reason = f"could not download {os.path.basename(path)}: {error}"
        else:                                 # KeyboardInterrupt, SystemExit, bugs
            raise
        removed = ""
        if found is not None:
            bad = f"The earlier {os.path.basename(path)} had MD5 {found[0]}, not {md5}"
            removed = (f"\n{bad}, and was deleted." if deleted else
                       f"\n{bad}; it has changed since (another download?) and was left alone.")
        raise _error(WeightsDownloadError,
                     f"{reason}{removed}\n{_manual_instructions(url, md5, path, own_copy)}",
                     url, md5, path) from error
    return path


def resnet50_weights_path(generation="current", include_top=True, download=True, progress=True,
                          timeout=30, deadline=DOWNLOAD_DEADLINE):
    """The path of a verified Keras ResNet-50 weights file, downloading it if needed.

    ``generation``: 'current' (tf.keras / Keras 3 names) or 'legacy' (Keras 1/2 names).
    ``include_top``: the file with the 1000-class classifier, or the ``_notop`` one.
    ``download=False``: never touch the network or the cache; a missing file raises
    WeightsNotFoundError, and so does a file whose MD5 is wrong (it is left alone).
    ``timeout``, ``deadline``: as get_file's.
    """
    entry = _weights_file(generation, include_top)
    path = resnet50_path(generation, include_top)
    if download:
        return _get_file(entry.url, entry.md5, path, progress, timeout, deadline,
                         _RESNET50_OWN_COPY)
    if not os.path.exists(path):
        raise _error(WeightsNotFoundError,
                     "ResNet-50 weights not found, and download=False.\n"
                     f"{manual_download_message(generation, include_top)}",
                     entry.url, entry.md5, path)
    got = md5sum(path)
    if got != entry.md5:
        raise _error(WeightsNotFoundError,
                     f"The file at {path} has MD5 {got}, not {entry.md5}\n"
                     "(incomplete, or another file); download=False, so it was not replaced.\n"
                     f"{manual_download_message(generation, include_top)}",
                     entry.url, entry.md5, path)
    return path
