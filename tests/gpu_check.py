"""The GPU check of issue 32: every CUDA path of minires, once, on a GPU, in one command.

    OUT=/some/folder bash tests/gpu_check.sh             # on the GPU machine (under 7 minutes)
    bash tests/gpu_check.sh --dry-run                     # the same steps on the CPU (CI)
    bash tests/gpu_check.sh --only resnet50 benchmark     # some steps again, after a fix

Each step runs in a process of its own, under a timeout (never past the
whole check's deadline), its output in $OUT/<n>-<step>.log; a failing step
does not stop the next. $OUT/summary.txt gets one line per step (PASS or
FAIL, seconds) and the figures the steps print (lines "FIGURE name: value").
The exit status is 1 if any step failed.

--dry-run: the CPU stands in for the GPU (device 'cpu', small images, one
repeat), and the CUDA kernels run as C++ (tests/kernel_emulation.py, float32
and float64 only): the same code, arguments, logs and summary, so that no GPU
minute is spent on a typo. tests/test_gpu_check.py runs it in the test suite.

Loaded by pytest as a plugin (-p gpu_check), it keeps the tests that take the
``device`` fixture or are marked ``cuda``.
"""
import argparse
import importlib.util
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
DEADLINE_S = 400          # the whole check: under 7 minutes on the GPU, machine start aside
FIGURE = re.compile(r"^FIGURE (.+?): (.*)$", re.M)


# --- steps: (name, timeout in seconds on the GPU, what it checks) -------------------------
STEPS = [("versions", 30, "Python, NumPy, CuPy, CUDA, the GPU, PyTorch, Numba, h5py"),
         ("weights", 60, "random ResNet-50 weights in Keras's h5 layout (the tests' writer)"),
         ("kernels", 60, "the CUDA kernels against the slicing ones, float16/32/64, NaN and ties"),
         ("resnet50", 120, "ResNet-50 predict and a training step, CuPy against NumPy; determinism"),
         ("predict", 60, "examples/predict.py --device cuda: the classes the CPU run gives"),
         ("benchmark", 150, "examples/benchmark.py --device cuda against PyTorch CUDA fp32, TF32 off"),
         ("pytest", 200, "pytest --device cuda on the device-sensitive tests, and -m cuda")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="the CPU stands in for the GPU")
    parser.add_argument("--only", nargs="+", choices=[name for name, *_ in STEPS], metavar="STEP",
                        help="run these steps only (the weights step comes along where needed)")
    parser.add_argument("--step", help=argparse.SUPPRESS)          # internal: run one step here
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out or os.environ.get("OUT") or "gpu_check_out").resolve()
    if args.step:
        return STEP_FUNCTIONS[args.step](out, args.dry_run)
    return run_all(out, args.dry_run, args.only)


def run_all(out, dry_run, only):
    """Every step (or ``only`` those) in turn, each in its own process; the summary."""
    out.mkdir(parents=True, exist_ok=True)
    wanted = set(only or [name for name, *_ in STEPS])
    if wanted & {"resnet50", "predict"}:
        wanted.add("weights")
    deadline = time.monotonic() + DEADLINE_S
    where = "DRY RUN on the CPU" if dry_run else "on the GPU"
    lines = [f"gpu check {where}, {time.strftime('%Y-%m-%d %H:%M:%S')}"]
    failed = []
    for number, (name, timeout, what) in enumerate(STEPS, 1):
        if name not in wanted:
            continue
        log = out / f"{number}-{name}.log"
        status, seconds, figures = run_step(name, log, out, dry_run, min(timeout, deadline - time.monotonic()))
        failed += [name] if status != "PASS" else []
        lines.append(f"{status} {name:<10} {seconds:6.1f} s  {what}  ({log.name})")
        lines += [f"    {key}: {value}" for key, value in figures]
        (out / "summary.txt").write_text("\n".join(lines) + "\n")      # after every step: a kill keeps it
        print(lines[-1 - len(figures)], flush=True)
    lines.append(f"{'FAILED: ' + ', '.join(failed) if failed else 'ALL PASSED'}")
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if failed else 0


