"""Optimizer state through Keras 3's .keras file: training continued in the other
library is the training the first would have done.

With Keras (dev-only oracle, KERAS_BACKEND=torch): one library compiles a small
model with SGD, Adam or RMSprop (each with its options off and on), takes two
steps and saves; the other loads it; both take two more identical steps on the
same batch, and their weights agree within float32 rounding (1e-6 relative).
Without Keras: minires's PyTorch-form SGD and RMSprop are written as Keras's
where the update is the same formula (continued training equal to the original
optimizer's), and Adam, or a weight decay that passes through the gradient into
momentum or moments, is refused by name, the earlier file untouched.
"""
import os

import numpy as np
import pytest
from conftest import relative_difference

from minires import keras as mk
from minires import optim
from minires.io.keras_file import load_model
from minires.saving import optimizer_variables

RELATIVE = 1e-6
CASES = [
    ("SGD", {}), ("SGD", {"momentum": 0.9}), ("SGD", {"momentum": 0.9, "nesterov": True}),
    ("SGD", {"momentum": 0.8, "nesterov": True, "weight_decay": 0.05}),
    ("Adam", {}), ("Adam", {"amsgrad": True}),
    ("Adam", {"amsgrad": True, "beta_1": 0.8, "epsilon": 1e-3, "weight_decay": 0.05}),
    ("RMSprop", {}), ("RMSprop", {"momentum": 0.5}), ("RMSprop", {"centered": True}),
    ("RMSprop", {"rho": 0.8, "momentum": 0.5, "centered": True, "weight_decay": 0.05}),
]
IDS = [f"{name}-{'-'.join(options) or 'plain'}" for name, options in CASES]
STATE = {   # the hyperparameters a loaded optimizer must hold, as the Keras one had them
    "SGD": ("learning_rate", "momentum", "nesterov", "weight_decay"),
    "Adam": ("learning_rate", "beta_1", "beta_2", "epsilon", "amsgrad", "weight_decay"),
    "RMSprop": ("learning_rate", "rho", "momentum", "epsilon", "centered", "weight_decay"),
}
RATES = {"SGD": 0.05, "Adam": 0.01, "RMSprop": 0.01}


@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    return pytest.importorskip("keras", exc_type=ImportError)


def build(k):
    """No bias before the batch norm: its gradient is zero but for rounding, which
    Adam would scale up to steps of the learning rate, in either library."""
    return k.Sequential([k.Input((5, 5, 2)), k.layers.Conv2D(3, 3, use_bias=False),
                         k.layers.BatchNormalization(), k.layers.Activation("relu"),
                         k.layers.Flatten(), k.layers.Dense(4, activation="softmax")])


def batch():
    rng = np.random.default_rng(7)
    return rng.normal(size=(6, 5, 5, 2)).astype("float32"), rng.integers(0, 4, 6)


def compiled(k, optimizer):
    model = build(k)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    return model


def keras_optimizer(k, name, options):
    return getattr(k.optimizers, name)(learning_rate=RATES[name], **options)


def steps(model, count=2):
    x, y = batch()
    for _ in range(count):
        model.train_on_batch(x, y)


def adam_rounding(optimizer):
    """How far Keras's Adam step size is from the exact one at steps 3 and 4:
    Keras computes alpha = lr sqrt(1 - b2^t) / (1 - b1^t) in float32 (beta_2 =
    0.999 held as 0.99900001, then raised to t), minires in float64; at t = 4
    that is 9e-6 relative, a float32 rounding of Keras's own."""
    f, b1, b2 = np.float32, optimizer.beta_1, optimizer.beta_2
    exact = [np.sqrt(1 - b2 ** t) / (1 - b1 ** t) for t in (3, 4)]
    single = [np.sqrt(f(1) - f(b2) ** f(t)) / (f(1) - f(b1) ** f(t)) for t in (3, 4)]
    return max(abs(float(s) / e - 1) for s, e in zip(single, exact))


def assert_same_training(ours, theirs):
    """Two more steps in each: every weight within float32 rounding of the other's
    (for Adam, plus the rounding of Keras's float32 step size)."""
    optimizer = ours.compiled.optimizer
    tolerance = RELATIVE + (adam_rounding(optimizer) if hasattr(optimizer, "beta_2") else 0)
    steps(ours)
    steps(theirs)
    for a, b, weight in zip(ours.get_weights(), theirs.get_weights(), theirs.weights):
        difference = relative_difference(np.asarray(a), np.asarray(b))
        print(f"{type(optimizer).__name__} {weight.path}: relative difference {difference:.1e}")
        assert difference <= tolerance, f"{weight.path}: relative difference {difference:.1e}"


def assert_same_optimizer(ours, theirs, name):
    """minires's optimizer holds Keras's hyperparameters and, as Keras's list of
    variables, the same state."""
    assert type(ours.compiled.optimizer) is getattr(mk.optimizers, name)
    config = theirs.optimizer.get_config()
    for key in STATE[name]:
        expected = config[key]              # a float, a flag, or weight_decay None
        assert getattr(ours.compiled.optimizer, key) == (
            pytest.approx(expected, rel=1e-7) if isinstance(expected, float) else expected), key
    theirs_vars = [np.asarray(v.numpy()) for v in theirs.optimizer.variables]
    ours_vars = optimizer_variables(ours)
    assert [a.shape for a in ours_vars] == [b.shape for b in theirs_vars]
    for a, b in zip(ours_vars, theirs_vars):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)


