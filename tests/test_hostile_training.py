"""Hostile input to training and the Keras-shaped API (issue 28).

Every bad input raises ONE exception naming what was wrong, and a failed
training call changes nothing: every array of ``model.weights`` (BN's moving
statistics included), the optimizer's state and every file stay as they were.
Each failure test checks both, and a control shows that the same call on good
input does change them (so the comparison can fail).
"""
import random
import warnings

import numpy as np
import pytest
from conftest import on_cpu

from minires import train
from minires.callbacks import Callback, EarlyStopping, LearningRateScheduler, ModelCheckpoint
from minires.initializers import GlorotUniform, set_random_seed
from minires.layers import (BatchNormalization, Concatenate, Conv2D, Dense, Flatten,
                            GlobalAveragePooling2D, Input)
from minires.losses import CategoricalCrossentropy, SoftmaxCrossEntropy, SparseCategoricalCrossentropy
from minires.metrics import get as get_metrics
from minires.models import Model, Sequential
from minires.optim import SGD, Adam, CosineDecay, RMSprop, StepDecay


# --- the model of the issue, its data, and what "unchanged" means -------------------------
def tiny(activation="softmax", outputs=1):
    """Conv -> BN -> global average pool -> Dense(3): the issue's ``m``."""
    set_random_seed(0)
    x = Input((6, 6, 2), name="image")
    h = GlobalAveragePooling2D()(BatchNormalization(name="bn")(Conv2D(4, 3, name="conv")(x)))
    heads = [Dense(3, activation=activation, name=f"out{i}")(h) for i in range(outputs)]
    return Model(x, heads[0] if outputs == 1 else heads, name="tiny")


def data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6, 6, 2)).astype("float32"), rng.integers(0, 3, n)


x16, y16 = data()


def compiled(activation="softmax", optimizer=None, loss="sparse_categorical_crossentropy",
             metrics=("accuracy",), warm=True):
    """``tiny`` compiled, its optimizer warmed up by one step so it has state to lose."""
    model = tiny(activation)
    model.compile(optimizer or Adam(0.01), loss, list(metrics))
    if warm:
        x, y = data(8, seed=1)
        model.train_on_batch(x, np.eye(3)[y] if loss == "categorical_crossentropy" else y)
    return model


def everything(model, optimizer=None):
    """Copies of every array of the model (weights and BN statistics) and of
    the optimizer's state (its rate, step count and state arrays)."""
    optimizer = optimizer or model.compiled.optimizer
    state = {k: on_cpu(v) if hasattr(v, "shape") else v for k, v in optimizer.state().items()}
    return [on_cpu(w) for w in model.weights], state, optimizer.learning_rate


def assert_unchanged(model, before, optimizer=None):
    weights, state, rate = everything(model, optimizer)
    assert len(weights) == len(before[0])
    for (layer, name), old, new in zip(model.parameters(trainable_only=False), before[0], weights):
        assert np.array_equal(old, new, equal_nan=True), f"{layer.name}/{name} changed"
    assert state.keys() == before[1].keys() and rate == before[2]
    for key, value in state.items():
        assert np.array_equal(value, before[1][key]), f"optimizer state {key} changed"


def moving_statistics(model):
    return [on_cpu(model.get_layer("bn").params[n]) for n in ("moving_mean", "moving_variance")]


# --- 1. a failed step changes nothing --------------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("call", ["fit", "train_on_batch", "evaluate", "test_on_batch"])
def test_a_non_finite_pixel_is_named_before_any_step(bad, call):
    model = compiled()
    x, y = data()
    x[3, 2, 1, 0] = bad
    before = everything(model)
    kwargs = {"verbose": 0} if call in ("fit", "evaluate") else {}
    with pytest.raises(ValueError, match=rf"^{call}: x holds nan or inf \(first in sample 3\)"):
        getattr(model, call)(x, y, **kwargs)
    assert_unchanged(model, before)
    assert np.isfinite(on_cpu(model.predict(data()[0], verbose=0))).all()


def test_the_control_a_good_step_moves_weights_statistics_and_optimizer():
    model = compiled()
    before = everything(model)
    statistics = moving_statistics(model)
    model.train_on_batch(*data())
    with pytest.raises(AssertionError, match="changed"):
        assert_unchanged(model, before)
    assert not np.array_equal(statistics[0], moving_statistics(model)[0])


