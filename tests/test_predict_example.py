"""examples/predict.py, run as a user runs it: a subprocess, its output, its exit code."""
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

import keras_files
from minires.applications import ResNet50

pytest.importorskip("PIL")
pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "predict.py"
CLASS_LINE = re.compile(r"^  n\d{8}  \S+\s+\d\.\d{4}$")


def run(*args, home):
    """The script with an empty weights cache and every download refused at once
    (a proxy on a closed port): offline, whatever the machine."""
    env = dict(os.environ, MINIRES_HOME=str(home), https_proxy="http://127.0.0.1:9",
               http_proxy="http://127.0.0.1:9")
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env=env, timeout=300, cwd=ROOT)


@pytest.fixture(scope="module")
def weights_path(tmp_path_factory):
    model = ResNet50()
    weights = keras_files.random_weights(model, np.random.default_rng(0))
    path = tmp_path_factory.mktemp("w") / "resnet50_random.h5"
    keras_files.write_legacy_layout(path, [layer.name for layer in model.layers], weights)
    return path


def test_offline_without_weights_explains_the_manual_download(tmp_path):
    result = run(home=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    message = result.stderr.strip()
    assert 1 <= len(message.splitlines()) <= 6               # a few short lines (issue 15)
    assert "resnet50_weights_tf_dim_ordering_tf_kernels.h5" in message
    assert "2cb95161c43110f7111970584f804107" in message
    assert str(tmp_path / "current") in message and "weights=PATH" in message
    assert list(tmp_path.rglob("*")) in ([], [tmp_path / "current"])   # nothing half-written


def test_bundled_image_top5_with_a_weights_file(weights_path, tmp_path):
    result = run("--weights", str(weights_path), home=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith("chelsea.jpg")
    assert len(lines) == 7 and all(CLASS_LINE.match(line) for line in lines[1:6]), result.stdout
    scores = [float(line.split()[-1]) for line in lines[1:6]]
    assert scores == sorted(scores, reverse=True)
    assert re.match(r"1 image\(s\) in \d+ ms on cpu$", lines[6])


def test_several_images_and_top_k(weights_path, tmp_path):
    from PIL import Image
    gray = tmp_path / "gray.png"
    Image.fromarray(np.arange(64 * 48, dtype=np.uint8).reshape(48, 64) % 255, "L").save(gray)
    image = ROOT / "examples" / "data" / "chelsea.jpg"
    result = run(str(image), str(gray), "--top", "3", "--weights", str(weights_path), home=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [lines[0], lines[4]] == [str(image), str(gray)]
    assert sum(bool(CLASS_LINE.match(line)) for line in lines) == 6
    assert lines[-1].startswith("2 image(s) in")


@pytest.mark.parametrize("case", ["missing image", "unreadable image", "no cuda", "bad weights"])
def test_failures_are_one_line_without_traceback(case, tmp_path, weights_path):
    text_file = tmp_path / "notes.jpg"
    text_file.write_text("not a picture")
    args, expected = {
        "missing image": (["nowhere.jpg", "--weights", str(weights_path)], "nowhere.jpg"),
        "unreadable image": ([str(text_file), "--weights", str(weights_path)], "not an image"),
        "no cuda": (["--device", "cuda", "--weights", str(weights_path)], "cuda"),
        "bad weights": (["--weights", str(text_file)], "not a readable HDF5 file"),
    }[case]
    if case == "no cuda":
        try:
            from minires.backend import check_device
            check_device("cuda")
            pytest.skip("this machine has a CUDA device")
        except RuntimeError:
            pass
    result = run(*args, home=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr
