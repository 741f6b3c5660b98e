"""examples/benchmark.py, run as a user runs it, at its smallest: every section
prints its figures, and PyTorch (where installed) holds the same weights."""
import importlib.util
import pathlib
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "benchmark.py"
HAVE_TORCH = importlib.util.find_spec("torch") is not None


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)


def test_every_section_prints_figures():
    result = run("--batches", "1", "--train-batches", "1", "--repeat", "1",
                 *([] if HAVE_TORCH else ["--no-torch"]))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"batch   1: minires \d+\.\d{3} s \(\d+\.\d/s\), minires fast \d+\.\d{3} s", out), out
    assert re.search(r"training step.*\n  batch   1: minires \d+\.\d{3} s", out), out
    assert re.search(r"  Conv2D +\d+\.\d{3} s", out), out
    assert re.search(r"minires training step, batch 32 +\d+\.\d\d GiB", out), out
    if HAVE_TORCH:
        difference = float(re.search(r"max \|logit difference\| / max \|logit\| = (\S+)", out).group(1))
        assert difference < 1e-5, out
        assert re.search(r"pytorch \d+\.\d{3} s .*fast / pytorch = \d+\.\d\d", out), out
        assert re.search(r"pytorch training step, batch 32 +\d+\.\d\d GiB", out), out


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed")
def test_cuda_without_cupy_is_one_line():
    result = run("--device", "cuda", "--no-torch")
    assert result.returncode == 1
    assert result.stderr.strip() == "benchmark: device 'cuda' needs CuPy: pip install 'minires[cuda]'"
