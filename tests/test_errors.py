"""Bad input raises a clear ValueError/TypeError naming the layer and what was wrong."""
import numpy as np
import pytest

from minires.layers import (Activation, Add, AveragePooling2D, BatchNormalization, Concatenate,
                            Conv2D, Dense, Flatten, MaxPooling2D, ZeroPadding2D)
from minires.losses import SoftmaxCrossEntropy


@pytest.mark.parametrize("layer", [Conv2D(2, 3, name="c"), MaxPooling2D(name="c"),
                                   AveragePooling2D(name="c"), ZeroPadding2D(name="c")])
def test_wrong_rank(layer):
    with pytest.raises(ValueError, match=r"'c'.*4-D input \(N, H, W, C\), got shape \(5, 5, 3\)"):
        layer(np.zeros((5, 5, 3), np.float32))


def test_dense_needs_a_batch_axis():
    with pytest.raises(ValueError, match=r"'fc'.*rank 2 or more, got shape \(4,\)"):
        Dense(3, name="fc")(np.zeros(4, np.float32))


@pytest.mark.parametrize("layer,good,bad,message", [
    (Conv2D(2, 3, name="c"), (1, 5, 5, 3), (1, 5, 5, 4), r"'c' was built for 3 input channels, got an input of shape \(1, 5, 5, 4\)"),
    (Dense(2, name="d"), (2, 3), (2, 5), r"'d' was built for 3 input features, got an input of shape \(2, 5\)"),
    (BatchNormalization(name="b"), (2, 4, 4, 3), (2, 4, 4, 6), r"'b' was built for 4-D inputs with 3 channels.*\(2, 4, 4, 6\)"),
])
def test_wrong_channel_count_for_a_built_layer(layer, good, bad, message):
    layer(np.zeros(good, np.float32))
    with pytest.raises(ValueError, match=message):
        layer(np.zeros(bad, np.float32))


@pytest.mark.parametrize("layer,shape,message", [
    (Conv2D(2, 5, name="c"), (1, 3, 3, 1), r"'c': window \(5, 5\) is larger than its padded input \(3, 3\)"),
    (Conv2D(2, (1, 4), padding="valid", name="c"), (1, 8, 3, 1), r"'c': window \(1, 4\) is larger"),
    (MaxPooling2D(3, name="p"), (1, 2, 2, 1), r"'p': window \(3, 3\) is larger than its padded input \(2, 2\)"),
])
def test_window_larger_than_padded_input(layer, shape, message):
    with pytest.raises(ValueError, match=message):
        layer(np.zeros(shape, np.float32))


@pytest.mark.parametrize("make,message", [
    (lambda: Conv2D(2, 3, strides=0, name="c"), r"'c': strides must be a positive int.*got 0"),
    (lambda: Conv2D(2, 3, strides=(1, -2), name="c"), r"'c': strides must be a positive int.*\(1, -2\)"),
    (lambda: Conv2D(2, 0, name="c"), r"'c': kernel_size must be a positive int"),
    (lambda: Conv2D(0, 3, name="c"), r"'c': filters must be a positive int, got 0"),
    (lambda: Conv2D(2, 3, strides=1.5, name="c"), r"'c': strides must be"),
    (lambda: MaxPooling2D(2, strides=0, name="p"), r"'p': strides must be a positive int"),
    (lambda: AveragePooling2D(pool_size=(2, 0), name="p"), r"'p': pool_size must be"),
    (lambda: Dense(0, name="d"), r"'d': units must be a positive int"),
    (lambda: ZeroPadding2D(-1, name="z"), r"'z': padding must be a non-negative int"),
    (lambda: Conv2D(2, 3, padding="full", name="c"), r"'c': unknown padding 'full'; choose one of 'valid', 'same'"),
    (lambda: MaxPooling2D(padding="causal", name="p"), r"'p': unknown padding 'causal'"),
    (lambda: Conv2D(2, 3, activation="relux", name="c"), r"'c': unknown activation 'relux'; choose one of 'relu'"),
    (lambda: Activation("gelu", name="a"), r"'a': unknown activation 'gelu'"),
    (lambda: Conv2D(2, 3, kernel_initializer="he_normall", name="c"), r"'c': unknown initializer 'he_normall'"),
    (lambda: BatchNormalization(momentum=1.5, name="b"), r"'b': momentum must be in \[0, 1\]"),
    (lambda: BatchNormalization(epsilon=0, name="b"), r"'b': epsilon must be positive"),
])
def test_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_bad_batch_norm_axis():
    with pytest.raises(ValueError, match=r"'b': axis 0 is not a feature axis of an input of shape \(2, 3\)"):
        BatchNormalization(axis=0, name="b")(np.zeros((2, 3), np.float32))


def test_padding_names_are_case_insensitive_like_keras():
    assert Conv2D(1, 3, padding="SAME").padding == "same"


def test_integer_inputs_are_converted_to_the_layer_dtype():
    """Documented choice: int/uint/bool arrays are cast (Keras does the same), so uint8
    images go straight in; the result equals that of the float input."""
    conv = Conv2D(2, 3, name="c")
    image = np.arange(2 * 5 * 5 * 3, dtype=np.uint8).reshape(2, 5, 5, 3)
    y = conv(image)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, conv(image.astype(np.float32)))


@pytest.mark.parametrize("bad", [np.array([["a"]]), np.zeros((1, 2), dtype=complex),
                                 np.zeros((1, 2), dtype=object)])
def test_non_numeric_arrays_are_rejected(bad):
    with pytest.raises(TypeError, match=r"'d' expects a float \(or integer\) array, got dtype"):
        Dense(2, name="d")(bad)


def test_non_arrays_are_rejected():
    with pytest.raises(TypeError, match="'d' expects a NumPy or CuPy array, got list"):
        Dense(2, name="d")([[1.0, 2.0]])


def test_integer_layer_dtype_is_rejected():
    with pytest.raises(TypeError, match="'d': dtype must be a float type"):
        Dense(2, dtype="int32", name="d")


def test_merge_errors():
    a, b = np.zeros((2, 3, 3, 4), np.float32), np.zeros((2, 3, 3, 5), np.float32)
    with pytest.raises(ValueError, match=r"'add' \(Add\) needs inputs of one shape.*\(2, 3, 3, 5\)"):
        Add(name="add")([a, b])
    with pytest.raises(ValueError, match=r"'add' \(Add\) must be called on a list of at least 2"):
        Add(name="add")(a)
    with pytest.raises(ValueError, match=r"'cat' \(Concatenate\) needs inputs that agree on every axis but 1"):
        Concatenate(axis=1, name="cat")([a, b])
    with pytest.raises(ValueError, match=r"'cat': axis 4 is out of range"):
        Concatenate(axis=4, name="cat")([a, a])


def test_backward_with_a_gradient_of_the_wrong_shape():
    flatten = Flatten(name="f")
    _, cache = flatten.forward(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match=r"'f': backward got a gradient of shape \(2, 11\), but its output has shape \(2, 12\)"):
        flatten.backward(np.zeros((2, 11)), cache)


def test_cross_entropy_label_errors():
    loss, logits = SoftmaxCrossEntropy(), np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\), got values from 0 to 4"):
        loss.forward(logits, np.array([0, 1, 4]))
    with pytest.raises(ValueError, match=r"3 logits rows but labels of shape \(2,\)"):
        loss.forward(logits, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"float targets of shape \(3, 4\), got float64 \(3, 5\)"):
        loss.forward(logits, np.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"logits must be a float array of shape \(N, classes\)"):
        loss.forward(np.zeros(4), np.array([0]))
