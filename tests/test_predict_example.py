"""examples/predict.py, run as a user runs it: a subprocess, its output, its exit code."""
import hashlib
import os
import pathlib
import re
import shutil
import struct
import subprocess
import sys
import zlib

import h5py
import numpy as np
import pytest

import keras_files
import keras_resnet50_layers as golden
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
    """A few short lines: what failed, the URL, where to put the file."""
    result = run(home=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    url = ("https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
           "resnet50_weights_tf_dim_ordering_tf_kernels.h5")
    target = str(tmp_path / "current" / "resnet50_weights_tf_dim_ordering_tf_kernels.h5")
    assert lines[0].startswith("predict.py: could not download ")
    assert 3 <= len(lines) <= 8, lines
    assert url in [line.strip() for line in lines] and target in [line.strip() for line in lines]
    assert all(len(line) <= 100 for line in lines if line.strip() not in (url, target)), lines
    message = "\n".join(lines)
    assert "2cb95161c43110f7111970584f804107" in message and "--weights PATH" in message
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


# --- every failure: exit code 1, one line on stderr, no traceback, the weights untouched ----
def bomb_png(path, width=80000, height=80000):
    """A PNG whose header declares width x height pixels (6.4 gigapixels), a few bytes long."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)        # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def bad_weights(weights_path, tmp_path_factory):
    """{case: path} of broken weight files, most made from the good ResNet-50 file."""
    folder = tmp_path_factory.mktemp("bad")
    data = weights_path.read_bytes()
    files = {"empty": b"", "truncated": data[: len(data) // 2], "text": b"<html>404</html>",
             "random": np.random.default_rng(0).bytes(1 << 16)}
    paths = {}
    for case, content in files.items():
        paths[case] = folder / f"{case}.h5"
        paths[case].write_bytes(content)
    paths["missing"] = folder / "nowhere.h5"
    paths["directory"] = folder / "folder.h5"
    paths["directory"].mkdir()
    paths["other model"] = folder / "other.h5"
    keras_files.write_small_file(paths["other model"])
    for case in ("missing layer", "wrong shape", "declared huge"):
        paths[case] = folder / f"{case.replace(' ', '_')}.h5"
        shutil.copyfile(weights_path, paths[case])
    with h5py.File(paths["missing layer"], "r+") as f:
        del f["conv3_block2_2_conv"]
        f.attrs["layer_names"] = [n for n in f.attrs["layer_names"] if n != "conv3_block2_2_conv"]
    keras_files.replace(paths["wrong shape"], "conv2_block1_2_conv/conv2_block1_2_conv/kernel:0",
                        data=np.zeros((1, 1, 64, 64), "float32"))
    keras_files.replace(paths["declared huge"], "conv1_conv/conv1_conv/kernel:0",
                        shape=(2 ** 20, 2 ** 20), dtype="float32", chunks=(1024, 1024))
    return paths


WEIGHT_CASES = {
    "missing": "weights file not found: .*nowhere.h5",
    "empty": "empty.h5 is not a readable HDF5 file",
    "truncated": "truncated.h5 is not a readable HDF5 file",
    "text": "text.h5 is not a readable HDF5 file",
    "random": "random.h5 is not a readable HDF5 file",
    "directory": "folder.h5 is a directory, not a weights file",
    "other model": "other.h5 holds no ResNet-50 weights of either Keras generation",
    "missing layer": "model layer 'conv3_block2_2_conv' is missing from the file",
    "wrong shape": r"layer 'conv2_block1_2_conv', weight 'kernel': expected shape \(3, 3, 64, 64\), "
                   r"found \(1, 1, 64, 64\)",
    "declared huge": r"layer 'conv1_conv', weight 'kernel': expected shape \(7, 7, 3, 64\), "
                     r"found \(1048576, 1048576\)",
}


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def assert_one_line_failure(result, pattern):
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("predict.py: "), result.stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert result.stdout == ""


@pytest.mark.parametrize("case", list(WEIGHT_CASES))
def test_bad_weight_files_fail_in_one_line(case, bad_weights, tmp_path):
    path = bad_weights[case]
    before = sha256(path)
    assert_one_line_failure(run("--weights", str(path), home=tmp_path), WEIGHT_CASES[case])
    assert sha256(path) == before


@pytest.mark.parametrize("case", ["missing", "directory", "garbage", "decompression bomb"])
def test_bad_images_fail_in_one_line(case, weights_path, tmp_path):
    image = {"missing": tmp_path / "nowhere.png", "directory": tmp_path,
             "garbage": tmp_path / "garbage.jpg", "decompression bomb": tmp_path / "bomb.png"}[case]
    if case == "garbage":
        image.write_bytes(np.random.default_rng(1).bytes(4096))
    if case == "decompression bomb":
        bomb_png(image)
    expected = {"missing": "no such file", "directory": "is a directory, not an image file",
                "garbage": "not an image file Pillow can read",
                "decompression bomb": r"bomb.png' declares too many pixels to decode .*6400000000 pixels"}
    before = sha256(weights_path)
    assert_one_line_failure(run(str(image), "--weights", str(weights_path), home=tmp_path),
                            expected[case])
    assert sha256(weights_path) == before


def test_usage_errors_are_one_line(tmp_path):
    result = run("--top", "0", home=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "--top must be between 1 and 1000, got 0 (see --help)" in result.stderr


def test_legacy_file_without_pool1_pad_builds_that_network(tmp_path):
    """Its layer_names lack 'pool1_pad' (a Keras 2 file): the script builds the first
    release's network without being told (built with pool1_pad, the load would refuse)."""
    model = ResNet50(generation="legacy", pool1_pad=False)
    weights = keras_files.random_weights(model, np.random.default_rng(2))
    path = tmp_path / "legacy_no_pad.h5"
    keras_files.write_legacy_layout(path, [name for name, *_ in golden.LEGACY_NO_POOL1_PAD], weights)
    result = run("--weights", str(path), "--top", "1", home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert CLASS_LINE.match(result.stdout.splitlines()[1])


@pytest.mark.parametrize("error, expected", [
    (MemoryError("Unable to allocate 4.00 TiB for an array"),
     "predict.py: out of memory (Unable to allocate 4.00 TiB for an array)"),
    (TypeError("unexpected\nthing"), "predict.py: TypeError: unexpected thing"),
    (KeyboardInterrupt(), "predict.py: interrupted")])
def test_any_other_failure_is_one_line(monkeypatch, error, expected):
    """run() in this process, main() replaced by one that raises."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("predict_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    def failing_main():
        raise error
    monkeypatch.setattr(script, "main", failing_main)
    monkeypatch.delenv("MINIRES_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        script.run()
    assert exit_info.value.code == expected


def test_the_script_opens_the_weight_file_once_and_calls_model_predict(weights_path, monkeypatch,
                                                                       capsys):
    """What the README teaches: ``model.predict``, with its inference plan; the
    file's generation, 'pool1_pad' and weights all read through one opening."""
    import importlib.util
    from minires.io import keras_h5
    from minires.models import Model
    spec = importlib.util.spec_from_file_location("predict_example", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    opened, calls = [], []
    open_file, predict = keras_h5.KerasWeightsFile.__init__, Model.predict

    def counted_open(file, path, *args, **kwargs):
        opened.append(path)
        open_file(file, path, *args, **kwargs)

    def counted_predict(model, x, *args, **kwargs):
        calls.append(len(x))
        return predict(model, x, *args, **kwargs)

    monkeypatch.setattr(keras_h5.KerasWeightsFile, "__init__", counted_open)
    monkeypatch.setattr(Model, "predict", counted_predict)
    script.main(["--weights", str(weights_path)])
    assert opened == [str(weights_path)] and calls == [1]
    assert "1 image(s) in" in capsys.readouterr().out
