"""minires.blocks: float64 gradient checks of every block type, and of small
whole networks end to end through softmax cross-entropy (on ``--device``)."""
import numpy as np
import pytest

from conftest import assert_model_gradients_match, on_cpu, randomize_offsets
from minires import blocks, gradcheck
from minires.applications import CifarResNet
from minires.backend import floatx_scope, to_device
from minires.layers import (Activation, BatchNormalization, Conv2D, Dense, GlobalAveragePooling2D,
                            Input, MaxPooling2D)
from minires.losses import SoftmaxCrossEntropy
from minires.models import Model

BLOCKS = {   # name: (input shape, block on a tensor)
    "identity_block": ((5, 5, 4), lambda x: blocks.identity_block(x, 3, [2, 3, 4], stage=2, block="b")),
    "conv_block": ((6, 6, 3), lambda x: blocks.conv_block(x, 3, [2, 3, 4], stage=3, block="a")),
    "bottleneck_block (projection, stride 2)": (
        (7, 7, 3), lambda x: blocks.bottleneck_block(x, 3, (2, 3, 4), strides=2, name="conv3_block1")),
    "bottleneck_block (identity)": (
        (5, 5, 4), lambda x: blocks.bottleneck_block(x, 3, (2, 3, 4), projection=False, name="b")),
    "basic_block (identity)": ((5, 5, 3), lambda x: blocks.basic_block(x, 3, name="conv2_block1")),
    "basic_block (projection, stride 2)": (
        (6, 6, 3), lambda x: blocks.basic_block(x, 4, strides=2, name="conv3_block1")),
    "vgg_block": ((6, 6, 3), lambda x: blocks.vgg_block(x, 3, 2)),
    "naive_inception_module": ((5, 5, 3), lambda x: blocks.naive_inception_module(x, 2, 3, 2)),
    "inception_module": ((5, 5, 3), lambda x: blocks.inception_module(x, 2, 3, 4, 2, 3, 2)),
    "residual_module (projection)": ((5, 5, 3), lambda x: blocks.residual_module(x, 4)),
    "residual_module (identity)": ((5, 5, 3), lambda x: blocks.residual_module(x, 3)),
}


def float64_model(shape, build):
    with floatx_scope("float64"):
        x = Input(shape=shape)
        return Model(x, build(x))


@pytest.mark.parametrize("name", sorted(BLOCKS))
@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
def test_block_gradients(name, training, device):
    shape, build = BLOCKS[name]
    model = float64_model(shape, build).to(device)
    rng = np.random.default_rng(7)
    randomize_offsets(model, rng)
    x = to_device(rng.standard_normal((3, *shape)), device)
    report = gradcheck.check_model(model, x, training=training, max_entries=16)
    assert {f"{layer.name}/{p}" for layer, p in model.parameters()} | {"input 0"} == set(report)
    assert_model_gradients_match(report, model, name, training=training)


def small_resnet(classes=5):
    """A reduced-width ResNet with every kind of layer: conv, BN, ReLU, max-pool,
    a conv block, an identity block, global pooling and dense (logits)."""
    x_in = Input(shape=(10, 10, 3))
    x = Conv2D(4, 3, strides=2, padding="same", name="conv1")(x_in)
    x = BatchNormalization(name="bn_conv1")(x)
    x = Activation("relu")(x)
    # A 2x2 pool: the max of a 3x3 window is almost never clipped by the ReLU,
    # so bn_conv1's beta would only shift the next BNs' inputs and get no gradient.
    x = MaxPooling2D((2, 2), strides=(1, 1))(x)
    x = blocks.conv_block(x, 3, [2, 3, 4], stage=2, block="a", strides=(1, 1))
    x = blocks.identity_block(x, 3, [2, 3, 4], stage=2, block="b")
    x = GlobalAveragePooling2D()(x)
    return Model(x_in, Dense(classes, name="fc")(x))


def test_small_resnet_end_to_end_with_cross_entropy(device):
    with floatx_scope("float64"):
        model = small_resnet().to(device)
    rng = np.random.default_rng(11)
    randomize_offsets(model, rng)
    x, labels = to_device(rng.standard_normal((4, 10, 10, 3)), device), np.array([0, 3, 1, 4])
    report = gradcheck.check_model(model, x, loss=SoftmaxCrossEntropy(), labels=labels,
                                   training=True, max_entries=10)
    # the input, and two trainable arrays in each of 8 convs, 8 BNs and the dense layer
    assert len(report) == 1 + 2 * 17
    assert_model_gradients_match(report, model, "small ResNet + cross-entropy")


def test_cifar_resnet_end_to_end_with_cross_entropy(device):
    with floatx_scope("float64"):
        model = CifarResNet(blocks=(1, 1), width=2, input_shape=(8, 8, 3), classes=3,
                            classifier_activation=None).to(device)
    rng = np.random.default_rng(12)
    randomize_offsets(model, rng)
    x, labels = to_device(rng.standard_normal((3, 8, 8, 3)), device), np.array([2, 0, 1])
    report = gradcheck.check_model(model, x, loss=SoftmaxCrossEntropy(), labels=labels,
                                   training=True, max_entries=10)
    assert_model_gradients_match(report, model, "CIFAR ResNet + cross-entropy")


def test_shortcut_gradient_is_the_sum_of_both_paths(device):
    """Through an identity block, dL/dx = (path through the convs) + (shortcut):
    with the main path's last BN scaled to zero only the shortcut is left."""
    with floatx_scope("float64"):
        model = float64_model((4, 4, 4), BLOCKS["identity_block"][1]).to(device)
    x = np.random.default_rng(3).standard_normal((2, 4, 4, 4))
    y = model.forward(to_device(x, device), training=False, keep_cache=True)
    g = np.ones(y.shape)
    full = on_cpu(model.backward(to_device(g, device)))
    model.get_layer("bn2b_branch2c").params["gamma"][...] = 0
    model.get_layer("bn2b_branch2c").params["beta"][...] = 0
    y0 = on_cpu(model.forward(to_device(x, device), training=False, keep_cache=True))
    shortcut_only = on_cpu(model.backward(to_device(g, device)))
    np.testing.assert_allclose(y0, np.maximum(x, 0))
    np.testing.assert_allclose(shortcut_only, g * (x > 0))
    assert not np.allclose(full, shortcut_only)         # the convs' share is not zero


def test_block_names_follow_keras():
    model = float64_model((6, 6, 3), BLOCKS["conv_block"][1])
    names = {layer.name for layer in model.layers}
    assert {"res3a_branch2a", "bn3a_branch2a", "res3a_branch2b", "res3a_branch2c",
            "res3a_branch1", "bn3a_branch1"} <= names
    model = float64_model((7, 7, 3), BLOCKS["bottleneck_block (projection, stride 2)"][1])
    assert [layer.name for layer in model.layers][-3:] == ["conv3_block1_3_bn", "conv3_block1_add",
                                                           "conv3_block1_out"]
    assert model.get_layer("conv3_block1_0_conv").strides == (2, 2)
    assert model.get_layer("conv3_block1_1_conv").strides == (2, 2)   # stride on the first 1x1
    assert model.get_layer("conv3_block1_2_conv").strides == (1, 1)
    assert model.get_layer("conv3_block1_1_bn").epsilon == blocks.CURRENT_EPSILON


def test_vgg_block_names_when_asked():
    x = Input(shape=(8, 8, 3))
    model = Model(x, blocks.vgg_block(x, 4, 2, name="block1"))
    assert [layer.name for layer in model.layers] == ["input_layer", "block1_conv1", "block1_conv2",
                                                      "block1_pool"]
