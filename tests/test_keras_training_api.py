"""Keras's training API beyond compile/fit (issue 29): metric objects, sample and
class weights, ReduceLROnPlateau, weight penalties in training, Keras 3's
optimisers, fit's shuffle from the global seed, and overridden train_step /
test_step / predict_step refused.

Every figure is checked against the formula written out here; where Keras (3.15,
KERAS_BACKEND=torch) is installed, also against Keras on the same initial
weights, data and sequence of calls.
"""
import math
import os

import numpy as np
import pytest

from minires import keras as mk
from minires import train
from minires.callbacks import ReduceLROnPlateau
from minires.initializers import set_random_seed
from minires.layers import Dense, Dropout, Input
from minires.metrics import (Accuracy, BinaryAccuracy, CategoricalAccuracy, Mean,
                             SparseCategoricalAccuracy)
from minires.models import Model
from minires.optim import SGD, Adam, KerasAdam, KerasRMSprop, KerasSGD
from minires.regularizers import L2

from conftest import Scores, on_cpu

RTOL, ATOL = 2e-5, 1e-6          # float32 against Keras's float32


def real_keras():
    """Keras itself (the oracle), or a skip where it is not installed."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    return pytest.importorskip("keras")


def blobs(n=24, seed=0, features=4, classes=3):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(0, 2, (classes, features))
    labels = rng.integers(0, classes, n)
    return (centres[labels] + rng.normal(0, 1, (n, features))).astype("float32"), labels


PENALTIES = {"hidden": dict(kernel=0.01, bias=0.02), "out": dict(kernel=0.03)}


def mlp(penalised=False, seed=0, features=4, classes=3):
    """Dense(5, relu) -> Dense(3, softmax), with l2 penalties if ``penalised``."""
    set_random_seed(seed)
    def penalties(name):
        return {f"{k}_regularizer": L2(v) for k, v in PENALTIES[name].items()} if penalised else {}
    x = Input((features,))
    h = Dense(5, activation="relu", name="hidden", **penalties("hidden"))(x)
    return Model(x, Dense(classes, activation="softmax", name="out", **penalties("out"))(h))


def keras_twin(model, penalised=False):
    """The same network in Keras, with ``model``'s weights."""
    keras = real_keras()
    def penalties(name):
        return {f"{k}_regularizer": keras.regularizers.L2(v) for k, v in PENALTIES[name].items()} \
            if penalised else {}
    twin = keras.Sequential([keras.Input((4,)),
                             keras.layers.Dense(5, activation="relu", **penalties("hidden")),
                             keras.layers.Dense(3, activation="softmax", **penalties("out"))])
    twin.set_weights([on_cpu(w) for w in model.get_weights()])
    return twin


def assert_same_weights(model, twin):
    for ours, theirs in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_allclose(on_cpu(ours), theirs, rtol=RTOL, atol=ATOL)


def per_sample_cross_entropy(model, x, y):
    p = on_cpu(model.predict(x, verbose=0)).astype(np.float64)
    return -np.log(np.clip(p[np.arange(len(y)), y], 1e-7, 1 - 1e-7))


# ======================================================================================
# 1. metric objects
# ======================================================================================
SCORES = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.45, 0.55]])
LABELS = np.array([1, 1, 1, 0, 0])
HITS = np.array([1, 0, 1, 1, 0.0])           # argmax(SCORES) == LABELS
WEIGHTS = np.array([1.0, 3.0, 0.5, 0.0, 2.0])


def metric_cases():
    """(metric, its batches of update_state arguments, the formula's result)."""
    one_hot = np.eye(2)[LABELS]
    return [
        (SparseCategoricalAccuracy(), [(LABELS, SCORES)], HITS.mean()),
        (SparseCategoricalAccuracy(), [(LABELS[:, None], SCORES, WEIGHTS)],
         (HITS * WEIGHTS).sum() / WEIGHTS.sum()),
        (CategoricalAccuracy(), [(one_hot[:2], SCORES[:2]), (one_hot[2:], SCORES[2:])], HITS.mean()),
        (Accuracy(), [(np.array([1, 2, 3, 4]), np.array([0, 2, 3, 4]))], 0.75),
        (BinaryAccuracy(), [(np.array([[1], [0], [1]]), np.array([[0.7], [0.6], [0.4]]))], 1 / 3),
        (Mean(), [(np.array([1.0, 3, 5, 7]),), (np.array([2.0]),)], 18 / 5),
        (Mean(), [(np.array([1.0, 3, 5, 7]), np.array([1, 1, 0, 0]))], 2.0),
        (Mean(), [(np.array([1.0, 3]), 4.0), (np.array([10.0]),)], (4 * 2 + 10) / 5),
    ]


