"""Conv2DTranspose, DepthwiseConv2D and SeparableConv2D: float64 gradient checks
(``--device``: on CuPy too), the layers against their loop-by-loop twins in
minires.naive and Conv2DTranspose against Conv2D's own input gradient, Keras
itself where installed (outputs, shapes, weight names, count_params), and
every refused argument and input with its message."""
import inspect
import os
import re

import numpy as np
import pytest
from conftest import assert_gradients_match, relative_difference

from minires import gradcheck, naive
from minires.backend import floatx_scope, to_device
from minires.layers import Conv2D, Input
from minires.layers.conv_transpose import Conv2DTranspose
from minires.layers.depthwise import DepthwiseConv2D, SeparableConv2D
from minires.models import Model

F64 = {"dtype": "float64"}
TOL = 1e-10                      # fast path against loops, float64
KERAS_TOL = 1e-5                 # against Keras, float32

# (kernel_size, strides, padding, output_padding): a kernel smaller than, equal to and larger
# than its stride; output_padding None, 0 and more (Keras's 0 and None differ under 'same')
TRANSPOSE_CASES = [
    (3, 2, "same", None), (3, 2, "valid", None), (3, 2, "same", 1), (3, 2, "valid", 1),
    (2, 2, "same", None), (2, 2, "same", 0), (1, 3, "valid", None), (1, 3, "same", 2),
    (4, 1, "same", None), (5, 3, "valid", 2), (4, 3, "same", 1), ((3, 2), (2, 1), "same", (1, 0)),
]
# (kernel_size, strides, padding, depth_multiplier)
DEPTHWISE_CASES = [
    (3, 1, "same", 1), (3, 2, "same", 2), (3, 2, "valid", 1), (1, 2, "valid", 3),
    (2, 2, "same", 1), (4, 1, "same", 2), ((3, 1), (2, 1), "same", 2),
]


# Each builder makes minires's layer for a case, or (keras_class=) Keras's with the same arguments.
def transpose_layer(case, keras_class=Conv2DTranspose, **kwargs):
    kernel_size, strides, padding, output_padding = case
    return keras_class(3, kernel_size, strides, padding, output_padding, **kwargs)


def depthwise_layer(case, keras_class=DepthwiseConv2D, **kwargs):
    kernel_size, strides, padding, multiplier = case
    return keras_class(kernel_size, strides, padding, multiplier, **kwargs)


def separable_layer(case, keras_class=SeparableConv2D, **kwargs):
    kernel_size, strides, padding, multiplier = case
    return keras_class(4, kernel_size, strides, padding, depth_multiplier=multiplier, **kwargs)


def strided_layer(make, **kwargs):
    """``make``'s layer with strides 2 ('same'; output_padding 1 for Conv2DTranspose)."""
    return make(TRANSPOSE_CASES[2] if make is transpose_layer else DEPTHWISE_CASES[1], **kwargs)


def randomize(layer, rng, x):
    """Build ``layer`` on x, then give every weight random values (biases too: Keras's
    zeros would hide a bias added to the wrong channel); returns the weights."""
    layer(x)
    weights = [rng.standard_normal(w.shape).astype(layer.dtype) for w in layer.get_weights()]
    layer.set_weights(weights)
    return weights


def check(layer, x, device):
    report = gradcheck.check_layer(layer, to_device(x, device))
    assert set(report) == {"input 0"} | set(layer.trainable_names())
    assert_gradients_match(report, type(layer).__name__)


def pair(value):
    return value if value is None or isinstance(value, tuple) else (value, value)


# --- gradients, float64 -------------------------------------------------------------------------
@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=str)
def test_conv2d_transpose_gradients(rng, device, case):
    check(transpose_layer(case, **F64), rng.standard_normal((2, 4, 3, 2)), device)


@pytest.mark.parametrize("case", DEPTHWISE_CASES, ids=str)
def test_depthwise_conv2d_gradients(rng, device, case):
    check(depthwise_layer(case, **F64), rng.standard_normal((2, 5, 6, 3)), device)


