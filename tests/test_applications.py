"""Whole networks: Keras's layer names, order, shapes and parameter counts
(forward passes on ``--device``)."""
import numpy as np
import pytest
from conftest import on_cpu

import keras_resnet50_layers as golden
from minires.applications import (VGG16, VGG19, CifarResNet, ResNet18, ResNet34, ResNet50,
                                  ResNet101, ResNet152)
from minires.backend import to_device
from minires.models import Model

RESNET50_VARIANTS = {
    "current": ({}, golden.CURRENT),
    "legacy": ({"generation": "legacy"}, golden.LEGACY),
    "legacy without pool1_pad": ({"generation": "legacy", "pool1_pad": False},
                                 golden.LEGACY_NO_POOL1_PAD),
}


def describe(model):
    return [(layer.name, type(layer).__name__, tuple(layer.output.shape[1:]), layer.count_params())
            for layer in model.layers]


@pytest.mark.parametrize("variant", sorted(RESNET50_VARIANTS))
def test_resnet50_layers_match_keras(variant):
    """Every layer's name, type, output shape and param count, in Keras's order."""
    kwargs, expected = RESNET50_VARIANTS[variant]
    assert describe(ResNet50(**kwargs)) == expected


@pytest.mark.parametrize("variant", sorted(RESNET50_VARIANTS))
def test_resnet50_param_counts(variant):
    kwargs, _ = RESNET50_VARIANTS[variant]
    model = ResNet50(**kwargs)
    assert model.count_params() == 25_636_712
    assert model.count_trainable_params() == 25_583_592
    assert model.count_params() - model.count_trainable_params() == 53_120
    assert sum(1 for layer in model.layers if layer.params) == 107
    assert ResNet50(include_top=False, **kwargs).count_params() == 23_587_712


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["current", "legacy without pool1_pad"])
def test_resnet50_forward_gives_keras_shapes_at_every_layer(variant, device):
    """A real 224x224 forward pass, every layer's output read out by name."""
    kwargs, expected = RESNET50_VARIANTS[variant]
    model = ResNet50(**kwargs).to(device)
    names = [name for name, *_ in expected[1:]]
    features = Model(model.input, [model.get_layer(name).output for name in names])
    x = np.random.default_rng(0).standard_normal((1, 224, 224, 3)).astype("float32")
    outputs = features.predict(to_device(x, device))
    assert {name: out.shape[1:] for name, out in zip(names, outputs)} == \
        {name: shape for name, _, shape, _ in expected[1:]}
    probs = on_cpu(outputs[-1])
    assert np.isfinite(probs).all() and abs(float(probs.sum()) - 1) < 1e-4


@pytest.mark.parametrize("builder, total", [
    (ResNet101, 44_707_176),    # Keras's figures
    (ResNet152, 60_419_944),
    # torchvision's 11,689,512 / 21,797,672 plus a bias in every conv and the
    # two BN moving statistics per channel (4,800 / 8,512 conv output channels)
    (ResNet18, 11_689_512 + 3 * 4_800),
    (ResNet34, 21_797_672 + 3 * 8_512),
])
def test_deeper_and_shallower_resnet_param_counts(builder, total):
    assert builder().count_params() == total


@pytest.mark.slow
@pytest.mark.parametrize("builder, total, notop", [(VGG16, 138_357_544, 14_714_688),
                                                   (VGG19, 143_667_240, 20_024_384)])
def test_vgg_param_counts(builder, total, notop):
    model = builder()
    assert model.count_params() == total
    assert [layer.name for layer in model.layers][-5:] == ["block5_pool", "flatten", "fc1", "fc2",
                                                           "predictions"]
    assert builder(include_top=False).count_params() == notop


def test_resnet_heads_and_pooling(device):
    assert ResNet50(include_top=False).output.shape == (None, None, None, 2048)
    avg = ResNet50(include_top=False, pooling="avg")
    assert avg.output.shape == (None, 2048) and avg.layers[-1].name == "avg_pool"
    assert ResNet50(include_top=False, pooling="max").layers[-1].name == "max_pool"
    assert ResNet50(classes=7).output.shape == (None, 7)
    logits = ResNet18(classifier_activation=None, classes=3, input_shape=(32, 32, 3)).to(device)
    x = to_device(np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype("float32"), device)
    z = logits.predict(x)
    dense = logits.get_layer("predictions")
    features = Model(logits.input, logits.get_layer("avg_pool").output).predict(x)
    np.testing.assert_allclose(on_cpu(z), on_cpu(features @ dense.params["kernel"] + dense.params["bias"]),
                               rtol=1e-5, atol=1e-6)


def test_notop_resnet_takes_any_image_size(device):
    model = ResNet18(include_top=False, pooling="avg").to(device)
    x = np.random.default_rng(1).standard_normal((2, 40, 56, 3)).astype("float32")
    assert model.predict(to_device(x, device)).shape == (2, 512)


def test_cifar_resnet(device):
    model = CifarResNet()
    assert model.output.shape == (None, 10)
    assert model.get_layer("conv1_conv").kernel_size == (3, 3)
    assert not any(type(layer).__name__ == "MaxPooling2D" for layer in model.layers)
    assert model.get_layer("conv5_block2_out").output.shape == (None, 4, 4, 512)
    small = CifarResNet(blocks=(1, 1, 1), width=8, input_shape=(16, 16, 3), classes=4).to(device)
    x = np.random.default_rng(2).standard_normal((3, 16, 16, 3)).astype("float32")
    probs = on_cpu(small.predict(to_device(x, device)))
    assert probs.shape == (3, 4) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)


def test_summary_totals_for_resnet50():
    lines = []
    ResNet50().summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert "Total params: 25,636,712" in text
    assert "Trainable params: 25,583,592" in text
    assert "Non-trainable params: 53,120" in text
    assert "conv2_block1_add (Add)" in text


def test_fixed_size_head_rejects_other_sizes_naming_the_layer():
    model = ResNet50(generation="legacy", pool1_pad=False)   # 7x7 pool + Flatten + Dense
    x = np.zeros((1, 256, 256, 3), dtype="float32")
    with pytest.raises(ValueError, match=r"input layer 'input_layer'.*\(None, 224, 224, 3\).*256"):
        model.predict(x)


def test_unknown_layer_name_suggests_near_matches():
    model = ResNet50(generation="legacy")
    with pytest.raises(KeyError, match=r"res2a_branch2x.*did you mean.*'res2a_branch2a'"):
        model.get_layer("res2a_branch2x")


@pytest.mark.parametrize("kwargs, message", [
    ({"generation": "keras4"}, "generation must be 'current' or 'legacy'"),
    ({"include_top": False, "pooling": "mean"}, "pooling must be None, 'avg' or 'max'"),
    ({"input_shape": (224, 224, 1)}, r"input_shape must be \(height, width, 3\)"),
    ({"include_top": False, "input_shape": (16, 16, 3)}, "at least 32"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ResNet50(**kwargs)


def test_seeded_building_is_reproducible():
    from minires import set_random_seed
    set_random_seed(5)
    a = ResNet18().get_weights()
    set_random_seed(5)
    b = ResNet18().get_weights()
    set_random_seed(6)
    c = ResNet18().get_weights()
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not np.array_equal(a[0], c[0])