@pytest.mark.parametrize("case", range(len(metric_cases())))
def test_metric_objects_follow_the_formula(case):
    """result() = sum w v / sum w over every sample since the last reset_state()."""
    metric, batches, expected = metric_cases()[case]
    assert metric.result() == 0.0
    for arguments in batches:
        metric.update_state(*arguments)
    assert metric.result() == pytest.approx(expected, rel=1e-12)
    metric.reset_state()
    assert metric.result() == 0.0
    assert metric(*batches[0]) == pytest.approx(metric.result()) and metric.result() > 0


def test_keras_metrics_holds_keras_s_names():
    for name in ("Metric", "Mean", "MeanMetricWrapper", "Accuracy", "BinaryAccuracy",
                 "CategoricalAccuracy", "SparseCategoricalAccuracy", "sparse_categorical_accuracy"):
        assert getattr(mk.metrics, name) is getattr(__import__("minires.metrics").metrics, name)
    with pytest.raises(AttributeError, match="keras.metrics.Precision is not in minires"):
        mk.metrics.Precision


@pytest.mark.parametrize("case", range(len(metric_cases())))
def test_metric_objects_equal_keras(case):
    keras = real_keras()
    ours, batches, _ = metric_cases()[case]
    theirs = getattr(keras.metrics, type(ours).__name__)()
    assert theirs.name == ours.name
    for arguments in batches:
        ours.update_state(*arguments)
        theirs.update_state(*arguments)
    assert ours.result() == pytest.approx(float(theirs.result()), rel=1e-6)


def hits(y_true, y_pred):
    """A metric function in Keras's form: per-sample values from (y_true, y_pred)."""
    return (np.argmax(y_pred, axis=-1) == y_true).astype(float)


def test_compile_takes_metric_objects_and_functions_under_their_names():
    x, y = blobs(40)
    x_val, y_val = blobs(20, seed=1)
    model = mlp()
    model.compile(KerasSGD(0.1), "sparse_categorical_crossentropy",
                  metrics=[mk.metrics.SparseCategoricalAccuracy(name="acc"), hits, "accuracy"])
    history = model.fit(x, y, batch_size=8, epochs=2, validation_data=(x_val, y_val), verbose=0)
    assert list(history.history) == ["loss", "acc", "hits", "accuracy",
                                     "val_loss", "val_acc", "val_hits", "val_accuracy"]
    by_hand = np.mean(on_cpu(model.predict(x_val, verbose=0)).argmax(1) == y_val)
    for name in ("val_acc", "val_hits", "val_accuracy"):
        assert history.history[name][-1] == pytest.approx(by_hand)
    assert model.evaluate(x_val, y_val, verbose=0)[1:] == pytest.approx([by_hand] * 3)


@pytest.mark.parametrize("shape", ["column", "one-hot"])
def test_accuracy_by_name_reads_labels_as_keras_does(shape):
    """'accuracy' on a column of labels (keras.datasets' (N, 1)) is the sparse
    accuracy, on one-hot rows the categorical one (Keras's choice by shapes)."""
    x, y = blobs(30)
    model = mlp()
    targets = y[:, None] if shape == "column" else np.eye(3, dtype="float32")[y]
    loss = "sparse_categorical_crossentropy" if shape == "column" else "categorical_crossentropy"
    model.compile(KerasSGD(0.1), loss, metrics=["accuracy"])
    by_hand = np.mean(on_cpu(model.predict(x, verbose=0)).argmax(1) == y)
    assert 0 < by_hand < 1
    assert model.evaluate(x, targets, verbose=0)[1] == pytest.approx(by_hand)


# ======================================================================================
# 2. sample_weight and class_weight
# ======================================================================================
def test_the_weighted_loss_is_the_sum_over_the_batch_size():
    """Keras's 'sum_over_batch_size': sum_n w_n L_n / N, not / sum_n w_n."""
    x, y = blobs(12)
    w = np.random.default_rng(3).uniform(0, 2, 12)
    model = mlp(penalised=True)
    model.compile(KerasSGD(0.1), "sparse_categorical_crossentropy", metrics=["accuracy"])
    by_hand = (w * per_sample_cross_entropy(model, x, y)).sum() / 12 + sum(model.losses)
    loss_value, accuracy = model.evaluate(x, y, sample_weight=w, batch_size=5, verbose=0)
    assert loss_value == pytest.approx(by_hand, rel=1e-5)
    assert accuracy == pytest.approx(model.evaluate(x, y, verbose=0)[1])   # metrics: not weighted


