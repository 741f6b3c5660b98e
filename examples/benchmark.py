"""Time ResNet-50 in minires and in PyTorch (where installed), each in processes of its own.

    python examples/benchmark.py                   # 3 pairs of processes, medians of 5 runs
    python examples/benchmark.py --pairs 5 --repeat 9 --batches 1 32
    env -u OPENBLAS_CORETYPE python examples/benchmark.py   # let OpenBLAS pick its best kernels
    python examples/benchmark.py --settings default opt-in off   # what each speed setting does
    python examples/benchmark.py --load 1          # both sides beside one busy process
    python examples/benchmark.py --device cuda     # CuPy against PyTorch CUDA

Prints the processor (model name, vector extensions), the BLAS kernels NumPy
runs and OPENBLAS_CORETYPE; then, for pair k = 1 .. --pairs, a fresh minires
process measures everything (Model.predict at each batch, a training step
at each train batch: median of --repeat runs
after one warm-up), then a fresh PyTorch process does the same, and the
ratios minires / PyTorch of that pair are printed (< 1: minires faster),
then each ratio's median over the pairs. Taking turns process by process,
neither framework's threads or heap get in the other's way, and drift over
the run shows up as scatter between pairs. Then peak memory (RSS), each
configuration in a fresh process of its own framework (training at batch 32,
inference at batch 64); a per-layer-type breakdown of a minires training
step's ops; Numba against NumPy for im2col and col2im.

minires's processes run what a user gets with no extra call: the default
path, which applies its speed settings itself at first use (README: Speed).
--settings adds rows for minires processes that call
minires.apply_speed_settings() first thing ("opt-in") or run with
MINIRES_SPEED_SETTINGS=0 ("off"), each against the same pair's PyTorch.
--load N keeps N busy processes (Python spinning) running while the pairs
are timed, so that both sides meet the same competition for the cores.
PyTorch's run examples/torch_benchmark.py, which imports only NumPy and
PyTorch, with the environment this script was given: out of the box,
channels_last, torch.set_num_threads(--threads). The two share their
weights through a .npz checkpoint; their logits are compared first.

With ``--device cuda`` minires runs on CuPy arrays and PyTorch on CUDA in
fp32 (cuDNN, TF32 off, as minires computes in true float32); every timed run
ends by waiting for the GPU. The RSS figures, per-layer breakdown and Numba
kernels are about the CPU and are left out.
"""
import argparse
import collections
import contextlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmark_common import images, labels, measure, median_seconds

# The environment as given, for the measuring processes.
GIVEN_ENVIRONMENT = dict(os.environ)
TORCH_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_benchmark.py")
VECTOR_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16")
# Peak memory: (label, framework, job), each in a fresh process; the same batches for both.
MEMORY_CONFIGS = (("minires Model.predict, batch 64", "minires", "predict:64"),
                  ("pytorch inference, batch 64", "pytorch", "infer:64"),
                  ("minires training step, batch 32", "minires", "train:32"),
                  ("pytorch training step, batch 32", "pytorch", "train:32"))
