"""Model: the functional API, backward through a graph (gradients summed where a
tensor feeds several layers), Keras's layer order, summary(), predict and the
train/eval modes, weights in and out (Keras HDF5 files), plot_model and
reproducible initialisation.

Where Keras is installed the same model-building code is run through Keras and
minires must agree with it; the literal lists below were generated once with
Keras 3.15 so that those checks also run without Keras. Tests taking ``device``
run their models there; the Keras comparisons stay on the CPU.
"""
import os
import re
import shutil

import h5py
import numpy as np
import pytest
from conftest import assert_gradients_match, on_cpu

import minires
from minires import gradcheck, layers, utils
from minires.backend import floatx_scope, like, to_device
from minires.layers import (Activation, Add, BatchNormalization, Concatenate, Conv2D, Dense, Input,
                            add, clear_session)
from minires.models import Model


# --- models shared by several tests ----------------------------------------------
def residual_net(L=layers, Model=Model):
    """A conv block with a projection shortcut, add([main, shortcut]), then an
    identity block and a classifier; automatic names. ``L``/``Model`` may be
    minires's or Keras's: the same code builds both."""
    x_in = L.Input((8, 8, 3))
    y = L.Conv2D(4, 3, padding="same")(x_in)
    y = L.BatchNormalization()(y)
    y = L.Activation("relu")(y)
    y = L.Conv2D(8, 3, padding="same")(y)
    y = L.BatchNormalization()(y)
    shortcut = L.Conv2D(8, 1)(x_in)
    shortcut = L.BatchNormalization()(shortcut)
    y = L.add([y, shortcut])
    y = L.Activation("relu")(y)
    z = L.Conv2D(8, 3, padding="same")(y)
    z = L.BatchNormalization()(z)
    z = L.add([z, y])
    z = L.Activation("relu")(z)
    return Model(x_in, L.Dense(3)(L.GlobalAveragePooling2D()(z)))


# [l.name for l in residual_net(keras.layers, keras.Model).layers], Keras 3.15.1.
# The projection shortcut (built last) sits between the main path's convs and BNs:
# Keras orders layers by depth, not by creation.
KERAS_RESIDUAL_LAYERS = [
    "input_layer", "conv2d", "batch_normalization", "activation", "conv2d_1", "conv2d_2",
    "batch_normalization_1", "batch_normalization_2", "add", "activation_1", "conv2d_3",
    "batch_normalization_3", "add_1", "activation_2", "global_average_pooling2d", "dense",
]

# Every connection of residual_net: (source layer, reading layer).
RESIDUAL_EDGES = [
    ("input_layer", "conv2d"), ("conv2d", "batch_normalization"),
    ("batch_normalization", "activation"), ("activation", "conv2d_1"),
    ("conv2d_1", "batch_normalization_1"), ("input_layer", "conv2d_2"),
    ("conv2d_2", "batch_normalization_2"), ("batch_normalization_1", "add"),
    ("batch_normalization_2", "add"), ("add", "activation_1"), ("activation_1", "conv2d_3"),
    ("conv2d_3", "batch_normalization_3"), ("batch_normalization_3", "add_1"),
    ("activation_1", "add_1"), ("add_1", "activation_2"),
    ("activation_2", "global_average_pooling2d"), ("global_average_pooling2d", "dense"),
]

# Parameters by hand: conv 3*3*3*4+4, BN 4*4, conv 3*3*4*8+8, conv 1*1*3*8+8, 2 BN 4*8,
# conv 3*3*8*8+8, BN 4*8, dense 8*3+3 (Keras's summary says the same: 1,163 / 1,107 / 56).
RESIDUAL_PARAMS = 112 + 16 + 296 + 32 + 32 + 32 + 584 + 32 + 27
RESIDUAL_NON_TRAINABLE = 2 * (4 + 8 + 8 + 8)


def randomize(model, rng):
    """Random values in every weight (BN moving variances positive), set directly
    on layer.params so these tests do not depend on set_weights."""
    for layer in model.layers:
        for name, param in layer.params.items():
            values = rng.uniform(0.5, 1.5, param.shape) if name == "moving_variance" \
                else 0.5 * rng.standard_normal(param.shape)
            param[...] = like(values, param)


def bn_by_hand(layer, x):
    p = layer.params
    return p["gamma"] * (x - p["moving_mean"]) / np.sqrt(p["moving_variance"] + layer.epsilon) + p["beta"]


def residual_by_hand(model, x):
    """Every intermediate of residual_net in inference mode, by name: the convs
    through their own layers (checked elsewhere against loops), the rest by hand."""
    get, v = model.get_layer, {}
    relu = lambda t: np.maximum(t, 0)             # noqa: E731
    v["conv2d"] = get("conv2d")(x)
    v["batch_normalization"] = bn_by_hand(get("batch_normalization"), v["conv2d"])
    v["activation"] = relu(v["batch_normalization"])
    v["conv2d_1"] = get("conv2d_1")(v["activation"])
    v["batch_normalization_1"] = bn_by_hand(get("batch_normalization_1"), v["conv2d_1"])
    v["conv2d_2"] = get("conv2d_2")(x)
    v["batch_normalization_2"] = bn_by_hand(get("batch_normalization_2"), v["conv2d_2"])
    v["add"] = v["batch_normalization_1"] + v["batch_normalization_2"]
    v["activation_1"] = relu(v["add"])
    v["conv2d_3"] = get("conv2d_3")(v["activation_1"])
    v["batch_normalization_3"] = bn_by_hand(get("batch_normalization_3"), v["conv2d_3"])
    v["add_1"] = v["batch_normalization_3"] + v["activation_1"]
    v["activation_2"] = relu(v["add_1"])
    v["global_average_pooling2d"] = v["activation_2"].mean(axis=(1, 2))
    dense = get("dense").params
    v["dense"] = v["global_average_pooling2d"] @ dense["kernel"] + dense["bias"]
    return v