@pytest.mark.parametrize("case", DEPTHWISE_CASES, ids=str)
def test_separable_conv2d_gradients(rng, device, case):
    check(separable_layer(case, **F64), rng.standard_normal((2, 5, 6, 3)), device)


@pytest.mark.parametrize("make", [transpose_layer, depthwise_layer, separable_layer])
def test_gradients_without_bias_through_an_activation(rng, device, make):
    layer = strided_layer(make, use_bias=False, activation="tanh", **F64)
    check(layer, rng.standard_normal((2, 4, 4, 2)), device)
    assert "bias" not in layer.params


def test_gradients_through_a_model(rng, device):
    """All three in one graph, called as the engine calls a KernelLayer's backward."""
    with floatx_scope("float64"):
        inputs = Input((4, 4, 2))
        x = Conv2DTranspose(3, 3, strides=2, padding="same", activation="tanh")(inputs)
        x = DepthwiseConv2D(3, strides=2, depth_multiplier=2, activation="tanh")(x)
        model = Model(inputs, SeparableConv2D(2, 2, padding="same")(x)).to(device)
    report = gradcheck.check_model(model, to_device(rng.standard_normal((2, 4, 4, 2)), device))
    assert_gradients_match(report, "conv family model", tol=1e-6)


# --- the fast paths against the loops of minires.naive, float64 ------------------------------
def assert_close(actual, expected, what=""):
    np.testing.assert_allclose(actual, expected, rtol=TOL, atol=TOL, err_msg=what)


def assert_matches_twin(layer, x, rng, forward_twin, backward_twin, *options):
    """One forward and backward (random weights, random dy) against the loop twins."""
    kernel, bias = randomize(layer, rng, x)
    y, cache = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy, cache)
    assert_close(y, forward_twin(x, kernel, bias, *options))
    for name, actual, expected in zip(["dx", "kernel", "bias"], [dx, layer.grads["kernel"], layer.grads["bias"]],
                                      backward_twin(x, kernel, dy, *options), strict=True):
        assert_close(actual, expected, name)


@pytest.mark.usefixtures("each_kernel_path")          # NumPy and, where installed, Numba
@pytest.mark.parametrize("case,size", [(case, size) for case in TRANSPOSE_CASES
                                       for size in [(1, 2), (3, 4)] if case != (2, 2, "same", 0)
                                       or size[0] > 1], ids=str)      # one row: no output pixels
def test_conv2d_transpose_matches_naive(rng, case, size):
    _, strides, padding, output_padding = case
    assert_matches_twin(transpose_layer(case, **F64), rng.standard_normal((2, *size, 2)), rng,
                        naive.conv2d_transpose_forward, naive.conv2d_transpose_backward,
                        pair(strides), padding, pair(output_padding))


@pytest.mark.usefixtures("each_kernel_path")
@pytest.mark.parametrize("case", DEPTHWISE_CASES, ids=str)
def test_depthwise_conv2d_matches_naive(rng, case):
    _, strides, padding, _ = case
    assert_matches_twin(depthwise_layer(case, **F64), rng.standard_normal((2, 5, 6, 3)), rng,
                        naive.depthwise_conv2d_forward, naive.depthwise_conv2d_backward,
                        pair(strides), padding)


@pytest.mark.parametrize("case", DEPTHWISE_CASES, ids=str)
def test_separable_conv2d_is_depthwise_then_a_1x1_conv(rng, case):
    x = rng.standard_normal((2, 5, 6, 3))
    layer = separable_layer(case, **F64)
    depthwise, pointwise, bias = randomize(layer, rng, x)
    u = naive.depthwise_conv2d_forward(x, depthwise, None, pair(case[1]), case[2])
    assert_close(layer(x), naive.conv2d_forward(u, pointwise, bias))


