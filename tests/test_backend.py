import os
import subprocess
import sys

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

    from minires import models
    from minires.layers import Dense, Input
    from minires.models import Model

    class OnGpu(np.ndarray):
        pass

    x_in = Input((3,))
    model = Model(x_in, Dense(2)(x_in))
    model.forward(np.ones((1, 3), "float32"))
    monkeypatch.setattr(models, "device_of", lambda a: "cuda" if isinstance(a, OnGpu) else "cpu")
    with pytest.raises(ValueError, match=r"inputs on \['cuda'\] but weights on \['cpu'\].*model.to"):
        model.forward(np.ones((1, 3), "float32").view(OnGpu))


# --- apply_speed_settings: each in a fresh Python, as OpenMP reads its settings once ---------
NUMBA_KERNELS = "from minires.kernels import numba_kernels\n" if backend.numba_available() else ""
SHOW_POLICY = "minires.apply_speed_settings(keep_memory=False)\nprint(os.environ.get('OMP_WAIT_POLICY'))"


def fresh_python(code, **environment):
    """A fresh Python runs ``code`` (after importing os, numpy as np and minires),
    with OMP_WAIT_POLICY unset, then ``environment`` added."""
    env = {name: value for name, value in os.environ.items() if name != "OMP_WAIT_POLICY"}
    return subprocess.run([sys.executable, "-c", "import os, numpy as np, minires\n" + code],
                          env={**env, **environment}, capture_output=True, text=True, check=True)


def test_speed_settings_make_openmp_passive_unless_the_user_chose():
    result = fresh_python(NUMBA_KERNELS + SHOW_POLICY)       # imported, not run yet: in time
    assert (result.stdout.strip(), result.stderr) == ("PASSIVE", "")
    assert fresh_python(SHOW_POLICY, OMP_WAIT_POLICY="ACTIVE").stdout.strip() == "ACTIVE"


@pytest.mark.skipif(not backend.numba_available(), reason="Numba is not installed")
def test_speed_settings_after_a_numba_kernel_warn_and_set_nothing():
    result = fresh_python(NUMBA_KERNELS + "numba_kernels.im2col(np.ones((1, 3, 3, 1)), 2, 2, 1, 1)\n" + SHOW_POLICY)
    assert result.stdout.strip() == "None"
    assert "Numba's threads have started already" in result.stderr, result.stderr