def close(actual, expected, tol=1e-5):
    np.testing.assert_allclose(on_cpu(actual), on_cpu(expected), rtol=tol, atol=tol)


@pytest.fixture
def keras():
    """Keras 3 on the torch backend; the test is skipped where it is missing."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    keras.backend.clear_session()
    return keras


@pytest.fixture
def images(rng):
    return rng.standard_normal((4, 8, 8, 3)).astype("float32")


# --- 1. functional API -------------------------------------------------------------
def test_forward_equals_the_layers_called_by_hand(rng, images, device):
    model = residual_net().to(device)
    randomize(model, rng)
    images = to_device(images, device)
    expected = residual_by_hand(model, images)["dense"]
    assert model.output.shape == (None, 3)
    close(model.forward(images), expected)
    close(model(images), expected)


def test_multi_input_multi_output(rng, device):
    a_in, b_in = Input((4,), name="a"), Input((3,), name="b")
    s = Add(name="sum")([Dense(5, name="dense_a")(a_in), Dense(5, name="dense_b")(b_in)])
    model = Model([a_in, b_in], [Dense(2, name="head")(s), Concatenate(name="cat")([s, a_in])])
    randomize(model.to(device), rng)
    a, b = (to_device(rng.standard_normal(shape), device) for shape in [(6, 4), (6, 3)])
    head, cat = model.forward([a, b])
    p = {layer.name: layer.params for layer in model.layers}
    s_hand = (a @ p["dense_a"]["kernel"] + p["dense_a"]["bias"]
              + b @ p["dense_b"]["kernel"] + p["dense_b"]["bias"])
    close(head, s_hand @ p["head"]["kernel"] + p["head"]["bias"])
    close(cat, np.concatenate([s_hand, a], axis=1))
    assert model.input == [a_in, b_in] and len(model.output) == 2

    with pytest.raises(ValueError, match="has 2 inputs, got 1 arrays"):
        model.forward(a)
    with pytest.raises(ValueError, match=r"input layer 'b' expects arrays of shape "
                                         r"\(None, 3\), got \(6, 4\)"):
        model.forward([a, a])


def test_inputs_are_taken_in_the_order_the_model_lists_them(rng, device):
    a_in, b_in = Input((2,), name="a"), Input((2,), name="b")
    model = Model([b_in, a_in], Concatenate()([a_in, b_in]))
    a, b = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
    close(model.forward([to_device(b, device), to_device(a, device)]), np.concatenate([a, b], axis=1))


def test_feature_extraction_returns_the_intermediates(rng, images, device):
    model = residual_net().to(device)
    randomize(model, rng)
    images = to_device(images, device)
    names = ["conv2d", "batch_normalization_2", "add", "activation_2", "dense"]
    features = Model(model.input, [model.get_layer(n).output for n in names])
    by_hand = residual_by_hand(model, images)
    outputs = features.forward(images)
    assert len(outputs) == len(names)
    for name, output in zip(names, outputs):
        close(output, by_hand[name])


def test_feature_extractor_holds_only_the_layers_it_needs():
    model = residual_net()
    features = Model(model.input, model.get_layer("add").output)
    assert [layer.name for layer in features.layers] == KERAS_RESIDUAL_LAYERS[:9]
    assert features.get_layer("conv2d_2") is model.get_layer("conv2d_2")   # layers are shared


def test_disconnected_graph_is_rejected():
    a_in, b_in = Input((4,), name="a"), Input((4,), name="stray")
    y = add([Dense(4)(a_in), Dense(4)(b_in)])
    with pytest.raises(ValueError, match="graph disconnected.*input layer 'stray'.*not among the inputs"):
        Model(a_in, y)


@pytest.mark.parametrize("output", [np.zeros((1, 4)), "dense", None])
def test_outputs_must_be_keras_tensors(output):
    x_in = Input((4,))
    with pytest.raises(TypeError, match="inputs and outputs must be KerasTensors"):
        Model(x_in, output)
    with pytest.raises(TypeError, match="must be KerasTensors"):
        Model(x_in, [Dense(2)(x_in), output])


def test_inputs_must_come_from_input():
    x_in = Input((4,))
    hidden = Dense(4)(x_in)
    with pytest.raises(ValueError, match=r"inputs must come from Input\(\.\.\.\)"):
        Model(hidden, Dense(2)(hidden))


def test_duplicate_layer_names_are_rejected():
    x_in = Input((6, 6, 2))
    y = Conv2D(2, 3, name="twin")(Conv2D(2, 3, name="twin")(x_in))
    with pytest.raises(ValueError, match=r"layer names must be unique, repeated: \['twin'\]"):
        Model(x_in, y)


# --- 2. backward -------------------------------------------------------------------
def two_branch_model():
    """x -> conv_a, x -> conv_b, add: x feeds two layers."""
    x_in = Input((5, 5, 2))
    a = Conv2D(3, 3, padding="same", activation="tanh", name="conv_a")(x_in)
    b = Conv2D(3, 1, name="conv_b")(x_in)
    return Model(x_in, Add(name="add")([a, b]))


def test_input_feeding_two_branches_gets_the_sum_of_their_gradients(rng, device):
    with floatx_scope("float64"):
        model = two_branch_model().to(device)
    x = to_device(rng.standard_normal((2, 5, 5, 2)), device)
    report = gradcheck.check_model(model, x, max_entries=None)
    assert set(report) == {"input 0", "conv_a/kernel", "conv_a/bias", "conv_b/kernel", "conv_b/bias"}
    assert_gradients_match(report, "Model: input feeding two branches")

    dy = to_device(rng.standard_normal((2, 5, 5, 3)), device)
    model.forward(x, keep_cache=True)
    dx = model.backward(dy)
    conv_a, conv_b = model.get_layer("conv_a"), model.get_layer("conv_b")
    da = conv_a.backward(dy, conv_a.forward(x)[1])
    db = conv_b.backward(dy, conv_b.forward(x)[1])
    close(dx, da + db, 1e-12)
    assert np.abs(da).max() > 0.1 and np.abs(db).max() > 0.1    # neither branch alone will do


def test_hidden_tensor_feeding_two_branches_passes_the_summed_gradient_on(rng, device):
    """The sum must be complete before the layer that produced the tensor runs
    its backward: stem's kernel gradient sees both branches."""
    with floatx_scope("float64"):
        x_in = Input((5, 5, 2))
        h = Conv2D(3, 3, padding="same", activation="tanh", name="stem")(x_in)
        a = Conv2D(3, 3, padding="same", name="branch_a")(h)
        b = Conv2D(3, 1, activation="tanh", name="branch_b")(h)
        c = Dense(3, name="branch_c")(h)
        model = Model(x_in, add([a, b, c])).to(device)
    x = to_device(rng.standard_normal((2, 5, 5, 2)), device)
    report = gradcheck.check_model(model, x, max_entries=None)
    assert_gradients_match(report, "Model: hidden tensor feeding three branches")


