"""The CPU speed settings minires applies itself at first use (backend.py):
OpenMP's idle threads asleep before the first Numba kernel, glibc keeping freed
memory before the first training forward. Each in a fresh Python, since both
are read or set once per process. For each: applied at first use and not
before, the user's own environment variable wins, and the off switch
(MINIRES_SPEED_SETTINGS=0, backend.set_speed_settings(False)) works.

OpenMP's settings are read off libgomp itself: OMP_DISPLAY_ENV=VERBOSE makes it
print them when it loads, GOMP_SPINCOUNT among them (0 when idle threads sleep
at once, 300000 spins by default)."""
import json
import os
import re
import subprocess
import sys

import pytest

from minires import backend
from test_memory import KEPT, PROBE, RETURNED

# A tiny conv model: its 3x3 conv runs im2col, a Numba kernel where Numba is installed.
TINY_MODEL = """
import numpy as np, minires
minires.set_random_seed(0)
from minires.layers import Conv2D, Dense, GlobalAveragePooling2D, Input
x_in = Input((6, 6, 2))
model = minires.Model(x_in, Dense(3, activation="softmax")(GlobalAveragePooling2D()(Conv2D(4, 3, strides=2)(x_in))))
x = np.ones((2, 6, 6, 2), "float32")
"""
PREDICT = TINY_MODEL + "model.predict(x, verbose=0)\n"
TRAIN = TINY_MODEL + "model.backward(np.ones_like(model.forward(x, training=True)))\n"
PRINT_ENVIRON = "\nimport json, os\nprint(json.dumps(dict(os.environ)))\n"


def fresh_python(code, **environment):
    """A fresh Python runs ``code`` with the speed settings' variables unset, then
    ``environment`` added, and OMP_DISPLAY_ENV=VERBOSE (libgomp prints its settings)."""
    ours = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MINIRES_SPEED_SETTINGS", "MINIRES_KERNELS",
            "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")
    env = {name: value for name, value in os.environ.items() if name not in ours}
    return subprocess.run([sys.executable, "-c", code], env={**env, "OMP_DISPLAY_ENV": "VERBOSE", **environment},
                          capture_output=True, text=True, check=True)


def spin_count(result):
    """libgomp's GOMP_SPINCOUNT in the child, or None if libgomp never loaded."""
    found = re.search(r"GOMP_SPINCOUNT = '(\d+)'", result.stderr)
    return found and int(found.group(1))


def openmp_threading_layer():
    if not backend.numba_available():
        return False
    code = "import numba; numba.get_num_threads(); print(numba.threading_layer())"
    return fresh_python(code).stdout.strip() == "omp"


needs_openmp = pytest.mark.skipif(not openmp_threading_layer(), reason="Numba's threads are not OpenMP's here")
DEFAULT_SPINS, ACTIVE_SPINS = 300000, 30000000000


@needs_openmp
def test_openmp_threads_sleep_from_the_first_kernel_without_a_trace_in_the_environment():
    result = fresh_python("import minires" + PRINT_ENVIRON)
    assert spin_count(result) is None                     # importing started nothing
    result = fresh_python(PREDICT + PRINT_ENVIRON)
    assert spin_count(result) == 0, result.stderr
    assert "OMP_WAIT_POLICY" not in json.loads(result.stdout.splitlines()[-1])


@needs_openmp
@pytest.mark.parametrize("mine, spins", [({"OMP_WAIT_POLICY": "ACTIVE"}, ACTIVE_SPINS),
                                         ({"GOMP_SPINCOUNT": "1000"}, 1000)])
def test_the_users_openmp_setting_wins(mine, spins):
    result = fresh_python(PREDICT + PRINT_ENVIRON, **mine)
    assert spin_count(result) == spins, result.stderr
    seen = json.loads(result.stdout.splitlines()[-1])
    assert {name: seen.get(name) for name in mine} == mine


@needs_openmp
@pytest.mark.parametrize("switch, environment", [("", {"MINIRES_SPEED_SETTINGS": "0"}),
                                                 ("minires.backend.set_speed_settings(False)\n", {})])
def test_the_off_switch_leaves_openmp_as_it_comes(switch, environment):
    result = fresh_python("import minires\n" + switch + PREDICT, **environment)
    assert spin_count(result) == DEFAULT_SPINS, result.stderr


@needs_openmp
def test_an_explicit_call_applies_them_even_when_switched_off():
    result = fresh_python("import minires\nminires.apply_speed_settings()\n" + PREDICT,
                          MINIRES_SPEED_SETTINGS="0")
    assert spin_count(result) == 0, result.stderr
    assert result.stderr.count("GOMP_SPINCOUNT") == 1       # libgomp loaded once


@needs_openmp
def test_an_explicit_call_after_spinning_threads_started_warns():
    result = fresh_python(PREDICT + "minires.apply_speed_settings()\n", MINIRES_SPEED_SETTINGS="0")
    assert spin_count(result) == DEFAULT_SPINS
    assert "Numba's threads have started already" in result.stderr, result.stderr
    quiet = fresh_python(PREDICT + "minires.apply_speed_settings()\n")   # started asleep by minires
    assert "Numba's threads have started already" not in quiet.stderr, quiet.stderr


# --- keeping freed memory: a 64 MiB array allocated again after an equal one was freed ---
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")


def page_faults_after(code, **environment):
    return json.loads(fresh_python(code + PROBE, **environment).stdout.splitlines()[-1])["faults"]


@linux_only
def test_freed_memory_is_kept_from_the_first_training_forward_on():
    assert page_faults_after(PREDICT) >= RETURNED              # inference leaves malloc alone
    assert page_faults_after(TRAIN) <= KEPT


@linux_only
@pytest.mark.parametrize("environment", [{"MINIRES_SPEED_SETTINGS": "0"}, {"MALLOC_MMAP_THRESHOLD_": "65536"},
                                         {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}])
def test_off_switch_and_the_users_malloc_settings_win(environment):
    assert page_faults_after(TRAIN, **environment) >= RETURNED
