"""The tutorials' Keras code runs on minires with only its imports changed.

tutorial_code.py holds the tutorials' functions verbatim under minires imports.
Param counts are Keras's (REFERENCE.md section 5); where Keras is installed the
same source, with Keras's imports swapped back in, must build the same layers.
"""
import os

import numpy as np
import pytest

import tutorial_code as tut
from conftest import assert_model_gradients_match, randomize_offsets, with_imports
from minires import gradcheck
from minires.backend import floatx_scope
from minires.layers import clear_session

KERAS_PARAMS = {"vgg_block": 38_720, "three_vgg_blocks": 2_325_568, "naive_inception": 6_272,
                "inception": 513_120, "residual_module": 38_976}
KERAS_OUTPUT_SHAPES = {"vgg_block": (None, 128, 128, 64), "three_vgg_blocks": (None, 32, 32, 256),
                       "naive_inception": (None, 256, 256, 227), "inception": (None, 256, 256, 480),
                       "residual_module": (None, 256, 256, 64)}
KERAS_IMPORTS = """\
from keras.initializers import glorot_uniform
from keras.layers import (Activation, Add, AveragePooling2D, BatchNormalization, Conv2D, Dense,
                          Flatten, Input, MaxPooling2D, ZeroPadding2D, add, concatenate)
from keras.models import Model
"""


def describe(model):
    return [(layer.name, type(layer).__name__, tuple(layer.output.shape), layer.count_params())
            for layer in model.layers]


@pytest.mark.parametrize("name", sorted(KERAS_PARAMS))
def test_tutorial_models_have_keras_param_counts_and_shapes(name):
    model = tut.tutorial_models()[name]
    assert model.count_params() == KERAS_PARAMS[name]
    assert model.output.shape == KERAS_OUTPUT_SHAPES[name]


def test_course_resnet50_has_keras_param_counts():
    model = tut.ResNet50(input_shape=(64, 64, 3), classes=6)
    assert model.count_params() == 23_600_006
    assert model.count_params() - model.count_trainable_params() == 53_120
    assert len(model.layers) == 177
    assert model.get_layer("res5c_branch2c").output.shape == (None, 2, 2, 2048)


def test_course_resnet50_runs_forward_and_backward():
    model = tut.ResNet50(input_shape=(64, 64, 3), classes=6)
    x = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype("float32")
    probs = model.forward(x, training=True)
    assert probs.shape == (2, 6) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    dx = model.backward(np.ones_like(probs))
    assert dx.shape == x.shape and np.isfinite(dx).all()
    assert model.get_layer("conv1").grads["kernel"].shape == (7, 7, 3, 64)


@pytest.mark.parametrize("name", sorted(KERAS_PARAMS))
def test_tutorial_models_run_on_small_images(name):
    model = tut.tutorial_models(size=16)[name]
    x = np.random.default_rng(1).standard_normal((2, 16, 16, 3)).astype("float32")
    y = model.predict(x)
    assert y.shape == (2, *model.output.shape[1:]) and np.isfinite(y).all()


SMALL_BLOCKS = {   # the tutorial functions with few filters: finite differences stay cheap
    "vgg_block": lambda x: tut.vgg_block(x, 4, 2),
    "naive_inception": lambda x: tut.naive_inception_module(x, 2, 3, 2),
    "inception": lambda x: tut.inception_module(x, 2, 3, 4, 2, 3, 2),
    "residual_module (projection)": lambda x: tut.residual_module(x, 4),
    "residual_module (identity)": lambda x: tut.residual_module(x, 3),
}


@pytest.mark.parametrize("name", sorted(SMALL_BLOCKS))
def test_tutorial_blocks_pass_gradient_checks(name):
    with floatx_scope("float64"):
        visible = tut.Input(shape=(6, 6, 3))
        model = tut.Model(inputs=visible, outputs=SMALL_BLOCKS[name](visible))
    rng = np.random.default_rng(2)
    randomize_offsets(model, rng)
    x = rng.standard_normal((2, 6, 6, 3))
    report = gradcheck.check_model(model, x, max_entries=16)
    assert_model_gradients_match(report, model, f"tutorial {name}")


def test_course_blocks_pass_gradient_checks_in_training_mode():
    clear_session()
    with floatx_scope("float64"):
        x_in = tut.Input((6, 6, 4))
        y = tut.convolutional_block(x_in, f=3, filters=[2, 3, 4], stage=2, block="a", s=2)
        y = tut.identity_block(y, 3, [2, 3, 4], stage=2, block="b")
        model = tut.Model(inputs=x_in, outputs=y)
    rng = np.random.default_rng(3)
    randomize_offsets(model, rng)
    x = rng.standard_normal((3, 6, 6, 4))
    report = gradcheck.check_model(model, x, training=True, max_entries=12)
    assert_model_gradients_match(report, model, "tutorial conv+identity block")


@pytest.fixture
def keras_namespace():
    """The tutorial source executed with Keras's imports instead of minires's."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    namespace = with_imports(tut, KERAS_IMPORTS)
    keras.backend.clear_session()
    return namespace


def test_same_source_builds_the_same_layers_as_keras(keras_namespace):
    """Names (automatic ones included), order, types, shapes and counts."""
    theirs = {k: describe(m) for k, m in keras_namespace["tutorial_models"]().items()}
    theirs["course_resnet50"] = describe(keras_namespace["ResNet50"]())
    clear_session()
    ours = {k: describe(m) for k, m in tut.tutorial_models().items()}
    ours["course_resnet50"] = describe(tut.ResNet50())
    for name in theirs:
        assert ours[name] == theirs[name], name
