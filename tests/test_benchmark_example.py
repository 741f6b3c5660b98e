"""examples/benchmark.py, run as a user runs it, at its smallest: every section
prints its figures, PyTorch (where installed) holds the same weights, and its
process (examples/torch_benchmark.py) imports nothing of minires and gets the
environment the user gave."""
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "benchmark.py"
TORCH_SCRIPT = ROOT / "examples" / "torch_benchmark.py"
HAVE_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch is not installed")
FIGURE = r"\d+\.\d{3} s \( *\d+\.\d/s\)"


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)


def load_benchmark(monkeypatch):
    """examples/benchmark.py as a module (it imports its neighbour benchmark_common)."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_section_prints_figures():
    result = run("--pairs", "1", "--batches", "1", "--train-batches", "1", "--repeat", "1",
                 "--settings", "default", "off", *([] if HAVE_TORCH else ["--no-torch"]))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"^processor: \S.*, \d+ cores\n  vector extensions: \S", out, re.M), out
    if importlib.util.find_spec("threadpoolctl") is not None:
        assert re.search(r"NumPy's BLAS: \w+ [\d.]+, kernels for \w+", out), out
    coretype_set = "OPENBLAS_CORETYPE" in os.environ
    assert ("WARNING: OPENBLAS_CORETYPE=" if coretype_set else "OPENBLAS_CORETYPE: unset") in out, out
    theirs = rf", pytorch {FIGURE}; minires / pytorch \d+\.\d\d$" if HAVE_TORCH else "$"
    ratio = r"( +\d+\.\d\d)  median \d+\.\d\d;" if HAVE_TORCH else ""
    labels = ("Model.predict", "training step", "Model.predict, off", "training step, off")
    for label in (label.ljust(len("training step, off")) for label in labels):
        pair_line = rf"^  {label} batch   1: minires {FIGURE}{theirs}"
        summary_line = rf"^  {label} batch   1:{ratio} minires \d+\.\d{{3}} s"
        assert re.search(pair_line, out, re.M) and re.search(summary_line, out, re.M), out
    memory = ["minires Model.predict, batch 64", "minires training step, batch 32"]
    memory += ["pytorch inference, batch 64", "pytorch training step, batch 32"] if HAVE_TORCH else []
    for label in memory:
        assert re.search(rf"{label} +\d+\.\d\d GiB", out), out
    for op in ("WinogradConv", "BatchNormReLU", "Conv2D"):     # the plan's ops, each timed
        assert re.search(rf"  {op} +\d+\.\d{{3}} s", out), out
    if importlib.util.find_spec("numba") is not None:
        assert re.search(r"col2im \(backward\)  numpy +\d+\.\d, numba +\d+\.\d: \d+\.\dx", out), out
    if HAVE_TORCH:
        assert re.search(r"pytorch: torch \S+, CPU kernels \w+, \d+ threads, channels_last", out), out
        difference = float(re.search(r"max \|logit difference\| / max \|logit\| = (\S+)", out).group(1))
        assert difference < 1e-5, out


@needs_torch
def test_the_pytorch_process_imports_nothing_of_minires(tmp_path):
    """Run the PyTorch side through every operation with Python's import log on."""
    from minires.applications import ResNet50
    weights = tmp_path / "resnet50.npz"
    ResNet50(classifier_activation=None).save_weights(weights)
    result = subprocess.run([sys.executable, "-X", "importtime", str(TORCH_SCRIPT), "--weights",
                             str(weights), "--jobs", "infer:1", "train:1", "--repeat", "0", "--logits"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    imported = set(re.findall(r"^import time: +\d+ \| +\d+ \| +(\S+)$", result.stderr, re.M))
    assert {"numpy", "torch", "benchmark_common"} <= imported, sorted(imported)
    assert not [name for name in imported if name.split(".")[0] == "minires"], sorted(imported)
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["seconds"] == {"infer:1": None, "train:1": None}       # --repeat 0: memory only
    assert len(report["logits"]) == 2 and len(report["logits"][0]) == 1000


def test_pytorch_gets_the_environment_as_given(monkeypatch):
    """minires's speed settings stay in its own processes: PyTorch's process gets the
    environment the benchmark was started with; minires's the same plus the thread
    count, and for the "off" setting MINIRES_SPEED_SETTINGS=0, for "opt-in" a flag
    that calls apply_speed_settings() first."""
    given = dict(os.environ)
    benchmark = load_benchmark(monkeypatch)
    commands = []

    def fake_run(command, env, **_):
        commands.append((command, env))
        return subprocess.CompletedProcess(command, 0, stdout='{"seconds": {}}\n')

    monkeypatch.setattr(benchmark.subprocess, "run", fake_run)
    args = benchmark.parse_args(["--threads", "1"])
    benchmark.run_measuring("pytorch", ["infer:1"], "w.npz", args, repeat=1)
    for setting in ("default", "off", "opt-in"):
        benchmark.run_measuring("minires", ["predict:1"], "w.npz", args, repeat=1, setting=setting)
    (torch_command, torch_env), *minires = commands
    assert torch_command[1] == str(TORCH_SCRIPT) and torch_env == given
    threads = dict(OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    assert [command[1:3] for command, _ in minires] == [[str(SCRIPT), "--measure"]] * 3
    assert [env for _, env in minires] == [dict(given, **threads),
                                           dict(given, **threads, MINIRES_SPEED_SETTINGS="0"), dict(given, **threads)]
    assert ["--apply-speed-settings" in command for command, _ in minires] == [False, False, True]


def test_busy_processes_run_for_the_block_only(monkeypatch):
    benchmark = load_benchmark(monkeypatch)
    with benchmark.busy_processes(2) as busy:
        assert len(busy) == 2 and all(process.poll() is None for process in busy)
        assert all(process.args[-1] == "while True: pass" for process in busy)
    assert all(process.returncode is not None for process in busy)


def test_openblas_coretype_is_warned(monkeypatch):
    benchmark = load_benchmark(monkeypatch)
    warning = benchmark.openblas_coretype_line({"OPENBLAS_CORETYPE": "Haswell"})
    assert "WARNING: OPENBLAS_CORETYPE=Haswell is set" in warning
    assert "env -u OPENBLAS_CORETYPE python" in warning
    assert "unset" in benchmark.openblas_coretype_line({})


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed")
def test_cuda_without_cupy_is_one_line():
    result = run("--device", "cuda", "--no-torch")
    assert result.returncode == 1
    assert result.stderr.strip() == "benchmark: device 'cuda' needs CuPy: pip install 'minires[cuda]'"