@pytest.mark.parametrize("kernel_size,strides,padding", [(3, 2, "same"), (3, 2, "valid"),
                                                          (4, 2, "same"), (1, 3, "valid"),
                                                          (5, 3, "same"), ((3, 2), (1, 2), "same")])
def test_conv2d_transpose_is_conv2d_input_gradient(rng, kernel_size, strides, padding):
    """The docstring's lesson, checked: with one kernel array, Conv2DTranspose's forward
    is the input gradient of the Conv2D that maps its output's size back to its input's."""
    transpose = Conv2DTranspose(3, kernel_size, strides, padding, use_bias=False, **F64)
    g = rng.standard_normal((2, 4, 3, 2))
    kernel, = randomize(transpose, rng, g)
    y, _ = transpose.forward(g)
    conv = Conv2D(2, kernel_size, strides, padding, use_bias=False, **F64)
    conv_y, cache = conv.forward(rng.standard_normal(y.shape))     # builds a (kh, kw, 3, 2) kernel
    assert conv_y.shape == g.shape
    conv.params["kernel"] = kernel
    assert_close(y, conv.backward(g, cache))


@pytest.mark.parametrize("make", [transpose_layer, depthwise_layer, separable_layer])
def test_input_grad_false_skips_dx_and_keeps_the_weight_gradients(rng, make):
    layer = strided_layer(make, **F64)
    x = rng.standard_normal((2, 4, 5, 3))
    randomize(layer, rng, x)
    y, cache = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    layer.backward(dy, cache)
    full = {name: value.copy() for name, value in layer.grads.items()}
    layer.zero_grads()
    assert layer.backward(dy, cache, input_grad=False) is None
    assert set(layer.grads) == set(full)
    for name, value in full.items():
        assert_close(layer.grads[name], value)


@pytest.mark.parametrize("make", [transpose_layer, depthwise_layer, separable_layer])
def test_an_empty_batch_runs_both_ways(rng, make):
    layer = strided_layer(make, **F64)
    layer(rng.standard_normal((1, 4, 5, 3)))
    y, cache = layer.forward(np.zeros((0, 4, 5, 3)))
    assert y.shape == (0, *layer.compute_output_shape((1, 4, 5, 3))[1:])
    assert layer.backward(np.zeros(y.shape), cache).shape == (0, 4, 5, 3)


# --- against Keras itself (KERAS_BACKEND=torch, as tests/test_keras_oracle.py) ------------------
@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    return pytest.importorskip("keras")


KERAS_CASES = ([("Conv2DTranspose", transpose_layer, case) for case in TRANSPOSE_CASES]
               + [(name, make, case) for case in DEPTHWISE_CASES for name, make in
                  [("DepthwiseConv2D", depthwise_layer), ("SeparableConv2D", separable_layer)]])


@pytest.mark.parametrize("name,make,case", KERAS_CASES, ids=lambda v: v if isinstance(v, str) else str(v))
def test_matches_keras(keras, rng, name, make, case):
    """Keras's layer of the same name and arguments: weight names, shapes and order,
    count_params, output shapes (symbolic ones too) and outputs on the same weights."""
    x = rng.uniform(-2, 2, (2, 5, 4, 3)).astype("float32")
    layer, keras_layer = make(case), make(case, keras_class=getattr(keras.layers, name))
    weights = randomize(layer, rng, x)
    keras_layer.build(x.shape)
    assert [w.name for w in keras_layer.weights] == list(layer.params)
    keras_layer.set_weights(weights)                   # Keras checks each shape
    assert keras_layer.count_params() == layer.count_params()
    for shape in [(None, 5, 4, 3), (None, None, 7, 3)]:
        assert layer.compute_output_shape(shape) == tuple(keras_layer.compute_output_shape(shape))
    expected = keras.ops.convert_to_numpy(keras_layer(x))
    y = layer(x)
    assert y.shape == expected.shape
    error = relative_difference(y, expected)
    print(f"{name}{case}: max |difference| / max |Keras| = {error:.1e}")
    assert error <= KERAS_TOL


