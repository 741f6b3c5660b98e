"""minires keeps freed memory in the process (backend.keep_freed_memory): a
large array allocated again after being freed is not faulted in again."""
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")

MEASURE = """
import json, resource, numpy as np
import minires
from minires import backend
def faults_of_fresh_array():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    np.ones(64 << 20, np.uint8)                  # 64 MiB, freed at once
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_fresh_array()
print(json.dumps({"faults": faults_of_fresh_array()}))
"""


def page_faults(keep):
    env = dict(os.environ, MINIRES_KEEP_MEMORY="1" if keep else "0")
    out = subprocess.run([sys.executable, "-c", MEASURE], env=env, capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)["faults"]


def test_second_large_allocation_reuses_memory():
    kept, returned = page_faults(keep=True), page_faults(keep=False)
    # returned to the OS: every page (or 2 MiB huge page) of 64 MiB faults again
    assert returned >= 32, returned
    assert kept <= 4, kept
