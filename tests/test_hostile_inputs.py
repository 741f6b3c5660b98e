"""What predict does with inputs that are not a float32 batch, on both paths:
every layer as written (``fast_inference = False``) and the inference plan
(BN folded, Add and ReLU fused), which must take them alike.

- integer, bool and other float arrays are cast to the layers' float type,
  as Keras does (uint8 images go straight in): same outputs as the float32 cast;
- complex, object and string arrays are refused with a TypeError, nothing run;
- an empty batch gives an empty output of the right shape;
- a Python list is one array per model input (as Keras): [x] works for a
  one-input model, a list of numbers is refused with a TypeError.
"""
import numpy as np
import pytest

from conftest import relative_difference
from minires import backend
from minires.kernels import slicing
from minires.layers import (Add, BatchNormalization, Conv2D, Dense, Flatten, GlobalAveragePooling2D,
                            Input, MaxPooling2D, ReLU)
from minires.models import Model

def plain_arrays(model, x, batch_size=2):
    """Every layer as written."""
    model.fast_inference = False
    try:
        return model.predict_arrays(x, batch_size)
    finally:
        model.fast_inference = True


PATHS = {
    "layers": plain_arrays,
    "inference": lambda model, x, batch_size=2: model.predict_arrays(x, batch_size),
}


@pytest.fixture(params=sorted(PATHS))
def predict(request):
    return PATHS[request.param]


def randomised(model, seed=0):
    """Random weights, BN statistics included (positive variances)."""
    rng = np.random.default_rng(seed)
    for layer in model.leaf_layers():
        for name, value in layer.params.items():
            value[...] = (rng.uniform(0.5, 1.5, value.shape) if name == "moving_variance"
                          else 0.3 * rng.standard_normal(value.shape))
    return model


def residual_net(size=6, name="residual_net"):
    """The input is read by a conv (BN folded into it) and, as the residual, by a
    second conv's fused Add: both places where the inference plan casts it."""
    x_in = Input((size, size, 3), name="image")
    y = ReLU(name="relu1")(BatchNormalization(name="bn1")(Conv2D(4, 3, padding="same", name="conv1")(x_in)))
    y = ReLU(name="relu2")(Add(name="add")([Conv2D(3, 1, name="conv2")(y), x_in]))
    y = GlobalAveragePooling2D(name="gap")(MaxPooling2D(2, name="pool")(y))
    return randomised(Model(x_in, Dense(5, name="dense")(y), name=name))


def two_input_net():
    """An Add of the two inputs themselves: the inference plan's unfused Add step."""
    a, b = Input((4, 4, 2), name="a"), Input((4, 4, 2), name="b")
    y = ReLU(name="relu")(Add(name="add")([a, b]))
    return randomised(Model([a, b], Dense(3, name="dense")(Flatten(name="flat")(y)), name="two_inputs"))


def images(dtype, shape=(3, 6, 6, 3), seed=1):
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if np.dtype(dtype).kind in "iu":
        return rng.integers(0, 120 if dtype == "int8" else 256, shape).astype(dtype)
    return (4 * rng.standard_normal(shape)).astype(dtype)


# --- dtypes ------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["uint8", "int8", "int32", "int64", "bool", "float16", "float64"])
def test_numbers_of_any_dtype_are_cast_as_the_layers_cast_them(predict, dtype):
    model = residual_net()
    x = images(dtype)
    before = x.copy()
    ours = predict(model, x)
    assert ours.dtype == np.float32 and ours.shape == (3, 5)
    np.testing.assert_array_equal(ours, predict(model, x.astype("float32")))   # cast first, same run
    assert relative_difference(ours, model.predict_arrays(x.astype("float32"))) <= 1e-5
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("dtype", ["uint8", "bool", "float64"])
def test_two_inputs_are_cast_too(predict, dtype):
    model = two_input_net()
    a, b = images(dtype, (5, 4, 4, 2), seed=2), images(dtype, (5, 4, 4, 2), seed=3)
    expected = model.predict_arrays([a.astype("float32"), b.astype("float32")])
    assert relative_difference(predict(model, [a, b]), expected) <= 1e-6


@pytest.mark.parametrize("x, dtype", [(np.ones((2, 6, 6, 3), np.complex64), "complex64"),
                                      (np.ones((2, 6, 6, 3)).astype(object), "object"),
                                      (np.full((2, 6, 6, 3), "1"), "<U1")])
def test_arrays_of_anything_but_real_numbers_are_refused(predict, x, dtype):
    model = residual_net()
    weights = [w.copy() for w in model.get_weights()]
    with pytest.raises(TypeError, match=f"dtype {dtype}"):
        predict(model, x)
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))


@pytest.mark.parametrize("training", [False, True])
def test_the_input_check_names_the_model_and_input(training):
    with pytest.raises(TypeError, match=r"model 'residual_net': input 'image' expects a float "
                                        r"\(or integer\) array, got dtype complex128"):
        residual_net().forward(np.ones((1, 6, 6, 3), complex), training=training)
    with pytest.raises(TypeError, match="model 'residual_net': input 'image' expects a NumPy or "
                                        "CuPy array, got list"):
        residual_net().forward([[1.0, 2.0]], training=True)


