"""Time ResNet-50 in minires (and in PyTorch, where installed, with the same weights).

    python examples/benchmark.py                   # everything, medians of 5 runs
    python examples/benchmark.py --repeat 9 --batches 1 32
    env -u OPENBLAS_CORETYPE python examples/benchmark.py   # let OpenBLAS pick AVX-512
    python examples/benchmark.py --device cuda     # CuPy against PyTorch CUDA

Prints: which BLAS and kernel path NumPy/minires use; inference at each batch
size (plain Model.predict and the InferenceModel fast path) with images/s;
a training step (forward, backward, SGD update); a per-layer-type breakdown;
Numba against NumPy for conv backward's col2im; peak memory (RSS) of each
configuration measured in a fresh subprocess. PyTorch runs alternately with
minires in the same loop, same thread count, channels_last, so both see the
same machine state; the ratio minires / PyTorch is printed (< 1: minires faster).
PyTorch runs in a worker process of its own, started with the environment
this script was given: minires's OMP_WAIT_POLICY=PASSIVE for Numba's
threads, which costs PyTorch up to 2x at batch 1, does not reach it. The
worker does apply minires's other speed setting, glibc keeping freed memory
(backend.apply_speed_settings, see README), which makes PyTorch faster as well.

With ``--device cuda`` minires runs on CuPy arrays and PyTorch on CUDA in
fp32 (cuDNN, TF32 off, as minires computes in true float32); every timed run
ends by waiting for the GPU. The per-layer breakdown, the Numba kernels and
the RSS figures are about the CPU and are left out.
"""
import argparse
import collections
import importlib.util
import json
import os
import subprocess
import sys
import time

import numpy as np

# The environment as given, for PyTorch's processes: main() adds minires's
# OMP_WAIT_POLICY to this process's environment, not to theirs.
GIVEN_ENVIRONMENT = dict(os.environ)
HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--train-batches", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per figure (median)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--rss", help=argparse.SUPPRESS)       # internal: one config, print RSS
    parser.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)   # internal
    return parser.parse_args(argv)


def alternate(timers, repeat, settle=0.5):
    """Median seconds of each timer (a function that runs once and returns its
    seconds), run in turns so that drift hits all alike. Before each run a
    pause of ``settle`` seconds: BLAS and OpenMP threads spin for up to a few
    tenths of a second after their last job before they sleep, and spinning
    threads of the previous run would take the cores from the next one."""
    for timer in timers.values():
        timer()
    times = collections.defaultdict(list)
    for _ in range(repeat):
        for name, timer in timers.items():
            time.sleep(settle)
            times[name].append(timer())
    return {name: float(np.median(t)) for name, t in times.items()}


def clock(function, device):
    """A timer for ``alternate`` that runs ``function`` here, on ``device``."""
    def timer():
        start = time.perf_counter()
        function()
        synchronize(device)
        return time.perf_counter() - start
    return timer


def synchronize(device):
    """Wait for the GPU: CuPy only queues work, and a timer must see it done."""
    if device == "cuda":
        import cupy
        cupy.cuda.Device().synchronize()


# --- the two implementations -------------------------------------------------------
def minires_resnet50():
    from minires import set_random_seed
    from minires.applications import ResNet50
    set_random_seed(0)
    model = ResNet50(classifier_activation=None)
    rng = np.random.default_rng(0)
    for layer in model.layers:                     # BN statistics that are not trivial
        if "moving_variance" in layer.params:
            layer.params["moving_variance"][...] = rng.uniform(0.5, 2, layer.params["moving_variance"].shape)
            layer.params["moving_mean"][...] = rng.normal(0, 0.1, layer.params["moving_mean"].shape)
    return model