def run_step(name, log, out, dry_run, timeout):
    """('PASS' or 'FAIL ...', seconds, figures) of one step, run as ``--step name``."""
    if timeout < 5:
        log.write_text("not run: the check's deadline has passed\n")
        return "FAIL (no time left)", 0.0, []
    command = [sys.executable, str(pathlib.Path(__file__).resolve()), "--step", name, "--out", str(out)]
    command += ["--dry-run"] if dry_run else []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")]))
    start = time.monotonic()
    with open(log, "w") as handle:
        handle.write(f"$ {' '.join(command)}\n(timeout {timeout:.0f} s)\n")
        handle.flush()
        # a session of its own: a timeout ends the step's children too (pytest, benchmark's processes)
        step = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                start_new_session=True)
        try:
            code = step.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(step.pid, signal.SIGKILL)
            step.wait()
            code = "timeout"
    seconds = time.monotonic() - start
    figures = FIGURE.findall(log.read_text(errors="replace"))
    status = "PASS" if code == 0 else f"FAIL ({'timed out' if code == 'timeout' else f'exit {code}'})"
    return status, seconds, figures


def figure(name, value):
    """A figure for the summary (the driver collects these lines from the log)."""
    print(f"FIGURE {name}: {value}", flush=True)


def device_for(dry_run):
    return "cpu" if dry_run else "cuda"


def run(command):
    """Run ``command``, its output (stderr too) copied line by line into this step's log
    (what a timeout cuts short is there); (exit status, the output)."""
    print(f"$ {' '.join(map(str, command))}", flush=True)
    process = subprocess.Popen(list(map(str, command)), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    lines = []
    for line in process.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    return process.wait(), "".join(lines)


# --- (a) versions -----------------------------------------------------------------------
def step_versions(out, dry_run):
    import h5py
    figure("python", sys.version.split()[0])
    figure("numpy", np.__version__)
    figure("h5py", h5py.__version__)
    for name in ("numba", "torch", "cupy"):
        if importlib.util.find_spec(name) is None:
            figure(name, "not installed")
            continue
        module = __import__(name)
        figure(name, module.__version__)
    if importlib.util.find_spec("torch") is not None:
        import torch
        figure("torch CUDA", f"{torch.version.cuda}, available: {torch.cuda.is_available()}")
    if dry_run:
        return 0
    import cupy
    runtime = cupy.cuda.runtime
    name = runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
    figure("GPU", name.decode() if isinstance(name, bytes) else name)
    figure("CUDA runtime / driver", f"{runtime.runtimeGetVersion()} / {runtime.driverGetVersion()}")
    if shutil.which("nvidia-smi"):
        run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv"])
    return 0


# --- the weights file (d, e) --------------------------------------------------------------
def weights_path(out):
    return out / "resnet50_random.h5"


def step_weights(out, dry_run):
    """Random ResNet-50 weights (kernels 1/sqrt(fan in), BN statistics not trivial), written
    by the tests' writer in the current Keras generation's h5 layout."""
    import keras_files
    import keras_resnet50_layers as golden

    from minires.applications import ResNet50
    weights = keras_files.random_weights(ResNet50(), np.random.default_rng(0))
    keras_files.write_legacy_layout(weights_path(out), [row[0] for row in golden.CURRENT], weights)
    figure("weights file", f"{weights_path(out).stat().st_size / 2**20:.0f} MiB")
    return 0


# --- (b) the CUDA kernels -------------------------------------------------------------------
def step_kernels(out, dry_run):
    """kernel_cases's checks: random windows (im2col, col2im, max-pool forward and backward,
    with ties and NaNs), ties to the first maximum, NaN winning its window."""
    import kernel_cases

    from minires.kernels import cupy_kernels
    dtypes = ["float16", "float32", "float64"]
    if dry_run:
        import tempfile

        import kernel_emulation
        cupy_kernels._kernel = kernel_emulation.build(pathlib.Path(tempfile.mkdtemp())).kernel
        dtypes = list(kernel_emulation.FLOAT_TYPES)          # C++ has no float16
    failures, count = 0, 0
    checks = [(f"{dtype} {kernel_cases.case_id(case)}", kernel_cases.assert_same_as_slicing, (case, dtype))
              for dtype in dtypes for case in kernel_cases.random_windows(10 if dry_run else 30)]
    checks += [(f"ties {kernel_cases.case_id(case)}", kernel_cases.assert_ties_go_to_first_maximum, (case,))
               for case in kernel_cases.TIE_CASES]
    checks += [(f"nan {kernel_cases.case_id(case)}", kernel_cases.assert_nan_wins_its_window, (case,))
               for case in kernel_cases.TIE_CASES]
    for label, check, args in checks:
        count += 1
        try:
            check(cupy_kernels, *args, device_for(dry_run))
        except Exception as error:  # noqa: BLE001 - a kernel that does not compile too: go on to the next
            failures += 1
            print(f"FAILED {label}: {type(error).__name__}\n{error}\n", flush=True)
    figure("kernel checks", f"{count - failures} of {count} passed ({', '.join(dtypes)})")
    return 1 if failures else 0


# --- (d) ResNet-50 on the device against NumPy ------------------------------------------------
def step_resnet50(out, dry_run):
    """predict and one training step on the device against NumPy, from the weights file;
    the same predict and step twice on the device give identical results."""
    from conftest import bias_before_training_bn, on_cpu

    from minires.applications import ResNet50
    from minires.backend import to_device
    device, size, batch = device_for(dry_run), (32 if dry_run else 224), (2 if dry_run else 4)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, size, size, 3)).astype("float32")
    y = rng.integers(0, 1000, batch)

    def model(where):
        return ResNet50(weights=str(weights_path(out)), input_shape=(size, size, 3),
                        classifier_activation=None).to(where)

    reference, ours = model("cpu"), model(device)
    expected = reference.predict(x, verbose=0)
    logits = on_cpu(ours.predict(to_device(x, device), verbose=0))
    again = on_cpu(ours.predict(to_device(x, device), verbose=0))
    failed = check("predict, max |difference| / max |NumPy's|", relative(logits, expected), 1e-4)
    failed |= check("predict twice on the device, max |difference|", float(np.abs(again - logits).max()), 0)

    loss_np, step_np = training_step(reference, x, y)
    loss_dev, step_dev = training_step(ours, to_device(x, device), to_device(y, device))
    failed |= check("training step loss, |difference| / |NumPy's|", abs(loss_dev - loss_np) / abs(loss_np), 1e-5)
    # float32 through ~50 layers of sums reordered (cuBLAS, CuPy's reductions against
    # OpenBLAS, NumPy): each product's rounding is ~1e-7 relative, its sums of up to
    # 4608 terms and the backward's chain of ~150 ops grow it to ~1e-5..1e-4 of a
    # weight's step; 1e-3 of the largest step of each weight leaves room, and still
    # fails on any real error (a wrong gradient is off by O(1) of the step). A conv
    # bias read only by a training-mode BN has a zero gradient (BN subtracts the
    # batch mean): both sides step it by rounding noise, which no ratio compares.
    noise = bias_before_training_bn(reference)
    worst, where = max((relative(step_dev[key], step_np[key]), key) for key in step_np if key not in noise)
    failed |= check(f"training step, worst weight step max |difference| / max |NumPy's| ({where}; "
                    f"{len(noise)} biases before BN aside)", worst, 1e-3)
    again_model = model(device)
    loss_again, step_again = training_step(again_model, to_device(x, device), to_device(y, device))
    same = loss_again == loss_dev and all(np.array_equal(step_again[k], step_dev[k]) for k in step_dev)
    if not same:
        worst = max(float(np.abs(step_again[k] - step_dev[k]).max()) for k in step_dev)
        print(f"the same training step twice on {device} differs (largest weight difference "
              f"{worst:.3g}): cuBLAS or a reduction is not bitwise deterministic here", flush=True)
    failed |= check("training step twice on the device, identical", str(same), "True")
    return 1 if failed else 0