def test_a_failed_step_leaves_the_metrics_as_they_were():
    """The metrics are updated before the step's one read of the device; a step
    that fails after that (here the optimizer's update overflows) puts them back."""
    model, metrics, loss = compiled(optimizer=SGD(0.1)), get_metrics(["accuracy"]), \
        SparseCategoricalCrossentropy()
    train.train_step(model, *data(), model.compiled.optimizer, loss, metrics, 0.1)
    before = everything(model), {name: dict(vars(m)) for name, m in metrics.items()}
    with pytest.raises(FloatingPointError, match="a step at learning rate 1e[+]39 would make"):
        train.train_step(model, *data(seed=2), model.compiled.optimizer, loss, metrics, 1e39)
    assert {name: dict(vars(m)) for name, m in metrics.items()} == before[1]
    assert_unchanged(model, before[0])
    train.train_step(model, *data(seed=2), model.compiled.optimizer, loss, metrics, 0.1)   # control
    assert {name: dict(vars(m)) for name, m in metrics.items()} != before[1]


@pytest.mark.parametrize("call", ["fit", "train_on_batch"])
def test_a_logits_model_with_a_probability_loss_puts_bn_statistics_back(call):
    """Found only by the loss, after the forward moved BN's statistics: put back."""
    model = compiled(activation=None, loss="sparse_categorical_crossentropy", warm=False)
    before = everything(model)
    with pytest.raises(ValueError, match=r"SparseCategoricalCrossentropy: from_logits=False expects "
                                         r"probabilities .* they look like logits"):
        getattr(model, call)(*data(), **({"verbose": 0} if call == "fit" else {}))
    assert_unchanged(model, before)


@pytest.mark.parametrize("call", ["fit", "train_on_batch", "evaluate"])
def test_one_hot_targets_with_the_sparse_loss_are_refused_before_any_step(call):
    model = compiled()
    x, y = data()
    before = everything(model)
    with pytest.raises(ValueError, match=rf"^{call}: SparseCategoricalCrossentropy: labels must be "
                                         r"int class indices of shape \(16,\), got float64 \(16, 3\); "
                                         r"for one-hot or probability rows use CategoricalCrossentropy"):
        getattr(model, call)(x, np.eye(3)[y], **({"verbose": 0} if call != "train_on_batch" else {}))
    assert_unchanged(model, before)


@pytest.mark.parametrize("call", ["fit", "train_on_batch", "evaluate", "test_on_batch"])
def test_a_model_of_two_outputs_is_refused_before_any_step(call):
    model = tiny(outputs=2)
    model.compile(SGD(0.1), "sparse_categorical_crossentropy")
    before = everything(model)
    with pytest.raises(NotImplementedError, match=rf"^{call}: model 'tiny' has 2 outputs; minires "
                                                  r"trains models of one output"):
        getattr(model, call)(*data())
    assert_unchanged(model, before)
    assert [o.shape for o in model.predict(data()[0], verbose=0)] == [(16, 3), (16, 3)]


class Planted(Exception):
    pass


def planted(error=Planted):
    def fail(*args, **kwargs):
        raise error("planted")
    return fail


class LossWithNanGradient(SoftmaxCrossEntropy):
    def backward(self, dloss=1.0, logits_grad=False):
        return super().backward(dloss) * np.float32(np.nan)


def plant_in_pooling(model, monkeypatch):
    """The forward fails halfway: after BN moved its statistics, before the head."""
    monkeypatch.setattr(model.get_layer("global_average_pooling2d"), "forward", planted())


STEP_FAILURES = [   # (where, how to plant it, the error, its message)
    ("forward halfway", plant_in_pooling, Planted, "^planted$"),
    ("metric", lambda m, mp: setattr(m.compiled, "metrics", get_metrics([planted()])), Planted,
     "^planted$"),
    ("interrupt", lambda m, mp: setattr(m.compiled, "metrics", get_metrics([planted(KeyboardInterrupt)])),
     KeyboardInterrupt, "^planted$"),
    ("loss gradient", lambda m, mp: setattr(m.compiled, "loss", LossWithNanGradient()),
     FloatingPointError, r"^Adam: the gradient of 'conv/kernel' holds nan or inf .*no weight was changed"),
    ("model backward", lambda m, mp: mp.setattr(m, "backward", planted()), Planted, "^planted$"),
    ("optimizer", lambda m, mp: mp.setattr(m.compiled.optimizer, "direction", planted()), Planted,
     "^planted$"),
]


@pytest.mark.parametrize("plant, error, message", [f[1:] for f in STEP_FAILURES],
                         ids=[f[0] for f in STEP_FAILURES])
def test_a_step_that_fails_at_any_point_changes_nothing(monkeypatch, plant, error, message):
    model = compiled(activation=None, loss=SoftmaxCrossEntropy())
    before = everything(model)
    plant(model, monkeypatch)
    with pytest.raises(error, match=message):
        model.train_on_batch(*data())
    assert_unchanged(model, before)


def test_bn_statistics_that_overflow_stop_the_step_and_are_put_back():
    """Finite pixels so large that the batch variance overflows: the loss (from
    the batch statistics) is finite, the moving variance would be inf."""
    model = compiled(activation=None, loss=SoftmaxCrossEntropy(), optimizer=SGD(0.1, momentum=0.9))
    x, y = data()
    before = everything(model)
    with pytest.raises(FloatingPointError, match=r"^bn/moving_variance became nan or inf: .*lower the "
                                                 r"learning rate \(now 0\.1\); nothing of this step"):
        model.train_on_batch(x * np.float32(1e30), y)
    assert_unchanged(model, before)


