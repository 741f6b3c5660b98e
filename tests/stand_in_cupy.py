"""A stand-in for CuPy on the CPU, to run minires's CuPy code paths without a GPU.

``StandInCupy`` answers ``cupy.<function>`` with NumPy's, its results wrapped
as ``OnDevice`` arrays; ``backend._cupy`` returning it makes minires take
OnDevice arrays for CuPy ones (device 'cuda', the CUDA kernels: patch
``cupy_kernels._kernel`` with tests/kernel_emulation.py's). Each read of an
OnDevice array's values on the host (bool, float, int, .item(), .tolist(),
.get()) is counted in ``OnDevice.reads``: on CuPy each waits for the GPU to
finish all the work queued before it.

What it cannot show: anything about the GPU itself (speed, float16 kernels,
cuBLAS's order of summation), or a NumPy function CuPy lacks.
"""
import types

import numpy as np


class OnDevice(np.ndarray):
    """A NumPy array playing a CuPy one: what is computed from it is OnDevice too."""
    reads = 0

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        if out is not None:
            kwargs["out"] = plain(out)
        result = getattr(ufunc, method)(*plain(inputs), **kwargs)
        return (out[0] if len(out) == 1 else out) if out is not None else on_device(result)

    def __array_function__(self, function, types, args, kwargs):
        return on_device(function(*plain(args), **plain(kwargs)))

    def read(self):
        """This array's values on the host: one wait for the GPU, counted."""
        OnDevice.reads += 1
        return self.view(np.ndarray).copy()

    get = read

    def __bool__(self):
        return bool(self.read())

    def __float__(self):
        return float(self.read())

    def __int__(self):
        return int(self.read())

    def __index__(self):
        return self.read().__index__()

    def item(self, *args):
        return self.read().item(*args)

    def tolist(self):
        return self.read().tolist()


def plain(value):
    """``value`` with every OnDevice array in it seen as a plain ndarray."""
    if isinstance(value, OnDevice):
        return value.view(np.ndarray)
    if isinstance(value, (tuple, list)):
        return type(value)(plain(v) for v in value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def on_device(value):
    """What a CuPy function gives: arrays (0-d ones for NumPy's scalars) on the device."""
    if isinstance(value, (np.ndarray, np.generic)):
        return np.asarray(value).view(OnDevice)
    if isinstance(value, (tuple, list)):
        return type(value)(on_device(v) for v in value)
    return value


class StandInCupy(types.ModuleType):
    """``cupy``: NumPy's names, each function's arrays OnDevice."""
    ndarray = OnDevice

    def __init__(self):
        super().__init__("cupy")

    def __getattr__(self, name):
        value = getattr(np, name)
        if isinstance(value, (type, np.ufunc)) or not callable(value):
            return value              # dtypes; ufuncs give OnDevice results from OnDevice inputs

        def on_the_device(*args, **kwargs):
            return on_device(value(*plain(args), **plain(kwargs)))
        return on_the_device

    @staticmethod
    def asarray(x, dtype=None):
        return np.asarray(plain(x), dtype=dtype).view(OnDevice)
