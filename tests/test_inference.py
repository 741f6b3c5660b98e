"""InferenceModel (BN folded, ReLU fused) gives the model's own outputs."""
import numpy as np
import pytest

import keras_files
import tutorial_code as tut
from minires.applications import ResNet50, VGG16
from minires.inference import AddRelu, FoldedConv, InferenceModel
from minires.layers import BatchNormalization, Conv2D, Input
from minires.models import Model


def with_random_weights(model, seed=0):
    for name, arrays in keras_files.random_weights(model, np.random.default_rng(seed)).items():
        for key, value in arrays.items():
            model.get_layer(name).params[key][...] = value
    return model


def relative_difference(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("size, kwargs", [(64, {}), (64, {"generation": "legacy"}),
                                          (72, {"include_top": False})])       # 72: odd stage sizes 9, 5, 3
def test_resnet50_fast_path_matches_the_model(size, kwargs, each_kernel_path):
    model = with_random_weights(ResNet50(input_shape=(size, size, 3), **kwargs))
    before = [w.copy() for w in model.get_weights()]
    fast = InferenceModel(model)
    convs = [s for s in fast.steps if isinstance(s, FoldedConv)]
    assert len(convs) == 53
    assert sum(s.winograd_kernel is not None for s in convs) == 16         # every 3x3 stride-1 conv
    assert sum(len(s.inputs) == 2 for s in convs) == 16                    # every residual Add fused
    assert not any(isinstance(s, AddRelu) for s in fast.steps)
    x = np.random.default_rng(1).standard_normal((3, size, size, 3)).astype("float32")
    assert relative_difference(fast.predict(x, batch_size=2), model.predict(x)) <= 1e-5
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))   # untouched


def test_convs_with_their_own_relu_and_no_bn():
    model = tut.tutorial_models(size=16)["inception"]
    x = np.random.default_rng(2).standard_normal((2, 16, 16, 3)).astype("float32")
    assert relative_difference(InferenceModel(model).predict(x), model.predict(x)) <= 1e-6


def test_tensors_read_twice_or_returned_are_not_fused():
    x_in = Input((8, 8, 3))
    conv = Conv2D(4, 3, padding="same", name="conv")(x_in)
    bn = BatchNormalization(name="bn")(conv)
    model = with_random_weights(Model(x_in, [bn, conv]))       # conv's output is an output too
    fast = InferenceModel(model)
    assert not any(isinstance(s, FoldedConv) and s.output is bn for s in fast.steps)
    x = np.random.default_rng(3).standard_normal((2, 8, 8, 3)).astype("float32")
    for ours, theirs in zip(fast.forward(x), model.forward(x)):
        assert relative_difference(ours, theirs) <= 1e-6


@pytest.mark.slow
def test_vgg16_fast_path():
    model = VGG16(include_top=False, input_shape=(32, 32, 3))
    x = np.random.default_rng(4).standard_normal((2, 32, 32, 3)).astype("float32")
    assert relative_difference(InferenceModel(model).predict(x), model.predict(x)) <= 1e-6
