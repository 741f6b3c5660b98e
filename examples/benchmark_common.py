"""What benchmark.py's two kinds of measuring process share, the minires one
(benchmark.py --measure) and the PyTorch one (torch_benchmark.py): the images,
the clock, peak memory and the one JSON line each sends back.

It imports only NumPy, so that the PyTorch process stays free of minires.
A job names an operation and a batch size, "train:32": each process knows
its own operations (minires: predict, fast, train; PyTorch: infer, train).
"""
import json
import time

import numpy as np


def images(batch):
    """The same ImageNet-sized float32 batch (N, 224, 224, 3) in every process."""
    return np.random.default_rng(batch).standard_normal((batch, 224, 224, 3)).astype("float32")


def labels(batch):
    return np.arange(batch) % 1000


def parse_job(job):
    """'train:32' -> ('train', 32)."""
    op, _, batch = job.partition(":")
    if not batch.isdigit() or int(batch) < 1:
        raise SystemExit(f"benchmark: a job is OPERATION:BATCH, e.g. train:32; got {job!r}")
    return op, int(batch)


def median_seconds(run, repeat, synchronize):
    """Median seconds of ``repeat`` runs of ``run`` after one untimed warm-up run
    (JIT compilation, first allocations); None when ``repeat`` is 0, for a
    process that only measures memory. ``synchronize`` waits for a GPU."""
    run()
    synchronize()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) if times else None


def measure(jobs, make_run, repeat, synchronize, **extra):
    """Time each job in turn (``make_run(op, batch)`` gives its function, built
    only when its turn comes, so that a one-job process holds only that job's
    memory) and print the one JSON line the benchmark reads: seconds per job,
    this process's peak RSS, and ``extra`` (logits, versions)."""
    seconds = {job: median_seconds(make_run(*parse_job(job)), repeat, synchronize) for job in jobs}
    print(json.dumps({"seconds": seconds, "peak_gib": peak_rss_bytes() / 2 ** 30, **extra}), flush=True)


def peak_rss_bytes():
    """This process's peak resident memory. VmHWM, not getrusage's ru_maxrss,
    which a child started by a large parent inherits from it."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("peak RSS needs Linux's /proc/self/status")