def test_multi_output_backward_matches_the_chain_rule_by_hand(rng, device):
    """Outputs [s, head(s)]: s receives its own gradient plus head's."""
    with floatx_scope("float64"):
        a_in, b_in = Input((4,), name="a"), Input((3,), name="b")
        da_layer, db_layer = Dense(5, name="dense_a"), Dense(5, name="dense_b")
        s = Add(name="sum")([da_layer(a_in), db_layer(b_in)])
        head = Dense(2, activation="tanh", name="head")
        model = Model([a_in, b_in], [s, head(s)]).to(device)
    a, b, g_s, g_head = (to_device(rng.standard_normal(shape), device)
                         for shape in [(6, 4), (6, 3), (6, 5), (6, 2)])
    model.forward([a, b], keep_cache=True)
    d_a, d_b = model.backward([g_s, g_head])
    model_grads = {name: model.get_layer(name).grads["kernel"].copy()
                   for name in ("dense_a", "dense_b", "head")}

    model.zero_grads()
    (ya, cache_a), (yb, cache_b) = da_layer.forward(a), db_layer.forward(b)
    _, head_cache = head.forward(ya + yb)
    d_s = g_s + head.backward(g_head, head_cache)
    close(d_a, da_layer.backward(d_s, cache_a), 1e-12)
    close(d_b, db_layer.backward(d_s, cache_b), 1e-12)
    for layer in (da_layer, db_layer, head):
        close(model_grads[layer.name], layer.grads["kernel"], 1e-12)


def test_backward_needs_one_gradient_per_output(rng):
    a_in = Input((4,))
    hidden = Dense(3)(a_in)
    model = Model(a_in, [hidden, Dense(2)(hidden)])
    model.forward(rng.standard_normal((2, 4)), keep_cache=True)
    with pytest.raises(ValueError):
        model.backward([np.ones((2, 3), np.float32)])


def test_backward_fills_every_layers_grads_and_zero_grads_clears_them(rng, images, device):
    model = residual_net().to(device)
    randomize(model, rng)
    out = model.forward(to_device(images, device), training=True)
    dx = model.backward(to_device(rng.standard_normal(out.shape).astype("float32"), device))
    assert dx.shape == images.shape
    for layer in model.layers:
        assert sorted(layer.grads) == sorted(layer.trainable_names()), layer.name
        for name, grad in layer.grads.items():
            assert grad.shape == layer.params[name].shape, (layer.name, name)
            assert np.isfinite(grad).all() and np.abs(grad).max() > 0, (layer.name, name)
    assert "moving_mean" not in model.get_layer("batch_normalization").grads
    model.zero_grads()
    assert all(layer.grads == {} for layer in model.layers)


