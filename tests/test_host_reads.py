"""A training step on a GPU waits for it a few times, whatever the depth.

On CuPy, every value read on the host (bool(), float(), int(), .item(),
.tolist(), a copy to NumPy) waits for the GPU to finish all the work queued
before it. A finiteness check per gradient, per update and per BN statistic
made a ResNet-50 step wait about 800 times. Without a GPU here, minires runs
on a stand-in CuPy (tests/stand_in_cupy.py) that counts those reads: the small
ResNet below read 88 to 90 times a step before they were gathered.
"""
import numpy as np
import pytest

import kernel_emulation
from minires import backend, metrics, train
from minires.blocks import bottleneck_block
from minires.kernels import cupy_kernels
from minires.layers import BatchNormalization, Conv2D, Dense, GlobalAveragePooling2D, Input, ReLU
from minires.losses import SoftmaxCrossEntropy, SparseCategoricalCrossentropy
from minires.models import Model
from minires.optim import SGD, Adam
from minires.regularizers import L2
from stand_in_cupy import OnDevice, StandInCupy

needs_compiler = pytest.mark.skipif(kernel_emulation.compiler() is None,
                                    reason="no C++ compiler (c++, g++ or clang++) on PATH")


@pytest.fixture(scope="module")
def emulation(tmp_path_factory):
    return kernel_emulation.build(tmp_path_factory.mktemp("cuda_kernels_on_cpu"))


@pytest.fixture
def gpu(monkeypatch, emulation):
    """minires on the stand-in CuPy: OnDevice arrays are CuPy's, the CUDA kernels run as C++."""
    cupy = StandInCupy()
    monkeypatch.setattr(backend, "_cupy", lambda: cupy)
    monkeypatch.setattr(cupy_kernels, "_kernel", emulation.kernel)
    OnDevice.reads = 0


def small_resnet():
    """A stem, two bottleneck blocks (BN everywhere), the head: 34 weights, 16 BN statistics."""
    inputs = Input(shape=(8, 8, 3))
    x = ReLU()(BatchNormalization()(Conv2D(4, 3, padding="same")(inputs)))
    x = bottleneck_block(x, 3, (2, 2, 8), strides=1, projection=True, name="block1")
    x = bottleneck_block(x, 3, (2, 2, 8), strides=1, projection=False, name="block2")
    model = Model(inputs, Dense(5)(GlobalAveragePooling2D()(x)))
    for layer, name in model.parameters(trainable_only=False):
        layer.params[name] = StandInCupy.asarray(layer.params[name])
    assert model.device == "cuda"
    return model


def reads_per_step(model, optimizer, loss, metric_list, steps=2):
    rng = np.random.default_rng(0)
    counts = []
    for _ in range(steps):
        x, y = rng.standard_normal((4, 8, 8, 3)).astype("float32"), rng.integers(0, 5, 4)
        before = OnDevice.reads
        logs = train.train_step(model, x, y, optimizer, loss, metrics.get(metric_list), 0.01)
        counts.append(OnDevice.reads - before)
    assert np.isfinite(logs["loss"])
    return counts


@needs_compiler
@pytest.mark.parametrize("loss", [SoftmaxCrossEntropy(refuse_probabilities=True),
                                  SparseCategoricalCrossentropy(from_logits=True)])
def test_a_training_step_reads_the_device_once_whatever_the_depth(gpu, loss):
    """The loss's checks of its inputs, the loss, every BN statistic's finiteness,
    the metric, every gradient's and update's finiteness: one read, at the end
    (it was 88-90 reads: one per array checked)."""
    model = small_resnet()
    assert len(list(model.parameters())) == 34 and len(train.state_arrays(model)) == 16
    assert isinstance(model.forward(StandInCupy.asarray(np.zeros((1, 8, 8, 3), "float32"))), OnDevice)
    assert reads_per_step(model, SGD(0.01, momentum=0.9), loss, ["accuracy"]) == [1, 1]
    assert reads_per_step(model, Adam(1e-3), loss, []) == [1, 1]


@needs_compiler
def test_weight_penalties_are_read_with_the_rest(gpu):
    model = small_resnet()
    for layer in model.layers:
        if isinstance(layer, Conv2D):
            layer.regularizers["kernel"] = L2(1e-4)
    assert len(model.losses) == 8                    # the 8 convolutions
    assert reads_per_step(model, SGD(0.01), SoftmaxCrossEntropy(), ["accuracy"]) == [1, 1]


@needs_compiler
def test_a_loss_forward_reads_the_device_once(gpu):
    logits = StandInCupy.asarray(np.random.default_rng(0).standard_normal((4, 5)))
    weights = StandInCupy.asarray(np.ones(4))
    for loss, labels in [(SoftmaxCrossEntropy(refuse_probabilities=True), np.arange(4)),
                         (SparseCategoricalCrossentropy(), np.arange(4))]:
        probabilities = logits if loss.from_logits else np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        before = OnDevice.reads
        loss.forward(probabilities, StandInCupy.asarray(labels), sample_weight=weights)
        assert OnDevice.reads - before == 1, type(loss).__name__
