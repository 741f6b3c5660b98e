"""The Numba kernels against the NumPy ones on every conv and pool shape of
ResNet-50 (forward and backward), float32 and float64 (skipped without Numba)."""
import numpy as np
import pytest

from minires import backend
from minires.applications import ResNet50
from minires.layers import Conv2D, MaxPooling2D

pytestmark = pytest.mark.skipif(not backend.numba_available(), reason="Numba is not installed")
TOLERANCE = {"float32": 1e-5, "float64": 1e-12}


def resnet50_windows():
    """Distinct (kind, input shape, window, strides, padding, filters) in ResNet-50."""
    model = ResNet50()
    cases = set()
    for tensor in model.layer_calls():                # every layer call with its input
        layer = tensor.layer
        if isinstance(layer, (Conv2D, MaxPooling2D)):
            window = layer.kernel_size if isinstance(layer, Conv2D) else layer.pool_size
            cases.add((type(layer).__name__, tensor.inbound[0].shape[1:], window, layer.strides,
                       layer.padding, getattr(layer, "filters", None)))
    return sorted(cases, key=str)


def relative_difference(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def forward_backward(make_layer, x, g, path):
    backend.set_kernel_path(path)
    layer = make_layer()
    y, cache = layer.forward(x, training=True)
    return [y, layer.backward(g, cache), *(layer.grads[k] for k in sorted(layer.grads))]


@pytest.fixture
def restore_kernel_path():
    previous = backend.kernel_path()
    yield
    backend.set_kernel_path(previous)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", resnet50_windows(), ids=lambda c: f"{c[0]}{c[1]}{c[2]}/{c[3]}")
def test_numba_equals_numpy_on_resnet50_shapes(case, dtype, restore_kernel_path):
    kind, shape, window, strides, padding, filters = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, *shape)).astype(dtype)
    kernel = rng.standard_normal((*window, shape[-1], filters or 1)).astype(dtype)

    def make_layer():
        if kind == "MaxPooling2D":
            return MaxPooling2D(window, strides=strides, padding=padding, dtype=dtype)
        layer = Conv2D(filters, window, strides=strides, padding=padding, dtype=dtype)
        layer(x[:1])                                # builds the weights, then set them
        layer.params["kernel"][...] = kernel
        return layer

    backend.set_kernel_path("numpy")
    g = rng.standard_normal(make_layer()(x).shape).astype(dtype)
    for ours, reference in zip(forward_backward(make_layer, x, g, "numba"),
                               forward_backward(make_layer, x, g, "numpy")):
        assert relative_difference(ours, reference) <= TOLERANCE[dtype]


def test_kernel_path_can_be_chosen(restore_kernel_path):
    backend.set_kernel_path("numpy")
    assert backend.kernel_path() == "numpy"
    backend.set_kernel_path("numba")
    assert backend.kernel_path() == "numba"
    with pytest.raises(ValueError, match="unknown kernel path 'cython'"):
        backend.set_kernel_path("cython")
