"""The engine's fast paths against the layers as written, where they have gone
wrong before: a layer shared at two nodes (its gradients sum), the BN + ReLU
pair at the ReLU's kink, the inference plan's in-place Add, the plan's
staleness stamps through nested models, and a layer shared by two nested
models (its weights count once, as in Keras).

Each test compares the fast path with the plain one (``fast_training`` or
``fast_inference`` False), in float64, so that any difference is a bug, not
rounding."""
import numpy as np
import pytest

from conftest import plain_predict, relative_difference
from minires import backend
from minires.fast_ops import WinogradConv
from minires.layers import (Activation, Add, BatchNormalization, Conv2D, Dense, Flatten,
                            GlobalAveragePooling2D, Input, ReLU)
from minires.layers.normalization import BatchNormReLU
from minires.models import Model
from minires.optim import SGD


def float64_model(build):
    with backend.floatx_scope("float64"):
        return build()


def randomised(model, seed=0):
    """Random weights for every parameter, BN's variances positive."""
    rng = np.random.default_rng(seed)
    model.set_weights([rng.uniform(0.5, 1.5, w.shape) if name == "moving_variance"
                       else rng.standard_normal(w.shape)
                       for w, (_, name) in zip(model.weights, model.parameters(False))])
    return model


def training_step(model, x, dy, fast):
    """Output, input gradient, every gradient and weight after one forward and
    backward (the weights hold BN's moving statistics)."""
    model.fast_training = fast
    y = model.forward(x, training=True)
    dx = model.backward(dy)
    return ([y, dx] + [layer.grads[name].copy() for layer, name in model.parameters()]
            + [w.copy() for w in model.weights])


def assert_fast_step_matches_plain(model, x, dy):
    weights = [w.copy() for w in model.weights]
    plain = training_step(model, x, dy, fast=False)
    model.set_weights(weights)                          # the same moving statistics to start from
    fast = training_step(model, x, dy, fast=True)
    names = ["y", "dx"] + [f"d {layer.name}/{name}" for layer, name in model.parameters()] + [
        f"{layer.name}/{name}" for layer, name in model.parameters(False)]
    assert len(fast) == len(plain) == len(names)
    for name, expected, got in zip(names, plain, fast):
        np.testing.assert_allclose(got, expected, rtol=1e-11, atol=1e-12, err_msg=name)


# --- 1. every fast op of the gradient plan, its layer shared at two nodes --------------------------------
def twice_shared_net():
    """conv - BN - ReLU, then the SAME conv, BN and ReLU again: each fast op's layer at two
    nodes. 16 channels at 12x12: Winograd takes both conv calls (forward, dW and dx)."""
    x_in = Input((12, 12, 16))
    conv = Conv2D(16, 3, padding="same", bias_initializer="glorot_uniform", name="shared_conv")
    bn, relu = BatchNormalization(name="shared_bn"), ReLU(name="shared_relu")
    y = relu(bn(conv(relu(bn(conv(x_in))))))
    return Model(x_in, Dense(3)(GlobalAveragePooling2D()(y)))


def test_every_fast_op_sums_the_gradients_of_a_layer_called_twice(rng, monkeypatch):
    model = randomised(float64_model(twice_shared_net))
    ran = []
    for op, name in ((WinogradConv, "backward"), (BatchNormReLU, "forward")):
        def spy(*args, run=getattr(op, name), name=f"{op.__name__}.{name}", **kwargs):
            ran.append(name)
            return run(*args, **kwargs)
        monkeypatch.setattr(op, name, spy)
    x = rng.standard_normal((4, 12, 12, 16))
    dy = rng.standard_normal((4, 3))
    assert_fast_step_matches_plain(model, x, dy)
    assert sorted(ran) == ["BatchNormReLU.forward"] * 2 + ["WinogradConv.backward"] * 2   # at both nodes


# --- 2. BatchNormalization + ReLU as one op, at ReLU's kink --------------------------------
def bn_relu_with_exact_zeros():
    """A BN whose output a ReLU alone reads, with gamma * xhat + beta exactly 0 for
    channel 0 everywhere (gamma = beta = 0) and for channel 1 wherever x is 0
    (beta = 0 and a batch mean of exactly 0)."""
    x_in = Input((3, 3, 3))
    bn = BatchNormalization(name="bn")
    model = Model(x_in, ReLU(name="relu")(bn(x_in)))
    bn.set_weights([np.array([0.0, 1.5, 0.8]), np.array([0.0, 0.0, 0.3]),
                    np.array([0.0, 0.0, 0.1]), np.array([1.0, 2.0, 0.5])])
    return model