def test_weights_of_zero_leave_the_gradient_of_the_rest_divided_by_the_batch():
    """The gradient follows the weights: weights 1 on 5 of 12 samples, 0 on the
    others, make the step of those 5 alone at 5/12 of the rate."""
    x, y = blobs(12)
    keep = np.array([1, 0, 0, 1, 1, 0, 0, 0, 1, 0, 1, 0], dtype=bool)
    weighted, alone = mlp(), mlp()
    weighted.compile(KerasSGD(0.3), "sparse_categorical_crossentropy")
    alone.compile(KerasSGD(0.3 * 5 / 12), "sparse_categorical_crossentropy")
    loss_weighted = weighted.train_on_batch(x, y, sample_weight=keep.astype(float))
    loss_alone = alone.train_on_batch(x[keep], y[keep])
    assert loss_weighted == pytest.approx(loss_alone * 5 / 12, rel=1e-6)
    for ours, theirs in zip(weighted.get_weights(), alone.get_weights()):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)
    assert not np.allclose(weighted.get_weights()[0], mlp().get_weights()[0])


def test_class_weight_is_the_sample_weight_of_each_class():
    x, y = blobs(16)
    by_class, by_sample = mlp(), mlp()
    for model in (by_class, by_sample):
        model.compile(KerasSGD(0.2), "sparse_categorical_crossentropy")
    table = {0: 2.0, 2: 0.25}                    # class 1 left out: weight 1, as Keras
    by_class.fit(x, y, batch_size=16, shuffle=False, class_weight=table, verbose=0)
    by_sample.fit(x, y, batch_size=16, shuffle=False, verbose=0,
                  sample_weight=np.array([table.get(label, 1.0) for label in y]))
    for ours, theirs in zip(by_class.get_weights(), by_sample.get_weights()):
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("how", ["validation_split", "validation_data triple"])
def test_the_validation_loss_is_weighted_by_the_validation_weights(how):
    """validation_split holds out the last sample weights with the samples;
    validation_data may be (x_val, y_val, sample_weight_val), as Keras."""
    x, y = blobs(20)
    w = np.linspace(0.5, 2.0, 20)
    model = mlp()
    model.compile(KerasSGD(0.1), "sparse_categorical_crossentropy")
    if how == "validation_split":
        history = model.fit(x, y, sample_weight=w, validation_split=0.25, epochs=1, verbose=0)
    else:
        history = model.fit(x[:15], y[:15], validation_data=(x[15:], y[15:], w[15:]), epochs=1,
                            verbose=0)
    held_out = model.evaluate(x[15:], y[15:], sample_weight=w[15:], verbose=0)
    assert history.history["val_loss"][0] == pytest.approx(held_out, rel=1e-6)
    assert held_out != pytest.approx(model.evaluate(x[15:], y[15:], verbose=0), rel=1e-3)


@pytest.mark.parametrize("how", ["sample_weight", "class_weight"])
def test_weighted_training_equals_keras(how):
    """The first step's loss and accuracy, the weights after it (train_on_batch),
    an epoch of fit in two batches, and evaluate, all weighted as Keras weighs them."""
    keras = real_keras()
    x, y = blobs(16)
    weights = {"sample_weight": np.random.default_rng(5).uniform(0, 3, 16).astype("float32"),
               "class_weight": {0: 3.0, 1: 0.5}}[how]
    model = mlp(penalised=True)
    twin = keras_twin(model, penalised=True)
    model.compile(KerasSGD(0.1, momentum=0.9), "sparse_categorical_crossentropy", metrics=["accuracy"])
    twin.compile(keras.optimizers.SGD(0.1, momentum=0.9), "sparse_categorical_crossentropy",
                 metrics=["accuracy"])
    ours = model.train_on_batch(x, y, **{how: weights})
    theirs = twin.train_on_batch(x, y, **{how: weights})
    np.testing.assert_allclose(ours, theirs, rtol=RTOL)
    assert_same_weights(model, twin)
    ours = model.fit(x, y, batch_size=8, shuffle=False, verbose=0, **{how: weights}).history
    theirs = twin.fit(x, y, batch_size=8, shuffle=False, verbose=0, **{how: weights}).history
    assert ours.keys() == theirs.keys() == {"loss", "accuracy"}
    for name in ours:
        assert ours[name] == pytest.approx(theirs[name], rel=RTOL), name
    assert_same_weights(model, twin)
    if how == "sample_weight":
        np.testing.assert_allclose(model.evaluate(x, y, sample_weight=weights, verbose=0),
                                   twin.evaluate(x, y, sample_weight=weights, verbose=0), rtol=RTOL)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(sample_weight=np.ones(16), class_weight={0: 2.0}), ValueError,
     r"fit: give sample_weight or class_weight, not both"),
    (dict(sample_weight=np.ones(15)), ValueError,
     r"fit: sample_weight must hold one number per sample, shape \(16,\), got float64 of shape \(15,\)"),
    (dict(sample_weight=-np.ones(16)), ValueError, r"fit: sample_weight must be finite and >= 0"),
    (dict(sample_weight=np.full(16, np.nan)), ValueError, r"fit: sample_weight must be finite"),
    (dict(class_weight=[1.0, 2.0, 3.0]), TypeError, r"fit: class_weight must be a dict"),
    (dict(class_weight={3: 1.0}), ValueError,
     r"fit: class_weight has the key 3, which is no class index of the model's 3 outputs"),
    (dict(class_weight={"cat": 1.0}), ValueError, r"fit: class_weight has the key 'cat'"),
    (dict(class_weight={0: -1.0}), ValueError, r"fit: class_weight\[0\] must be in \[0, inf\)"),
])
def test_bad_weights_are_refused_before_anything_changes(kwargs, error, message):
    x, y = blobs(16)
    model = mlp()
    model.compile(KerasSGD(0.1), "sparse_categorical_crossentropy")
    before = model.get_weights()
    with pytest.raises(error, match=message):
        model.fit(x, y, verbose=0, **kwargs)
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)
    assert model.compiled.optimizer.iterations == 0