def two_dense(optimizer):
    """x -> fc1 -> fc2 with gradients for both; (model, optimizer after one step)."""
    x = Input((2,))
    model = Model(x, Dense(2, name="fc2")(Dense(2, name="fc1")(x)))
    for layer in (model.get_layer("fc1"), model.get_layer("fc2")):
        for name, value in layer.params.items():
            layer.grads[name] = np.ones_like(value)
    optimizer.step(model)
    return model


@pytest.mark.parametrize("optimizer", [SGD(0.1, momentum=0.9), Adam(0.1), RMSprop(0.1)],
                         ids=["sgd", "adam", "rmsprop"])
def test_an_optimizer_step_is_all_or_nothing(optimizer):
    model = two_dense(optimizer)
    model.get_layer("fc2").grads["bias"] = np.array([1.0, np.nan], "float32")    # the last one
    before = everything(model, optimizer)
    with pytest.raises(FloatingPointError, match=rf"^{type(optimizer).__name__}: the gradient of "
                                                 r"'fc2/bias' holds nan or inf .*no weight was changed"):
        optimizer.step(model)
    assert_unchanged(model, before, optimizer)
    model.get_layer("fc2").grads["bias"] = np.ones(2, "float32")
    model.get_layer("fc2").params["bias"][...] = -3e38                 # near float32's lowest: p - lr d
    before = everything(model, optimizer)
    with pytest.raises(FloatingPointError, match=r"a step at learning rate 1e\+38 would make "
                                                 r"'fc2/bias' nan or inf"):
        optimizer.step(model, 1e38)
    assert_unchanged(model, before, optimizer)


# --- 2. learning rates: one check, wherever a rate arrives ---------------------------------
BAD_RATES = [(float("nan"), ValueError, r"must be in \[0, inf\), got nan"),
             (float("inf"), ValueError, r"must be in \[0, inf\), got inf"),
             (-1.0, ValueError, r"must be in \[0, inf\), got -1\.0"),
             ("0.1", TypeError, r"must be a number, got '0\.1' \(str\)"),
             (None, TypeError, r"must be a number, got None"),
             (True, TypeError, r"must be a number, got True")]


def set_attribute(rate):
    SGD(0.1).learning_rate = rate


ARRIVALS = [
    ("SGD", lambda rate: SGD(rate), r"SGD\(learning_rate=\.\.\.\): learning rate"),
    ("SGD keyword", lambda rate: SGD(learning_rate=rate), r"SGD\(learning_rate=\.\.\.\): learning rate"),
    ("Adam", lambda rate: Adam(rate), r"Adam\(learning_rate=\.\.\.\): learning rate"),
    ("RMSprop", lambda rate: RMSprop(rate), r"RMSprop\(learning_rate=\.\.\.\): learning rate"),
    ("attribute", set_attribute, r"SGD\.learning_rate: learning rate"),
    ("StepDecay", lambda rate: StepDecay(rate), r"StepDecay: initial: learning rate"),
    ("CosineDecay", lambda rate: CosineDecay(rate, 2), r"CosineDecay: initial: learning rate"),
]


@pytest.mark.parametrize("rate, error, message", BAD_RATES, ids=repr)
@pytest.mark.parametrize("where, make, source", ARRIVALS, ids=[a[0] for a in ARRIVALS])
def test_a_bad_rate_is_refused_where_it_arrives(where, make, source, rate, error, message):
    with pytest.raises(error, match=rf"^{source} {message}"):
        make(rate)


@pytest.mark.parametrize("rate, error, message", [bad for bad in BAD_RATES if bad[0] is not None],
                         ids=repr)                                  # step(model, None): its own rate
def test_an_optimizer_step_refuses_a_bad_rate_and_changes_nothing(rate, error, message):
    optimizer = SGD(0.1, momentum=0.9)
    model = two_dense(optimizer)
    before = everything(model, optimizer)
    with pytest.raises(error, match=rf"^SGD\.step\(learning_rate=\.\.\.\): learning rate {message}"):
        optimizer.step(model, rate)
    assert_unchanged(model, before, optimizer)


