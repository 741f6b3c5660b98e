"""`import minires` changes nothing outside minires: the process environment
and glibc's malloc behaviour stay as they were, even once a Numba kernel has
been run directly. minires applies its speed settings only when its own work
first needs them (test_speed_settings.py) or when
minires.apply_speed_settings() is called (test_memory.py)."""
import json
import os
import subprocess
import sys

import pytest

from test_memory import KEPT, RETURNED, page_faults

# minires imported and, where Numba is installed, its Numba kernels imported
# and run once (OpenMP's threads start then).
IMPORT_MINIRES = """
import numpy as np
import minires
if minires.backend.numba_available():
    from minires.kernels import numba_kernels
    numba_kernels.im2col(np.ones((1, 3, 3, 1)), 2, 2, 1, 1)
"""

ENVIRONMENT_AROUND_IMPORT = ("import json, os\nbefore = dict(os.environ)\n" + IMPORT_MINIRES +
                             'print(json.dumps({"before": before, "after": dict(os.environ)}))')


def test_import_leaves_the_environment_alone():
    # OMP_WAIT_POLICY unset, so that an os.environ.setdefault would show
    env = {name: value for name, value in os.environ.items() if name != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", ENVIRONMENT_AROUND_IMPORT], env=env,
                         capture_output=True, text=True, check=True).stdout
    seen = json.loads(out)
    before, after = seen["before"], seen["after"]
    changed = {name: (before.get(name), after.get(name)) for name in before.keys() | after.keys()
               if before.get(name) != after.get(name)}
    assert not changed, f"import minires changed os.environ (before, after): {changed}"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_import_leaves_malloc_as_glibc_has_it():
    without_minires, imported = page_faults(""), page_faults(IMPORT_MINIRES)
    # glibc's default: the freed 64 MiB went back to the OS and faults in again
    assert without_minires >= RETURNED, without_minires
    assert imported >= RETURNED, f"import minires kept freed memory: {imported} page faults"
    # and the probe does see the setting once it is asked for
    applied = page_faults(IMPORT_MINIRES + "minires.apply_speed_settings(passive_openmp=False)")
    assert applied <= KEPT, applied