def test_a_loss_that_cannot_weigh_samples_is_refused():
    class Unweighted(mk.losses.SparseCategoricalCrossentropy):
        def forward(self, outputs, targets):
            return super().forward(outputs, targets)

    x, y = blobs(16)
    model = mlp()
    model.compile(KerasSGD(0.1), Unweighted())
    with pytest.raises(TypeError, match="the loss Unweighted cannot weigh samples"):
        model.fit(x, y, class_weight={0: 2.0}, verbose=0)
    assert model.compiled.optimizer.iterations == 0


# ======================================================================================
# 3. ReduceLROnPlateau
# ======================================================================================
class FakeModel:
    """What ReduceLROnPlateau touches: the optimizer (Keras's model.optimizer)."""

    def __init__(self, optimizer):
        self.optimizer, self.stop_training = optimizer, False


def run_plateau(callback, optimizer, scores, counters=None):
    """Drive a ReduceLROnPlateau (ours or Keras's) over ``scores``; the rate after
    each epoch (and its (wait, cooldown_counter) appended to ``counters``)."""
    callback.set_model(FakeModel(optimizer))
    callback.optimizer = optimizer
    callback.on_train_begin()
    rates = []
    for epoch, score in enumerate(scores):
        callback.on_epoch_end(epoch, {"score": score})
        rates.append(float(optimizer.learning_rate))
        if counters is not None:
            counters.append((callback.wait, callback.cooldown_counter))
    return rates


# (scores, arguments, the rates after each epoch by Keras's rules, worked out by hand)
PLATEAU_CASES = [
    # patience 2: the wait restarts at each improvement and after each reduction
    ([1.0, 0.9, 0.95, 0.97, 0.96, 0.8, 0.85, 0.86], dict(patience=2, factor=0.5),
     [1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.25]),
    # cooldown 2: the two epochs after a reduction neither wait nor reduce
    ([1.0, 2, 3, 4, 5, 6], dict(patience=1, cooldown=2), [1, 0.1, 0.1, 0.01, 0.01, 0.001]),
    # min_lr: 0.1 -> 0.01 = min_lr; then the rate stays (float32's 0.1 * 0.1 is min_lr)
    ([1.0, 2, 3, 4], dict(patience=1, min_lr=0.01, initial=0.1), [0.1, 0.01, 0.01, 0.01]),
    # min_lr between: max(rate * factor, min_lr)
    ([1.0, 2, 3], dict(patience=1, factor=0.1, min_lr=0.05), [1, 0.1, 0.05]),
    # mode max, min_delta 0.01: 0.5501 and 0.56 do not beat 0.55 by more than 0.01
    ([0.5, 0.55, 0.5501, 0.56], dict(mode="max", patience=1, min_delta=0.01, factor=0.5),
     [1, 1, 0.5, 0.25]),
    # default min_delta 1e-4: 0.99995 is no improvement on 1.0
    ([1.0, 0.99995, 0.9], dict(patience=1, factor=0.5), [1, 0.5, 0.5]),
    # patience 0: every epoch that does not improve reduces
    ([1.0, 1.0, 0.5, 0.7], dict(patience=0, factor=0.5), [1, 0.5, 0.5, 0.25]),
]


def plateau_arguments(kwargs):
    kwargs = dict(kwargs)
    return kwargs.pop("initial", 1.0), {"mode": "min", **kwargs}


@pytest.mark.parametrize("scores, kwargs, expected", PLATEAU_CASES)
def test_reduce_lr_on_plateau_rules(scores, kwargs, expected):
    initial, kwargs = plateau_arguments(kwargs)
    rates = run_plateau(ReduceLROnPlateau("score", **kwargs), KerasSGD(initial), scores)
    assert rates == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("scores, kwargs, expected", PLATEAU_CASES)
