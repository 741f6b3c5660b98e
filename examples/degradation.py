"""The degradation experiment of the ResNet paper, small: plain against residual.

    python examples/degradation.py --output-dir examples/figures     # the README's run (see --help)
    python examples/degradation.py --quick               # seconds: what the test runs

He et al. (2015, sec. 4.2, fig. 6) train CIFAR-10 networks of 6n+2 weighted
layers twice: "plain" (a stack of 3x3 convs) and "residual" (the same stack
with a shortcut around every pair of convs). The plain nets get WORSE on
their own training data as they get deeper (20 -> 56 layers), the residual
ones better: deeper plain nets are harder to optimise, not overfitted.

Here the two variants differ in the shortcuts and nothing else:

    conv1         3x3 conv, BN, ReLU                              (1 layer)
    3 stages      n blocks each of  3x3 conv, BN, ReLU, 3x3 conv, BN,
                  [+ shortcut,] ReLU; widths w, 2w, 4w; the first
                  block of stages 2 and 3 has stride 2            (6n layers)
    head          global average pool, Dense(10)                  (1 layer)

The shortcuts are the paper's option A: the identity, and where a block
halves the image and doubles the channels, the kept pixels padded with zero
channels (``SubsampleAndPad`` below). They have no weights, so a plain and a
residual net of one depth have the same parameters, and built after the
same ``set_random_seed`` they start from the very same weights. Both train
on the same data in the same order with one recipe, the paper's: SGD
(momentum 0.9, weight decay 1e-4), warmed up at 0.01 until the training error
is below 80% (the paper's warm-up for its deepest net), then the rate, divided
by 10 at 50% and 75% of the iterations; no augmentation (the question is how
well each fits its training data).

The data is scikit-learn's bundled digits (1,797 8x8 images, no download),
upsampled to 16x16, with train_digits.py's seeded 80/20 split (its
load_data). It prints a table (final training loss and error on the whole
training set, test error), says whether deeper plain nets came out worse,
and writes two PNGs:

  degradation_training.png   training error (thin: each batch's error in
        training mode, averaged over one epoch's batches, as the paper's
        curves) and test error (bold, after each epoch) against iterations,
        plain nets left, residual right; the training loss below.
  degradation_gradients.png  ||dL/dW|| of every weighted layer, input to
        output, of the deepest plain and residual nets, on the batch of
        step 0 (at initialisation) and of a later step.

``--json PATH`` also writes every number behind them. The same seed gives
the same numbers.

What the default run showed (seed 0, widths 16/32/64, 20 epochs = 460
iterations, the warm-up below for every net; the README has the table): the
plain nets degrade, each depth fitting its training data worse than the last
(final training error 0.00, 0.00, 0.35, 20.18% at 8, 20, 32, 44 layers), while
every residual net fits it entirely, 44 layers included (0 training errors).
Depth does not improve the residual nets' test error on 360 digits (0.56 to
1.11%): the claim shown is the training-error one. Without the warm-up (0.1
from the first step, 230 iterations) resnet-44 stayed at 19% training error.
The gradients tell a different story from "they do not reach the early layers
of a plain net": with BN, at initialisation the plain-44's gradient norm GROWS
toward the input (its first conv gets ~80x its last conv's), the residual
net's stays within a small factor. The paper says as much (sec. 4.1): with
BN, plain nets' gradients have healthy norms, and their difficulty is not
vanishing gradients.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

from minires.backend import get_array_module
from minires.layers import Layer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)                 # train_digits.py: its data split and save_png
from train_digits import load_data as digits_split, save_png  # noqa: E402

ERROR_FLOOR = 0.05            # % : the curves' log scale shows an error of 0 here
QUICK = dict(depths=[8, 14], width=4, epochs=2, train_size=256, batch_size=32, gradient_step=5)


# --- the two networks -------------------------------------------------------------
class SubsampleAndPad(Layer):
    """The paper's option-A shortcut where a block halves the image and
    doubles the channels: keep every other pixel, append zero channels.

    Shapes: x (N, H, W, C), y (N, H/2, W/2, filters), filters >= C; H, W even.
        y[:, i, j, :C] = x[:, 2i + 1, 2j + 1, :]      y[..., C:] = 0
    Why 2i + 1: the block's 3x3 stride-2 'same' conv pads an even image with
    0 rows before and 1 after (Keras's rule, minires.padding), so its output
    pixel i is centred on input pixel 2i + 1; the shortcut keeps that pixel.
    (PyTorch pads 1 on both sides, centres on 2i, and keeps x[:, ::2, ::2].)

    Backward: y copies some entries of x and adds zeros that depend on
    nothing, so dL/dx is dy's first C channels put back at the kept pixels,
    and 0 at the pixels the shortcut dropped. No weights: nothing to learn.
    """
    input_rank = 4

    def __init__(self, filters, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.filters = filters

    def compute_output_shape(self, input_shape):
        n, height, width, channels = input_shape
        if any(size is not None and size % 2 for size in (height, width)):
            raise ValueError(f"layer {self.name!r}: needs an even height and width, got "
                             f"input shape {tuple(input_shape)}")
        if channels is not None and channels > self.filters:
            raise ValueError(f"layer {self.name!r}: cannot pad {channels} channels to "
                             f"{self.filters}")
        return (n, None if height is None else height // 2,
                None if width is None else width // 2, self.filters)

    def forward(self, x, training=False):
        x = self._prepare(x)
        self.compute_output_shape(x.shape)
        xp = get_array_module(x)
        kept = x[:, 1::2, 1::2, :]
        y = xp.zeros((*kept.shape[:3], self.filters), dtype=x.dtype)
        y[..., :x.shape[-1]] = kept
        return y, x.shape

    def backward(self, dy, x_shape):
        n, height, width, channels = x_shape
        self._check_grad(dy, (n, height // 2, width // 2, self.filters))
        dx = get_array_module(dy).zeros(x_shape, dtype=dy.dtype)
        dx[:, 1::2, 1::2, :] = dy[..., :channels]
        return dx


def conv_bn(x, filters, strides, name):
    """3x3 'same' conv without bias (BN's beta is the bias) -> BN, He's init as the paper."""
    from minires.layers import BatchNormalization, Conv2D
    x = Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
               kernel_initializer="he_normal", name=f"{name}_conv")(x)
    return BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_bn")(x)


def cifar_net(depth, residual, width=16, input_shape=(16, 16, 1), classes=10):
    """The paper's CIFAR network of ``depth`` = 6n + 2 weighted layers, with
    option-A shortcuts (``residual``) or without; widths w, 2w, 4w. Returns logits.
    BN momentum 0.9 (PyTorch's 0.1): the moving statistics follow a short run."""
    from minires.layers import Activation, Add, Dense, GlobalAveragePooling2D, Input
    from minires.models import Model
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n + 2 with n >= 1 (8, 14, 20, 26, 32, 44, 56, ..), "
                         f"got {depth}")
    n = (depth - 2) // 6
    inputs = Input(shape=input_shape, name="images")
    x = Activation("relu", name="conv1_relu")(conv_bn(inputs, width, 1, "conv1"))
    for stage, filters in enumerate((width, 2 * width, 4 * width), start=2):
        for block in range(1, n + 1):
            name = f"conv{stage}_block{block}"
            strides = 2 if stage > 2 and block == 1 else 1
            y = Activation("relu", name=f"{name}_1_relu")(conv_bn(x, filters, strides, f"{name}_1"))
            y = conv_bn(y, filters, 1, f"{name}_2")
            if residual:                         # the one difference between the two nets
                shortcut = x if strides == 1 else SubsampleAndPad(filters, name=f"{name}_0_pad")(x)
                y = Add(name=f"{name}_add")([shortcut, y])
            x = Activation("relu", name=f"{name}_out")(y)
    x = GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = Dense(classes, name="predictions")(x)
    return Model(inputs, outputs, name=f"{'resnet' if residual else 'plain'}-{depth}")


def weighted_layers(model):
    """The convs and the Dense, input to output: the 6n + 2 layers the depth counts."""
    from minires.layers import Conv2D, Dense
    return [layer for layer in model.leaf_layers() if isinstance(layer, (Conv2D, Dense))]


# --- data ----------------------------------------------------------------------------
def load_data(seed, train_size=None):
    """train_digits.py's data: digits upsampled to (N, 16, 16, 1) in [0, 1], its
    seeded 80/20 split; ``train_size`` keeps the first that many training images."""
    x_train, y_train, x_test, y_test = digits_split(seed)
    return x_train[:train_size], y_train[:train_size], x_test, y_test


# --- training, one iteration at a time --------------------------------------------------
# The paper's warm-up (sec. 4.2, for its 110-layer net), here for every net alike:
# 0.01 until the training error is below 80% (the mean of the last WARMUP_WINDOW
# batches'), at most WARMUP_MAX iterations (the paper's ~400), then the full rate.
WARMUP_RATE, WARMUP_ERROR, WARMUP_WINDOW, WARMUP_MAX = 0.01, 0.8, 10, 400


def paper_schedule(learning_rate, iterations):
    """The paper's recipe: the warm-up above, then the rate, divided by 10 at 50% and
    again at 75% of the run. rate(iteration, errors): errors, the batches' so far."""
    warming = [True]

    def rate(iteration, errors):
        recent = errors[-WARMUP_WINDOW:]
        if warming[0] and (iteration >= WARMUP_MAX or (recent and np.mean(recent) < WARMUP_ERROR)):
            warming[0] = False                     # once over, for good
        if warming[0]:
            return WARMUP_RATE
        divisions = (iteration >= iterations // 2) + (iteration >= 3 * iterations // 4)
        return learning_rate * 0.1 ** divisions
    return rate


def gradient_norms(model):
    """||dL/dW||, the Frobenius norm of each weighted layer's kernel gradient,
    input to output (after model.backward, before the optimiser adds weight decay)."""
    return [float(np.sqrt(np.sum(np.square(layer.grads["kernel"], dtype=np.float64))))
            for layer in weighted_layers(model)]


def train(model, data, args, probe_steps):
    """Train with the written-out loop; a record of every iteration's loss and
    error (the batch's, in training mode), the test error after every epoch,
    the per-layer gradient norms at ``probe_steps``, and the final figures."""
    from minires.losses import SoftmaxCrossEntropy
    from minires.optim import SGD
    from minires.train import evaluate
    x_train, y_train, x_test, y_test = data
    batches = int(np.ceil(len(x_train) / args.batch_size))
    rate = paper_schedule(args.learning_rate, args.epochs * batches)
    optimizer = SGD(args.learning_rate, momentum=0.9, weight_decay=1e-4)
    loss = SoftmaxCrossEntropy()
    record = {"loss": [], "error": [], "test_error": [], "test_iteration": [], "gradient_norms": {}}
    iteration = 0
    start = time.perf_counter()
    for epoch in range(args.epochs):
        order = np.random.default_rng([args.seed, epoch]).permutation(len(x_train))
        for b in range(batches):
            index = order[b * args.batch_size:(b + 1) * args.batch_size]
            x, y = x_train[index], y_train[index]
            logits = model.forward(x, training=True)      # BN: this batch's statistics
            value = float(loss.forward(logits, y))
            if not np.isfinite(value):
                raise FloatingPointError(f"{model.name}: the loss became {value} at iteration "
                                         f"{iteration}; lower --learning-rate")
            model.backward(loss.backward())               # every layer's grads
            if iteration in probe_steps:
                record["gradient_norms"][iteration] = gradient_norms(model)
            optimizer.step(model, rate(iteration, record["error"]))    # params -= rate * velocity
            record["loss"].append(value)
            record["error"].append(float(np.mean(np.argmax(logits, axis=1) != y)))
            iteration += 1
        _, accuracy = evaluate(model, x_test, y_test)     # BN: moving statistics
        record["test_error"].append(1.0 - accuracy)
        record["test_iteration"].append(iteration)
    train_loss, train_accuracy = evaluate(model, x_train, y_train)
    record.update(train_loss=train_loss, train_error=1.0 - train_accuracy,
                  test_error_final=record["test_error"][-1], seconds=time.perf_counter() - start,
                  batches_per_epoch=batches)
    return record


# --- what came out ---------------------------------------------------------------------
def table(results):
    """A Markdown table, one row per network. 'train' is the whole training set
    after training, in inference mode (BN's moving statistics), like 'test';
    'last epoch' is the mean over the last epoch's batches as they trained
    (batch statistics), what the curves show; 'all iterations' is the mean
    batch error over the whole run, the area under the curve."""
    rows = ["| network | parameters | train loss | train error | last-epoch loss | last-epoch "
            "error | error, all iterations | test error | time |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        last = slice(-r["batches_per_epoch"], None)
        rows.append(f"| {name} | {r['parameters']:,} | {r['train_loss']:.4f} | "
                    f"{100 * r['train_error']:.2f}% | {np.mean(r['loss'][last]):.4f} | "
                    f"{100 * np.mean(r['error'][last]):.2f}% | {100 * np.mean(r['error']):.2f}% | "
                    f"{100 * r['test_error_final']:.2f}% | {r['seconds']:.0f} s |")
    return "\n".join(rows)


def verdict(results, depths):
    """Whether the deepest plain net fits its training data worse than the
    shallowest, and how the residual nets compare: read off the numbers."""
    low, high = min(depths), max(depths)
    measures = (("final training loss (inference mode)", lambda r: r["train_loss"], "{:.4f}"),
                ("last-epoch training loss (batches)",
                 lambda r: np.mean(r["loss"][-r["batches_per_epoch"]:]), "{:.4f}"),
                ("mean training error over the run",
                 lambda r: 100 * np.mean(r["error"]), "{:.2f}%"))
    lines, worse = [], {}
    for kind in ("plain", "resnet"):
        shallow, deep = results[f"{kind}-{low}"], results[f"{kind}-{high}"]
        for what, value, fmt in measures:
            a, b = value(shallow), value(deep)
            worse[kind, what] = b > a
            change = "HIGHER (worse)" if b > a else "lower (better)" if b < a else "the same"
            lines.append(f"  {kind}-{high} against {kind}-{low}, {what}: "
                         f"{fmt.format(b)} against {fmt.format(a)}: {change}")
    plain_worse = sum(worse["plain", what] for what, _, _ in measures)
    appears = {len(measures): "APPEARS", 0: "does NOT appear"}.get(plain_worse, "appears in part")
    lines.append(f"Degradation {appears} at this scale: the {high}-layer plain net fits its "
                 f"training data worse than the {low}-layer one by {plain_worse} of the "
                 f"{len(measures)} measures above.")
    last_loss = measures[1][1]
    lines.append("Residual against plain at the same depth, last-epoch training loss: " + "; ".join(
        f"{depth} layers {last_loss(results[f'resnet-{depth}']):.4f} against "
        f"{last_loss(results[f'plain-{depth}']):.4f}" for depth in depths) + ".")
    return "\n".join(lines)


def gradient_paragraph(results, depth, steps):
    """One paragraph on the gradient picture, its figures taken from the norms."""
    plain = results[f"plain-{depth}"]["gradient_norms"]
    res = results[f"resnet-{depth}"]["gradient_norms"]
    sentences = []
    for step in steps:
        parts = []
        for name, norms in ((f"plain-{depth}", plain[step]), (f"resnet-{depth}", res[step])):
            convs = norms[:-1]                       # the Dense's scale is its own: left out
            ratio = convs[0] / convs[-1]
            parts.append(f"{name}'s first conv gets {ratio:.3g} times the gradient norm of its "
                         f"last conv (convs span a factor {max(convs) / min(convs):.3g})")
        when = "At initialisation (step 0)" if step == 0 else f"At step {step}"
        sentences.append(f"{when}, {parts[0]}, and {parts[1]}.")
    return " ".join(sentences)


def smooth(values, window):
    """Mean of the last ``window`` values at every point (fewer at the start)."""
    total = np.cumsum(np.concatenate([[0.0], values]))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(0, ends - window)
    return (total[ends] - total[starts]) / (ends - starts)


def plot_training(results, depths, path):
    """Fig. 6 of the paper: error against iterations, plain left, residual right."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    figure, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True, sharey="row")
    colours = dict(zip(sorted(depths), plt.cm.viridis(np.linspace(0.0, 0.85, len(depths)))))
    for column, (kind, title) in enumerate((("plain", "plain"), ("resnet", "residual"))):
        top, bottom = axes[0, column], axes[1, column]
        for depth in sorted(depths):
            r = results[f"{kind}-{depth}"]
            window = r["batches_per_epoch"]
            steps = np.arange(1, len(r["error"]) + 1)
            colour = colours[depth]
            top.plot(steps, np.maximum(100 * smooth(r["error"], window), ERROR_FLOOR), "--",
                     lw=1, color=colour)
            top.plot(r["test_iteration"], np.maximum(100 * np.array(r["test_error"]), ERROR_FLOOR),
                     "-", lw=2.5, color=colour, label=f"{kind}-{depth}")
            bottom.plot(steps, smooth(r["loss"], window), "-", lw=1.2, color=colour,
                        label=f"{kind}-{depth}")
        top.set_title(f"{title}: training error (dashed), test error (bold)")
        bottom.set_title(f"{title}: training loss")
        bottom.set_xlabel("iteration")
        top.legend()
        for axis in (top, bottom):
            axis.grid(alpha=0.3)
    axes[0, 0].set_ylabel(f"error (%, log scale, {ERROR_FLOOR}% for 0)")
    axes[0, 0].set_yscale("log")
    axes[1, 0].set_ylabel("cross-entropy (batches, mean over an epoch)")
    axes[1, 0].set_yscale("log")
    for axis in axes[:, 0]:
        axis.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 5)))
        axis.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        axis.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    figure.suptitle("plain against residual, trained identically on scikit-learn's digits")
    figure.tight_layout()
    save_png(figure, path)
    plt.close(figure)


def plot_gradients(results, names, depth, steps, path):
    """||dL/dW|| per weighted layer of the deepest nets, one panel per probed step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(1, len(steps), figsize=(5.5 * len(steps), 4.2), sharey=True,
                                squeeze=False)
    n = (depth - 2) // 6
    layers = np.arange(1, depth + 1)
    for axis, step in zip(axes[0], steps):
        for kind, style in (("plain", "o-"), ("resnet", "s-")):
            norms = results[f"{kind}-{depth}"]["gradient_norms"][step]
            axis.plot(layers, norms, style, ms=3.5, label=f"{kind}-{depth}")
        for boundary in (1.5, 1.5 + 2 * n, 1.5 + 4 * n, 1.5 + 6 * n):   # conv1 | stages | Dense
            axis.axvline(boundary, color="grey", ls=":", lw=1)
        axis.set_yscale("log")
        axis.set_xlabel(f"weighted layer, input ({names[0]}) to output ({names[-1]})")
        axis.set_title("at initialisation (step 0)" if step == 0 else f"after {step} steps")
        axis.grid(alpha=0.3, which="both")
        axis.legend()
    axes[0, 0].set_ylabel("||dL/dW||  (one batch)")
    figure.suptitle(f"gradient norm per layer, {depth}-layer plain and residual nets "
                    "(same weights at step 0, same batches)")
    figure.tight_layout()
    save_png(figure, path)
    plt.close(figure)


# --- the run ---------------------------------------------------------------------------
def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[8, 20, 32, 44],
                        help="weighted layers, each 6n + 2 (default: 8 20 32 44)")
    parser.add_argument("--width", type=int, default=16,
                        help="filters of the first stage, the paper's 16 (then 32 and 64)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=0.1, help="the paper's 0.1")
    parser.add_argument("--train-size", type=int, default=None,
                        help="train on the first this many of the 1,437 training images")
    parser.add_argument("--gradient-step", type=int, default=20,
                        help="the later step whose gradient norms are plotted (beside step 0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="a tiny run for the test: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    parser.add_argument("--output-dir", default=os.path.join(HERE, "output"),
                        help="where the two PNGs go (default examples/output)")
    parser.add_argument("--json", help="also write every number behind the table and PNGs here")
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    return args


def main(argv=None):
    args = parse_args(argv)
    from minires import set_random_seed
    data = load_data(args.seed, args.train_size)
    batches = int(np.ceil(len(data[0]) / args.batch_size))
    gradient_step = min(args.gradient_step, args.epochs * batches - 1)
    probe_steps = (0, gradient_step)
    deepest = max(args.depths)
    print(f"{len(data[0])} training and {len(data[2])} test images (16x16), widths "
          f"{args.width}/{2 * args.width}/{4 * args.width}, {args.epochs} epochs of {batches} "
          f"iterations, batch {args.batch_size}; one recipe for every net: SGD {WARMUP_RATE} until "
          f"the training error is below {100 * WARMUP_ERROR:.0f}% (at most {WARMUP_MAX} "
          f"iterations), then {args.learning_rate} (/10 at 50% and 75%), momentum 0.9, weight "
          f"decay 1e-4, seed {args.seed}")
    results, names, total = {}, None, time.perf_counter()
    for depth in args.depths:
        for residual in (False, True):
            set_random_seed(args.seed)             # the same initial weights for both variants
            model = cifar_net(depth, residual, args.width)
            record = train(model, data, args, probe_steps)
            record["parameters"] = model.count_params()
            results[model.name] = record
            if depth == deepest:
                names = [layer.name for layer in weighted_layers(model)]
            print(f"  {model.name:>10}: train loss {record['train_loss']:.4f}, train error "
                  f"{100 * record['train_error']:.2f}%, test error "
                  f"{100 * record['test_error_final']:.2f}% ({record['seconds']:.0f} s)", flush=True)
    print()
    print(table(results))
    print()
    print(verdict(results, args.depths))
    print()
    print(gradient_paragraph(results, deepest, probe_steps))
    training_png = os.path.join(args.output_dir, "degradation_training.png")
    gradients_png = os.path.join(args.output_dir, "degradation_gradients.png")
    plot_training(results, args.depths, training_png)
    plot_gradients(results, names, deepest, probe_steps, gradients_png)
    if args.json:
        from minires.io.atomic import atomic_write
        with atomic_write(args.json, suffix=".json") as handle:
            handle.write(json.dumps({"args": vars(args), "layers": names, "networks": results},
                                    indent=1).encode())
    print(f"\ncurves in {training_png}, gradient norms in {gradients_png}; "
          f"{time.perf_counter() - total:.0f} s in all")
    return results


if __name__ == "__main__":
    try:
        main()
    except (ImportError, RuntimeError, ValueError, FloatingPointError) as error:
        sys.exit(f"degradation.py: {' '.join(str(error).split())}")
