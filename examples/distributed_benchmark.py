"""Data-parallel training throughput: one process against ranks of mpiexec.

    python examples/distributed_benchmark.py               # 3 rounds, each configuration
    python examples/distributed_benchmark.py --rounds 5 --steps 40 --batch 128

A ResNet-style net (minires.applications.CifarResNet, three stages of basic
blocks, 16x16 inputs) takes --steps training steps (minires.train.train_step:
what fit runs) at a global batch of --batch, after 3 warm-up steps, in each of

    1 process x 2 threads      the whole batch in one process, BLAS and Numba on 2 cores
    1 process x 1 thread       the same on one core: the base of the scaling
    2 ranks x 1 thread, SyncBN mpiexec -n 2, batch / 2 per rank, gradients averaged
    2 ranks x 1 thread, BN     the same with plain BatchNormalization: what SyncBN costs

each in fresh processes of its own, the configurations taking turns round by
round (drift shows as scatter between rounds). Printed: samples per second
(median over rounds) and, for the ranks, the share of a step spent in
collectives (every allreduce: gradients, SyncBN's statistics and their
gradients; time waiting for the other rank included). Run it on an idle
machine; unset OPENBLAS_CORETYPE if set (it halves NumPy's matrix speed).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CONFIGURATIONS = [("1 process x 2 threads", 1, 2, "sync"), ("1 process x 1 thread", 1, 1, "sync"),
                  ("2 ranks x 1 thread, SyncBN", 2, 1, "sync"),
                  ("2 ranks x 1 thread, BN", 2, 1, "plain")]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64, help="global batch (split over ranks)")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--worker", choices=["sync", "plain"], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def worker(args):
    """One process (or rank) of a configuration: time the steps, print one JSON line on rank 0."""
    from minires import collective, distributed as hvd, set_random_seed
    from minires.applications import CifarResNet
    from minires.losses import SparseCategoricalCrossentropy
    from minires.optim import SGD
    from minires.train import train_step

    hvd.init()
    set_random_seed(0)
    model = CifarResNet(blocks=(1, 1, 1), width=args.width, input_shape=(16, 16, 1), classes=10,
                        classifier_activation=None)
    if args.worker == "sync":
        hvd.convert_sync_batchnorm(model)
    hvd.broadcast_weights(model)
    rng = np.random.default_rng(hvd.rank())
    per_rank = args.batch // hvd.size()
    x = rng.random((per_rank, 16, 16, 1), dtype=np.float32)
    y = rng.integers(0, 10, per_rank)
    optimizer, loss = hvd.DistributedOptimizer(SGD(0.01, momentum=0.9)), \
        SparseCategoricalCrossentropy(from_logits=True)
    seconds_in_collectives = count_collective_time(collective)
    times = []
    for step in range(3 + args.steps):
        if step == 3:
            seconds_in_collectives[0] = 0.0
        start = time.perf_counter()
        train_step(model, x, y, optimizer, loss, {}, 0.01)
        times.append(time.perf_counter() - start)
    step_seconds = sum(times[3:]) / args.steps
    if hvd.rank() == 0:
        print(json.dumps({"samples_per_second": args.batch / step_seconds,
                          "step_ms": 1000 * step_seconds,
                          "collective_share": seconds_in_collectives[0] / sum(times[3:])}))


def count_collective_time(collective):
    """Wrap collective.allreduce_sum to add up the seconds spent in it."""
    total, reduce = [0.0], collective.allreduce_sum

    def timed(array):
        start = time.perf_counter()
        try:
            return reduce(array)
        finally:
            total[0] += time.perf_counter() - start
    collective.allreduce_sum = timed
    return total


def run(configuration, args):
    """The JSON figures of one configuration, in fresh processes."""
    _, ranks, threads, kind = configuration
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": str(threads),
           "OPENBLAS_NUM_THREADS": str(threads), "NUMBA_NUM_THREADS": str(threads)}
    command = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--steps",
               str(args.steps), "--batch", str(args.batch), "--width", str(args.width)]
    if ranks > 1:
        command = [mpiexec(), "-n", str(ranks), *command]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"distributed_benchmark.py: {' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def mpiexec():
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = beside if os.path.exists(beside) else shutil.which("mpiexec")
    if found is None:
        sys.exit("distributed_benchmark.py: no mpiexec; pip install -e '.[mpi]'")
    return found


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    print(f"CifarResNet(blocks=(1, 1, 1), width={args.width}), 16x16x1 inputs, global batch "
          f"{args.batch}, {args.steps} steps after 3 warm-up; OPENBLAS_CORETYPE="
          f"{os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    results = {name: [] for name, *_ in CONFIGURATIONS}
    for round_ in range(args.rounds):
        for configuration in CONFIGURATIONS:
            figures = run(configuration, args)
            results[configuration[0]].append(figures)
            share = f", {figures['collective_share']:.0%} in collectives" \
                if configuration[1] > 1 else ""
            print(f"round {round_ + 1}: {configuration[0]:28s} {figures['samples_per_second']:7.1f} "
                  f"samples/s ({figures['step_ms']:.1f} ms a step{share})", flush=True)
    base = statistics.median(r["samples_per_second"] for r in results["1 process x 2 threads"])
    print("\nmedians over rounds:")
    for name, runs in results.items():
        rate = statistics.median(r["samples_per_second"] for r in runs)
        share = statistics.median(r["collective_share"] for r in runs)
        print(f"  {name:28s} {rate:7.1f} samples/s  {rate / base:5.2f}x one process of 2 threads"
              + (f"  {share:.0%} of a step in collectives" if name.startswith("2") else ""))


if __name__ == "__main__":
    main()