def torch_resnet50(model):
    """The Keras ResNet-50 (stride on the first 1x1 conv, conv biases, eps
    1.001e-5) in PyTorch, holding minires's weights."""
    import torch
    from torch import nn

    def conv(name):
        layer = model.get_layer(name)
        kh, kw, cin, cout = layer.params["kernel"].shape
        c = nn.Conv2d(cin, cout, (kh, kw), stride=layer.strides, padding=(kh // 2) if layer.padding == "same" else 0)
        c.weight.data = torch.from_numpy(np.ascontiguousarray(layer.params["kernel"].transpose(3, 2, 0, 1)))
        c.bias.data = torch.from_numpy(layer.params["bias"].copy())
        return c

    def bn(name):
        p = model.get_layer(name).params
        b = nn.BatchNorm2d(p["gamma"].shape[0], eps=1.001e-5)
        for ours, theirs in (("gamma", "weight"), ("beta", "bias")):
            getattr(b, theirs).data = torch.from_numpy(p[ours].copy())
        b.running_mean.data, b.running_var.data = (torch.from_numpy(p["moving_mean"].copy()),
                                                   torch.from_numpy(p["moving_variance"].copy()))
        return b

    class Block(nn.Module):
        def __init__(self, prefix, projection):
            super().__init__()
            self.main = nn.Sequential(conv(f"{prefix}_1_conv"), bn(f"{prefix}_1_bn"), nn.ReLU(),
                                      conv(f"{prefix}_2_conv"), bn(f"{prefix}_2_bn"), nn.ReLU(),
                                      conv(f"{prefix}_3_conv"), bn(f"{prefix}_3_bn"))
            self.shortcut = (nn.Sequential(conv(f"{prefix}_0_conv"), bn(f"{prefix}_0_bn"))
                             if projection else nn.Identity())

        def forward(self, x):
            return torch.relu(self.main(x) + self.shortcut(x))

    blocks = [Block(f"conv{s}_block{b}", b == 1) for s, n in zip(range(2, 6), (3, 4, 6, 3))
              for b in range(1, n + 1)]
    dense = model.get_layer("predictions")
    fc = nn.Linear(*dense.params["kernel"].shape)
    fc.weight.data = torch.from_numpy(np.ascontiguousarray(dense.params["kernel"].T))
    fc.bias.data = torch.from_numpy(dense.params["bias"].copy())
    net = nn.Sequential(nn.ZeroPad2d(3), conv("conv1_conv"), bn("conv1_bn"), nn.ReLU(),
                        nn.ZeroPad2d(1), nn.MaxPool2d(3, 2), *blocks,
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc)
    return net.to(memory_format=torch.channels_last)


class TorchWorker:
    """PyTorch in a process of its own (see the module docstring), driven one
    JSON line at a time: each request runs once and answers with its seconds."""

    def __init__(self, threads, device):
        self.process = subprocess.Popen([sys.executable, __file__, "--torch-worker", "--threads",
                                         str(threads), "--device", device], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env=GIVEN_ENVIRONMENT, text=True)
        self.request("ready")

    def request(self, op, batch=0):
        self.process.stdin.write(json.dumps({"op": op, "batch": batch}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            sys.exit("benchmark: the PyTorch worker process stopped (its error is above); "
                     "--no-torch runs minires alone")
        return json.loads(line)

    def timed(self, op, batch):
        return lambda: self.request(op, batch)["seconds"]

    def close(self):
        self.process.stdin.close()
        self.process.wait()


def torch_worker(threads, device):
    """The worker's side: the same weights as minires_resnet50(), then requests."""
    import torch
    torch.set_num_threads(threads)
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("benchmark: this PyTorch has no CUDA device (torch.cuda.is_available() is False); "
                 "use --no-torch")
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False   # true fp32
    net = torch_resnet50(minires_resnet50()).to(device)
    inputs, optimizer = {}, torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9)
    for line in sys.stdin:
        request = json.loads(line)
        op, batch = request["op"], request["batch"]
        if batch not in inputs:
            inputs[batch] = torch_images(batch).to(device)
        start = time.perf_counter()
        if op == "infer":
            _torch_inference(net, inputs[batch])
        elif op == "train":
            torch_train_step(net.train(), optimizer, inputs[batch], torch.arange(batch, device=device) % 1000)
        elif op == "logits":
            with torch.no_grad():
                logits = net.eval()(torch.from_numpy(images(2).transpose(0, 3, 1, 2).copy()).to(device))
            print(json.dumps({"logits": logits.cpu().numpy().tolist()}), flush=True)
            continue
        if device == "cuda":
            torch.cuda.synchronize()
        print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)


def torch_images(batch):
    import torch
    return torch.from_numpy(images(batch).transpose(0, 3, 1, 2).copy()).to(memory_format=torch.channels_last)


def images(batch):
    return np.random.default_rng(batch).standard_normal((batch, 224, 224, 3)).astype("float32")


def minires_train_step(model, optimizer, loss, x, y):
    logits = model.forward(x, training=True)
    loss.forward(logits, y)
    model.backward(loss.backward())
    optimizer.step(model)


def torch_train_step(net, optimizer, x, y):
    import torch
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(net(x), y).backward()
    optimizer.step()


# --- sections ------------------------------------------------------------------------
def environment(threads, device):
    from minires import backend
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, {os.cpu_count()} cores, "
          f"{threads} threads, kernel path: {backend.kernel_path()}")
    if device == "cuda":
        import cupy
        name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
        print(f"  device: {name.decode() if isinstance(name, bytes) else name}, cupy {cupy.__version__}")
    try:
        from threadpoolctl import threadpool_info
        for pool in threadpool_info():
            print(f"  BLAS: {pool.get('internal_api')} {pool.get('version')}, kernels for "
                  f"{pool.get('architecture')}, {pool.get('num_threads')} threads")
    except ImportError:
        print("  BLAS: (pip install threadpoolctl to see which kernels OpenBLAS picked)")
    print(f"  OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")


def agreement(model, worker, device):
    """The two networks hold the same weights: their logits must agree."""
    from minires.backend import to_device
    ours = to_device(model.predict(to_device(images(2), device), verbose=0), "cpu")
    theirs = np.array(worker.request("logits")["logits"])
    print(f"  same weights: max |logit difference| / max |logit| = "
          f"{np.abs(ours - theirs).max() / np.abs(theirs).max():.1e}")


def inference(model, worker, batches, repeat, device):
    from minires.backend import to_device
    from minires.inference import InferenceModel
    fast = InferenceModel(model)
    print("\ninference (median s per batch, images/s)")
    for batch in batches:
        x = to_device(images(batch), device)
        chunk = 4 if device == "cpu" else batch           # CPU: cache-sized chunks (InferenceModel.predict)
        runs = {"minires": clock(lambda: model.predict(x, batch_size=batch, verbose=0), device),
                "minires fast": clock(lambda: fast.predict(x, batch_size=chunk), device)}
        if worker is not None:
            runs["pytorch"] = worker.timed("infer", batch)
        times = alternate(runs, repeat)
        line = ", ".join(f"{k} {t:.3f} s ({batch / t:.1f}/s)" for k, t in times.items())
        ratio = f"; fast / pytorch = {times['minires fast'] / times['pytorch']:.2f}" if worker else ""
        print(f"  batch {batch:>3}: {line}{ratio}")


def _torch_inference(net, tx):
    import torch
    with torch.no_grad():
        net.eval()(tx)


def training(model, worker, batches, repeat, device):
    from minires.backend import to_device
    from minires.losses import SoftmaxCrossEntropy
    from minires.optim import SGD
    print("\ntraining step: forward, backward, SGD update (median s)")
    for batch in batches:
        x, y = to_device(images(batch), device), to_device(np.arange(batch) % 1000, device)
        optimizer, loss = SGD(1e-4, momentum=0.9), SoftmaxCrossEntropy()
        runs = {"minires": clock(lambda: minires_train_step(model, optimizer, loss, x, y), device)}
        if worker is not None:
            runs["pytorch"] = worker.timed("train", batch)
        times = alternate(runs, repeat)
        ratio = f"; minires / pytorch = {times['minires'] / times['pytorch']:.2f}" if worker else ""
        print(f"  batch {batch:>3}: " + ", ".join(f"{k} {t:.3f} s" for k, t in times.items()) + ratio)


def breakdown(model, batch, repeat):
    """Forward + backward time per layer type, by wrapping each layer's methods."""
    totals = collections.Counter()

    def timed(function, kind):
        def run(*args, **kwargs):
            start = time.perf_counter()
            result = function(*args, **kwargs)
            totals[kind] += time.perf_counter() - start
            return result
        return run

    layers = [layer for layer in model.layers if hasattr(layer, "backward")]
    saved = [(layer, layer.forward, layer.backward) for layer in layers]
    for layer in layers:
        layer.forward = timed(layer.forward, type(layer).__name__)
        layer.backward = timed(layer.backward, type(layer).__name__)
    x = images(batch)
    try:
        for _ in range(repeat):
            model.backward(np.ones_like(model.forward(x, training=True)))
    finally:
        for layer, forward, backward in saved:
            layer.forward, layer.backward = forward, backward
    total = sum(totals.values())
    print(f"\nper layer type, forward + backward at batch {batch} (mean of {repeat})")
    for kind, seconds in totals.most_common():
        print(f"  {kind:<24} {seconds / repeat:7.3f} s  {seconds / total:6.1%}")


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
            times[path] = alternate({path: clock(run, "cpu")}, repeat, settle=0)[path]
        print(f"  {name:<18} numpy {times['numpy'] * 1e3:6.1f}, numba {times['numba'] * 1e3:6.1f}: "
              f"{times['numpy'] / times['numba']:.1f}x")
    backend.set_kernel_path(previous)


def peak_memory(use_torch):
    print("\npeak RSS, each in a fresh process")
    configs = [("minires fast inference, batch 64", "infer-fast 64"),
               ("minires training step, batch 32", "train 32")]
    if use_torch:
        configs += [("pytorch inference, batch 64", "torch-infer 64"),
                     ("pytorch training step, batch 32", "torch-train 32")]
    for label, config in configs:
        env = GIVEN_ENVIRONMENT if config.startswith("torch") else None   # as the timings
        result = subprocess.run([sys.executable, __file__, "--rss", config], capture_output=True,
                                text=True, env=env)
        if result.returncode != 0:
            print(f"  {label}: failed: {result.stderr.strip().splitlines()[-1]}")
            continue
        print(f"  {label:<34} {json.loads(result.stdout)['peak_gib']:.2f} GiB")


def measure_rss(config):
    kind, batch = config.split()
    batch = int(batch)
    model = minires_resnet50()
    if kind == "infer-fast":
        from minires.inference import InferenceModel
        InferenceModel(model).predict(images(batch), batch_size=batch)
    elif kind == "train":
        from minires.losses import SoftmaxCrossEntropy
        from minires.optim import SGD
        minires_train_step(model, SGD(1e-4, momentum=0.9), SoftmaxCrossEntropy(), images(batch),
                           np.arange(batch) % 1000)
    else:
        import torch
        net = torch_resnet50(model)
        tx = torch.from_numpy(images(batch).transpose(0, 3, 1, 2).copy()).to(memory_format=torch.channels_last)
        del model
        if kind == "torch-infer":
            _torch_inference(net, tx)
        else:
            torch_train_step(net.train(), torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9),
                             tx, torch.arange(batch) % 1000)
    print(json.dumps({"peak_gib": peak_rss_bytes() / 2 ** 30}))