def kinked_inputs(rng):
    x = rng.standard_normal((4, 3, 3, 3))
    x[..., 1] = rng.permutation(np.tile([-2.0, -1.0, 0.0, 0.0, 1.0, 2.0], 6)).reshape(4, 3, 3)
    assert x[..., 1].mean() == 0                        # whole numbers: the mean is exactly 0
    return x


@pytest.mark.parametrize("training", [True, False], ids=["batch statistics", "moving statistics"])
def test_a_bn_relu_pair_cuts_at_zero_as_the_relu_does(rng, each_kernel_path, training):
    """relu(z) passes no gradient where z = 0 exactly (its mask is z > 0), so the
    pair's dbeta of channel 0 is 0; a mask of z >= 0 would give it sum dy."""
    model = float64_model(bn_relu_with_exact_zeros)
    assert any(isinstance(getattr(step.op, "layer", None), BatchNormReLU)
               for step in model.plan("gradient").steps)
    x, dy = kinked_inputs(rng), rng.standard_normal((4, 3, 3, 3))
    results = []
    for fast in (False, True):
        model.fast_training = fast
        y = model.forward(x, training=training, keep_cache=True)
        dx = model.backward(dy)
        bn = model.get_layer("bn")
        results.append([y, dx, bn.grads["beta"].copy(), bn.grads["gamma"].copy()])
    assert results[0][0].min() == 0.0 and results[0][2][0] == 0.0          # what the layers give
    for name, expected, got in zip(["y", "dx", "dbeta", "dgamma"], *results):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14, err_msg=name)


# --- 3. the inference plan's in-place Add, with views and values read again -----------------
def flattened_input_added_then_read_again():
    """Add(Flatten(x), Dense(Flatten(x))) then GlobalAveragePooling2D(x): Flatten hands the
    Add a VIEW of the caller's input, which a later layer reads."""
    x_in = Input((4, 4, 2))
    flat = Flatten()(x_in)
    summed = ReLU()(Add()([flat, Dense(32)(Flatten()(x_in))]))
    return Model(x_in, [Dense(2)(summed), GlobalAveragePooling2D()(x_in)])


def conv_output_viewed_added_then_read_again():
    """A conv's output read by a Flatten (a view of it) that an Add takes, and
    afterwards by a pooling: the Add must not write into the view."""
    x_in = Input((4, 4, 2))
    conv = Conv2D(2, 1, name="read_twice")(x_in)
    summed = Add()([Flatten()(conv), Flatten()(Conv2D(2, 1)(x_in))])
    return Model(x_in, [Activation("relu")(summed), GlobalAveragePooling2D()(conv)])


@pytest.mark.parametrize("build", [flattened_input_added_then_read_again,
                                   conv_output_viewed_added_then_read_again])
@pytest.mark.parametrize("view", [lambda big: big[:, 1:5, 2:6, :2],
                                  lambda big: big.reshape(6, 256)[:, :32].reshape(6, 4, 4, 2)],
                         ids=["sliced", "reshaped"])
def test_the_plan_never_writes_into_a_view_or_a_value_read_later(rng, build, view):
    model = randomised(float64_model(build))
    big = rng.standard_normal((6, 8, 8, 4))
    x = view(big)
    assert x.base is not None and x.shape == (6, 4, 4, 2)
    untouched = big.copy()
    fast = model.predict(x, verbose=0)
    assert np.array_equal(big, untouched)
    model.fast_inference = False
    plain = model.predict(x, verbose=0)
    for got, expected in zip(fast, plain):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert np.array_equal(big, untouched)


# --- 4. every way of changing the weights, seen through nested models ----------------------
def nested_models():
    """inner: conv - BN - ReLU - pool; outer: inner then a Dense head. Both are planned."""
    image = Input((6, 6, 3))
    y = ReLU()(BatchNormalization(name="bn")(Conv2D(4, 3, padding="same", name="conv")(image)))
    inner = Model(image, GlobalAveragePooling2D()(y), name="inner")
    x_in = Input((6, 6, 3))
    outer = Model(x_in, Dense(2, name="head")(inner(x_in)), name="outer")
    return randomised(inner, 1), randomised(outer, 2)


def other_weights(models):
    return [w + 0.25 * np.abs(w) + 0.1 for w in models[1].weights]


def outer_optimizer_step(models, x, tmp_path):
    outer = models[1]
    outer.backward(outer.forward(x, training=True))
    SGD(0.5).step(outer)


