"""Max-pool ties and NaNs on every CPU kernel path: after a ReLU, windows of
equal values (all zeros) are everywhere in a real network, and the gradient must
go to the first maximum of each window, as NumPy's argmax and PyTorch do; a
window holding a NaN gives NaN (as np.max), its first NaN taking the gradient.
The CUDA source's C++ build runs the same checks in test_cupy_kernel_source.py,
the GPU in test_cuda.py."""
import pytest

from kernel_cases import (TIE_CASES, assert_nan_wins_its_window, assert_ties_go_to_first_maximum,
                          case_id)
from minires import kernels


@pytest.mark.parametrize("case", TIE_CASES, ids=case_id)
def test_max_pool_ties_go_to_the_first_maximum(each_kernel_path, case):
    assert_ties_go_to_first_maximum(kernels, case, "cpu")


@pytest.mark.parametrize("case", TIE_CASES, ids=case_id)
def test_max_pool_nan_wins_its_window(each_kernel_path, case):
    assert_nan_wins_its_window(kernels, case, "cpu")