def peak_rss_bytes():
    """This process's peak resident memory. VmHWM, not getrusage's ru_maxrss,
    which a child started by a large parent inherits from it."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("peak RSS needs Linux's /proc/self/status")


def main(argv=None):
    args = parse_args(argv)
    from minires import backend
    for_torch = args.torch_worker or (args.rss or "").startswith("torch")
    backend.apply_speed_settings(passive_openmp=not for_torch)    # see the docstring
    if args.rss:
        return measure_rss(args.rss)
    if args.torch_worker:
        return torch_worker(args.threads, args.device)
    try:
        backend.check_device(args.device)
    except RuntimeError as error:
        sys.exit(f"benchmark: {error}")
    worker = None
    if not args.no_torch:
        if importlib.util.find_spec("torch") is None:
            print("PyTorch is not installed: minires alone")
        else:
            worker = TorchWorker(args.threads, args.device)
    model = minires_resnet50().to(args.device)
    try:
        environment(args.threads, args.device)
        if worker is not None:
            agreement(model, worker, args.device)
        inference(model, worker, args.batches, args.repeat, args.device)
        training(model, worker, args.train_batches, args.repeat, args.device)
    finally:
        if worker is not None:
            worker.close()
    if args.device != "cpu":
        print("\n(the per-layer breakdown, Numba kernels and peak RSS are CPU figures: run without --device)")
        return
    breakdown(model, max(args.train_batches[0], 1), max(1, args.repeat // 2))
    kernels(args.repeat)
    peak_memory(worker is not None)


if __name__ == "__main__":
    main()