def test_reduce_lr_on_plateau_against_keras(scores, kwargs, expected):
    keras = real_keras()
    initial, kwargs = plateau_arguments(kwargs)
    kwargs["cooldown"] = kwargs.get("cooldown", 1)        # a reduction at min_lr would start one
    our_counters, their_counters = [], []
    ours = run_plateau(ReduceLROnPlateau("score", **kwargs), KerasSGD(initial), scores, our_counters)
    theirs = run_plateau(keras.callbacks.ReduceLROnPlateau("score", **kwargs),
                         keras.optimizers.SGD(initial), scores, their_counters)
    assert ours == pytest.approx(theirs, rel=1e-6)          # Keras's rate is float32
    assert our_counters == their_counters


def test_reduce_lr_on_plateau_defaults_are_keras_s():
    assert mk.callbacks.ReduceLROnPlateau is ReduceLROnPlateau
    keras = real_keras()
    ours, theirs = ReduceLROnPlateau(), keras.callbacks.ReduceLROnPlateau()
    for name in ("monitor", "factor", "patience", "verbose", "min_delta", "cooldown", "min_lr"):
        assert getattr(ours, name) == getattr(theirs, name), name


class RecordingSGD(KerasSGD):
    """Keras's SGD that remembers the rate of every step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rates = []

    def step(self, model, learning_rate=None):
        self.rates.append(self.learning_rate if learning_rate is None else learning_rate)
        super().step(model, learning_rate)


def test_reduce_lr_on_plateau_sets_the_rate_fit_trains_with():
    x, y = blobs(16)
    model, optimizer = mlp(), RecordingSGD(0.2)
    model.compile(optimizer, "sparse_categorical_crossentropy")
    history = model.fit(x, y, batch_size=8, epochs=4, verbose=0, callbacks=[
        Scores([1.0, 2.0, 0.5, 3.0]), ReduceLROnPlateau("score", factor=0.5, patience=1)])
    assert history.history["learning_rate"] == pytest.approx([0.2, 0.2, 0.1, 0.1])
    assert optimizer.rates == pytest.approx([0.2] * 4 + [0.1] * 4)
    assert optimizer.learning_rate == pytest.approx(0.05)
    with pytest.raises(ValueError, match="either schedule= .* or the ReduceLROnPlateau callback, "
                                         "which sets the rate too"):
        train.fit(model, x, y, schedule=lambda t: 0.1, callbacks=[ReduceLROnPlateau()], verbose=0)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(factor=1.0), ValueError,
     r"ReduceLROnPlateau: factor \(new rate = rate \* factor\) must be in \[0, 1\)"),
    (dict(factor="0.5"), TypeError, r"ReduceLROnPlateau: factor .* must be a number"),
    (dict(patience=-1), ValueError, r"ReduceLROnPlateau: patience must be a non-negative integer"),
    (dict(cooldown=1.5), TypeError, r"ReduceLROnPlateau: cooldown must be a non-negative integer"),
    (dict(min_lr=-1e-3), ValueError, r"ReduceLROnPlateau: min_lr: learning rate must be in \[0, inf\)"),
    (dict(mode="up"), ValueError, r"ReduceLROnPlateau: mode must be 'auto', 'min' or 'max'"),
])
def test_reduce_lr_on_plateau_refuses_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        ReduceLROnPlateau(**kwargs)


def test_reduce_lr_on_plateau_without_its_value_warns_and_keeps_the_rate():
    optimizer = KerasSGD(0.1)
    with pytest.warns(UserWarning, match="ReduceLROnPlateau watches 'val_loss', which is not in"):
        rates = run_plateau(ReduceLROnPlateau(patience=0), optimizer, [1.0, 2.0])
    assert rates == [0.1, 0.1]


# ======================================================================================
# 4. weight penalties in training
# ======================================================================================
def test_the_penalties_enter_the_reported_loss_and_the_gradients():
    """loss = cross-entropy + sum of l * sum W^2; the step adds 2 l W to dL/dW
    (against the same network without penalties, one SGD step each)."""
    x, y = blobs(8)
    penalised, plain = mlp(penalised=True), mlp()
    for model in (penalised, plain):
        model.compile(KerasSGD(0.5), "sparse_categorical_crossentropy")
    start = {(layer.name, name): on_cpu(layer.params[name]).astype(np.float64)
             for layer, name in plain.parameters()}
    penalty = sum(l2 * (start[(layer, f"{kind}")] ** 2).sum()
                  for layer, kinds in PENALTIES.items() for kind, l2 in kinds.items())
    assert penalised.train_on_batch(x, y) == pytest.approx(plain.train_on_batch(x, y) + penalty,
                                                           rel=1e-6)
    for layer, name in plain.parameters():
        data_step = start[(layer.name, name)] - on_cpu(layer.params[name])
        l2 = PENALTIES[layer.name].get(name, 0.0)
        expected = start[(layer.name, name)] - data_step - 0.5 * 2 * l2 * start[(layer.name, name)]
        np.testing.assert_allclose(penalised.get_layer(layer.name).params[name], expected,
                                   rtol=1e-5, atol=1e-7, err_msg=f"{layer.name}/{name}")


def test_penalised_training_equals_keras():
    """The first step's loss (penalties included) and the weights after it, and
    evaluate's loss (Keras adds the penalties there too)."""
    keras = real_keras()
    x, y = blobs(16)
    model = mlp(penalised=True)
    twin = keras_twin(model, penalised=True)
    model.compile(KerasSGD(0.1), "sparse_categorical_crossentropy")
    twin.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    assert model.evaluate(x, y, verbose=0) == pytest.approx(twin.evaluate(x, y, verbose=0), rel=RTOL)
    assert model.train_on_batch(x, y) == pytest.approx(float(twin.train_on_batch(x, y)), rel=RTOL)
    assert_same_weights(model, twin)


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_a_penalty_that_overflows_stops_the_step_whole():
    """Kernel entries of 1e20: the outputs stay finite, sum W^2 (float32) is inf."""
    x, y = blobs(8)
    model = mlp(penalised=True)
    model.get_layer("out").params["kernel"][...] = 1e20
    model.get_layer("out").weights_changed()
    assert np.isfinite(on_cpu(model.predict(x, verbose=0))).all() and sum(model.losses) == np.inf
    model.compile(KerasSGD(0.1), "sparse_categorical_crossentropy")
    before = model.get_weights()
    with pytest.raises(FloatingPointError, match="the loss became inf"):
        model.train_on_batch(x, y)
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)


