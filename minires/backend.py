"""Where arrays live and how the CPU runs: the settings every other module reads.

1. Devices: the one place that knows whether an array lives in NumPy (CPU) or
   CuPy (GPU). Every op asks ``get_array_module(x)`` for ``xp`` and then writes
   ``xp.zeros``, ``xp.maximum`` ... so the same source runs on both;
   ``to_device``, ``device_of``, ``like`` move and match arrays. Nothing else
   imports CuPy, except the CUDA kernels (kernels/cupy_kernels.py).
2. The default float type (``floatx``, ``floatx_scope``), as ``keras.backend``.
3. Which CPU kernels run (``kernel_path``: Numba's or NumPy's, see
   minires/kernels) and how much memory one im2col may take (``im2col_limit``).
4. The CPU speed settings (Numba's OpenMP threads asleep when idle, freed
   memory kept for the next training step), which minires applies itself when
   its work first needs them, never at import; ``set_speed_settings(False)``
   or MINIRES_SPEED_SETTINGS=0 switch them off.
"""
import contextlib
import ctypes
import functools
import importlib.util
import os
import sys
import threading
import warnings

import numpy as np

_FLOAT_TYPES = ("float16", "float32", "float64")
_floatx = "float32"


KERNEL_PATHS = ("auto", "numba", "numpy")
_kernel_choice = None      # None: read MINIRES_KERNELS (default 'auto') at first use


@functools.lru_cache(maxsize=None)
def numba_available():
    """True when Numba imports: ``pip install minires`` brings it where Numba has
    wheels. One that is installed but fails to import (a Numba older than this
    NumPy, say) warns once and counts as absent: the NumPy kernels run."""
    if importlib.util.find_spec("numba") is None:
        return False
    try:
        import numba  # noqa: F401
    except ImportError as error:
        warnings.warn(f"minires: Numba is installed but does not import ({error}); "
                      "running the NumPy kernels", RuntimeWarning, stacklevel=2)
        return False
    return True


def set_kernel_path(path):
    """Which CPU kernels conv and pooling use: 'numba', 'numpy' or 'auto'
    (Numba when installed). Also settable as MINIRES_KERNELS=numba|numpy|auto."""
    global _kernel_choice
    if path not in KERNEL_PATHS:
        raise ValueError(f"unknown kernel path {path!r}; use one of {KERNEL_PATHS}")
    if path == "numba" and not numba_available():
        raise RuntimeError("kernel path 'numba' needs Numba, which does not import here: pip install numba")
    _kernel_choice = path


def kernel_path():
    """The CPU kernels in use now: 'numba' or 'numpy' (CuPy arrays have their own)."""
    if _kernel_choice is None:
        set_kernel_path(os.environ.get("MINIRES_KERNELS", "auto").strip().lower() or "auto")
    if _kernel_choice == "auto":
        return "numba" if numba_available() else "numpy"
    return _kernel_choice


# 128 MiB: a batch-32 ResNet-50 training step peaks at 3.38 GiB with it, 3.49 GiB
# with 256 MiB, at the same speed (backward holds the columns and their gradient).
_im2col_limit = int(os.environ.get("MINIRES_IM2COL_MB", "128")) << 20


def im2col_limit():
    """Bytes of im2col columns a convolution may hold at once (default 128 MiB):
    larger batches are processed in chunks of images."""
    return _im2col_limit


def set_im2col_limit(megabytes):
    """Cap the im2col working memory (also MINIRES_IM2COL_MB); at least one image is
    always processed, whatever the cap."""
    global _im2col_limit
    if not megabytes > 0:
        raise ValueError(f"im2col limit must be positive, got {megabytes} MB")
    _im2col_limit = int(megabytes * (1 << 20))


# --- the CPU speed settings, which minires applies itself at first use --------------------
# Two things decide a CPU run's speed beyond the kernels, and importing minires
# touches neither. minires applies each when its own work first needs it:
#   - OpenMP's idle threads sleep instead of spinning: Numba's threads spin for a
#     while after each kernel, as OpenBLAS's do after each matrix product; on a
#     few cores the two pools then fight over them (ResNet-50 at batch 1 measured
#     0.42 s against 0.043 s). Applied before the first Numba kernel, leaving no
#     trace in os.environ (start_numba_threads).
#   - glibc keeps freed memory (keep_freed_memory): applied at the first
#     training forward, where it saves a third of a step; process-wide, for good.
# MINIRES_SPEED_SETTINGS=0 or set_speed_settings(False) turns both off; your own
# OMP_WAIT_POLICY / GOMP_SPINCOUNT and MALLOC_* / GLIBC_TUNABLES always win.
_speed_settings = None          # None: read MINIRES_SPEED_SETTINGS (default on) at first use
_applied = set()                # the settings already applied (or declined) in this process
_settings_lock = threading.Lock()
_USER_OPENMP_WAITING = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
_USER_MALLOC = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")


