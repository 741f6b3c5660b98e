"""Ops must run unchanged on CuPy arrays: they get ``xp`` from minires.backend and
never reach for CuPy or NumPy-only scatter functions themselves."""
import pathlib
import re

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "minires"
# Each device has its own compiled kernels, written for it alone: kernels/__init__.py
# hands numba_kernels.py NumPy arrays only, and cupy_kernels.py (which imports
# CuPy itself, at first use) CuPy arrays only.
OPS = sorted([*PACKAGE.glob("layers/*.py"), *PACKAGE.glob("kernels/*.py"), PACKAGE / "losses.py",
              PACKAGE / "optim.py"])
OPS.remove(PACKAGE / "kernels" / "numba_kernels.py")
OPS.remove(PACKAGE / "kernels" / "cupy_kernels.py")
NUMPY_ONLY = [r"\bimport cupy\b", r"\bfrom cupy\b", r"\.add\.at\(", r"np\.(?!dtype\b)\w+\("]


@pytest.mark.parametrize("path", OPS, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_ops_use_the_array_module_switch(path):
    source = path.read_text()
    found = [pattern for pattern in NUMPY_ONLY if re.search(pattern, source)]
    assert not found, f"{path.name} uses {found}; ask backend.get_array_module(x) for xp instead"
