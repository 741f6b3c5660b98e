"""The CUDA kernels' own source, run on the CPU: cupy_kernels.py's Python
functions with each ElementwiseKernel compiled as C++ (tests/kernel_emulation.py),
against the slicing kernels on random windows. No CuPy or GPU needed; the same
comparison runs on the GPU itself in test_cuda.py."""
import numpy as np
import pytest

import kernel_emulation
from kernel_cases import (TIE_CASES, assert_nan_wins_its_window, assert_same_as_slicing,
                          assert_ties_go_to_first_maximum, case_id, random_windows)
from minires import backend, kernels
from minires.kernels import cupy_kernels

needs_compiler = pytest.mark.skipif(kernel_emulation.compiler() is None,
                                    reason="no C++ compiler (c++, g++ or clang++) on PATH")


@pytest.fixture(scope="module")
def emulation(tmp_path_factory):
    return kernel_emulation.build(tmp_path_factory.mktemp("cuda_kernels_on_cpu"))


@needs_compiler
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", random_windows(30), ids=case_id)
def test_cuda_kernel_source_equals_slicing(emulation, monkeypatch, case, dtype):
    monkeypatch.setattr(cupy_kernels, "_kernel", emulation.kernel)
    assert_same_as_slicing(cupy_kernels, case, dtype, "cpu")


@needs_compiler
@pytest.mark.parametrize("case", TIE_CASES, ids=case_id)
def test_cuda_kernel_source_max_pool_ties_go_to_the_first_maximum(emulation, monkeypatch, case):
    monkeypatch.setattr(cupy_kernels, "_kernel", emulation.kernel)
    assert_ties_go_to_first_maximum(cupy_kernels, case, "cpu")


@needs_compiler
@pytest.mark.parametrize("case", TIE_CASES, ids=case_id)
def test_cuda_kernel_source_max_pool_nan_wins_its_window(emulation, monkeypatch, case):
    monkeypatch.setattr(cupy_kernels, "_kernel", emulation.kernel)
    assert_nan_wins_its_window(cupy_kernels, case, "cpu")


def test_cupy_arrays_take_the_cuda_kernels(monkeypatch):
    """Without a GPU here, device_of plays a CuPy array (as in test_backend.py)."""
    x = np.zeros((1, 4, 4, 1), np.float32)
    assert kernels._compiled_for(x) is not cupy_kernels
    monkeypatch.setattr(backend, "device_of", lambda array: "cuda")
    assert kernels._compiled_for(x) is cupy_kernels