# ======================================================================================
# 5. Keras 3's optimisers
# ======================================================================================
GRADIENTS = np.array([[0.5, -1.0, 2.0], [0.3, -0.2, 1.5], [-0.4, 0.1, 1e-4], [1.0, 1.0, -3.0]])
RATES = [0.1, 0.1, 0.05, 0.2]                    # changed between steps
START = np.array([0.4, -0.7, 1.1])


def keras_sgd(momentum, nesterov):
    def update(w, g, state, lr, t):
        if not momentum:
            return w - lr * g
        state["m"] = momentum * state.get("m", 0.0) - lr * g
        return w + (momentum * state["m"] - lr * g if nesterov else state["m"])
    return update


def keras_adam(amsgrad, b1=0.9, b2=0.999, eps=1e-7):
    def update(w, g, state, lr, t):
        state["m"] = state.get("m", 0.0) + (g - state.get("m", 0.0)) * (1 - b1)
        state["v"] = state.get("v", 0.0) + (g * g - state.get("v", 0.0)) * (1 - b2)
        v = state["v_hat"] = np.maximum(state.get("v_hat", 0.0), state["v"]) if amsgrad else state["v"]
        alpha = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        return w - state["m"] * alpha / (np.sqrt(v) + eps)
    return update


def keras_rmsprop(momentum, centered, rho=0.9, eps=1e-7):
    def update(w, g, state, lr, t):
        state["v"] = rho * state.get("v", 0.0) + (1 - rho) * g * g
        denominator = state["v"] + eps
        if centered:
            state["a"] = rho * state.get("a", 0.0) + (1 - rho) * g
            denominator = state["v"] - state["a"] ** 2 + eps
        increment = lr * g / np.sqrt(denominator)
        if momentum:
            increment = state["m"] = momentum * state.get("m", 0.0) + increment
        return w - increment
    return update


# name: (ours for a weight decay, Keras's class and arguments, the formula)
KERAS_OPTIMISERS = {
    "sgd": (KerasSGD, "SGD", {}, keras_sgd(0.0, False)),
    "sgd_momentum": (KerasSGD, "SGD", dict(momentum=0.9), keras_sgd(0.9, False)),
    "sgd_nesterov": (KerasSGD, "SGD", dict(momentum=0.9, nesterov=True), keras_sgd(0.9, True)),
    "adam": (KerasAdam, "Adam", {}, keras_adam(False)),
    "adam_amsgrad": (KerasAdam, "Adam", dict(amsgrad=True), keras_adam(True)),
    "rmsprop": (KerasRMSprop, "RMSprop", {}, keras_rmsprop(0.0, False)),
    "rmsprop_centered_momentum": (KerasRMSprop, "RMSprop", dict(momentum=0.5, centered=True),
                                  keras_rmsprop(0.5, True)),
}