def test_residual_net_passes_a_gradient_check_in_inference_mode(rng, device):
    with floatx_scope("float64"):
        model = residual_net().to(device)
    randomize(model, rng)
    x = to_device(rng.standard_normal((2, 8, 8, 3)), device)
    report = gradcheck.check_model(model, x, training=False, max_entries=8)
    assert len(report) == 1 + 2 * 4 + 2 * 4 + 2         # input, 4 convs, 4 BNs, dense
    assert_gradients_match(report, "Model: residual net")


# --- 3. Keras's layer order --------------------------------------------------------
def test_layer_order_is_keras_order():
    assert [layer.name for layer in residual_net().layers] == KERAS_RESIDUAL_LAYERS


def test_layer_order_equals_keras_for_the_same_code(keras):
    theirs = residual_net(keras.layers, keras.Model)
    clear_session()
    ours = residual_net()
    assert [layer.name for layer in theirs.layers] == KERAS_RESIDUAL_LAYERS   # the literal is current
    assert [(l.name, type(l).__name__) for l in ours.layers] == \
        [(l.name, type(l).__name__) for l in theirs.layers]
    assert [l.output.shape for l in ours.layers] == [tuple(l.output.shape) for l in theirs.layers]


# --- 4. summary --------------------------------------------------------------------
def summary_net(L=layers, Model=Model):
    """Big enough for thousands separators; one BN of 512 channels."""
    x_in = L.Input((8, 8, 3), name="img")
    main = L.Conv2D(512, 1, name="wide")(x_in)                       # 3*512 + 512 = 2,048
    main = L.BatchNormalization(name="wide_bn")(main)                # 4*512, 2*512 non-trainable
    shortcut = L.Conv2D(512, 1, name="short")(x_in)                  # 2,048
    y = L.add([main, shortcut], name="merge")
    y = L.GlobalAveragePooling2D(name="gap")(y)
    return Model(x_in, L.Dense(10, name="fc")(y), name="tiny")        # 512*10 + 10 = 5,130


def test_summary_table():
    lines = []
    summary_net().summary(print_fn=lines.append)
    text = "\n".join(lines)
    rows = text.splitlines()
    assert rows[0] == 'Model: "tiny"'
    header = next(r for r in rows if r.startswith("Layer (type)"))
    assert re.fullmatch(r"Layer \(type\)\s+Output Shape\s+Param #\s+Connected to", header)
    row = {r.split()[0]: r for r in rows if r.split() and r.split()[0] in
           {"img", "wide", "wide_bn", "short", "merge", "gap", "fc"}}
    assert re.fullmatch(r"merge \(Add\)\s+\(None, 8, 8, 512\)\s+0\s+wide_bn\[0\]\[0\], short\[0\]\[0\]",
                        row["merge"])
    assert re.fullmatch(r"wide \(Conv2D\)\s+\(None, 8, 8, 512\)\s+2,048\s+img\[0\]\[0\]", row["wide"])
    assert re.fullmatch(r"wide_bn \(BatchNormalization\)\s+\(None, 8, 8, 512\)\s+2,048\s+wide\[0\]\[0\]",
                        row["wide_bn"])
    assert re.fullmatch(r"img \(InputLayer\)\s+\(None, 8, 8, 3\)\s+0\s+-", row["img"])
    assert re.fullmatch(r"fc \(Dense\)\s+\(None, 10\)\s+5,130\s+gap\[0\]\[0\]", row["fc"])
    assert "Total params: 11,274" in rows                             # 3 x 2,048 + 5,130
    assert "Trainable params: 10,250" in rows
    assert "Non-trainable params: 1,024" in rows                      # 2 x 512 channels


def test_summary_counts_equal_keras(keras):
    theirs = summary_net(keras.layers, keras.Model)
    trainable = sum(int(np.prod(w.shape)) for w in theirs.trainable_weights)
    non_trainable = sum(int(np.prod(w.shape)) for w in theirs.non_trainable_weights)
    lines = []
    summary_net().summary(print_fn=lines.append)
    rows = "\n".join(lines).splitlines()
    assert f"Total params: {theirs.count_params():,}" in rows
    assert f"Trainable params: {trainable:,}" in rows
    assert f"Non-trainable params: {non_trainable:,}" in rows


# --- 5. predict, train/eval, weights -------------------------------------------------
def test_predict_in_batches_equals_one_forward(rng, device):
    model = residual_net().to(device)
    randomize(model, rng)
    x = to_device(rng.standard_normal((7, 8, 8, 3)).astype("float32"), device)
    whole = model.forward(x, training=False)
    for batch_size in (1, 3, 7, 32):
        close(model.predict(x, batch_size=batch_size), whole, 1e-6)


def test_predict_with_several_inputs_and_outputs(rng, device):
    a_in, b_in = Input((4,)), Input((4,))
    s = add([Dense(3)(a_in), Dense(3)(b_in)])
    model = Model([a_in, b_in], [s, Dense(2)(s)]).to(device)
    a, b = (to_device(rng.standard_normal((5, 4)), device) for _ in range(2))
    whole = model.forward([a, b])
    batched = model.predict([a, b], batch_size=2)
    assert len(batched) == 2
    for ours, expected in zip(batched, whole):
        close(ours, expected, 1e-6)