@pytest.mark.parametrize("rate, error, message", BAD_RATES, ids=repr)
@pytest.mark.parametrize("how", ["schedule", "scheduler", "scheduler of one argument", "step"])
def test_a_bad_rate_in_training_changes_nothing(how, rate, error, message):
    model = compiled(optimizer=SGD(0.1, momentum=0.9))
    optimizer = model.compiled.optimizer
    x, y = data()
    before = everything(model)
    sources = {"schedule": r"fit: schedule\(0\): learning rate",
               "scheduler": r"LearningRateScheduler: schedule\(0, 0\.1\): learning rate",
               "scheduler of one argument": r"LearningRateScheduler: schedule\(0\): learning rate",
               "step": r"train_step: learning rate"}
    with pytest.raises(error, match=rf"^{sources[how]} {message}"):
        if how == "schedule":
            train.fit(model, x, y, optimizer=optimizer, schedule=lambda epoch: rate, verbose=0)
        elif how == "scheduler":
            model.fit(x, y, callbacks=[LearningRateScheduler(lambda epoch, lr: rate)], verbose=0)
        elif how == "scheduler of one argument":
            model.fit(x, y, callbacks=[LearningRateScheduler(lambda epoch: rate)], verbose=0)
        else:
            train.train_step(model, x, y, optimizer, SparseCategoricalCrossentropy(), {}, rate)
    assert_unchanged(model, before)


def test_a_rate_of_zero_is_taken_and_moves_no_weight():
    """Keras and PyTorch take 0 (a schedule may end there); it trains nothing."""
    model = compiled(optimizer=SGD(0.0))
    before = [on_cpu(w) for w in model.trainable_weights]
    model.fit(*data(), verbose=0)
    assert all(np.array_equal(a, on_cpu(b)) for a, b in zip(before, model.trainable_weights))


def test_a_rate_may_be_any_real_number_type_as_keras_converts_it():
    for rate in (np.float32(0.05), np.float64(0.05), np.asarray(0.05), 1):
        optimizer = SGD(rate)
        optimizer.learning_rate = rate
        assert type(optimizer.learning_rate) is float and optimizer.learning_rate == float(rate)
    history = compiled(optimizer=SGD(0.5)).fit(
        x16, y16, epochs=2, verbose=0, callbacks=[LearningRateScheduler(lambda e: np.asarray(0.1))])
    assert history.history["learning_rate"] == [0.1, 0.1]


# --- 3. fit's, evaluate's and predict's arguments -------------------------------------------
FIT_ARGUMENTS = [
    (dict(epochs=-1), ValueError, r"fit: epochs must be a non-negative integer, got -1"),
    (dict(epochs=2.5), TypeError, r"fit: epochs must be a non-negative integer, got 2\.5 \(float\)"),
    (dict(epochs="3"), TypeError, r"fit: epochs must be a non-negative integer, got '3'"),
    (dict(initial_epoch=-2), ValueError, r"fit: initial_epoch must be a non-negative integer"),
    (dict(batch_size="32"), TypeError, r"fit: batch_size must be a positive integer, got '32'"),
    (dict(batch_size=0), ValueError, r"fit: batch_size must be a positive integer, got 0"),
    (dict(validation_split="0.2"), TypeError, r"fit: validation_split must be a number, got '0\.2'"),
    (dict(validation_split=float("nan")), ValueError, r"fit: validation_split must be in \[0, 1\), got nan"),
    (dict(validation_split=-0.1), ValueError, r"fit: validation_split must be in \[0, 1\)"),
    (dict(validation_data=(x16[:, :4], y16)), ValueError,
     r"fit: validation_data: model 'tiny': input layer 'image' expects arrays of shape "
     r"\(None, 6, 6, 2\), got \(16, 4, 6, 2\)"),
    (dict(validation_data=(x16, y16[:15])), ValueError,
     r"fit: validation_data: x has 16 samples but y has 15 labels"),
    (dict(validation_data=(x16, y16 + 3)), ValueError,
     r"fit: validation_data: SparseCategoricalCrossentropy: labels must lie in \[0, 3\)"),
    (dict(validation_data=(x16, y16, np.ones(15))), ValueError,
     r"fit: validation_data: sample_weight must hold one number per sample, shape \(16,\), got "
     r"float64 of shape \(15,\)"),
    (dict(validation_data=x16), ValueError, r"fit: validation_data must be a pair"),
    (dict(shuffle="batch"), TypeError, r"fit: shuffle must be True or False, got 'batch'"),
    (dict(callbacks=print), TypeError,
     r"fit: callbacks\[0\] is builtin_function_or_method print, not a callback"),
    (dict(callbacks=[EarlyStopping(monitor="loss"), lambda epoch, logs: None]), TypeError,
     r"fit: callbacks\[1\] is function <lambda>, not a callback \(it has no set_model\(\)\)"),
    (dict(verbose="loud"), ValueError, r"fit: verbose must be 'auto', 0, 1 or 2"),
]


@pytest.mark.parametrize("kwargs, error, message", FIT_ARGUMENTS,
                         ids=[next(iter(a[0])) + str(i) for i, a in enumerate(FIT_ARGUMENTS)])
