"""Writing files so that nothing is ever half-written under the real name.

    with atomic_write("run/last.npz", suffix=".npz") as handle:
        handle.write(...)

The bytes go to a temporary file beside the target, named after the target
and after the process writing it::

    .last.npz.<host>-<pid>.<random>.npz       e.g. .last.npz.3f9a61c2-4711.8c01d2e4.npz

(<host>: 8 hex digits of a checksum of the machine's name). Only once it is
complete is it renamed onto the target. A process killed outright (SIGKILL,
SIGTERM, a power cut) cannot clean up after itself, so every write sweeps
the directory for temporaries of the same target and suffix that no live
writer holds, and removes them (see ``sweep_temporaries``). Nothing else is
ever removed: a file is swept only if its name has exactly this pattern.
"""
import contextlib
import os
import re
import secrets
import socket
import time
import zlib

STALE_AFTER = 3600         # seconds untouched after which any writer's temporary is stale


@contextlib.contextmanager
def atomic_write(path, suffix=".tmp"):
    """``with atomic_write(path) as f: f.write(...)``: a binary file object.

    It is a temporary file beside ``path`` (same directory, so the rename is
    atomic on one filesystem); when the block ends without an exception it is
    flushed to disk and renamed over ``path``. On any exception
    (KeyboardInterrupt too) it is removed and an earlier file at ``path``
    stays as it was. Before and after, stale temporaries of ``path`` (same
    suffix) left by killed writers are removed.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    sweep_temporaries(path, suffix)
    name, handle = _create_temporary(path, suffix)
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(name)
        raise
    finally:
        sweep_temporaries(path, suffix)


def temporary_name(path, suffix):
    """A fresh temporary name for ``path``, in the pattern ``sweep_temporaries`` knows."""
    directory, base = os.path.split(os.path.abspath(path))
    writer = f"{_host()}-{os.getpid()}"
    return os.path.join(directory, f".{base}.{writer}.{secrets.token_hex(4)}{suffix}")


def _create_temporary(path, suffix):
    """(name, binary file object) of a new, empty temporary file for ``path``.
    Created with mode 0666 less the umask: the permissions a new file gets."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        name = temporary_name(path, suffix)
        try:
            fd = os.open(name, flags, 0o666)
        except FileExistsError:                  # 1 in 4 billion: draw again
            continue
        return name, os.fdopen(fd, "wb")


def sweep_temporaries(path, suffix):
    """Remove the stale temporaries of ``path`` with ``suffix``; return their names.

    A temporary is stale when no live writer can hold it: its writer ran on
    this machine and that process has ended, or it has not been modified for
    ``STALE_AFTER`` seconds (a writer on another machine sharing the folder,
    a process id reused since, or a temporary of an earlier minires, named
    ``.<target>.<8 characters><suffix>`` without host and process). Errors (a
    folder we may not list, a file already gone) are ignored: sweeping is
    housekeeping.
    """
    directory, base = os.path.split(os.path.abspath(path))
    pattern = re.compile(rf"\.{re.escape(base)}\.(?:(?P<host>[0-9a-f]{{8}})-(?P<pid>[0-9]+)\."
                         rf"[0-9a-f]{{8}}|[a-z0-9_]{{8}}){re.escape(suffix)}")
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        match = pattern.fullmatch(name)
        if match is None:
            continue
        full = os.path.join(directory, name)
        mine = match["host"] == _host()
        try:
            if (mine and not _alive(int(match["pid"]))) or \
                    time.time() - os.stat(full).st_mtime > STALE_AFTER:
                os.remove(full)
                removed.append(full)
        except OSError:
            pass
    return removed


def _host():
    """8 hex digits naming this machine (a checksum of its host name)."""
    return f"{zlib.crc32(socket.gethostname().encode('utf8', 'replace')):08x}"


def _alive(pid):
    """Whether process ``pid`` exists (on this machine). Where that cannot be
    asked safely (Windows: signal 0 there is CTRL_C_EVENT), assume it does."""
    if pid == os.getpid():
        return True
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # OverflowError: no pid is that large
        return False
    except OSError:                              # PermissionError: someone else's, alive
        return True
    return True
