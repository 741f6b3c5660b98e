"""Train a small ResNet on handwritten digits, from scratch, in NumPy.

    python examples/train_digits.py                 # about half a minute on 2 CPU cores
    python examples/train_digits.py --device cuda   # the same on a GPU, through CuPy
    mpiexec -n 2 python examples/train_digits.py --distributed   # 2 processes, one model

--distributed trains data-parallel over MPI (minires.distributed, Horovod's
API; pip install -e '.[mpi]' gives mpiexec): each rank takes every R-th
training image and batch_size / R of each batch, its BatchNormalization
layers made SyncBatchNormalization, and the gradients are averaged over the
ranks, so R processes train the model one process trains on the whole batch.
Only rank 0 prints, plots and writes the checkpoint; the ranks on one
machine split its cores (minires.distributed.init).

The data is scikit-learn's bundled digits set (1,797 8x8 grayscale images,
no download), upsampled to 16x16 so that three stages of basic residual
blocks (16x16, 8x8, 4x4) have room to work. A seeded 80/20 split keeps 360
images for testing. The loss and accuracy curves are written as a PNG.

Watch the test curve lag the training curve in the first epochs: the test
runs BatchNormalization with its moving statistics, which follow the batch
statistics slowly (Keras's momentum 0.99: 45 steps per epoch here, so a few
epochs pass before they settle).
"""
import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=0.05,
                        help="SGD's initial rate, decayed along a cosine to 0")
    parser.add_argument("--width", type=int, default=16, help="filters of the first stage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--distributed", action="store_true",
                        help="data-parallel over the ranks of mpiexec (minires.distributed)")
    parser.add_argument("--checkpoint", help="save an .npz checkpoint here after every epoch")
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    parser.add_argument("--plot", default=os.path.join(HERE, "output", "train_digits.png"),
                        help="where to write the loss and accuracy curves (PNG)")
    return parser.parse_args(argv)


def load_data(seed):
    """(x_train, y_train, x_test, y_test): images (N, 16, 16, 1) in [0, 1]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("train_digits.py needs scikit-learn for its bundled digits: "
                          "pip install -e '.[examples]'") from None
    digits = load_digits()
    images = np.kron(digits.images / 16.0, np.ones((2, 2)))[..., None].astype("float32")
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(images))
    split = int(0.8 * len(images))
    train, test = order[:split], order[split:]
    return images[train], labels[train], images[test], labels[test]


def plot(history, path):
    """Two panels: the loss and the accuracy per epoch, training and test."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = np.arange(1, len(history["loss"]) + 1)
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for axis, key, title in ((left, "loss", "cross-entropy loss"), (right, "accuracy", "accuracy")):
        axis.plot(epochs, history[key], "o-", label="training")
        axis.plot(epochs, history[f"val_{key}"], "s-", label="test")
        axis.set_xlabel("epoch")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend()
    left.set_yscale("log")
    figure.suptitle("minires CifarResNet on scikit-learn's digits")
    figure.tight_layout()
    save_png(figure, path)
    plt.close(figure)


def save_png(figure, path):
    """Write a matplotlib figure atomically: a PNG is never left half-written."""
    from minires.io.atomic import atomic_write
    with atomic_write(path, suffix=".png") as handle:
        figure.savefig(handle, format="png", dpi=100)


def main(argv=None):
    args = parse_args(argv)
    from minires import backend, set_random_seed
    from minires import distributed as hvd
    from minires.applications import CifarResNet
    from minires.optim import SGD, CosineDecay
    from minires.train import evaluate, fit

    backend.check_device(args.device)
    x_train, y_train, x_test, y_test = load_data(args.seed)
    set_random_seed(args.seed)
    model = CifarResNet(blocks=(1, 1, 1), width=args.width, input_shape=(16, 16, 1), classes=10,
                        classifier_activation=None, name="digits_resnet").to(args.device)
    optimizer = SGD(args.learning_rate, momentum=0.9, weight_decay=5e-4)
    batch_size, callbacks = args.batch_size, []
    if args.distributed:
        model, optimizer, x_train, y_train, callbacks = distribute(model, optimizer, x_train, y_train)
        batch_size = max(1, args.batch_size // hvd.size())
    leads = hvd.rank() == 0                           # alone, or rank 0 of a distributed run
    if leads:
        print(f"{model.name}: {model.count_params():,} parameters; {len(x_train) * hvd.size()} "
              f"training and {len(x_test)} test images; {hvd.size()} rank(s) of {batch_size} "
              "images per batch")
    start = time.perf_counter()
    history = fit(model, x_train, y_train, epochs=args.epochs, batch_size=batch_size,
                  optimizer=optimizer, schedule=CosineDecay(args.learning_rate, args.epochs),
                  validation_data=(x_test, y_test), seed=args.seed, callbacks=callbacks,
                  checkpoint=args.checkpoint, resume=args.resume)
    elapsed = time.perf_counter() - start
    _, accuracy = evaluate(model, x_test, y_test)
    if leads:
        plot(history, args.plot)
        print(f"test accuracy {accuracy:.2%} after {args.epochs} epochs, {elapsed:.1f} s on "
              f"{args.device}, {hvd.size()} rank(s); curves in {args.plot}")


def distribute(model, optimizer, x_train, y_train):
    """What --distributed changes: this rank's share of the data, SyncBN, the
    averaging optimizer, one starting model and averaged logs for every rank."""
    from minires import distributed as hvd
    hvd.init()
    x_train, y_train = hvd.shard(x_train, y_train)
    callbacks = [hvd.callbacks.BroadcastGlobalVariablesCallback(0),
                 hvd.callbacks.MetricAverageCallback()]
    return (hvd.convert_sync_batchnorm(model), hvd.DistributedOptimizer(optimizer), x_train,
            y_train, callbacks)


if __name__ == "__main__":
    try:
        main()
    except (ImportError, RuntimeError, ValueError, FloatingPointError) as error:
        sys.exit(f"train_digits.py: {' '.join(str(error).split())}")