# minires's speed settings, as a measuring process meets them: the environment it
# adds and whether it calls apply_speed_settings() first thing.
SETTINGS = {"default": ({}, False), "opt-in": ({}, True), "off": ({"MINIRES_SPEED_SETTINGS": "0"}, False)}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--train-batches", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--pairs", type=int, default=3, help="minires/PyTorch process pairs")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per figure (median)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="for each framework")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=["default"],
                        help="minires's speed settings to time (default: as a user gets them)")
    parser.add_argument("--load", type=int, default=0, help="busy processes running meanwhile")
    parser.add_argument("--pairs-only", action="store_true",
                        help="only the timed pairs, as --device cuda runs (no RSS, breakdown, kernels)")
    # internal: this process is one of minires's measuring processes
    parser.add_argument("--measure", nargs="+", metavar="JOB", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--logits", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--apply-speed-settings", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    least_repeat = 0 if args.measure else 1         # 0: a process that only measures memory
    if args.pairs < 1 or args.repeat < least_repeat or min(args.batches + args.train_batches) < 1:
        parser.error("--pairs, --repeat and every batch must be at least 1")
    if args.load < 0:
        parser.error("--load is a number of processes, 0 or more")
    return args


# --- the processor and BLAS ------------------------------------------------------------
def processor_lines():
    """The processor's model name and the vector extensions that set BLAS's speed."""
    info = read_cpuinfo()
    name = info.get("model name") or platform.processor() or platform.machine()
    flags = set(info.get("flags", "").split())
    present = [flag for flag in VECTOR_FLAGS if flag in flags]
    return [f"processor: {name}, {os.cpu_count()} cores",
            f"  vector extensions: {' '.join(present) or 'none of ' + ', '.join(VECTOR_FLAGS)}"]


def read_cpuinfo():
    """The first processor's /proc/cpuinfo fields; empty off Linux."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            text = cpuinfo.read().split("\n\n")[0]
    except OSError:
        return {}
    return dict((key.strip(), value.strip()) for key, _, value in
                (line.partition(":") for line in text.splitlines()))


def blas_lines(environ):
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        lines = ["  NumPy's BLAS: unknown (pip install threadpoolctl to see which kernels it runs)"]
    else:
        lines = [f"  NumPy's BLAS: {pool.get('internal_api')} {pool.get('version')}, kernels for "
                 f"{pool.get('architecture')}"
                 for pool in threadpool_info() if pool["user_api"] == "blas"]
    return lines + [openblas_coretype_line(environ)]


def openblas_coretype_line(environ):
    coretype = environ.get("OPENBLAS_CORETYPE")
    if coretype is None:
        return "  OPENBLAS_CORETYPE: unset (OpenBLAS picks the kernels for this processor)"
    return (f"  WARNING: OPENBLAS_CORETYPE={coretype} is set: it forces OpenBLAS's kernels for that "
            f"core, slower ones than this processor's; for true figures run\n"
            f"  WARNING:   env -u OPENBLAS_CORETYPE python {' '.join(sys.argv)}")


def environment(args):
    from minires import backend
    lines = processor_lines() + blas_lines(GIVEN_ENVIRONMENT)
    lines.append(f"python {sys.version.split()[0]}, numpy {np.__version__}, minires kernel path "
                 f"{backend.kernel_path()}, {args.threads} threads for each framework")
    if args.device == "cuda":
        import cupy
        name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
        name = name.decode() if isinstance(name, bytes) else name
        lines.append(f"  device: {name}, cupy {cupy.__version__}")
    print("\n".join(lines))


# --- the measuring processes -----------------------------------------------------------
def rows(args):
    """(label, batch, minires setting, minires job, PyTorch job) of every figure a
    pair compares: the default path's, then each other setting's predict and training."""
    default = ([("Model.predict", b, "default", f"predict:{b}", f"infer:{b}") for b in args.batches]
               + [("training step", b, "default", f"train:{b}", f"train:{b}") for b in args.train_batches])
    return default + [(f"{label}, {setting}", batch, setting, ours, theirs)
                      for setting in args.settings if setting != "default"
                      for label, batch, _, ours, theirs in default]


def run_measuring(framework, jobs, weights, args, repeat, logits=False, setting="default"):
    """One fresh process of ``framework`` measures ``jobs``; its JSON line, or None if it failed."""
    options = ["--weights", weights, "--repeat", str(repeat), "--threads", str(args.threads),
               "--device", args.device] + (["--logits"] if logits else [])
    if framework == "pytorch":
        command, env = [sys.executable, TORCH_SCRIPT, "--jobs", *jobs, *options], GIVEN_ENVIRONMENT
    else:
        threads = str(args.threads)            # what torch.set_num_threads does for PyTorch
        added, opt_in = SETTINGS[setting]
        command = [sys.executable, os.path.abspath(__file__), "--measure", *jobs, *options,
                   *(["--apply-speed-settings"] if opt_in else [])]
        env = dict(GIVEN_ENVIRONMENT, OPENBLAS_NUM_THREADS=threads, NUMBA_NUM_THREADS=threads, **added)
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env)
    if result.returncode != 0 or not result.stdout.strip():
        return None                            # its error went to stderr, above
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure_minires(args):
    """This process is one of minires's measuring processes: time the jobs, print JSON."""
    from minires import backend
    if args.apply_speed_settings:              # first thing: the "opt-in" setting
        backend.apply_speed_settings()
    from minires.applications import ResNet50
    model = ResNet50(classifier_activation=None)
    model.load_weights(args.weights)
    model.to(args.device)
    extra = {}
    if args.logits:                            # before any training step changes the weights
        x = backend.to_device(images(2), args.device)
        extra["logits"] = backend.to_device(model.predict(x, verbose=0), "cpu").tolist()
    measure(args.measure, lambda op, batch: minires_run(model, op, batch, args.device), args.repeat,
            lambda: synchronize(args.device), **extra)


def minires_run(model, op, batch, device):
    from minires.backend import to_device
    from minires.losses import SoftmaxCrossEntropy
    from minires.optim import SGD
    x = to_device(images(batch), device)
    if op == "predict":
        return lambda: model.predict(x, batch_size=batch, verbose=0)
    if op == "train":
        y, optimizer, loss = to_device(labels(batch), device), SGD(1e-4, momentum=0.9), SoftmaxCrossEntropy()
        return lambda: train_step(model, optimizer, loss, x, y)
    raise SystemExit(f"benchmark: unknown operation {op!r}; use predict or train")


def train_step(model, optimizer, loss, x, y):
    """Forward, loss, backward, SGD with momentum: the step PyTorch's process times."""
    loss.forward(model.forward(x, training=True), y)
    model.backward(loss.backward(), input_grads=False)   # as PyTorch: no gradient for the images
    optimizer.step(model)


def synchronize(device):
    """Wait for the GPU: CuPy only queues work, and a timer must see it done."""
    if device == "cuda":
        import cupy
        cupy.cuda.Device().synchronize()


# --- sections ---------------------------------------------------------------------------
def pairs(args, weights, use_torch):
    """Pair by pair, a minires process for each setting, then a PyTorch one;
    each pair's figures and ratios."""
    table = rows(args)
    settings = list(dict.fromkeys(["default", *args.settings]))
    torch_jobs = list(dict.fromkeys(row[4] for row in table))
    results = []
    for k in range(1, args.pairs + 1):
        ours = {}
        for setting in settings:
            jobs = [row[3] for row in table if row[2] == setting]
            ours[setting] = run_measuring("minires", jobs, weights, args, args.repeat,
                                          logits=k == 1 and setting == "default", setting=setting)
        theirs = (run_measuring("pytorch", torch_jobs, weights, args, args.repeat, logits=k == 1)
                  if use_torch else None)
        failed = [f"minires ({s})" for s, result in ours.items() if result is None]
        if failed or (use_torch and theirs is None):
            sys.exit(f"benchmark: the {(failed or ['pytorch'])[0]} process of pair {k} "
                     "failed (its error is above); --no-torch runs minires alone")
        if k == 1 and theirs is not None:
            agreement(ours["default"], theirs)
        seconds = ({s: result["seconds"] for s, result in ours.items()}, theirs and theirs["seconds"])
        print_pair(k, args, table, *seconds)
        results.append(seconds)
    summary(table, results)


def agreement(ours, theirs):
    """The two networks hold the same weights: their logits must agree."""
    ours_logits, theirs_logits = np.array(ours["logits"]), np.array(theirs["logits"])
    difference = np.abs(ours_logits - theirs_logits).max() / np.abs(theirs_logits).max()
    print(f"pytorch: {theirs['about']}, channels_last\n"
          f"  same weights: max |logit difference| / max |logit| = {difference:.1e}")


def print_pair(k, args, table, ours, theirs):
    """ours: {setting: {job: seconds}}; theirs: {job: seconds} or None."""
    processes = "a minires process" if len(ours) == 1 else f"{len(ours)} minires processes"
    print(f"\npair {k} of {args.pairs}: {processes}, then a pytorch one "
          f"(median s of {args.repeat} runs, images/s)")
    width = max(len(row[0]) for row in table)
    for label, batch, setting, our_job, their_job in table:
        mine = ours[setting][our_job]
        line = f"  {label:<{width}} batch {batch:>3}: minires {figure(mine, batch)}"
        if theirs is not None:
            line += (f", pytorch {figure(theirs[their_job], batch)}; "
                     f"minires / pytorch {mine / theirs[their_job]:.2f}")
        print(line)


def figure(seconds, batch):
    return f"{seconds:.3f} s ({batch / seconds:5.1f}/s)"


def summary(table, results):
    """Each figure over the pairs: minires / PyTorch pair by pair, their median, median seconds."""
    with_torch = results[0][1] is not None
    print(f"\nover {len(results)} pair(s): " + ("minires / pytorch pair by pair (< 1: minires faster), "
                                               "their median; " if with_torch else "") + "median s")
    width = max(len(row[0]) for row in table)
    for label, batch, setting, our_job, their_job in table:
        ours = [seconds[setting][our_job] for seconds, _ in results]
        line, timing = f"  {label:<{width}} batch {batch:>3}:", f" minires {np.median(ours):.3f} s"
        if with_torch:
            theirs = [seconds[their_job] for _, seconds in results]
            ratios = [o / t for o, t in zip(ours, theirs)]
            line += "".join(f" {r:5.2f}" for r in ratios) + f"  median {np.median(ratios):.2f};"
            timing += f", pytorch {np.median(theirs):.3f} s"
        print(line + timing)


@contextlib.contextmanager
def busy_processes(count):
    """``count`` Python processes spinning on a core each, for as long as the block
    runs (the block gets their Popen objects)."""
    if count:
        print(f"\nunder load: {count} busy process(es) (python -c 'while True: pass') while the pairs run")
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield busy
    finally:
        for process in busy:
            process.kill()
            process.wait()


def peak_memory(weights, args, use_torch):
    print("\npeak RSS, each configuration in a fresh process of its own (one run)")
    for label, framework, job in MEMORY_CONFIGS:
        if framework == "pytorch" and not use_torch:
            continue
        result = run_measuring(framework, [job], weights, args, repeat=0)
        peak = f"{result['peak_gib']:.2f} GiB" if result else "failed (its error is above)"
        print(f"  {label:<34} {peak}")


def breakdown(model, batch, repeat):
    """Forward + backward time per op of the training step's plan (minires/planner.py),
    by the layer it runs (or the fast op's name: WinogradConv, BatchNormReLU, which
    does a ReLU's work too), timed by wrapping each step's op."""
    totals = collections.Counter()

    def timed(op, name):
        function, kind = getattr(op, name), op_kind(op)

        def run(*args, **kwargs):
            start = time.perf_counter()
            result = function(*args, **kwargs)
            totals[kind] += time.perf_counter() - start
            return result
        setattr(op, name, run)                   # this op object only, until deleted below

    x = images(batch)
    model.backward(np.ones_like(model.forward(x, training=True)), input_grads=False)    # untimed: Numba's kernels load
    ops = [step.op for step in model.plan("gradient").steps]
    for op in ops:
        timed(op, "forward")
        timed(op, "backward")
    try:
        for _ in range(repeat):
            model.backward(np.ones_like(model.forward(x, training=True)), input_grads=False)
    finally:
        for op in ops:
            del op.forward, op.backward
    total = sum(totals.values())
    print(f"\nminires per op, forward + backward at batch {batch} (mean of {repeat})")
    for kind, seconds in totals.most_common():
        print(f"  {kind:<24} {seconds / repeat:7.3f} s  {seconds / total:6.1%}")


def op_kind(op):
    """A plain layer call by its layer's type, any other op by its own."""
    from minires.ops import LayerCall
    return type(op.layer).__name__ if type(op) is LayerCall else type(op).__name__


def kernels(repeat):
    from minires import backend
    from minires.kernels import col2im, im2col
    if not backend.numba_available():
        print("\nNumba is not installed: only the NumPy kernels exist")
        return
    print("\nNumba against NumPy, stage-2 3x3 conv of ResNet-50 at batch 8 (median ms)")
    x = np.random.default_rng(0).standard_normal((8, 58, 58, 64)).astype("float32")
    cols = im2col(x, 3, 3, 1, 1)
    previous = backend.kernel_path()
    for name, run in (("im2col (forward)", lambda: im2col(x, 3, 3, 1, 1)),
                      ("col2im (backward)", lambda: col2im(cols, x.shape, 1, 1))):
        times = {}
        for path in ("numpy", "numba"):             # one path at a time: its data stays warm
            backend.set_kernel_path(path)
            times[path] = median_seconds(run, repeat, synchronize=lambda: None)
        print(f"  {name:<18} numpy {times['numpy'] * 1e3:6.1f}, numba {times['numba'] * 1e3:6.1f}: "
              f"{times['numpy'] / times['numba']:.1f}x")
    backend.set_kernel_path(previous)


def minires_resnet50():
    """The benchmark's weights: seeded, with BN statistics that are not trivial."""
    from minires import set_random_seed
    from minires.applications import ResNet50
    set_random_seed(0)
    model = ResNet50(classifier_activation=None)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if "moving_variance" in layer.params:
            shape = layer.params["moving_variance"].shape
            layer.params["moving_variance"][...] = rng.uniform(0.5, 2, shape)
            layer.params["moving_mean"][...] = rng.normal(0, 0.1, shape)
    return model


def main(argv=None):
    args = parse_args(argv)
    if args.measure:
        return measure_minires(args)
    from minires import backend
    try:
        backend.check_device(args.device)
    except RuntimeError as error:
        sys.exit(f"benchmark: {error}")
    use_torch = not args.no_torch and importlib.util.find_spec("torch") is not None
    environment(args)
    if not args.no_torch and not use_torch:
        print("PyTorch is not installed: minires alone")
    model = minires_resnet50()
    with tempfile.TemporaryDirectory() as folder:
        weights = os.path.join(folder, "resnet50.npz")
        model.save_weights(weights)
        with busy_processes(args.load):
            pairs(args, weights, use_torch)
        if args.device != "cpu":
            print("\n(peak RSS, the per-layer breakdown and Numba kernels are CPU figures: "
                  "run without --device)")
            return
        if args.pairs_only:
            return
        peak_memory(weights, args, use_torch)
    breakdown(model, args.train_batches[0], max(1, args.repeat // 2))
    kernels(args.repeat)


if __name__ == "__main__":
    main()