def test_a_float16_model_works_on_both_paths(each_kernel_path):
    x_in = Input((6, 6, 3), name="image", dtype="float16")
    y = BatchNormalization(name="bn", dtype="float16")(Conv2D(4, 3, name="conv", dtype="float16")(x_in))
    y = MaxPooling2D(2, name="pool", dtype="float16")(ReLU(name="relu", dtype="float16")(y))
    y = GlobalAveragePooling2D(name="gap", dtype="float16")(y)
    model = randomised(Model(x_in, Dense(2, name="dense", dtype="float16")(y)))
    x = images("float32")
    ours, theirs = model.predict_arrays(x), plain_arrays(model, x)
    assert ours.dtype == theirs.dtype == np.float16
    assert relative_difference(ours.astype("float32"), theirs.astype("float32")) <= 1e-2


@pytest.mark.skipif(not backend.numba_available(), reason="Numba is not installed")
def test_numba_hands_float16_windows_to_the_slicing_kernels():
    """Numba compiles no float16 loop: its sliding-window kernels give the
    slicing kernels' float16 results instead of a NotImplementedError."""
    from minires.kernels import numba_kernels
    x = images("float16", (2, 5, 5, 3))
    cols = numba_kernels.im2col(x, 3, 3, 2, 2)
    assert cols.dtype == np.float16
    np.testing.assert_array_equal(cols, slicing.im2col(x, 3, 3, 2, 2))
    np.testing.assert_array_equal(numba_kernels.col2im(cols, x.shape, 2, 2),
                                  slicing.col2im(cols, x.shape, 2, 2))
    out, argmax = numba_kernels.max_pool_forward(x, 3, 3, 2, 2)
    np.testing.assert_array_equal(out, slicing.max_pool_forward(x, 3, 3, 2, 2)[0])
    np.testing.assert_array_equal(numba_kernels.max_pool_backward(out, argmax, x.shape, 3, 3, 2, 2),
                                  slicing.max_pool_backward(out, argmax, x.shape, 3, 3, 2, 2))


# --- empty batches -------------------------------------------------------------------
def test_an_empty_batch_gives_an_empty_output(predict):
    assert predict(residual_net(), np.zeros((0, 6, 6, 3), np.float32)).shape == (0, 5)
    assert predict(residual_net(), np.zeros((0, 6, 6, 3), np.uint8)).dtype == np.float32
    assert predict(two_input_net(), [np.zeros((0, 4, 4, 2))] * 2).shape == (0, 3)


def test_an_empty_batch_of_unknown_image_size_and_several_outputs(predict):
    x_in = Input((None, None, 3), name="image")
    features = Conv2D(4, 3, strides=2, name="conv")(x_in)
    model = randomised(Model(x_in, [features, GlobalAveragePooling2D(name="gap")(features)]))
    shapes = [y.shape for y in predict(model, np.zeros((0, 9, 11, 3), np.float32))]
    assert shapes == [(0, 4, 5, 4), (0, 4)]


def test_an_empty_batch_is_still_checked(predict):
    with pytest.raises(ValueError, match=r"expects arrays of shape \(None, 6, 6, 3\), got \(0, 5, 5, 3\)"):
        predict(residual_net(), np.zeros((0, 5, 5, 3), np.float32))
    with pytest.raises(TypeError, match="dtype complex128"):
        predict(residual_net(), np.zeros((0, 6, 6, 3), complex))


# --- Python lists ----------------------------------------------------------------------
def test_a_list_of_one_array_is_the_one_input(predict):
    model, x = residual_net(), images("float32")
    np.testing.assert_array_equal(predict(model, [x]), predict(model, x))
    np.testing.assert_array_equal(predict(model, (x,)), predict(model, x))


def test_a_list_is_one_array_per_input(predict):
    with pytest.raises(ValueError, match="model 'residual_net' has 1 inputs, got 2 arrays"):
        predict(residual_net(), [images("float32"), images("float32")])
    with pytest.raises(ValueError, match=r"different numbers of samples: \[5, 4\]"):
        predict(two_input_net(), [np.zeros((5, 4, 4, 2)), np.zeros((4, 4, 4, 2))])


@pytest.mark.parametrize("x, got", [([1.0, 2.0, 3.0], "a list of float"),
                                    (images("float32").tolist(), "a list of list"),
                                    ([np.zeros((1, 6, 6, 3)), 1], "a list of int, ndarray"),
                                    ((), "an empty tuple"),
                                    (np.float32(1.0), "float32"),
                                    (np.array(1.0), "0-d array"),
                                    ("images", "str")])
def test_anything_else_is_refused_before_it_runs(predict, x, got):
    with pytest.raises(TypeError, match=rf"predict takes an array with a batch axis, or a list of "
                                        rf"them, one per model input; got {got} \(a list of "
                                        rf"numbers: np.asarray it first\)"):
        predict(residual_net(), x)
