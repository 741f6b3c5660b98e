"""backend.apply_speed_settings() keeps freed memory in the process
(backend.keep_freed_memory): a large array allocated again after being freed
is not faulted in again."""
import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")

PROBE = """
import json, resource, numpy as np
def faults_of_fresh_array():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    np.ones(64 << 20, np.uint8)                  # 64 MiB, freed at once
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_fresh_array()
print(json.dumps({"faults": faults_of_fresh_array()}))
"""
# Returned to the OS, every page (or 2 MiB huge page) of the 64 MiB faults again;
# kept, next to none does.
RETURNED, KEPT = 32, 4


def page_faults(setup):
    """Page faults of a 64 MiB array allocated right after an equal one was
    freed, in a fresh Python that first runs the code ``setup``."""
    out = subprocess.run([sys.executable, "-c", setup + "\n" + PROBE], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out)["faults"]


def test_speed_settings_keep_freed_memory_unless_told_not_to():
    kept = page_faults("import minires; minires.apply_speed_settings()")
    returned = page_faults("import minires; minires.apply_speed_settings(keep_memory=False)")
    assert kept <= KEPT, kept
    assert returned >= RETURNED, returned