def outer_training_forward(models, x, tmp_path):
    models[1].forward(x + 3.0, training=True)          # the nested BN's moving statistics move


def outer_set_weights(models, x, tmp_path):
    models[1].set_weights(other_weights(models))


def layer_set_weights(models, x, tmp_path):
    bn = models[0].get_layer("bn")
    bn.set_weights([w * 1.5 + 0.1 for w in bn.get_weights()])


def outer_load_weights(models, x, tmp_path):
    outer = models[1]
    saved = [w.copy() for w in outer.weights]
    outer.set_weights(other_weights(models))
    outer.save_weights(tmp_path / "other.npz")
    outer.set_weights(saved)
    for model in models:
        model.predict(x, verbose=0)                    # plans of the saved weights again
    outer.load_weights(tmp_path / "other.npz")


def outer_to_the_cpu(models, x, tmp_path):
    models[1].to("cpu")


def flip_trainable(models, x, tmp_path):
    models[0].get_layer("conv").trainable = False


def assign_a_param(models, x, tmp_path):
    conv = models[0].get_layer("conv")
    conv.params["kernel"] = conv.params["kernel"] * -2.0


def params_update(models, x, tmp_path):
    bn = models[0].get_layer("bn")
    bn.params.update({"gamma": bn.params["gamma"] * 3.0, "moving_mean": bn.params["moving_mean"] + 1.0})


CHANGES = [outer_optimizer_step, outer_training_forward, outer_set_weights, layer_set_weights,
           outer_load_weights, assign_a_param, params_update]
SAME_VALUES = [outer_to_the_cpu, flip_trainable]       # a stale plan would give the right answer here


@pytest.mark.parametrize("change", CHANGES + SAME_VALUES, ids=lambda change: change.__name__)
def test_after_every_way_of_changing_the_weights_nested_plans_predict_as_the_layers(rng, change, tmp_path):
    """Both models hold a plan before the change; each must see it, whichever model
    the change went through (the inner model's plan, after the outer one trained)."""
    models = float64_model(nested_models)
    x = rng.standard_normal((5, 6, 6, 3))
    before = [model.predict(x, verbose=0) for model in models]
    change(models, x, tmp_path)
    for model, old in zip(models, before):
        new = model.predict(x, verbose=0)
        np.testing.assert_allclose(new, plain_predict(model, x), rtol=1e-11, atol=1e-12, err_msg=model.name)
        if change in CHANGES:
            assert relative_difference(new, old) > 1e-3, f"{change.__name__} changed nothing in {model.name}"


# --- 5. a layer shared by two nested models ---------------------------------------------
def two_models_sharing_a_layer():
    """left and right each end in the SAME Dense; outer runs both."""
    shared = Dense(4, name="shared")
    branches = []
    for side in ("left", "right"):
        x_in = Input((5,))
        branches.append(Model(x_in, shared(Dense(5, name=f"{side}_dense")(x_in)), name=side))
    x_in = Input((5,))
    outer = Model(x_in, Add()([branch(x_in) for branch in branches]), name="outer")
    return outer, shared


def test_a_layer_shared_by_two_nested_models_counts_once():
    """As Keras: outer.weights lists the shared layer's kernel and bias once."""
    outer, shared = float64_model(two_models_sharing_a_layer)
    per_layer = {"left_dense": 5 * 5 + 5, "right_dense": 5 * 5 + 5, "shared": 5 * 4 + 4}
    assert outer.count_params() == outer.count_trainable_params() == sum(per_layer.values())
    assert len(outer.weights) == len(outer.trainable_weights) == 6
    pairs = list(outer.parameters())
    assert len(pairs) == len({(id(layer), name) for layer, name in pairs}) == 6
    assert sum(w is shared.params["kernel"] for w in outer.weights) == 1


def test_a_layer_shared_by_two_nested_models_steps_once(rng):
    """Its gradient sums both calls; one step moves it by -lr * that sum, once."""
    outer, shared = float64_model(two_models_sharing_a_layer)
    x = rng.standard_normal((3, 5))
    outer.backward(outer.forward(x, training=True))
    before = {name: w.copy() for name, w in shared.params.items()}
    grads = {name: g.copy() for name, g in shared.grads.items()}
    SGD(0.1).step(outer)
    for name in ("kernel", "bias"):
        np.testing.assert_allclose(shared.params[name], before[name] - 0.1 * grads[name], rtol=1e-13,
                                   err_msg=name)
