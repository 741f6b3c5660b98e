"""Writing files so that nothing is ever half-written under the real name."""
import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_write(path, suffix=".tmp"):
    """``with atomic_write(path) as f: f.write(...)``: a binary file object.

    It is a temporary file beside ``path`` (same directory, so the rename is
    atomic on one filesystem); when the block ends without an exception it is
    flushed to disk, given the permissions a new file would get, and renamed
    over ``path``. On any exception (KeyboardInterrupt too) it is removed and
    an earlier file at ``path`` stays as it was.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=directory, prefix=f".{os.path.basename(path)}.",
                                         suffix=suffix, delete=False)
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(OSError):           # tempfile makes it private (0600)
            os.chmod(handle.name, 0o666 & ~_umask())
        os.replace(handle.name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(handle.name)
        raise


def _umask():
    """The process's umask (only readable by setting it, so it is set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
