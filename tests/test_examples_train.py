"""examples/train_digits.py reaches the accuracy the README promises (slow: ~30 s)."""
import pathlib
import re
import subprocess
import sys

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_train_digits_reaches_97_percent(tmp_path):
    png = tmp_path / "curves.png"
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "train_digits.py"),
                             "--plot", str(png)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    accuracy = float(re.search(r"test accuracy ([\d.]+)%", result.stdout).group(1))
    assert accuracy >= 97.0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_keras_digits_trains_a_subclassed_softmax_resnet_through_compile_and_fit():
    """Tutorial-style Keras code (subclassed blocks, softmax output, compile/fit):
    97% at least, and with output not on a terminal, one line per epoch."""
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "keras_digits.py")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    accuracy = float(re.search(r"test accuracy ([\d.]+)%", result.stdout).group(1))
    assert accuracy >= 97.0
    lines = result.stdout.splitlines()
    assert [line.split(" - ")[0] for line in lines[:-1]] == [f"Epoch {e}/15" for e in range(1, 16)]
