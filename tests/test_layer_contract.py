"""The layer contract: layers hold weights, the graph holds activations.

forward returns (y, cache), backward takes the cache back; a model keeps
one cache per node of a forward that will be followed by backward. So a
layer object may be called at several nodes (weight gradients summed over
them), an inference pass between forward and backward changes nothing, and
after backward no layer holds an activation."""
import pathlib
import re

import numpy as np
import pytest
from conftest import assert_model_gradients_match, on_cpu, randomize_offsets

from minires import gradcheck, set_random_seed
from minires.applications import CifarResNet, ResNet50
from minires.backend import floatx_scope, is_array, to_device
from minires.layers import (Activation, Add, BatchNormalization, Conv2D, Dense, Flatten, Input,
                            KerasTensor)
from minires.models import Model

ROOT = pathlib.Path(__file__).resolve().parents[1]


def small_resnet(device):
    set_random_seed(0)
    with floatx_scope("float64"):
        model = CifarResNet(blocks=(1, 1), width=4, input_shape=(8, 8, 3), classes=5,
                            classifier_activation=None).to(device)
    randomize_offsets(model, np.random.default_rng(0))
    return model


def gradients_after(model, x, dy, between=None):
    model.forward(x, training=True)
    if between is not None:
        between()
    dx = model.backward(dy)
    return [on_cpu(dx)] + [on_cpu(layer.grads[name]) for layer, name in model.parameters()]


def test_a_predict_between_forward_and_backward_changes_nothing(device):
    rng = np.random.default_rng(1)
    x, other = (to_device(rng.standard_normal((4, 8, 8, 3)), device) for _ in range(2))
    dy = to_device(rng.standard_normal((4, 5)), device)
    model = small_resnet(device)
    plain = gradients_after(model, x, dy)
    model = small_resnet(device)             # the same weights and BN statistics again
    with_predict = gradients_after(model, x, dy, between=lambda: model.predict(other))
    for a, b in zip(plain, with_predict):
        np.testing.assert_array_equal(a, b)


def test_backward_without_a_kept_forward_is_a_clear_error(device):
    model = small_resnet(device)
    x = to_device(np.zeros((2, 8, 8, 3)), device)
    model.predict(x)
    with pytest.raises(RuntimeError, match="backward needs a forward pass that kept its caches"):
        model.backward(to_device(np.ones((2, 5)), device))
    model.forward(x, training=True)
    model.backward(to_device(np.ones((2, 5)), device))
    with pytest.raises(RuntimeError, match="each forward's caches serve one backward"):
        model.backward(to_device(np.ones((2, 5)), device))


def shared_conv_and_activation():
    """One Conv2D object and one Activation object, each called at two nodes."""
    x_in = Input((6, 6, 3))
    conv, act = Conv2D(3, 3, padding="same", name="shared_conv"), Activation("tanh", name="shared_act")
    h = act(conv(x_in))
    y = act(conv(h))
    return Model(x_in, Dense(4)(Flatten()(Add()([h, y]))))


def shared_batch_norm():
    """One BatchNormalization object called twice (its statistics move twice)."""
    x_in = Input((5, 5, 3))
    bn = BatchNormalization(name="shared_bn")
    h = Activation("tanh")(bn(x_in))
    y = bn(Conv2D(3, 1)(h))
    return Model(x_in, Dense(2)(Flatten()(y)))


@pytest.mark.parametrize("build", [shared_conv_and_activation, shared_batch_norm])
@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
def test_layers_called_at_two_nodes_sum_their_gradients(build, training, device):
    with floatx_scope("float64"):
        model = build().to(device)
    randomize_offsets(model, np.random.default_rng(2))
    x = to_device(np.random.default_rng(3).standard_normal((3, *model.inputs[0].shape[1:])), device)
    report = gradcheck.check_model(model, x, training=training, max_entries=None)
    shared = [name for name in report if name.startswith("shared_")]
    assert shared, report
    assert_model_gradients_match(report, model, f"Model: {build.__name__}", tol=1e-7, training=training)


def test_a_shared_layers_gradient_is_the_sum_over_its_calls(rng):
    """By hand: conv(conv(x)) gives the kernel the gradients of both calls."""
    conv = Conv2D(2, 3, padding="same", dtype="float64")
    x_in = Input((5, 5, 2))
    model = Model(x_in, conv(conv(x_in)))
    x, dy = rng.standard_normal((2, 5, 5, 2)), rng.standard_normal((2, 5, 5, 2))
    model.forward(x, keep_cache=True)
    model.backward(dy)
    h, first = conv.forward(x)
    _, second = conv.forward(h)
    conv.zero_grads()
    conv.backward(conv.backward(dy, second), first)
    for name in ("kernel", "bias"):
        np.testing.assert_allclose(model.get_layer(conv.name).grads[name], conv.grads[name], rtol=1e-12)


def arrays_held(value, path, seen):
    """(path, array) for every array reachable from ``value`` (attributes,
    lists, tuples and dicts), each object once; not through the symbolic
    graph (KerasTensors lead on to the other layers)."""
    if id(value) in seen or isinstance(value, KerasTensor):
        return []
    seen.add(id(value))
    if is_array(value):
        return [(path, value)]
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        items = vars(value).items()
    else:
        return []
    return [found for key, item in items for found in arrays_held(item, f"{path}.{key}", seen)]


def test_after_a_training_step_no_layer_holds_an_activation():
    model = ResNet50(input_shape=(32, 32, 3), weights=None, classifier_activation=None)
    x = np.random.default_rng(4).standard_normal((2, 32, 32, 3)).astype("float32")
    y = model.forward(x, training=True)
    model.backward(np.ones_like(y))
    for layer in model.layers:
        weights = {id(a) for a in (*layer.params.values(), *layer.grads.values())}
        held = [path for path, array in arrays_held(layer, layer.name, set()) if id(array) not in weights]
        assert not held, f"layer {layer.name!r} holds arrays that are not its weights: {held}"


@pytest.mark.parametrize("module", ["planner.py", "ops.py", "fast_ops.py", "summary.py", "utils.py"])
def test_graph_walkers_use_only_the_public_graph_api(module):
    """No ``something._private`` but their own (self._...)."""
    source = (ROOT / "minires" / module).read_text()
    private = re.findall(r"\b(?!self\b)\w+\._\w+", source)
    assert not private, f"minires/{module} reaches into private attributes: {private}"