def one_kernel(dtype):
    """Input -> Dense(1, no bias) whose kernel is START: (model, layer)."""
    x = Input((3,), dtype=dtype)
    layer = Dense(1, use_bias=False, name="fc", dtype=dtype)
    model = Model(x, layer(x))
    layer.params["kernel"][...] = START[:, None]
    return model, layer


def run_optimizer(optimizer, dtype):
    """Four steps of GRADIENTS at RATES (set as Keras's callbacks set them); the kernels."""
    model, layer = one_kernel(dtype)
    kernels = []
    for g, rate in zip(GRADIENTS, RATES):
        optimizer.learning_rate = rate
        layer.grads["kernel"] = g[:, None].astype(dtype)
        optimizer.step(model)
        kernels.append(layer.params["kernel"][:, 0].copy())
    return np.array(kernels)


@pytest.mark.parametrize("weight_decay", [None, 0.05])
@pytest.mark.parametrize("name", KERAS_OPTIMISERS)
def test_keras_optimisers_follow_keras_s_formulas(name, weight_decay):
    """Keras 3's update_step written out; weight decay decoupled: w -= lr wd w first."""
    ours, _, kwargs, update = KERAS_OPTIMISERS[name]
    w, state, expected = START.copy(), {}, []
    for t, (g, rate) in enumerate(zip(GRADIENTS, RATES), start=1):
        w = w - w * (weight_decay or 0.0) * rate
        w = update(w, g, state, rate, t)
        expected.append(w)
    kernels = run_optimizer(ours(1.0, weight_decay=weight_decay, **kwargs), "float64")
    np.testing.assert_allclose(kernels, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("weight_decay", [None, 0.05])
@pytest.mark.parametrize("name", KERAS_OPTIMISERS)
def test_keras_optimisers_equal_keras(name, weight_decay):
    keras = real_keras()
    ours, theirs_name, kwargs, _ = KERAS_OPTIMISERS[name]
    theirs = getattr(keras.optimizers, theirs_name)(1.0, weight_decay=weight_decay, **kwargs)
    variable = keras.Variable(START[:, None].astype("float32"))
    expected = []
    for g, rate in zip(GRADIENTS, RATES):
        theirs.learning_rate = rate
        theirs.apply_gradients([(keras.ops.convert_to_tensor(g[:, None].astype("float32")), variable)])
        expected.append(keras.ops.convert_to_numpy(variable)[:, 0])
    kernels = run_optimizer(ours(1.0, weight_decay=weight_decay, **kwargs), "float32")
    # Keras's Adam takes 1 - beta_2^t in float32: about 1e-5 relative error at t = 4
    atol = 5e-6 if theirs_name == "Adam" else ATOL
    np.testing.assert_allclose(kernels, expected, rtol=RTOL, atol=atol)


def test_keras_s_adam_and_pytorch_s_differ_where_the_gradient_is_near_epsilon():
    """keras.optimizers.Adam is Keras's: its first step is lr g / (g + 1e-7 / sqrt(1 - b2)),
    epsilon outside the correction; minires.optim.Adam stays PyTorch's, lr g / (g + 1e-8)."""
    assert mk.optimizers.Adam is KerasAdam and mk.optimizers.SGD is KerasSGD
    assert mk.optimizers.RMSprop is KerasRMSprop
    assert KerasAdam().epsilon == 1e-7 and Adam().epsilon == 1e-8
    g = 1e-6
    keras_step = run_optimizer_once(KerasAdam(0.1), g)
    torch_step = run_optimizer_once(Adam(0.1), g)
    assert keras_step == pytest.approx(0.1 * g / (g + 1e-7 / math.sqrt(1 - 0.999)), rel=1e-9)
    assert torch_step == pytest.approx(0.1 * g / (g + 1e-8), rel=1e-9)
    assert keras_step < 0.1 * 0.25 < 0.1 * 0.99 < torch_step


def run_optimizer_once(optimizer, g):
    model, layer = one_kernel("float64")
    layer.grads["kernel"] = np.full((3, 1), g)
    optimizer.step(model)
    return float(START[0] - layer.params["kernel"][0, 0])


def test_pytorch_s_optimisers_keep_coupled_weight_decay():
    """minires.optim.SGD adds wd * w to the gradient (so momentum carries it);
    KerasSGD shrinks the weight beside the step: after two steps they differ."""
    coupled = run_optimizer(SGD(1.0, momentum=0.9, weight_decay=0.05), "float64")
    decoupled = run_optimizer(KerasSGD(1.0, momentum=0.9, weight_decay=0.05), "float64")
    assert not np.allclose(coupled[1], decoupled[1], rtol=1e-3)


@pytest.mark.parametrize("make, error, message", [
    (lambda: KerasAdam(clipnorm=1.0), TypeError,
     r"Adam: clipnorm=1\.0 is a Keras option minires does not implement"),
    (lambda: KerasSGD(0.1, use_ema=True), TypeError, r"SGD: use_ema=True is a Keras option"),
    (lambda: KerasRMSprop(nesterov=True), TypeError, r"RMSprop: nesterov=True is not an argument of it"),
    (lambda: KerasSGD(0.1, nesterov=1), TypeError, r"SGD: nesterov must be True or False"),
    (lambda: KerasRMSprop(momentum=1.5), ValueError, r"RMSprop: momentum must be in \[0, 1\)"),
    (lambda: KerasAdam(weight_decay=-0.1), ValueError, r"KerasAdam: weight_decay must be in \[0, inf\)"),
])
def test_keras_optimisers_refuse_what_they_do_not_do(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_keras_options_at_their_defaults_are_taken():
    optimizer = KerasAdam(0.01, clipnorm=None, use_ema=False, ema_momentum=0.99, name="adam")
    assert optimizer.learning_rate == 0.01


# ======================================================================================
# 6. fit's shuffle follows keras.utils.set_random_seed
# ======================================================================================
def train_from(model, start, x, y):
    """``model`` from the weights ``start``, after two epochs of Model.fit; its weights."""
    model.set_weights(start)
    model.compile(KerasSGD(0.1), "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    return model.get_weights()


def test_model_fit_shuffles_from_the_global_generator():
    x, y = blobs(24)
    model = mlp()
    start = model.get_weights()
    mk.utils.set_random_seed(7)
    first = train_from(model, start, x, y)
    mk.utils.set_random_seed(7)
    again = train_from(model, start, x, y)
    unseeded = train_from(model, start, x, y)     # the generator has moved on
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], unseeded[0])


def test_train_fit_keeps_its_seed_for_exact_resumption():
    """minires.train.fit(seed=...) shuffles with (seed, epoch) whatever the global generator."""
    x, y = blobs(24)
    runs = []
    for global_seed in (1, 2):
        model = mlp()
        mk.utils.set_random_seed(global_seed)
        train.fit(model, x, y, batch_size=4, epochs=2, optimizer=KerasSGD(0.1), seed=3, verbose=0)
        runs.append(model.get_weights())
    assert all(np.array_equal(a, b) for a, b in zip(*runs))


def test_dropout_follows_set_random_seed():
    x, y = blobs(24)

    def run():
        inputs = Input((4,))
        model = Model(inputs, Dense(3, activation="softmax", kernel_initializer="zeros")(
            Dropout(0.5)(inputs)))
        model.compile(KerasSGD(0.1), "sparse_categorical_crossentropy")
        model.fit(x, y, batch_size=4, shuffle=False, verbose=0)
        return model.get_weights()[0]

    mk.utils.set_random_seed(11)
    first = run()
    mk.utils.set_random_seed(11)
    np.testing.assert_array_equal(first, run())
    assert not np.array_equal(first, run())


# ======================================================================================
# 7. overridden train_step / test_step / predict_step
# ======================================================================================
def custom(method):
    """A model of Keras's guide 'customizing what happens in fit', overriding ``method``."""
    calls = []

    class Custom(Model):
        pass

    def override(self, data):
        calls.append(method)
        return {}

    setattr(Custom, method, override)
    set_random_seed(0)
    inputs = Input((4,))
    model = Custom(inputs, Dense(3, activation="softmax")(inputs))
    model.compile(KerasSGD(0.1), "sparse_categorical_crossentropy")
    return model, calls


@pytest.mark.parametrize("method, call, caller", [
    ("train_step", lambda m, x, y: m.fit(x, y, verbose=0), "fit"),
    ("train_step", lambda m, x, y: m.train_on_batch(x, y), "train_on_batch"),
    ("test_step", lambda m, x, y: m.evaluate(x, y, verbose=0), "evaluate"),
    ("test_step", lambda m, x, y: m.test_on_batch(x, y), "test_on_batch"),
    ("test_step", lambda m, x, y: m.fit(x, y, validation_split=0.25, verbose=0), "fit: validation"),
    ("predict_step", lambda m, x, y: m.predict(x, verbose=0), "predict"),
])
def test_an_overridden_step_is_refused_not_ignored(method, call, caller):
    x, y = blobs(16)
    model, calls = custom(method)
    before = model.get_weights()
    with pytest.raises(NotImplementedError, match=rf"^{caller}: Custom overrides {method}\(\), which "
                                                  r"minires cannot run .* remove the override"):
        call(model, x, y)
    assert calls == [] and model.compiled.optimizer.iterations == 0
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_a_test_step_override_does_not_stop_training_without_validation():
    x, y = blobs(16)
    model, calls = custom("test_step")
    model.fit(x, y, verbose=0)
    assert model.compiled.optimizer.iterations == 1 and calls == []