def test_train_and_eval_switch_batch_norm(rng, images, device):
    model = residual_net().to(device)
    randomize(model, rng)
    images = to_device(images, device)
    bn = model.get_layer("batch_normalization")
    assert model.training is False
    before = on_cpu(bn.params["moving_mean"])

    model.forward(images)                                         # eval by default
    np.testing.assert_array_equal(on_cpu(bn.params["moving_mean"]), before)
    assert model.train() is model and model.training
    model.forward(images)
    moved = on_cpu(bn.params["moving_mean"])
    assert not np.allclose(moved, before)
    model.predict(images)                                         # always inference
    np.testing.assert_array_equal(on_cpu(bn.params["moving_mean"]), moved)
    assert model.eval() is model and not model.training
    model.forward(images)
    np.testing.assert_array_equal(on_cpu(bn.params["moving_mean"]), moved)
    model.forward(images, training=True)                          # explicit beats the mode
    assert not np.allclose(on_cpu(bn.params["moving_mean"]), moved)


def test_training_mode_normalises_with_batch_statistics(rng, device):
    x_in = Input((3, 3, 2))
    model = Model(x_in, BatchNormalization(name="bn")(x_in)).to(device)
    x = rng.standard_normal((4, 3, 3, 2)) * 3 + 2
    trained = model.train().forward(to_device(x, device))
    close(trained, (x - x.mean(axis=(0, 1, 2))) / np.sqrt(x.var(axis=(0, 1, 2)) + 1e-3))
    bn = model.get_layer("bn")
    close(model.eval().forward(to_device(x, device)), bn_by_hand(bn, to_device(x, device)))


def test_get_and_set_weights_round_trip(rng, images, device):
    minires.set_random_seed(1)
    source = residual_net().to(device)
    randomize(source, rng)
    images = to_device(images, device)
    weights = source.get_weights()
    assert len(weights) == 4 * 2 + 4 * 4 + 2                   # 4 convs, 4 BNs, dense
    conv, bn = source.get_layer("conv2d"), source.get_layer("batch_normalization")
    expected_first = [conv.params["kernel"], conv.params["bias"],
                      *(bn.params[n] for n in ("gamma", "beta", "moving_mean", "moving_variance"))]
    for ours, expected in zip(weights, expected_first):            # Keras's order
        np.testing.assert_array_equal(on_cpu(ours), on_cpu(expected))
    clear_session()
    minires.set_random_seed(2)
    target = residual_net().to(device)
    assert not np.allclose(on_cpu(target.forward(images)), on_cpu(source.forward(images)))
    target.set_weights([w.copy() for w in weights])
    np.testing.assert_array_equal(on_cpu(target.forward(images)), on_cpu(source.forward(images)))
    for ours, theirs in zip(target.get_weights(), weights):
        np.testing.assert_array_equal(on_cpu(ours), on_cpu(theirs))


def test_set_weights_takes_arrays_from_either_device(rng, images, device):
    """NumPy weights into a model on the GPU (and back): CuPy itself refuses to
    copy a NumPy array in by assignment, so set_weights moves each first."""
    source = residual_net()
    randomize(source, rng)
    target = residual_net().to(device)
    target.set_weights(source.get_weights())
    close(target.forward(to_device(images, device)), source.forward(images))
    source.set_weights(target.get_weights())
    for ours, theirs in zip(source.get_weights(), target.get_weights()):
        np.testing.assert_array_equal(ours, on_cpu(theirs))


def test_set_weights_errors_name_the_layer():
    model = residual_net()
    weights = [w.copy() for w in model.get_weights()]
    assert weights[6].shape == (3, 3, 4, 8)                     # conv2d_1's kernel
    bad = weights[:6] + [np.zeros((3, 3, 4, 9), np.float32)] + weights[7:]
    with pytest.raises(ValueError, match=r"layer 'conv2d_1': weight 'kernel' has shape \(3, 3, 4, 8\), "
                                         r"got \(3, 3, 4, 9\)"):
        model.set_weights(bad)
    with pytest.raises(ValueError, match="has 26 weight arrays, got 25"):
        model.set_weights(weights[:-1])


def test_get_weights_is_a_snapshot(images, device):
    model = residual_net().to(device)
    images = to_device(images, device)
    saved = model.get_weights()
    expected = on_cpu(model.forward(images))
    model.set_weights([np.zeros(w.shape, w.dtype) for w in saved])
    model.set_weights(saved)                                     # back to where it was
    np.testing.assert_array_equal(on_cpu(model.forward(images)), expected)


def test_count_params():
    model = residual_net()
    assert model.count_params() == RESIDUAL_PARAMS == 1_163
    assert model.count_trainable_params() == RESIDUAL_PARAMS - RESIDUAL_NON_TRAINABLE == 1_107
    model.get_layer("conv2d_3").trainable = False                # a frozen layer's weights stop counting
    assert model.count_trainable_params() == 1_107 - 584
    assert model.count_params() == 1_163