def test_fit_refuses_bad_arguments_before_anything(kwargs, error, message):
    model = compiled()
    history = []

    class Recorder(Callback):
        def on_train_begin(self, logs=None):
            history.append("began")

    kwargs.setdefault("verbose", 0)
    if "callbacks" not in kwargs:
        kwargs["callbacks"] = [Recorder()]
    before = everything(model)
    with pytest.raises(error, match=f"^{message}"):
        model.fit(x16, y16, **kwargs)
    assert_unchanged(model, before)
    assert history == []


def test_train_fit_refuses_bad_data_before_writing_a_checkpoint(tmp_path):
    model = tiny(activation=None)
    optimizer = Adam(0.01)
    before = everything(model, optimizer)
    x, y = data()
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"^fit: x holds nan or inf \(first in sample 0\)"):
        train.fit(model, x, y, optimizer=optimizer, checkpoint=str(tmp_path / "run.npz"), verbose=0)
    with pytest.raises(TypeError, match=r"^fit: schedule must be a function epoch -> learning rate"):
        train.fit(model, *data(), schedule=0.1, checkpoint=str(tmp_path / "run.npz"), verbose=0)
    assert_unchanged(model, before, optimizer)
    assert list(tmp_path.iterdir()) == []


def test_a_model_built_at_its_first_call_is_not_built_by_bad_data():
    model = Sequential([Conv2D(4, 3), BatchNormalization(), GlobalAveragePooling2D(),
                        Dense(3, activation="softmax")])
    model.compile(SGD(0.1), "sparse_categorical_crossentropy")
    x = x16.copy()
    x[2, 0, 0, 1] = np.nan
    with pytest.raises(ValueError, match=r"^train_on_batch: x holds nan or inf \(first in sample 2\)"):
        model.train_on_batch(x, y16)
    assert model.weights == [] and not model.built


def test_x_and_y_are_taken_as_keras_takes_them():
    """A list of one array for a one-input model, Python lists, array-likes
    (a pandas DataFrame has __array__) and a dict by input name: all train
    exactly as the array itself."""
    x, y = data()

    class FrameLike:
        def __init__(self, values):
            self.values = values

        def __array__(self, dtype=None, copy=None):
            return self.values

    results = []
    for xs, ys in [(x, y), ([x], y), (x.tolist(), y.tolist()), (FrameLike(x), [y]),
                   ({"image": x}, FrameLike(y))]:
        model = compiled()
        model.fit(xs, ys, epochs=1, batch_size=8, shuffle=False, verbose=0)
        results.append([on_cpu(w) for w in model.weights])
        assert np.array_equal(on_cpu(model.predict(xs, verbose=0)), on_cpu(model.predict(x, verbose=0)))
        assert model.evaluate(xs, ys, verbose=0) == model.evaluate(x, y, verbose=0)
    for other in results[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(results[0], other))


