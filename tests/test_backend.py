import numpy as np
import pytest

from minires import backend


def test_numpy_arrays_use_numpy():
    x = np.zeros(3)
    assert backend.get_array_module(x) is np and backend.device_of(x) == "cpu"
    assert backend.is_array(x) and not backend.is_array([0.0])
    assert backend.to_device(x, "cpu") is x


def test_unknown_device():
    with pytest.raises(ValueError, match="unknown device 'tpu'; use 'cpu' or 'cuda'"):
        backend.to_device(np.zeros(1), "tpu")


def test_cuda_without_cupy_says_what_to_install():
    if backend._cupy() is not None:
        pytest.skip("CuPy is installed here")
    with pytest.raises(RuntimeError, match=r"needs CuPy: pip install 'minires\[cuda\]'"):
        backend.to_device(np.zeros(1), "cuda")


def test_floatx():
    assert backend.floatx() == "float32"
    with backend.floatx_scope(np.float64):
        assert backend.floatx() == "float64"
    assert backend.floatx() == "float32"
    with pytest.raises(ValueError, match="floatx must be one of"):
        backend.set_floatx("int32")


def test_inputs_and_weights_on_different_devices_give_one_clear_error(monkeypatch):
    """Without a GPU here, a stand-in array type plays the CuPy array."""
    import numpy as np

    from minires import model_weights
    from minires.layers import Dense, Input
    from minires.models import Model

    class OnGpu(np.ndarray):
        pass

    x_in = Input((3,))
    model = Model(x_in, Dense(2)(x_in))
    model.forward(np.ones((1, 3), "float32"))
    monkeypatch.setattr(model_weights, "device_of", lambda a: "cuda" if isinstance(a, OnGpu) else "cpu")
    with pytest.raises(ValueError, match=r"inputs on \['cuda'\] but weights on \['cpu'\].*model.to"):
        model.forward(np.ones((1, 3), "float32").view(OnGpu))