# --- refused arguments and inputs ---------------------------------------------------------------
@pytest.mark.parametrize("make,kwargs,message", [
    (Conv2DTranspose, {"filters": 0, "kernel_size": 3}, "'conv2d_transpose': filters must be a positive"),
    (Conv2DTranspose, {"filters": 2, "kernel_size": 0}, "'conv2d_transpose': kernel_size must be"),
    (Conv2DTranspose, {"filters": 2, "kernel_size": 3, "strides": 2, "output_padding": 2},
     r"output_padding \(2, 2\) must be smaller than strides \(2, 2\)"),
    (Conv2DTranspose, {"filters": 2, "kernel_size": 3, "strides": 2, "output_padding": (1, -1)},
     "output_padding must be a non-negative int"),
    (Conv2DTranspose, {"filters": 2, "kernel_size": 3, "padding": "causal"}, "unknown padding 'causal'"),
    (DepthwiseConv2D, {"kernel_size": 3, "depth_multiplier": 0},
     "'depthwise_conv2d': depth_multiplier must be a positive int"),
    (DepthwiseConv2D, {"kernel_size": 3, "strides": (1, 0)}, "strides must be a positive int"),
    (SeparableConv2D, {"filters": 2.5, "kernel_size": 3}, "'separable_conv2d': filters must be"),
    (SeparableConv2D, {"filters": 2, "kernel_size": 3, "depth_multiplier": -1}, "depth_multiplier"),
])
def test_bad_arguments_are_refused(make, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(**kwargs)


ARGUMENTS = {Conv2DTranspose: {"filters": 2, "kernel_size": 3}, DepthwiseConv2D: {"kernel_size": 3},
             SeparableConv2D: {"filters": 2, "kernel_size": 3}}
UNIMPLEMENTED_REQUESTS = [
    ("dilation_rate", 2), ("dilation_rate", (1, 2)), ("groups", 2), ("data_format", "channels_first"),
    ("activity_regularizer", "l1"),
    ("depthwise_regularizer", "l2"), ("pointwise_regularizer", "l2"), ("kernel_constraint", "non_neg"),
    ("bias_constraint", "non_neg"), ("depthwise_constraint", "non_neg"),
    ("pointwise_constraint", "non_neg"),
]


@pytest.mark.parametrize("make", list(ARGUMENTS))
@pytest.mark.parametrize("argument,value", UNIMPLEMENTED_REQUESTS)
def test_unimplemented_keras_arguments_are_refused_by_name(make, argument, value):
    with pytest.raises(ValueError, match=re.escape(f"{argument}={value!r} is not implemented in minires")):
        make(**ARGUMENTS[make], **{argument: value})


@pytest.mark.parametrize("argument,value", [("dilation_rate", 2), ("kernel_constraint", "non_neg")])
def test_conv2d_refuses_them_by_name_too(argument, value):
    with pytest.raises(ValueError, match=re.escape(f"{argument}={value!r} is not implemented in minires")):
        Conv2D(2, 3, **{argument: value})


@pytest.mark.parametrize("make", [DepthwiseConv2D, SeparableConv2D])
def test_depthwise_kernels_take_no_kernel_regularizer(make):
    """Keras names their penalties depthwise_regularizer / pointwise_regularizer."""
    with pytest.raises(ValueError, match=re.escape("kernel_regularizer='l2' is not implemented")):
        make(**ARGUMENTS[make], kernel_regularizer="l2")


def test_conv2d_transpose_takes_kernel_and_bias_penalties(rng):
    layer = Conv2DTranspose(2, 3, kernel_regularizer="l2", bias_regularizer="l1")
    layer(rng.standard_normal((1, 4, 4, 3)))
    assert sorted(layer.regularizers) == ["bias", "kernel"]


@pytest.mark.parametrize("make", list(ARGUMENTS))
def test_unimplemented_arguments_at_their_defaults_are_accepted(rng, make):
    """Keras code spells defaults out; they ask for nothing minires lacks."""
    x = rng.standard_normal((1, 5, 5, 2))
    plain = make(**ARGUMENTS[make])
    spelt_out = make(**ARGUMENTS[make], dilation_rate=[1, 1], groups=1, data_format="channels_last",
                     kernel_regularizer=None, depthwise_constraint=None, activity_regularizer=None)
    spelt_out(x)                                                   # builds it
    spelt_out.set_weights(randomize(plain, rng, x))
    np.testing.assert_array_equal(spelt_out(x), plain(x))


def parameter_names(function, kinds):
    return [p.name for p in inspect.signature(function).parameters.values() if p.kind in kinds]


@pytest.mark.parametrize("make", list(ARGUMENTS))
def test_arguments_are_keras_s(keras, make):
    """The positional arguments are Keras's first ones, in its order; the keyword-only
    rest are Keras's names (so Keras's next positional one, data_format or
    dilation_rate, cannot bind to another argument: a TypeError instead)."""
    ours = parameter_names(make, [inspect.Parameter.POSITIONAL_OR_KEYWORD])
    keyword_only = parameter_names(make, [inspect.Parameter.KEYWORD_ONLY])
    theirs = parameter_names(getattr(keras.layers, make.__name__), [inspect.Parameter.POSITIONAL_OR_KEYWORD])
    assert ours == theirs[:len(ours)]
    assert set(keyword_only) - {"name"} <= set(theirs)
    one_too_many = [{"filters": 2, "kernel_size": 3}.get(name) for name in ours] + ["channels_last"]
    with pytest.raises(TypeError, match="positional argument"):
        make(*one_too_many)


@pytest.mark.parametrize("make", list(ARGUMENTS))
def test_inputs_that_do_not_fit_are_refused_and_change_nothing(rng, make):
    layer = make(**ARGUMENTS[make])
    with pytest.raises(ValueError, match=rf"layer '{layer.name}' \(\w+\) expects a 4-D input"):
        layer(np.zeros((5, 5, 3)))
    assert not layer.built
    weights = randomize(layer, rng, np.zeros((1, 5, 5, 3)))
    with pytest.raises(ValueError, match=rf"layer '{layer.name}' was built for 3 input channels, "
                                         r"got an input of shape \(1, 5, 5, 4\)"):
        layer(np.zeros((1, 5, 5, 4)))
    y, cache = layer.forward(np.ones((1, 5, 5, 3)))
    with pytest.raises(ValueError, match=rf"layer '{layer.name}': backward got a gradient of shape"):
        layer.backward(np.zeros((1, *y.shape[1:-1], y.shape[-1] + 1)), cache)
    assert not layer.grads
    for before, after in zip(weights, layer.get_weights()):
        np.testing.assert_array_equal(before, after)


def test_a_window_larger_than_the_input_is_refused():
    with pytest.raises(ValueError, match=r"'depthwise_conv2d': window \(5, 5\) is larger than its padded"):
        DepthwiseConv2D(5)(np.zeros((1, 3, 3, 2)))
    with pytest.raises(ValueError, match=r"'separable_conv2d': window \(5, 5\) is larger"):
        SeparableConv2D(2, 5).compute_output_shape((None, 3, 8, 2))


def test_a_transposed_output_without_pixels_is_refused():
    """'same' with output_padding 0 and an even kernel: (H - 1) * 2 + 0 + 0 rows, none for H = 1."""
    layer = Conv2DTranspose(2, 2, strides=2, padding="same", output_padding=0)
    assert layer.compute_output_shape((None, 2, 3, 4)) == (None, 2, 4, 2)
    with pytest.raises(ValueError, match=r"'conv2d_transpose': an input of shape \(1, 1, 3, 4\) gives "
                                         r"an output of 0 x 4 pixels"):
        layer(np.zeros((1, 1, 3, 4)))
