"""On a CUDA device only (marked ``cuda``: skipped, saying why, where none can
be used): the CUDA kernels against the slicing kernels, and ResNet-50 on CuPy
against NumPy. ``pytest --device cuda`` runs the rest of the suite on the GPU."""
import numpy as np
import pytest
from conftest import on_cpu
from kernel_cases import (TIE_CASES, assert_nan_wins_its_window, assert_same_as_slicing,
                          assert_ties_go_to_first_maximum, case_id, random_windows)

from minires.applications import ResNet50
from minires.backend import to_device
from minires.kernels import cupy_kernels

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", random_windows(30), ids=case_id)
def test_cuda_kernels_equal_slicing(case, dtype):
    assert_same_as_slicing(cupy_kernels, case, dtype, "cuda")


@pytest.mark.parametrize("case", TIE_CASES, ids=case_id)
def test_cuda_max_pool_ties_go_to_the_first_maximum(case):
    assert_ties_go_to_first_maximum(cupy_kernels, case, "cuda")


@pytest.mark.parametrize("case", TIE_CASES, ids=case_id)
def test_cuda_max_pool_nan_wins_its_window(case):
    assert_nan_wins_its_window(cupy_kernels, case, "cuda")


def test_resnet50_on_cupy_equals_numpy():
    """The whole network in float32: every kernel, cuBLAS product and reduction on the GPU."""
    model = ResNet50(classifier_activation=None)           # seeded random weights
    x = np.random.default_rng(0).standard_normal((2, 224, 224, 3)).astype(np.float32)
    expected = model.predict(x)
    logits = on_cpu(model.to("cuda").predict(to_device(x, "cuda")))
    assert np.abs(logits - expected).max() <= 1e-4 * np.abs(expected).max()
