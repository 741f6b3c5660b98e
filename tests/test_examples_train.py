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