def test_weights_and_counts_equal_keras(keras, rng, images):
    """minires's get_weights order is Keras's: weights moved across in either
    direction give the same outputs."""
    theirs = residual_net(keras.layers, keras.Model)
    clear_session()
    ours = residual_net()
    assert [w.shape for w in ours.get_weights()] == [tuple(w.shape) for w in theirs.get_weights()]
    assert ours.count_params() == theirs.count_params()
    assert ours.count_trainable_params() == sum(int(np.prod(w.shape)) for w in theirs.trainable_weights)
    randomize(ours, rng)
    theirs.set_weights(ours.get_weights())
    close(ours.forward(images), theirs.predict(images, verbose=0))


# --- 6. get_layer -------------------------------------------------------------------
def test_get_layer_by_name_and_index():
    model = residual_net()
    conv = model.get_layer("conv2d_1")
    assert isinstance(conv, Conv2D) and conv.name == "conv2d_1" and conv.filters == 8
    assert model.get_layer(index=4) is conv
    assert model.get_layer(index=0).name == "input_layer"
    assert model.get_layer(index=-1).name == "dense"


def test_get_layer_unknown_name_suggests_near_matches():
    model = residual_net()
    with pytest.raises(KeyError) as error:
        model.get_layer("conv2d_l")
    message = error.value.args[0]
    assert "no layer named 'conv2d_l'" in message and "'conv2d_1'" in message
    with pytest.raises(KeyError) as error:
        model.get_layer("zzzzzz")
    assert "did you mean" not in error.value.args[0]


# --- 7. load_weights ----------------------------------------------------------------
def small_net(L=layers, Model=Model):
    x_in = L.Input((6, 6, 2), name="img")
    y = L.Conv2D(3, 3, name="c1")(x_in)
    y = L.BatchNormalization(name="bn1")(y)
    y = L.Activation("relu", name="relu1")(y)
    y = L.GlobalAveragePooling2D(name="gap")(y)
    return Model(x_in, L.Dense(2, name="fc")(y))


def random_weights(model, rng):
    """{layer name: [(Keras-2 weight name, array)]} for every layer, weightless ones included."""
    return {layer.name: [(f"{layer.name}/{name}:0",
                          rng.uniform(0.5, 1.5, p.shape).astype(p.dtype) if name == "moving_variance"
                          else rng.standard_normal(p.shape).astype(p.dtype))
                         for name, p in layer.params.items()]
            for layer in model.layers}


def write_legacy_h5(path, entries, text=bytes, nested=False):
    """Keras 2's layout, written with h5py: root (or model_weights) attribute
    layer_names, each layer a group with attribute weight_names, each weight a
    dataset at <layer>/<layer>/kernel:0. ``text``: bytes or str attributes."""
    def strings(values):
        values = list(values)
        if text is bytes:        # fixed-length bytes, read back as bytes (Keras 2 wrote np.asarray(...))
            return np.array([v.encode("utf8") for v in values]) if values else np.array([])
        return values            # h5py stores a list of str as variable-length UTF-8 strings

    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if nested else f
        root.attrs["layer_names"] = strings(name for name, _ in entries)
        for layer_name, weights in entries:
            group = root.create_group(layer_name)
            group.attrs["weight_names"] = strings(w for w, _ in weights)   # [] -> float array, as Keras
            for weight_name, array in weights:
                group.create_dataset(weight_name, data=array)
    return path


def assert_loaded(model, weights):
    for layer in model.layers:
        assert len(layer.params) == len(weights[layer.name])
        for (slot, param), (_, array) in zip(layer.params.items(), weights[layer.name]):
            np.testing.assert_array_equal(on_cpu(param), on_cpu(array), err_msg=f"{layer.name}/{slot}")


@pytest.mark.parametrize("nested", [False, True], ids=["weights-file", "full-model-file"])
@pytest.mark.parametrize("text", [bytes, str], ids=["bytes-attrs", "str-attrs"])
def test_load_legacy_layout_by_order(tmp_path, rng, device, text, nested):
    model = small_net().to(device)
    weights = random_weights(model, rng)
    # Other layer names in the file: pairing by order ignores names.
    entries = [(f"old_{name}", [(w.replace(name, f"old_{name}"), a) for w, a in ws])
               for name, ws in weights.items()]
    path = write_legacy_h5(tmp_path / "w.h5", entries, text, nested)
    with h5py.File(path, "r") as f:                              # the file holds what it should
        root = f["model_weights"] if nested else f
        assert all(isinstance(v, text) for v in root.attrs["layer_names"])
        assert all(isinstance(v, text) for v in root["old_c1"].attrs["weight_names"])
        assert root["old_c1/old_c1/kernel:0"].shape == (3, 3, 2, 3)
    assert model.load_weights(path) == []
    assert_loaded(model, weights)


@pytest.mark.parametrize("nested", [False, True], ids=["weights-file", "full-model-file"])
@pytest.mark.parametrize("text", [bytes, str], ids=["bytes-attrs", "str-attrs"])
def test_load_legacy_layout_by_name(tmp_path, rng, device, text, nested):
    """The file's layers in another order, one the model lacks (ignored, as
    documented); a model layer absent from the file keeps its weights."""
    model = small_net().to(device)
    weights = random_weights(model, rng)
    kept = {name: p.copy() for name, p in model.get_layer("fc").params.items()}
    ghost = ("ghost", [("ghost/kernel:0", np.ones((7, 7), np.float32))])
    entries = [ghost] + [(n, ws) for n, ws in reversed(weights.items()) if n != "fc"]
    path = write_legacy_h5(tmp_path / "w.h5", entries, text, nested)
    assert model.load_weights(path, by_name=True) == []
    weights["fc"] = [(name, value) for name, value in kept.items()]
    assert_loaded(model, weights)


