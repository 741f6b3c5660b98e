"""The PyTorch side of examples/benchmark.py: Keras's ResNet-50 in PyTorch, out of the box.

    python examples/torch_benchmark.py --weights W.npz --jobs infer:1 infer:32 train:32 --repeat 5

W.npz is a minires checkpoint (``model.save_weights``: keys <layer>/<param>,
Keras's layouts), read here with NumPy alone and allow_pickle=False. Each job
(infer:BATCH, train:BATCH) runs once untimed, then ``--repeat`` times; one JSON
line comes out: median seconds per job, peak RSS, PyTorch's version and, with
``--logits``, the logits of the two agreement images.

This process imports NumPy and PyTorch only (benchmark_common imports only
NumPy): nothing of minires, none of its speed settings (no mallopt, no
OMP_WAIT_POLICY). It runs with the environment the user gave, channels_last,
torch.set_num_threads(--threads), inference under torch.inference_mode().
"""
import argparse

import numpy as np
import torch
from torch import nn

from benchmark_common import images, labels, measure

STAGES = ((2, 3, 1), (3, 4, 2), (4, 6, 2), (5, 3, 2))     # (stage, blocks, first block's stride)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", required=True, help="a minires .npz checkpoint of ResNet-50")
    parser.add_argument("--jobs", nargs="+", default=[], help="infer:BATCH or train:BATCH")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per job (median)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--logits", action="store_true", help="also report the agreement logits")
    return parser.parse_args(argv)


# --- Keras's ResNet-50, holding a minires checkpoint's weights ----------------------
def keras_resnet50(weights):
    """Keras's ResNet-50: the stride on each stage's first 1x1 conv, conv biases, BN eps 1.001e-5."""
    blocks = [Bottleneck(weights, f"conv{stage}_block{b}", stride if b == 1 else 1, projection=b == 1)
              for stage, count, stride in STAGES for b in range(1, count + 1)]
    net = nn.Sequential(nn.ZeroPad2d(3), conv(weights, "conv1_conv", stride=2),
                        batch_norm(weights, "conv1_bn"), nn.ReLU(), nn.ZeroPad2d(1), nn.MaxPool2d(3, 2),
                        *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), dense(weights, "predictions"))
    return net.to(memory_format=torch.channels_last)


class Bottleneck(nn.Module):
    """1x1, 3x3, 1x1 convs with BN (ReLU after the first two), plus the shortcut
    (a strided 1x1 conv and BN in a stage's first block), then ReLU."""

    def __init__(self, weights, prefix, stride, projection):
        super().__init__()
        self.main = nn.Sequential(
            conv(weights, f"{prefix}_1_conv", stride), batch_norm(weights, f"{prefix}_1_bn"), nn.ReLU(),
            conv(weights, f"{prefix}_2_conv", padding=1), batch_norm(weights, f"{prefix}_2_bn"),
            nn.ReLU(), conv(weights, f"{prefix}_3_conv"), batch_norm(weights, f"{prefix}_3_bn"))
        self.shortcut = (nn.Sequential(conv(weights, f"{prefix}_0_conv", stride),
                                       batch_norm(weights, f"{prefix}_0_bn"))
                         if projection else nn.Identity())

    def forward(self, x):
        return torch.relu(self.main(x) + self.shortcut(x))


def conv(weights, name, stride=1, padding=0):
    kernel = weights[f"{name}/kernel"]                       # Keras's (kh, kw, in, out)
    layer = nn.Conv2d(kernel.shape[2], kernel.shape[3], kernel.shape[:2], stride=stride, padding=padding)
    load(layer.weight, kernel.transpose(3, 2, 0, 1))          # PyTorch's (out, in, kh, kw)
    load(layer.bias, weights[f"{name}/bias"])
    return layer


def batch_norm(weights, name):
    layer = nn.BatchNorm2d(weights[f"{name}/gamma"].shape[0], eps=1.001e-5)    # Keras's eps
    for ours, theirs in (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
                         ("moving_variance", "running_var")):
        load(getattr(layer, theirs), weights[f"{name}/{ours}"])
    return layer


def dense(weights, name):
    kernel = weights[f"{name}/kernel"]                       # Keras's (in, out)
    layer = nn.Linear(*kernel.shape)
    load(layer.weight, kernel.T)
    load(layer.bias, weights[f"{name}/bias"])
    return layer


def load(tensor, array):
    with torch.no_grad():
        tensor.copy_(torch.from_numpy(np.ascontiguousarray(array)))


# --- the jobs ----------------------------------------------------------------------------
def as_input(x, device):
    """NHWC NumPy images as the NCHW tensor PyTorch takes, stored channels_last."""
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device, memory_format=torch.channels_last)


def make_run(net, op, batch, device):
    x = as_input(images(batch), device)
    if op == "infer":
        return lambda: infer(net, x)
    if op == "train":
        y = torch.from_numpy(labels(batch)).to(device)
        optimizer = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9)
        return lambda: train_step(net, optimizer, x, y)
    raise SystemExit(f"torch_benchmark: unknown operation {op!r}; use infer:BATCH or train:BATCH")


def infer(net, x):
    with torch.inference_mode():
        return net.eval()(x)


def train_step(net, optimizer, x, y):
    """Forward, loss, backward, SGD with momentum: the step minires times."""
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(net.train()(x), y).backward()
    optimizer.step()


def about(threads, device):
    """Which PyTorch ran, on what: printed beside the figures."""
    if device == "cuda":
        return f"torch {torch.__version__} on {torch.cuda.get_device_name()}"
    return (f"torch {torch.__version__}, CPU kernels {torch.backends.cpu.get_cpu_capability()}, "
            f"{threads} threads")


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("benchmark: this PyTorch has no CUDA device (torch.cuda.is_available() "
                             "is False); use --no-torch")
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False   # true fp32
    with np.load(args.weights, allow_pickle=False) as checkpoint:
        net = keras_resnet50(checkpoint).to(args.device)
    extra = {"about": about(args.threads, args.device)}
    if args.logits:        # before any training step changes the weights
        extra["logits"] = infer(net, as_input(images(2), args.device)).cpu().numpy().tolist()
    synchronize = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    measure(args.jobs, lambda op, batch: make_run(net, op, batch, args.device), args.repeat,
            synchronize, **extra)


if __name__ == "__main__":
    main()