def test_a_model_of_two_inputs_trains_on_a_list_or_a_dict():
    a, b = Input((3,), name="a"), Input((2,), name="b")
    set_random_seed(0)
    model = Model([a, b], Dense(3, activation="softmax")(Concatenate()([a, b])))
    model.compile(SGD(0.1), "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    xa, xb, y = rng.normal(size=(10, 3)), rng.normal(size=(10, 2)), rng.integers(0, 3, 10)
    history = model.fit([xa, xb], y, validation_split=0.2, verbose=0).history
    assert set(history) == {"loss", "val_loss"}
    assert model.evaluate({"b": xb, "a": xa}, y, verbose=0) == model.evaluate([xa, xb], y, verbose=0)
    before = everything(model)
    with pytest.raises(ValueError, match=r"^fit: model '\w+' has 2 inputs \('a', 'b'\) but x holds 1 "
                                         r"arrays"):
        model.fit(xa, y, verbose=0)
    with pytest.raises(ValueError, match=r"^fit: x is a dict with keys \['a', 'c'\], but model '\w+' "
                                         r"has the inputs \['a', 'b'\]"):
        model.fit({"a": xa, "c": xb}, y, verbose=0)
    bad = xb.copy()
    bad[4, 1] = np.inf
    with pytest.raises(ValueError, match=r"^fit: x\[1\] \(input 'b'\) holds nan or inf \(first in "
                                         r"sample 4\)"):
        model.fit([xa, bad], y, verbose=0)
    assert_unchanged(model, before)


NOT_DATA = [
    (None, ValueError, r"x is None; give an array"),
    (3.0, TypeError, r"x must be an array \(NumPy or CuPy\), a list or an array-like such as a "
                     r"pandas DataFrame, got float"),
    (np.float32(3.0), ValueError, r"x must have a batch axis \(one entry per sample\), got a single value"),
    ("images", TypeError, r"x must be an array .* got str"),
    ([], ValueError, r"x is an empty list; give an array with a batch axis, or a list of arrays"),
    ([[1.0, 2.0], [3.0]], ValueError, r"x cannot be made one array: setting an array element"),
    (np.array([["a", "b"]]), TypeError, r"x must hold real numbers \(float, int or bool\), got dtype <U1"),
    ([x16, x16], ValueError, r"model 'tiny' has 1 input \('image'\) but x holds 2 arrays \(a list of "
                             r"samples: np.stack it first\)"),
    ({"images": x16}, ValueError, r"x is a dict with keys \['images'\], but model 'tiny' has the "
                                  r"inputs \['image'\]"),
    (iter([x16]), TypeError, r"x must be an array .* got list_iterator"),
]


@pytest.mark.parametrize("x, error, message", NOT_DATA, ids=[repr(type(a[0]).__name__) + str(i)
                                                             for i, a in enumerate(NOT_DATA)])
@pytest.mark.parametrize("call", ["fit", "evaluate", "predict", "train_on_batch", "test_on_batch"])
def test_x_that_is_no_data_is_refused_naming_it(call, x, error, message):
    model = compiled()
    before = everything(model)
    args = (x,) if call == "predict" else (x, y16)
    kwargs = {} if call in ("train_on_batch", "test_on_batch") else {"verbose": 0}
    with pytest.raises(error, match=f"^{call}: {message}"):
        getattr(model, call)(*args, **kwargs)
    assert_unchanged(model, before)


@pytest.mark.parametrize("y, error, message", [
    (None, ValueError, r"y is None; minires trains on arrays \(no datasets or generators"),
    ([y16, y16], ValueError, r"y is a list of 2 arrays, one per output, but minires trains models "
                             r"of one output"),
    (np.array(["a"] * 16), TypeError, r"y must hold real numbers \(float, int or bool\), got dtype <U1"),
    (y16[:15], ValueError, r"x has 16 samples but y has 15 labels"),
    (y16.astype("float64"), ValueError, r"SparseCategoricalCrossentropy: labels must be int class "
                                        r"indices of shape \(16,\), got float64 \(16,\)"),
    (y16[:, None] + 1, ValueError, r"SparseCategoricalCrossentropy: labels must lie in \[0, 3\), "
                                   r"got values from 1 to 3"),
])
def test_y_that_does_not_fit_is_refused_naming_it(y, error, message):
    model = compiled()
    before = everything(model)
    for call in ("fit", "train_on_batch", "evaluate"):
        kwargs = {"verbose": 0} if call != "train_on_batch" else {}
        with pytest.raises(error, match=f"^{call}: {message}"):
            getattr(model, call)(x16, y, **kwargs)
    assert_unchanged(model, before)


def test_a_column_of_class_indices_trains_as_keras_datasets_give_them():
    model, by_column = compiled(), compiled()
    model.fit(x16, y16, shuffle=False, verbose=0)
    by_column.fit(x16, y16[:, None].astype("uint8"), shuffle=False, verbose=0)
    assert all(np.array_equal(on_cpu(a), on_cpu(b)) for a, b in zip(model.weights, by_column.weights))


@pytest.mark.parametrize("targets, message", [
    (-np.eye(3)[y16], r"must be >= 0, got entries down to -1"),
    (np.where(np.eye(3)[y16] == 1, np.nan, 0.0), r"must be finite, got nan or inf"),
])
def test_categorical_targets_that_are_no_distribution_are_refused(targets, message):
    model = compiled(loss="categorical_crossentropy")
    before = everything(model)
    with pytest.raises(ValueError, match=r"^fit: CategoricalCrossentropy: target rows \(one-hot or "
                                         rf"probabilities\) {message}"):
        model.fit(x16, targets, verbose=0)
    assert_unchanged(model, before)


def test_evaluate_warns_naming_weights_that_are_not_finite():
    model = compiled()
    model.get_layer("out0").params["kernel"][0, 0] = np.nan
    model.get_layer("out0").weights_changed()
    with pytest.warns(RuntimeWarning, match=r"^evaluate: the loss is nan: the model's weights are "
                                            r"not finite \(out0/kernel\): they were loaded so"):
        loss, _ = model.evaluate(x16, y16, verbose=0)
    assert np.isnan(loss)
    before = everything(model)
    with pytest.raises(FloatingPointError, match=r"^the loss became nan: the model's weights are not "
                                                 r"finite \(out0/kernel\).* nothing of this step"):
        model.train_on_batch(x16, y16)
    assert_unchanged(model, before)


def test_compile_without_a_loss_picks_the_probability_loss_for_a_softmax_model():
    picked, named = tiny(), tiny()
    picked.compile(SGD(0.1))
    named.compile(SGD(0.1), "sparse_categorical_crossentropy")
    for model in (picked, named):
        model.fit(x16, y16, shuffle=False, verbose=0)
    assert all(np.array_equal(on_cpu(a), on_cpu(b)) for a, b in zip(picked.weights, named.weights))


def test_compile_without_a_loss_refuses_a_softmax_it_cannot_see():
    """A softmax behind a Flatten: output_applies_softmax says no, the outputs
    say yes; the logits loss would apply a second softmax silently."""
    set_random_seed(0)
    x = Input((6, 6, 2))
    h = GlobalAveragePooling2D()(BatchNormalization(name="bn")(Conv2D(4, 3)(x)))
    model = Model(x, Flatten()(Dense(3, activation="softmax")(h)))
    model.compile(SGD(0.1))
    before = everything(model)
    for call in ("fit", "train_on_batch", "evaluate"):
        with pytest.raises(ValueError, match=r"^SoftmaxCrossEntropy: the model's outputs are "
                                             r"probabilities already .* give the loss: "
                                             r"'sparse_categorical_crossentropy'"):
            getattr(model, call)(x16, y16, **({} if call == "train_on_batch" else {"verbose": 0}))
    assert_unchanged(model, before)


def test_initial_epoch_past_epochs_warns_that_nothing_trains():
    model = compiled()
    before = everything(model)
    with pytest.warns(UserWarning, match=r"^fit: initial_epoch=3 is past epochs=2, so no epoch runs"):
        history = model.fit(x16, y16, epochs=2, initial_epoch=3, verbose=0)
    assert history.epoch == []
    assert_unchanged(model, before)


# --- 4. callbacks ------------------------------------------------------------------------------
@pytest.mark.parametrize("filepath, error, message", [
    ("w{}.npz", ValueError, r"filepath 'w\{\}\.npz' has the placeholder \{\}, which names no key"),
    ("w{0}.npz", ValueError, r"filepath 'w\{0\}\.npz' has the placeholder \{0\}, which names no key"),
    ("w{epoch.real}.npz", ValueError, r"filepath 'w\{epoch\.real\}\.npz' has the placeholder "
                                      r"\{epoch\.real\}, which names no key"),
    ("w{epoch:02q}.npz", ValueError, r"filepath 'w\{epoch:02q\}\.npz': the placeholder "
                                     r"\{epoch:02q\} cannot format a number"),
    ("w{loss!x}.npz", ValueError, r"filepath 'w\{loss!x\}\.npz': the placeholder \{loss!x\} "
                                  r"cannot format a number"),
    ("w{epoch:{width}}.npz", ValueError, r"filepath 'w\{epoch:\{width\}\}\.npz': the placeholder "
                                         r"\{epoch:\{width\}\} cannot format"),
    ("w{epoch.npz", ValueError, r"filepath 'w\{epoch\.npz' is not a format string \(expected '\}' "
                                r"before end of string\); a literal brace is written \{\{ or \}\}"),
    ("w}.npz", ValueError, r"filepath 'w\}\.npz' is not a format string \(Single '\}' encountered"),
    (None, TypeError, r"filepath must be a path \(a str or a pathlib\.Path\), got None"),
    (b"w.npz", TypeError, r"filepath must be a path .* got b'w\.npz'"),
])
def test_model_checkpoint_refuses_a_bad_filepath_at_construction(filepath, error, message):
    with pytest.raises(error, match=f"^ModelCheckpoint: {message}"):
        ModelCheckpoint(filepath)


def test_model_checkpoint_takes_keras_placeholders(tmp_path):
    model = compiled()
    path = tmp_path / "w{{x}}{epoch:02d}-{loss:.2f}-{accuracy!r}.npz"
    model.fit(x16, y16, epochs=2, callbacks=ModelCheckpoint(path, monitor="loss"), verbose=0)
    assert sorted(p.name[:6] for p in tmp_path.iterdir()) == ["w{x}01", "w{x}02"]


def test_save_best_only_without_the_monitored_value_saves_nothing_and_warns(tmp_path):
    model = compiled()
    path = tmp_path / "best.npz"
    with pytest.warns(UserWarning, match=r"ModelCheckpoint\(save_best_only=True\) watches "
                                         r"'val_loss', which is not in the logs.*; nothing saved"):
        model.fit(x16, y16, epochs=2, callbacks=[ModelCheckpoint(path, save_best_only=True)],
                  verbose=0)
    assert not path.exists()
    model.fit(x16, y16, epochs=1, validation_split=0.25, verbose=0,
              callbacks=[ModelCheckpoint(path, save_best_only=True)])
    assert path.exists()                                   # the control: with the value, it saves


def test_learning_rate_scheduler_takes_a_schedule_of_one_or_two_arguments():
    seen = []
    for schedule in (lambda epoch: 0.1 / (epoch + 1), lambda epoch, lr: 0.1 / (epoch + 1),
                     lambda epoch, lr=None: 0.1 / (epoch + 1), CosineDecay(0.1, 4)):
        model = compiled(optimizer=SGD(0.5))
        history = model.fit(x16, y16, epochs=2, callbacks=[LearningRateScheduler(schedule)],
                            verbose=0).history
        seen.append(history["learning_rate"])
    assert seen[:3] == [[0.1, 0.05]] * 3 and seen[3][0] == 0.1
    for schedule, shown in [(lambda: 0.1, r"<lambda>\(\)"),
                            (lambda epoch, lr, extra: 0.1, r"<lambda>\(epoch, lr, extra\)")]:
        with pytest.raises(TypeError, match=rf"^LearningRateScheduler: schedule function {shown} "
                                            r"takes neither \(epoch, lr\) nor \(epoch\)"):
            LearningRateScheduler(schedule)


def test_a_single_callback_is_a_list_of_one_as_in_keras_3():
    model = compiled()
    stopper = EarlyStopping(monitor="loss", patience=0)
    recorder = []

    class Recorder(Callback):
        def on_epoch_end(self, epoch, logs=None):
            recorder.append(epoch)

    model.fit(x16, y16, epochs=2, callbacks=Recorder(), verbose=0)
    model.fit(x16, y16, epochs=1, callbacks=(stopper,), verbose=0)
    assert recorder == [0, 1] and stopper.model is model


@pytest.mark.parametrize("make, error, message", [
    (lambda: EarlyStopping(patience="2"), TypeError,
     r"EarlyStopping: patience must be a non-negative integer, got '2' \(str\)"),
    (lambda: EarlyStopping(patience=-1), ValueError, r"EarlyStopping: patience must be a non-negative"),
    (lambda: EarlyStopping(patience=1.5), TypeError, r"EarlyStopping: patience must be a non-negative"),
    (lambda: EarlyStopping(start_from_epoch="1"), TypeError, r"EarlyStopping: start_from_epoch must"),
    (lambda: EarlyStopping(min_delta="0.1"), TypeError, r"EarlyStopping: min_delta must be a number"),
    (lambda: EarlyStopping(baseline=float("nan")), ValueError,
     r"EarlyStopping: baseline must be in \(-inf, inf\), got nan"),
    (lambda: EarlyStopping(monitor=None), TypeError,
     r"EarlyStopping: monitor must be the name of a logged value such as 'val_loss', got None"),
    (lambda: ModelCheckpoint("w.npz", monitor=3), TypeError, r"ModelCheckpoint: monitor must be"),
    (lambda: ModelCheckpoint("w.npz", initial_value_threshold="low"), TypeError,
     r"ModelCheckpoint: initial_value_threshold must be a number, got 'low'"),
    (lambda: LearningRateScheduler(0.1), TypeError,
     r"LearningRateScheduler: schedule must be a function \(epoch, lr\) -> lr, got float"),
])
def test_callback_arguments_are_checked_at_construction(make, error, message):
    with pytest.raises(error, match=f"^{message}"):
        make()


# --- 5. a stable cross-entropy of huge logits ---------------------------------------------------
@pytest.mark.parametrize("dtype, big", [("float32", 3e38), ("float64", 1e308)])
@pytest.mark.parametrize("make", [SoftmaxCrossEntropy, lambda: SparseCategoricalCrossentropy(True),
                                  lambda: CategoricalCrossentropy(True)], ids=["softmax", "sparse", "cat"])
def test_the_cross_entropy_of_huge_logits_is_exact(make, dtype, big):
    logits = np.array([[big, 0.0, -big], [0.0, big, -big]], dtype)
    labels = np.array([0, 1])
    targets = labels if getattr(make(), "sparse", None) is not False else np.eye(3, dtype=dtype)[labels]
    loss = make()
    with warnings.catch_warnings():
        warnings.simplefilter("error")                       # no overflow or invalid-value warning
        value = loss.forward(logits, targets)
        grad = loss.backward()
        wrong = loss.forward(logits, targets[::-1])                  # (big + big) / 2, though big + big overflows
    assert value == 0 and value.dtype == dtype
    np.testing.assert_array_equal(grad, np.zeros_like(logits))
    assert wrong == pytest.approx(big, rel=1e-6)


# --- 6. set_random_seed seeds what Keras's seeds ------------------------------------------------
def draws():
    return random.random(), np.random.rand(), float(GlorotUniform()((2, 2))[0, 0])


def test_set_random_seed_seeds_python_numpy_and_minires():
    set_random_seed(3)
    first = draws()
    set_random_seed(3)
    assert draws() == first
    set_random_seed(4)
    assert all(a != b for a, b in zip(draws(), first))


@pytest.mark.parametrize("seed, shown", [(-1, "-1"), (2**32, "4294967296"), (1.5, "1.5"),
                                         ("3", "'3'"), (None, "None"), (True, "True")])
def test_set_random_seed_refuses_what_numpy_cannot_take(seed, shown):
    with pytest.raises(ValueError, match=rf"^set_random_seed: seed must be an integer in "
                                         rf"\[0, 2\*\*32\), got {shown}"):
        set_random_seed(seed)