def training_step(model, x, y):
    """(the loss, {'layer/param': what one SGD step changed}) of one train.train_step."""
    from conftest import on_cpu

    from minires import train
    from minires.losses import SoftmaxCrossEntropy
    from minires.optim import SGD
    before = {f"{layer.name}/{name}": on_cpu(layer.params[name]) for layer, name in model.parameters()}
    logs = train.train_step(model, x, y, SGD(0.01, momentum=0.9), SoftmaxCrossEntropy(), {}, 0.01)
    return logs["loss"], {f"{layer.name}/{name}": on_cpu(layer.params[name]) - before[f"{layer.name}/{name}"]
                          for layer, name in model.parameters()}


def relative(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def check(name, value, limit):
    """Print the figure and whether it is within ``limit`` (or equal, for a string); True if not."""
    good = value == limit if isinstance(limit, str) else value <= limit
    shown = value if isinstance(value, str) else f"{value:.2e}"
    figure(name, f"{shown} ({'ok' if good else 'OVER'}: {'want' if isinstance(limit, str) else 'limit'} {limit})")
    return not good


# --- (e) examples/predict.py ------------------------------------------------------------------
def step_predict(out, dry_run):
    """predict.py on the device with the random weights file; its classes must be the CPU run's."""
    common = [sys.executable, "examples/predict.py", "--weights", weights_path(out), "--top", "3"]
    (code, ours), (cpu_code, theirs) = (run(common + ["--device", device_for(dry_run)]),
                                        run(common + ["--device", "cpu"]))
    if code != 0 or cpu_code != 0:
        return 1
    timing = re.search(r"image\(s\) in (\d+) ms on (\w+)", ours)
    figure("predict.py", timing.group(0) if timing else "no timing line")
    same = same_classes(classes(ours), classes(theirs))
    figure("predict.py classes as on the CPU", "yes" if same else "NO")
    return 0 if timing and same else 1


def classes(text):
    """[(wnid, score)] of every class predict.py printed."""
    return [(wnid, float(score)) for wnid, score in re.findall(r"^  (n\d{8})  .*? (\d\.\d{4})$", text, re.M)]


def same_classes(ours, theirs):
    """The same scores (to the 4 decimals printed) rank by rank, and the same class
    wherever its score is not within 2e-4 of a neighbour's (a tie may swap two)."""
    if not ours or len(ours) != len(theirs):
        return False
    scores = [score for _, score in theirs]
    for rank, ((wnid, score), (wnid_cpu, score_cpu)) in enumerate(zip(ours, theirs)):
        neighbours = scores[max(rank - 1, 0):rank] + scores[rank + 1:rank + 2]
        tied = any(abs(score_cpu - other) <= 2e-4 for other in neighbours)
        if abs(score - score_cpu) > 2e-4 or (wnid != wnid_cpu and not tied):
            return False
    return True


# --- (f) examples/benchmark.py ------------------------------------------------------------------
ACCEPTANCE = {"Model.predict batch  32": 2.0,     # inference throughput >= 0.5x PyTorch's: time <= 2x
              "training step batch  32": 2.0}     # a training step <= 2x PyTorch's time


def step_benchmark(out, dry_run):
    """One pair of processes (minires, then PyTorch) on the device: the ratios minires / PyTorch."""
    if dry_run:
        options = ["--device", "cpu", "--batches", "1", "--train-batches", "1", "--repeat", "1", "--pairs-only"]
    else:
        options = ["--device", "cuda", "--batches", "1", "32", "--train-batches", "32", "--repeat", "10"]
    torch = importlib.util.find_spec("torch") is not None
    code, output = run([sys.executable, "examples/benchmark.py", "--pairs", "1", *options,
                        *([] if torch else ["--no-torch"])])
    if code != 0:
        return 1
    rows = re.findall(r"^  (\S+(?: \S+)? batch +\d+):(?: +[\d.]+)*(?:  median ([\d.]+);)? minires ([\d.]+) s"
                      r"(?:, pytorch ([\d.]+) s)?$", output, re.M)
    for label, ratio, ours, theirs in rows:
        figure(label, f"minires {ours} s" + (f", pytorch {theirs} s, minires / pytorch {ratio}" if ratio else ""))
    failed = not rows
    for label, limit in ({} if dry_run else ACCEPTANCE).items():      # the bar
        ratio = next((float(r) for row, r, *_ in rows if row == label and r), None)
        if ratio is None:
            print(f"no minires / pytorch ratio for {label}", flush=True)
            failed = True
        else:
            failed |= check(f"acceptance: {label}, minires / pytorch time", ratio, limit)
    return 1 if failed else 0


# --- (c) pytest --device cuda ---------------------------------------------------------------
def step_pytest(out, dry_run):
    """The tests taking the ``device`` fixture, and those marked ``cuda``, on the device
    (the dry run: those of two files, on the CPU)."""
    options = ["-p", "gpu_check", "-p", "no:cacheprovider", "-q", "-rfEs", "--device", device_for(dry_run)]
    if not dry_run and importlib.util.find_spec("xdist") is not None:
        options += ["-n", "4"]                   # one GPU: 4 processes share it, and CuPy's kernel cache
    if importlib.util.find_spec("pytest_timeout") is not None:
        options += ["--timeout", "120"]
    where = ["tests/test_optim.py", "tests/test_cuda.py"] if dry_run else ["tests"]
    code, output = run([sys.executable, "-m", "pytest", *options, *where])
    counts = re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)", (output.splitlines() or [""])[-1])
    figure("pytest", ", ".join(f"{n} {what}" for n, what in counts) or "no result line")
    return code


def pytest_collection_modifyitems(config, items):
    """Keep the tests that take ``device`` or are marked ``cuda``."""
    def on_the_device(item):
        return "device" in getattr(item, "fixturenames", ()) or item.get_closest_marker("cuda")
    config.hook.pytest_deselected(items=[item for item in items if not on_the_device(item)])
    items[:] = [item for item in items if on_the_device(item)]


STEP_FUNCTIONS = {"versions": step_versions, "weights": step_weights, "kernels": step_kernels,
                  "resnet50": step_resnet50, "predict": step_predict, "benchmark": step_benchmark,
                  "pytest": step_pytest}

if __name__ == "__main__":
    sys.exit(main())