def keras_residual_with_random_weights(keras, rng):
    model = residual_net(keras.layers, keras.Model)
    model.set_weights([rng.uniform(0.5, 1.5, v.shape).astype("float32") if v.name == "moving_variance"
                       else 0.5 * rng.standard_normal(v.shape).astype("float32") for v in model.weights])
    return model


@pytest.mark.parametrize("by_name", [False, True], ids=["by-order", "by-name"])
@pytest.mark.parametrize("filename", ["k.weights.h5", "m.h5"], ids=["keras3-save_weights", "legacy-save"])
def test_files_written_by_keras(keras, tmp_path, rng, images, filename, by_name):
    theirs = keras_residual_with_random_weights(keras, rng)
    path = str(tmp_path / filename)
    if filename.endswith(".weights.h5"):
        theirs.save_weights(path)
    else:
        theirs.save(path)                         # Keras 3 writes the legacy full-model layout
    expected = theirs.predict(images, verbose=0)
    clear_session()
    ours = residual_net()
    assert not np.allclose(ours.forward(images), expected, atol=1e-3)
    assert ours.load_weights(path, by_name=by_name) == []
    close(ours.forward(images), expected)
    close(ours.predict(images, batch_size=3), expected)


def test_keras3_file_by_order_follows_class_paths_not_names(keras, tmp_path, rng, images):
    """A Keras 3 file stores layers under layers/conv2d, layers/conv2d_1, ...
    by class; our layers may carry other names and still load by order."""
    theirs = keras_residual_with_random_weights(keras, rng)
    path = str(tmp_path / "k.weights.h5")
    theirs.save_weights(path)
    clear_session()
    Conv2D(1, 1), BatchNormalization(), Dense(1)               # shift the automatic names
    ours = residual_net()
    assert ours.layers[1].name == "conv2d_1"
    ours.load_weights(path)
    close(ours.forward(images), theirs.predict(images, verbose=0))


def write_keras3_h5(path, model, weights):
    """Keras 3's save_weights layout, written with h5py: layers/<class path>/vars/0, 1, ...
    with the layer's name as attribute 'name' of vars."""
    from minires.io.keras_h5 import keras3_paths
    with h5py.File(path, "w") as f:
        for layer, class_path in zip(model.layers, keras3_paths(model.layers)):
            variables = f.create_group(f"layers/{class_path}/vars")
            variables.attrs["name"] = layer.name
            for i, (_, array) in enumerate(weights[layer.name]):
                variables.create_dataset(str(i), data=array)
        f.create_group("vars").attrs["name"] = model.name
    return path


@pytest.mark.parametrize("by_name", [False, True], ids=["by-order", "by-name"])
def test_load_keras3_layout(tmp_path, rng, device, by_name):
    model = small_net().to(device)
    weights = random_weights(model, rng)
    path = write_keras3_h5(tmp_path / "w.weights.h5", model, weights)
    with h5py.File(path, "r") as f:
        assert sorted(f["layers"]) == ["activation", "batch_normalization", "conv2d", "dense",
                                       "global_average_pooling2d", "input_layer"]
        assert f["layers/conv2d/vars"].attrs["name"] == "c1"
    assert model.load_weights(path, by_name=by_name) == []
    assert_loaded(model, weights)


def test_keras3_paths_count_per_class_whatever_the_names():
    """The paths Keras 3 gives residual_net's layers in a .weights.h5 file (read
    off a file Keras wrote), also when our automatic names have moved on."""
    from minires.io.keras_h5 import keras3_paths
    Conv2D(1, 1), BatchNormalization(), Activation("relu"), Add()       # shift the automatic names
    model = residual_net()
    assert model.layers[1].name == "conv2d_1"
    assert keras3_paths(model.layers) == KERAS_RESIDUAL_LAYERS


def test_keras3_file_by_name_uses_the_layer_names(keras, tmp_path, rng, images):
    """small_net's names (c1, bn1, fc) differ from the file's class paths
    (conv2d, batch_normalization, dense): by_name must read the names."""
    theirs = small_net(keras.layers, keras.Model)
    theirs.set_weights([rng.uniform(0.5, 1.5, v.shape).astype("float32") for v in theirs.weights])
    path = str(tmp_path / "k.weights.h5")
    theirs.save_weights(path)
    x = rng.standard_normal((3, 6, 6, 2)).astype("float32")
    ours = small_net()
    ours.load_weights(path, by_name=True)
    close(ours.forward(x), theirs.predict(x, verbose=0))


def test_wrong_number_of_weighted_layers(tmp_path, rng):
    model = small_net()
    weights = random_weights(model, rng)
    del weights["bn1"]
    path = write_legacy_h5(tmp_path / "w.h5", list(weights.items()))
    with pytest.raises(ValueError, match=r"holds weights for 2 layers but model '.*' has 3 layers "
                                         r"with weights; load by_name=True"):
        model.load_weights(path)


