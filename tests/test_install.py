"""What `pip install -e .` brings: Numba's compiled kernels by default where
Numba has wheels (CPython), and a NumPy-only path that still runs where Numba
is missing or broken."""
import importlib.metadata
import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
from packaging.requirements import Requirement

from test_speed_settings import TINY_MODEL

FIT_AND_PREDICT = TINY_MODEL + """
import json
from minires import backend
model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
model.fit(x, np.array([0, 2]), epochs=1, verbose=0)
print(json.dumps({"kernels": backend.kernel_path(), "y": model.predict(x, verbose=0).tolist()}))
"""


def run_fresh(code, **environment):
    env = {name: value for name, value in os.environ.items() if name != "MINIRES_KERNELS"}
    result = subprocess.run([sys.executable, "-c", code], env={**env, **environment},
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.splitlines()[-1]), result.stderr


def test_the_default_install_requires_numba_on_cpython():
    required = [Requirement(line) for line in importlib.metadata.requires("minires")]
    numba = [r for r in required if r.name == "numba" and (r.marker is None or r.marker.evaluate({"extra": ""}))]
    assert numba, f"minires's install_requires lacks numba: {[str(r) for r in required]}"
    assert platform.python_implementation() != "CPython" or numba[0].marker.evaluate()


@pytest.mark.skipif(platform.python_implementation() != "CPython", reason="Numba's wheels are CPython's")
def test_predict_runs_the_compiled_kernels_out_of_the_box():
    seen, _ = run_fresh(FIT_AND_PREDICT)
    assert seen["kernels"] == "numba"


def test_a_numba_that_does_not_import_leaves_the_numpy_kernels(tmp_path):
    """A broken Numba (one built for another NumPy, say) warns once and the NumPy
    kernels run, with the same results."""
    (tmp_path / "numba").mkdir()
    (tmp_path / "numba" / "__init__.py").write_text('raise ImportError("Numba needs NumPy 1.0 (a test\'s fake)")\n')
    broken, warnings = run_fresh(FIT_AND_PREDICT, PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]))
    assert broken["kernels"] == "numpy"
    assert warnings.count("Numba is installed but does not import") == 1, warnings
    assert "a test's fake" in warnings
    numpy_only, _ = run_fresh(FIT_AND_PREDICT, MINIRES_KERNELS="numpy")
    assert broken["y"] == numpy_only["y"]
    compiled, _ = run_fresh(FIT_AND_PREDICT)
    assert abs(np.array(compiled["y"]) - broken["y"]).max() < 1e-6