def set_speed_settings(enabled):
    """Whether minires applies its CPU speed settings at first use (default True;
    also MINIRES_SPEED_SETTINGS=0|1). Turning them off after they were applied
    undoes nothing: call it before minires's first kernel runs."""
    global _speed_settings
    _speed_settings = bool(enabled)


def speed_settings_enabled():
    if _speed_settings is None:
        set_speed_settings(os.environ.get("MINIRES_SPEED_SETTINGS", "1").strip().lower()
                           not in ("0", "false", "no", "off"))
    return _speed_settings


def start_numba_threads():
    """Start Numba's threads, as its first parallel kernel would, but with
    OpenMP's idle threads sleeping (OMP_WAIT_POLICY=PASSIVE for the moment the
    OpenMP library loads and reads its settings, then removed again). The
    kernel dispatcher calls it before every Numba kernel: it acts once.

    Nothing happens where the speed settings are off, where you set
    OMP_WAIT_POLICY or GOMP_SPINCOUNT yourself, or where Numba's threads run
    already (then they keep what they were started with). Numba's other
    threading layers (TBB, workqueue) ignore the variable and never spin long.
    """
    _apply_once("openmp", _start_sleeping_openmp_threads)


def keep_memory_for_training():
    """keep_freed_memory(), once, before the first training forward (Model calls
    it), unless the speed settings are off or you tuned glibc's malloc yourself
    (MALLOC_*_ variables, GLIBC_TUNABLES)."""
    _apply_once("memory", _keep_memory_unless_user_tuned)


def _apply_once(setting, apply):
    """apply() the first time ``setting`` is asked for, where the speed settings are
    on; later calls cost one set lookup (the kernel dispatcher asks at every kernel)."""
    if setting not in _applied:
        with _settings_lock:
            if setting not in _applied and speed_settings_enabled():
                apply()
            _applied.add(setting)


def apply_speed_settings(keep_memory=True, passive_openmp=True):
    """Apply the speed settings now instead of at first use (optional: minires
    applies them itself, see the comment above). Each part is turned off by its
    argument; an explicit call applies them even where MINIRES_SPEED_SETTINGS=0,
    but never over your own OMP_*/GOMP_*/MALLOC_* variables.

    passive_openmp must come before any Numba kernel runs: called after Numba's
    threads started without it, it warns and changes nothing.
    """
    with _settings_lock:
        if keep_memory:
            _keep_memory_unless_user_tuned()
            _applied.add("memory")
        if passive_openmp and numba_available():
            if (_numba_threads_started() and "sleeping" not in _applied
                    and not _user_set(_USER_OPENMP_WAITING)):
                warnings.warn("apply_speed_settings: Numba's threads have started already and keep "
                              "their OpenMP wait policy. Call it before the first Numba kernel runs.",
                              stacklevel=3)
            _start_sleeping_openmp_threads()
            _applied.add("openmp")


def _start_sleeping_openmp_threads():
    """(Under _settings_lock.) Numba's threads started with OMP_WAIT_POLICY=PASSIVE,
    unless they run already or the user chose OpenMP's waiting."""
    if _numba_threads_started() or _user_set(_USER_OPENMP_WAITING):
        return
    import numba
    with _environment_variable("OMP_WAIT_POLICY", "PASSIVE"):
        numba.get_num_threads()           # loads the threading layer: OpenMP reads its settings now
    _applied.add("sleeping")


_USER_THREADS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def share_cores(processes):
    """Give this process its share of the cores it may run on, where ``processes``
    processes run on them at once (the ranks of a distributed run on one
    machine): BLAS's and Numba's threads = cores // processes, at least 1.
    Returns that number, or None where nothing was changed.

    Why: each process's BLAS starts one thread per core, so R processes run
    R x cores threads that spin while they wait for each other: on 2 cores, 2
    ranks trained a small ResNet 15 times slower than with one thread each.
    This changes the whole process, so it is for minires.distributed.init()
    (torchrun, for the same reason, gives each process one thread). Nothing
    happens where you set OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, MKL_NUM_THREADS
    or NUMBA_NUM_THREADS yourself. BLAS's threads are set through threadpoolctl
    (in the [mpi] extra); without it a warning says what to set instead.
    """
    if processes <= 1 or _user_set(_USER_THREADS):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, cores // processes)
    if numba_available():
        import numba
        start_numba_threads()                    # first: they start with the speed settings
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        warnings.warn(f"minires: {processes} processes share {cores} cores, and without "
                      f"threadpoolctl minires cannot limit their BLAS threads: set "
                      f"OPENBLAS_NUM_THREADS={threads} (or pip install threadpoolctl)",
                      RuntimeWarning, stacklevel=3)
    else:
        threadpool_limits(threads)               # every BLAS and OpenMP library loaded now
    return threads


