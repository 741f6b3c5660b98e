"""The CUDA kernels of minires/kernels/cupy_kernels.py, compiled for the CPU.

For an output of ``size`` elements, ``cupy.ElementwiseKernel`` compiles about

    typedef float T;                                  // the arrays' float type
    <PREAMBLE>
    extern "C" __global__ void minires_col2im(const CArray<T, 6> cols, int height, ...,
                                              CArray<T, 4> _raw_dx, CIndexer<4> _ind) {
        CUPY_FOR(i, _ind.size()) {                    // the i of this GPU thread
            _ind.set(i);
            T &dx = _raw_dx[_ind.get()];              // its own element of the output
            <body>
        }
    }

and starts one GPU thread per i. Here the same PREAMBLE and body go into a C++
function whose loop takes every i in turn, compiled by the system's C++
compiler and called through ctypes on C-contiguous NumPy arrays; a ``raw``
array becomes a plain pointer (CuPy's flat index into a C-contiguous array is
the same offset). ``kernel(name)`` is called as CuPy's kernel is: inputs,
then outputs, positionally.

What this cannot show: anything about many threads at once (none is needed:
each i writes only its own output element), GPU code generation, float16.
"""
import ctypes
import shutil
import subprocess
from typing import NamedTuple

import numpy as np

from minires.kernels.cupy_kernels import KERNELS, PREAMBLE

FLOAT_TYPES = {"float32": "float", "float64": "double"}
FIXED_TYPES = {"int32": ("int", ctypes.c_int), "int64": ("long long", ctypes.c_longlong)}


def compiler():
    """The C++ compiler found on PATH, or None."""
    return next(filter(None, map(shutil.which, ("c++", "g++", "clang++"))), None)


class Param(NamedTuple):
    raw: bool
    type: str          # 'T' (the float type), 'int32' or 'int64'
    name: str


def parameters(text):
    """'raw T x, int32 height' -> [Param(True, 'T', 'x'), Param(False, 'int32', 'height')]."""
    params = []
    for part in text.split(","):
        *keywords, type_, name = part.split()
        params.append(Param("raw" in keywords, type_, name))
    return params


def c_type(param):
    return "T" if param.type == "T" else FIXED_TYPES[param.type][0]


def function_source(name, dtype):
    """KERNELS[name] for ``dtype`` as a C++ function looping over i: ``<name>_<dtype>``."""
    source = KERNELS[name]
    inputs, outputs = parameters(source.inputs), parameters(source.outputs)
    if not all(p.raw or p.type != "T" for p in inputs):
        raise NotImplementedError(f"{name}: only raw array inputs are emulated")
    arguments = [f"const {c_type(p)}* {p.name}" if p.raw else f"{c_type(p)} {p.name}" for p in inputs]
    arguments += [f"{c_type(p)}* _raw_{p.name}" for p in outputs]
    own_elements = " ".join(f"{c_type(p)}& {p.name} = _raw_{p.name}[i];" for p in outputs)
    return f"""
namespace {name}_{dtype} {{
typedef {FLOAT_TYPES[dtype]} T;
{PREAMBLE}
extern "C" void {name}_{dtype}({", ".join(arguments)}, ptrdiff_t size) {{
    for (ptrdiff_t i = 0; i < size; ++i) {{
        {own_elements}
        {source.body}
    }}
}}
}}
"""


def build(directory):
    """Compile every kernel for float32 and float64 into one library in ``directory``."""
    code = "#include <cstddef>\n#define __device__\n" + "".join(
        function_source(name, dtype) for name in KERNELS for dtype in FLOAT_TYPES)
    (directory / "kernels.cpp").write_text(code)
    command = [compiler(), "-std=c++11", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC",
               "-o", "kernels.so", "kernels.cpp"]
    result = subprocess.run(command, cwd=directory, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"the kernels do not compile as C++:\n{result.stderr}")
    return Emulation(ctypes.CDLL(str(directory / "kernels.so")))


class Emulation:
    """The compiled library, and calls into it checked as CuPy checks its kernels' arguments."""

    def __init__(self, library):
        self.library = library

    def kernel(self, name):
        """A stand-in for cupy_kernels._kernel(name): called with the same arguments."""
        return lambda *args: self.run(name, args)

    def run(self, name, args):
        source = KERNELS[name]
        inputs, outputs = parameters(source.inputs), parameters(source.outputs)
        if len(args) != len(inputs) + len(outputs):
            raise TypeError(f"{name} takes {len(inputs) + len(outputs)} arguments, got {len(args)}")
        floats = {a.dtype.name for p, a in zip(inputs + outputs, args) if p.type == "T"}
        if len(floats) != 1 or not floats <= set(FLOAT_TYPES):
            raise TypeError(f"{name}: the T arrays must share one of {list(FLOAT_TYPES)}, got {floats}")
        sizes = {a.size for a in args[len(inputs):]}
        if len(sizes) != 1:
            raise ValueError(f"{name}: the outputs differ in size: {sizes}")
        c_args = [self.c_argument(name, p, a, is_array=p.raw or p in outputs)
                  for p, a in zip(inputs + outputs, args)]
        function = getattr(self.library, f"{name}_{floats.pop()}")
        function(*c_args, ctypes.c_ssize_t(sizes.pop()))

    @staticmethod
    def c_argument(name, param, value, is_array):
        """An array as a pointer to its data (checked as CuPy would need it), a scalar as its C type."""
        if is_array:
            dtype = value.dtype.name if param.type == "T" else param.type
            if not (isinstance(value, np.ndarray) and value.flags.c_contiguous
                    and value.dtype.name == dtype):
                raise TypeError(f"{name}: {param.name} must be a C-contiguous {dtype} array")
            return value.ctypes.data_as(ctypes.c_void_p)
        return FIXED_TYPES[param.type][1](int(value))