# === with Keras: both ways, every optimizer with its options off and on ==================
@pytest.mark.parametrize("name, options", CASES, ids=IDS)
def test_keras_trains_saves_minires_continues_alike(keras, tmp_path, name, options):
    theirs = compiled(keras, keras_optimizer(keras, name, options))
    steps(theirs)
    theirs.save(tmp_path / "k.keras")
    ours = load_model(tmp_path / "k.keras")
    assert ours.compiled.optimizer.iterations == 2
    assert_same_optimizer(ours, theirs, name)
    assert_same_training(ours, theirs)


@pytest.mark.parametrize("name, options", CASES, ids=IDS)
def test_minires_trains_saves_keras_continues_alike(keras, tmp_path, name, options):
    ours = compiled(mk, keras_optimizer(mk, name, options))
    steps(ours)
    ours.save(tmp_path / "m.keras")
    theirs = keras.saving.load_model(tmp_path / "m.keras")
    assert int(theirs.optimizer.iterations.numpy()) == 2
    assert_same_optimizer(ours, theirs, name)
    assert_same_training(ours, theirs)


@pytest.mark.parametrize("optimizer", [lambda: optim.SGD(0.05), lambda: optim.SGD(0.05, 0.9),
                                       lambda: optim.SGD(0.05, weight_decay=0.05),
                                       lambda: optim.RMSprop(0.01, rho=0.8)],
                         ids=["SGD", "SGD-momentum", "SGD-weight_decay", "RMSprop"])
def test_pytorch_form_saved_as_keras_trains_on_in_keras_as_in_minires(keras, tmp_path, optimizer):
    ours = compiled(mk, optimizer())
    steps(ours)
    ours.save(tmp_path / "m.keras")
    theirs = keras.saving.load_model(tmp_path / "m.keras")
    assert_same_training(ours, theirs)


# === without Keras: the PyTorch-form optimizers ============================================
@pytest.mark.parametrize("optimizer, keras_class", [
    (lambda: optim.SGD(0.05), optim.KerasSGD), (lambda: optim.SGD(0.05, 0.9), optim.KerasSGD),
    (lambda: optim.SGD(0.05, weight_decay=0.05), optim.KerasSGD),
    (lambda: optim.RMSprop(0.01, rho=0.8), optim.KerasRMSprop)],
    ids=["SGD", "SGD-momentum", "SGD-weight_decay", "RMSprop"])
def test_pytorch_form_is_written_as_keras_where_the_update_is_the_same(tmp_path, optimizer,
                                                                       keras_class):
    """Loaded back, the Keras-form twin takes the steps the original takes."""
    ours = compiled(mk, optimizer())
    steps(ours)
    ours.save(tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")
    assert type(loaded.compiled.optimizer) is keras_class
    assert loaded.compiled.optimizer.iterations == 2
    for a, b in zip(loaded.get_weights(), ours.get_weights()):
        np.testing.assert_array_equal(a, b)
    steps(ours)
    steps(loaded)
    for a, b in zip(loaded.get_weights(), ours.get_weights()):
        assert relative_difference(a, b) <= RELATIVE


@pytest.mark.parametrize("optimizer, message", [
    (lambda: optim.Adam(0.01), r"minires\.optim\.Adam \(PyTorch's Adam\) adds epsilon to "
                               r"sqrt\(v / \(1 - beta_2\^t\)\), Keras's Adam to sqrt\(v\)"),
    (lambda: optim.SGD(0.05, 0.9, weight_decay=0.01),
     r"minires\.optim\.SGD\(weight_decay=0\.01\) adds weight_decay \* w to the gradient"),
    (lambda: optim.RMSprop(0.01, weight_decay=0.01),
     r"minires\.optim\.RMSprop\(weight_decay=0\.01\) adds weight_decay \* w"),
], ids=["Adam", "SGD-momentum-weight_decay", "RMSprop-weight_decay"])
def test_pytorch_form_that_keras_would_train_otherwise_is_refused(tmp_path, optimizer, message):
    path = tmp_path / "m.keras"
    path.write_bytes(b"an earlier file")
    model = compiled(mk, optimizer())
    steps(model)
    with pytest.raises(ValueError, match=message + r".*Keras would train it differently.*"
                                                   r"minires\.keras\.optimizers"):
        model.save(path)
    assert path.read_bytes() == b"an earlier file" and os.listdir(tmp_path) == ["m.keras"]


def test_keras_form_state_comes_back_whole(tmp_path):
    """Every kind of state (momentum, v_hat, mean_grad, ...) and the step count
    return as they were, and the next steps are the same."""
    for name, options in CASES:
        ours = compiled(mk, keras_optimizer(mk, name, options))
        steps(ours)
        ours.save(tmp_path / "m.keras")
        loaded = load_model(tmp_path / "m.keras")
        before, after = ours.compiled.optimizer, loaded.compiled.optimizer
        assert after.iterations == before.iterations == 2
        assert sorted(after.slots) == sorted(before.slots)
        assert before.slots or (name, options) == ("SGD", {})      # plain SGD keeps no state
        for kind, table in before.slots.items():
            for key, value in table.items():
                np.testing.assert_array_equal(after.slots[kind][key], value)
        steps(ours)
        steps(loaded)
        for a, b in zip(loaded.get_weights(), ours.get_weights()):
            np.testing.assert_array_equal(a, b)