def _keep_memory_unless_user_tuned():
    if not _user_set(_USER_MALLOC):
        keep_freed_memory()


def _user_set(names):
    return any(name in os.environ for name in names)


@contextlib.contextmanager
def _environment_variable(name, value):
    """``name=value`` in the process environment inside the block only (unset before)."""
    os.environ[name] = value
    try:
        yield
    finally:
        del os.environ[name]


def _numba_threads_started():
    """True once Numba has started its threads (and OpenMP has read its settings)."""
    numba = sys.modules.get("numba")          # never imported: nothing started
    if numba is None:
        return False
    try:
        numba.threading_layer()               # chosen when the threads start
    except ValueError:                        # "Threading layer is not initialized."
        return False
    return True


# glibc's mallopt() parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory():
    """Ask the C allocator to keep freed memory for the next allocation instead
    of handing it back to the operating system; True when that took effect.

    Why: glibc returns every freed block above its mmap threshold (32 MiB at
    most) to the OS at once, and the next such array is faulted back in page by
    page, each page zeroed by the kernel. A training step allocates and frees
    gigabytes of such arrays: on 2 cores a batch-32 ResNet-50 step spent 2.5 s
    of its 10 s in the kernel doing that. The cost: the process's resident
    memory stays near its peak instead of shrinking between steps.

    Part of apply_speed_settings(); it changes the whole process, for good.
    On Linux with glibc; elsewhere (macOS, Windows, musl) it does nothing.
    """
    if not sys.platform.startswith("linux"):
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)     # the process's own C library
    if mallopt is None:
        return False
    largest = 2 ** 31 - 1                 # mallopt takes an int
    return bool(mallopt(_M_MMAP_THRESHOLD, largest) and mallopt(_M_TRIM_THRESHOLD, largest))


@functools.lru_cache(maxsize=None)
def _cupy():
    """The CuPy module, or None when it is not installed (looked up once)."""
    try:
        import cupy
    except ImportError:
        return None
    return cupy


def quiet_overflow():
    """A context where NumPy does not warn of overflow or invalid values: for code
    that expects inf or nan there and handles them (CuPy never warns)."""
    return np.errstate(over="ignore", invalid="ignore")


def get_array_module(*arrays):
    """``cupy`` if any of ``arrays`` is a CuPy array, else ``numpy``."""
    cupy = _cupy()
    if cupy is not None and any(isinstance(a, cupy.ndarray) for a in arrays):
        return cupy
    return np


def is_array(x):
    """True for a NumPy or CuPy ndarray."""
    return isinstance(x, get_array_module(x).ndarray)


def device_of(x):
    """'cuda' for a CuPy array, 'cpu' otherwise."""
    return "cpu" if get_array_module(x) is np else "cuda"


def check_device(device):
    """Raise one clear error unless ``device`` ('cpu' or 'cuda') can be used here."""
    if device == "cpu":
        return
    if device != "cuda":
        raise ValueError(f"unknown device {device!r}; use 'cpu' or 'cuda'")
    cupy = _cupy()
    if cupy is None:
        raise RuntimeError("device 'cuda' needs CuPy: pip install 'minires[cuda]'")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:                # CuPy's CUDA errors have no common base here
        raise RuntimeError(f"device 'cuda': CuPy finds no usable CUDA device ({error})") from None
    if count == 0:
        raise RuntimeError("device 'cuda': CuPy finds no CUDA device")


def to_device(x, device):
    """Copy ``x`` to ``device`` ('cpu' or 'cuda'); no copy when already there."""
    if device == "cpu":
        return x.get() if device_of(x) == "cuda" else np.asarray(x)
    if device == "cuda":
        cupy = _cupy()
        if cupy is None:
            raise RuntimeError("device 'cuda' needs CuPy: pip install 'minires[cuda]'")
        return cupy.asarray(x)
    raise ValueError(f"unknown device {device!r}; use 'cpu' or 'cuda'")


def like(x, reference):
    """``x`` (a NumPy array) moved to the device that ``reference`` lives on
    (None: stays on the CPU)."""
    return to_device(x, device_of(reference))


def floatx():
    """The default float type of new layers: 'float32' unless changed."""
    return _floatx


def set_floatx(dtype):
    """Set the default float type of layers created from now on."""
    global _floatx
    name = np.dtype(dtype).name
    if name not in _FLOAT_TYPES:
        raise ValueError(f"floatx must be one of {_FLOAT_TYPES}, got {dtype!r}")
    _floatx = name


@contextlib.contextmanager
def floatx_scope(dtype):
    """``with floatx_scope('float64'):`` builds float64 layers (gradient checks)."""
    previous = _floatx
    set_floatx(dtype)
    try:
        yield
    finally:
        set_floatx(previous)
