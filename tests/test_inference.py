"""The inference plan (minires/planner.py: BN folded, ReLU fused), which
``predict`` runs, gives the model's own outputs: those of every layer run as
written (``fast_inference = False``)."""
import numpy as np
import pytest

from conftest import relative_difference
import keras_files
import tutorial_code as tut
from minires.applications import ResNet50, VGG16
from minires.fast_ops import AddRelu, FoldedConv
from minires.layers import (Activation, Add, AveragePooling2D, BatchNormalization, Conv2D, Dropout, Input,
                            MaxPooling2D, ReLU)
from minires.models import Model


def with_random_weights(model, seed=0):
    for name, arrays in keras_files.random_weights(model, np.random.default_rng(seed)).items():
        for key, value in arrays.items():
            model.get_layer(name).params[key][...] = value
    return model


def plain_outputs(model, x):
    """The model's outputs with every layer run as written."""
    model.fast_inference = False
    try:
        return model.predict_arrays(x)
    finally:
        model.fast_inference = True


@pytest.mark.parametrize("size, kwargs", [(64, {}), (64, {"generation": "legacy"}),
                                          (72, {"include_top": False})])       # 72: odd stage sizes 9, 5, 3
def test_resnet50_fast_path_matches_the_model(size, kwargs, each_kernel_path):
    model = with_random_weights(ResNet50(input_shape=(size, size, 3), **kwargs))
    before = [w.copy() for w in model.get_weights()]
    steps = model.plan("inference").steps
    convs = [s for s in steps if isinstance(s.op, FoldedConv)]
    assert len(convs) == 53
    assert sum(s.op.winograd_kernel is not None for s in convs) == 13      # 3x3 stride 1, but stage 5's 2x2, 3x3
    assert sum(len(s.inputs) == 2 for s in convs) == 16                    # every residual Add fused
    assert not any(isinstance(s.op, AddRelu) for s in steps)
    x = np.random.default_rng(1).standard_normal((3, size, size, 3)).astype("float32")
    assert relative_difference(model.predict_arrays(x, batch_size=2), plain_outputs(model, x)) <= 1e-5
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))   # untouched


def test_convs_with_their_own_relu_and_no_bn():
    model = tut.tutorial_models(size=16)["inception"]
    x = np.random.default_rng(2).standard_normal((2, 16, 16, 3)).astype("float32")
    assert relative_difference(model.predict_arrays(x), plain_outputs(model, x)) <= 1e-6


def test_tensors_read_twice_or_returned_are_not_fused():
    x_in = Input((8, 8, 3))
    conv = Conv2D(4, 3, padding="same", name="conv")(x_in)
    bn = BatchNormalization(name="bn")(conv)
    model = with_random_weights(Model(x_in, [bn, conv]))       # conv's output is an output too
    assert not any(isinstance(s.op, FoldedConv) and s.output is bn for s in model.plan("inference").steps)
    x = np.random.default_rng(3).standard_normal((2, 8, 8, 3)).astype("float32")
    for ours, theirs in zip(model.predict_arrays(x), plain_outputs(model, x)):
        assert relative_difference(ours, theirs) <= 1e-6


def unfused_adds(model):
    return [s for s in model.plan("inference").steps if isinstance(s.op, AddRelu)]


def three_convs_added_then_relu(x_in):
    """Three 1x1 convs -> one Add -> ReLU: no conv can absorb a three-input Add."""
    branches = [Conv2D(4, 1, name=f"branch{i}")(x_in) for i in range(3)]
    return Activation("relu", name="relu")(Add(name="add")(branches))


def pools_added_then_relu(x_in):
    """An Add of tensors that no convolution computes."""
    a = AveragePooling2D(2, name="mean")(x_in)
    b = MaxPooling2D(2, name="max")(x_in)
    return ReLU(name="relu")(Add(name="add")([a, b]))


def add_read_twice(x_in):
    """The Add's output feeds a ReLU and is itself returned, so the ReLU is not
    fused; tanh convs, as a conv absorbs an Add only when it has no activation."""
    total = Add(name="add")([Conv2D(3, 1, activation="tanh", name=f"c{i}")(x_in) for i in (1, 2)])
    return [ReLU(name="relu")(total), total]


@pytest.mark.parametrize("graph", [three_convs_added_then_relu, pools_added_then_relu, add_read_twice])
def test_adds_that_no_conv_absorbs(graph, each_kernel_path):
    """The fused Add [+ ReLU] step on its own: every sum, then ReLU once at the end."""
    x_in = Input((6, 6, 3))
    model = with_random_weights(Model(x_in, graph(x_in)))
    assert len(unfused_adds(model)) == 1
    x = np.random.default_rng(5).standard_normal((2, 6, 6, 3)).astype("float32") - 0.3
    ours, theirs = as_list(model.predict_arrays(x)), as_list(plain_outputs(model, x))
    for a, b in zip(ours, theirs):
        assert relative_difference(a, b) <= 1e-6
    relu_output = theirs[0]
    assert 0.1 < (relu_output == 0).mean() < 0.9          # the ReLU really cuts


def inputs_added():
    a, b = Input((4, 4, 3), name="a"), Input((4, 4, 3), name="b")
    return Model([a, b], ReLU(name="relu")(Add(name="add")([a, b])))


def input_handed_back_by_dropout():
    """Dropout in inference is the identity: it returns the caller's array itself."""
    x_in = Input((4, 4, 3), name="x")
    dropped, bent = Dropout(0.5, name="drop")(x_in), Activation("tanh", name="tanh")(x_in)
    return Model(x_in, Add(name="add")([dropped, bent]))


@pytest.mark.parametrize("graph", [inputs_added, input_handed_back_by_dropout])
def test_the_callers_arrays_are_never_written_into(graph, each_kernel_path):
    """The unfused Add writes its sum into an input that no later step reads,
    but never into the arrays the caller passed."""
    model = graph()
    rng = np.random.default_rng(6)
    x = [rng.standard_normal((2, 4, 4, 3)).astype("float32") for _ in model.inputs]
    before = [a.copy() for a in x]
    ours = model.predict_arrays(x)
    assert all(np.array_equal(a, b) for a, b in zip(x, before))
    assert relative_difference(ours, plain_outputs(model, before)) <= 1e-6


def as_list(outputs):
    return outputs if isinstance(outputs, list) else [outputs]


@pytest.mark.slow
def test_vgg16_fast_path():
    model = VGG16(include_top=False, input_shape=(32, 32, 3))
    x = np.random.default_rng(4).standard_normal((2, 32, 32, 3)).astype("float32")
    assert relative_difference(model.predict_arrays(x), plain_outputs(model, x)) <= 1e-6


def test_an_inference_plan_folds_again_when_the_weights_change():
    """A plan knows when it is stale: it checks the layers' versions."""
    x_in = Input((6, 6, 3))
    y = BatchNormalization(name="bn")(Conv2D(4, 3, name="conv")(x_in))
    model = with_random_weights(Model(x_in, ReLU()(y)))
    plan = model.plan("inference")
    x = np.random.default_rng(7).standard_normal((2, 6, 6, 3)).astype("float32")
    before = model.predict_arrays(x)
    model.get_layer("bn").set_weights([2 * w for w in model.get_layer("bn").get_weights()])
    assert not plan.is_current()
    after = model.predict_arrays(x)
    assert model.plan("inference") is not plan and model.plan("inference").is_current()
    assert relative_difference(after, plain_outputs(model, x)) <= 1e-6
    assert relative_difference(after, before) > 1e-2