@pytest.mark.parametrize("by_name", [False, True])
def test_wrong_shape_names_layer_and_both_shapes(tmp_path, rng, by_name):
    model = small_net()
    weights = random_weights(model, rng)
    weights["c1"][0] = ("c1/kernel:0", np.zeros((3, 3, 2, 5), np.float32))
    path = write_legacy_h5(tmp_path / "w.h5", list(weights.items()))
    with pytest.raises(ValueError, match=r"layer 'c1', weight 'kernel': model expects shape \(3, 3, 2, 3\), "
                                         r"the file's 'c1/kernel:0' has shape \(3, 3, 2, 5\)"):
        model.load_weights(path, by_name=by_name)


def test_wrong_weight_count_in_a_layer(tmp_path, rng):
    model = small_net()
    weights = random_weights(model, rng)
    weights["bn1"] = weights["bn1"][:2]
    path = write_legacy_h5(tmp_path / "w.h5", list(weights.items()))
    with pytest.raises(ValueError, match=r"layer 'bn1' has 4 weights \['gamma', 'beta', 'moving_mean', "
                                         r"'moving_variance'\], the file's layer 'bn1' has 2"):
        model.load_weights(path)


def test_skip_mismatch_skips_that_layer_by_name(tmp_path, rng, device):
    model = small_net().to(device)
    weights = random_weights(model, rng)
    c1_before = {n: p.copy() for n, p in model.get_layer("c1").params.items()}
    weights["c1"][0] = ("c1/kernel:0", np.zeros((1, 1, 2, 3), np.float32))
    path = write_legacy_h5(tmp_path / "w.h5", list(weights.items()))
    assert model.load_weights(path, by_name=True, skip_mismatch=True) == ["c1"]
    weights["c1"] = list(c1_before.items())
    assert_loaded(model, weights)
    # Documented: skip_mismatch only applies with by_name; by order a mismatch still raises.
    with pytest.raises(ValueError, match="layer 'c1', weight 'kernel'"):
        model.load_weights(path, skip_mismatch=True)


def test_files_that_are_not_keras_weights(tmp_path):
    model = small_net()
    text = tmp_path / "notes.h5"
    text.write_text("these are not weights\n")
    with pytest.raises(ValueError, match=r"notes\.h5 is not a readable HDF5 file"):
        model.load_weights(text)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("data", data=np.zeros(3))
    with pytest.raises(ValueError, match="HDF5 but holds no Keras weights"):
        model.load_weights(tmp_path / "other.h5")
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        model.load_weights(tmp_path / "missing.h5")


# --- 8. plot_model ------------------------------------------------------------------
def test_plot_model_writes_dot(tmp_path):
    model = residual_net()
    target = tmp_path / "m.dot"
    assert utils.plot_model(model, to_file=str(target), show_shapes=True) == str(target)
    text = target.read_text()
    assert text.startswith("digraph")
    for name in KERAS_RESIDUAL_LAYERS:
        assert re.search(rf'^\s*"{name}" \[label="{name}: \w+', text, re.M), name
    edges = re.findall(r'^\s*"(\w+)" -> "(\w+)";$', text, re.M)
    assert len([line for line in text.splitlines() if "->" in line]) == len(RESIDUAL_EDGES) == 17
    assert sorted(edges) == sorted(RESIDUAL_EDGES)
    conv_line = next(line for line in text.splitlines() if line.strip().startswith('"conv2d_2" ['))
    assert "(None, 8, 8, 8)" in conv_line
    assert "(None, 3)" in next(line for line in text.splitlines() if line.strip().startswith('"dense" ['))
    assert "(None" not in utils.model_to_dot(model, show_shapes=False)


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot program is not installed")
def test_plot_model_png_with_graphviz(tmp_path):
    target = tmp_path / "m.png"
    utils.plot_model(residual_net(), to_file=str(target))
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(shutil.which("dot") is not None, reason="Graphviz's dot program is installed")
def test_plot_model_png_without_graphviz_says_what_is_missing(tmp_path):
    with pytest.raises(RuntimeError, match=r"needs Graphviz's 'dot' program.*a '\.dot' file needs nothing"):
        utils.plot_model(residual_net(), to_file=str(tmp_path / "m.png"))
    assert list(tmp_path.iterdir()) == []                       # nothing half-written


def test_plot_model_unknown_extension(tmp_path):
    with pytest.raises(ValueError, match=r"cannot write .*m\.jpg.*use \.dot, \.gv, \.png, \.svg or \.pdf"):
        utils.plot_model(residual_net(), to_file=str(tmp_path / "m.jpg"))


# --- 9. reproducible initialisation ---------------------------------------------------
def weights_after_seed(seed):
    clear_session()
    minires.set_random_seed(seed)
    return residual_net().get_weights()


def test_set_random_seed_makes_building_reproducible():
    first, again, other = weights_after_seed(7), weights_after_seed(7), weights_after_seed(8)
    assert len(first) == len(again) == len(other) == 26
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    kernels = [i for i, w in enumerate(first) if w.ndim == 4]
    assert kernels and all(not np.array_equal(first[i], other[i]) for i in kernels)
