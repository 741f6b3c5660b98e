"""Keras's compile / fit / evaluate / predict / train_on_batch / test_on_batch,
callbacks and progress output (minires/compile.py, callbacks.py, metrics.py over
the one readable loop, minires.train.fit)."""
import io
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import Scores, on_cpu

from minires.applications import CifarResNet
from minires.callbacks import Callback, EarlyStopping, LearningRateScheduler, ModelCheckpoint
from minires.initializers import set_random_seed
from minires.layers import Dense, Input
from minires.losses import CategoricalCrossentropy, SoftmaxCrossEntropy, SparseCategoricalCrossentropy
from minires.metrics import categorical_accuracy, sparse_categorical_accuracy
from minires.models import Model, Sequential
from minires.optim import SGD, Adam, KerasAdam, KerasSGD
from minires.train import fit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def blobs(n=120, seed=0, features=6, classes=3):
    """Gaussian clusters, one per class: easy to learn, quick to train on."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(0, 2, (classes, features))
    labels = rng.integers(0, classes, n)
    return (centres[labels] + rng.normal(0, 1, (n, features))).astype("float32"), labels


def mlp(activation="softmax", seed=0, features=6, classes=3, name="mlp"):
    """Two Dense layers; the last ends with a softmax or gives logits (None)."""
    set_random_seed(seed)
    x = Input((features,))
    h = Dense(16, activation="relu", name="hidden")(x)
    return Model(x, Dense(classes, activation=activation, name="out")(h), name=name)


def weights_of(model):
    return [on_cpu(w) for w in model.get_weights()]


class Recorder(Callback):
    """Keeps a copy of the weights and the logs at the end of every epoch."""

    def __init__(self):
        self.weights, self.logs = [], []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(weights_of(self.model))
        self.logs.append(dict(logs))


# --- the API ------------------------------------------------------------------------
@pytest.mark.parametrize("activation, loss", [("softmax", "sparse_categorical_crossentropy"),
                                              (None, SparseCategoricalCrossentropy(from_logits=True))],
                         ids=["softmax", "logits"])
def test_compile_fit_evaluate_predict(activation, loss):
    x, y = blobs(120)
    x_test, y_test = blobs(60, seed=1)
    model = mlp(activation)
    model.compile(optimizer=Adam(0.02), loss=loss, metrics=["accuracy"])
    history = model.fit(x, y, batch_size=16, epochs=4, validation_data=(x_test, y_test), verbose=0)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 4 for v in history.history.values()) and history.epoch == [0, 1, 2, 3]
    assert history.history["loss"][-1] < history.history["loss"][0] / 2
    loss_value, acc = model.evaluate(x_test, y_test, verbose=0)
    assert loss_value == pytest.approx(history.history["val_loss"][-1], rel=1e-6)
    assert acc == pytest.approx(history.history["val_accuracy"][-1]) and acc >= 0.9
    outputs = on_cpu(model.predict(x_test, verbose=0))
    assert outputs.shape == (60, 3)
    assert np.mean(outputs.argmax(1) == y_test) == pytest.approx(acc)
    if activation == "softmax":
        np.testing.assert_allclose(outputs.sum(1), 1, rtol=1e-5)
    before = model.test_on_batch(x[:16], y[:16])
    first = model.train_on_batch(x[:16], y[:16])
    assert isinstance(first, list) and len(first) == 2
    assert first == pytest.approx(before, rel=1e-6)               # measured before its step
    assert model.test_on_batch(x[:16], y[:16])[0] != before[0]     # the step moved the weights


def test_without_metrics_evaluate_gives_the_loss_alone():
    x, y = blobs(40)
    model = mlp()
    model.compile("sgd", "sparse_categorical_crossentropy")
    history = model.fit(x, y, epochs=2, verbose=0)
    assert set(history.history) == {"loss"}
    assert isinstance(model.evaluate(x, y, verbose=0), float)
    assert isinstance(model.train_on_batch(x[:8], y[:8]), float)
    assert isinstance(model.test_on_batch(x[:8], y[:8]), float)


def test_compile_takes_keras_names_and_defaults():
    """Keras's strings give Keras's optimisers (minires.optim.KerasAdam: epsilon 1e-7)."""
    model = mlp()
    model.compile("adam", "categorical_crossentropy", metrics=["acc"])
    assert type(model.compiled.optimizer) is KerasAdam and model.compiled.optimizer.learning_rate == 0.001
    assert model.compiled.optimizer.epsilon == 1e-7
    assert type(model.compiled.loss) is CategoricalCrossentropy and not model.compiled.loss.from_logits
    assert list(model.compiled.metrics) == ["acc"]
    model.compile("SGD", "sparse_categorical_crossentropy", metrics=["sparse_categorical_accuracy"])
    assert type(model.compiled.optimizer) is KerasSGD and model.compiled.optimizer.learning_rate == 0.01
    x, y = blobs(40)
    history = model.fit(x, y, epochs=1, validation_split=0.25, verbose=0)
    assert list(history.history) == ["loss", "sparse_categorical_accuracy", "val_loss",
                                     "val_sparse_categorical_accuracy"]


def test_one_hot_targets_with_categorical_crossentropy():
    x, y = blobs(60)
    model = mlp()
    model.compile(Adam(0.02), "categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, np.eye(3, dtype="float32")[y], epochs=3, batch_size=16, verbose=0)
    assert history.history["accuracy"][-1] > 0.8


def test_a_small_resnet_with_a_softmax_trains_through_compile_and_fit():
    rng = np.random.default_rng(0)
    stripes = np.zeros((3, 8, 8, 1), "float32")
    stripes[0, ::2], stripes[1, :, ::2], stripes[2, np.eye(8, dtype=bool)] = 1, 1, 1
    y = rng.integers(0, 3, 96)
    x = stripes[y] + rng.normal(0, 0.5, (96, 8, 8, 1)).astype("float32")
    set_random_seed(0)
    model = CifarResNet(blocks=(1,), width=4, input_shape=(8, 8, 1), classes=3)   # softmax head
    assert model.output_applies_softmax()
    model.compile(Adam(0.01), "sparse_categorical_crossentropy", ["accuracy"])
    history = model.fit(x, y, batch_size=16, epochs=4, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0] / 2


def test_a_model_built_at_its_first_call_compiles_and_fits():
    """A Sequential without an Input has no output until traced: fit builds it
    from x's shape before choosing the loss and checking the labels."""
    x, y = blobs(40)
    model = Sequential([Dense(16, activation="relu"), Dense(3, activation="softmax")])
    model.compile(SGD(0.1), "sparse_categorical_crossentropy", ["accuracy"])
    history = model.fit(x, y, epochs=2, verbose=0)
    assert len(history.history["accuracy"]) == 2 and model.output_applies_softmax()
    late = Sequential([Dense(3, activation="softmax")])
    late.compile("sgd", SparseCategoricalCrossentropy(from_logits=True))   # unbuilt: checked by fit
    with pytest.raises(ValueError, match="apply a softmax again"):
        late.fit(x, y, verbose=0)
    unbuilt = Sequential([Dense(3)])
    unbuilt.compile("sgd", SparseCategoricalCrossentropy(from_logits=True))
    assert isinstance(unbuilt.train_on_batch(x[:8], y[:8]), float)


# --- errors before any training ---------------------------------------------------------
def test_fit_evaluate_and_train_on_batch_before_compile_say_to_compile():
    x, y = blobs(16)
    model = mlp()
    before = weights_of(model)
    for call in (lambda: model.fit(x, y), lambda: model.evaluate(x, y),
                 lambda: model.train_on_batch(x, y), lambda: model.test_on_batch(x, y)):
        with pytest.raises(RuntimeError, match=r"not compiled; call model\.compile\(.*\) first"):
            call()
    assert all(np.array_equal(a, b) for a, b in zip(before, weights_of(model)))
    assert model.predict(x, verbose=0).shape == (16, 3)          # predict needs no compile


def test_a_loss_on_logits_after_a_softmax_is_refused_before_training():
    x, y = blobs(16)
    model = mlp("softmax")
    with pytest.raises(ValueError, match="from_logits=True and would apply a softmax again"):
        model.compile("adam", SparseCategoricalCrossentropy(from_logits=True))
    assert model.compiled is None
    before = weights_of(model)
    with pytest.raises(ValueError, match="apply a softmax again"):
        fit(model, x, y, loss=SoftmaxCrossEntropy(), verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, weights_of(model)))


def test_fit_picks_the_loss_from_the_output_and_the_labels():
    """loss=None: logits get SoftmaxCrossEntropy; a softmax output gets the
    probability cross-entropy that fits the labels, trained below the softmax."""
    x, y = blobs(48)
    one_hot = np.eye(3, dtype="float32")[y]
    results = []
    for activation, targets in [(None, y), ("softmax", y), ("softmax", one_hot)]:
        model = mlp(activation)
        fit(model, x, targets, epochs=2, batch_size=16, optimizer=SGD(0.1), verbose=0)
        results.append(weights_of(model))
    for other in results[1:]:                  # all three: the same gradients, the same steps
        for a, b in zip(results[0], other):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(optimizer="adagrad"), r"unknown optimizer 'adagrad'; minires has 'rmsprop', 'adam', 'sgd'"),
    (dict(optimizer="adam", loss="mse"), r"unknown loss 'mse'"),
    (dict(optimizer="adam", metrics=["f1"]), r"unknown metric 'f1'; minires has 'accuracy'"),
])
def test_compile_refuses_what_it_does_not_know(kwargs, message):
    model = mlp()
    with pytest.raises(ValueError, match=message):
        model.compile(**kwargs)
    assert model.compiled is None


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=0), "batch_size must be a positive integer"),
    (dict(verbose=3), "verbose must be 'auto', 0, 1 or 2"),
    (dict(validation_split=1.0), r"validation_split must be in \[0, 1\)"),
    (dict(validation_split=0.99), "leaves 0 for training and 40 for validation"),
    (dict(validation_data=(np.zeros((4, 6), "float32"),)), "validation_data must be a pair"),
])
def test_fit_refuses_bad_arguments_before_training(kwargs, message):
    x, y = blobs(40)
    model = mlp()
    model.compile("sgd", "sparse_categorical_crossentropy")
    before = weights_of(model)
    with pytest.raises(ValueError, match=message):
        model.fit(x, y, **kwargs)
    assert all(np.array_equal(a, b) for a, b in zip(before, weights_of(model)))


# --- fit's arguments -----------------------------------------------------------------
def test_validation_split_holds_out_the_last_fraction():
    """As Keras: the last floor(N * split) samples... precisely, the first
    floor(N * (1 - split)) train, before any shuffling."""
    x, y = blobs(50)
    split, by_hand = mlp(), mlp()
    for model in (split, by_hand):
        model.compile(SGD(0.05), "sparse_categorical_crossentropy", ["accuracy"])
    set_random_seed(1)                          # the same shuffles (Model.fit's are Keras's)
    a = split.fit(x, y, batch_size=8, epochs=2, validation_split=0.1, verbose=0)
    set_random_seed(1)
    b = by_hand.fit(x[:45], y[:45], batch_size=8, epochs=2, validation_data=(x[45:], y[45:]),
                    verbose=0)
    assert a.history == b.history
    assert all(np.array_equal(u, v) for u, v in zip(weights_of(split), weights_of(by_hand)))


def test_shuffle_false_takes_the_batches_in_data_order():
    """fit(shuffle=False) against the loop written out: batches in order, and the
    softmax model's backward started below its softmax with p - y."""
    x, y = blobs(40)
    by_fit, by_hand, shuffled = mlp(), mlp(), mlp()
    by_fit.compile(SGD(0.1), "sparse_categorical_crossentropy")
    by_fit.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    loss, optimizer = SparseCategoricalCrossentropy(), SGD(0.1)
    for epoch in range(2):
        for start in range(0, 40, 16):
            loss.forward(by_hand.forward(x[start:start + 16], training=True), y[start:start + 16])
            by_hand.backward(loss.backward(logits_grad=True), skip_output_softmax=True)
            optimizer.step(by_hand)
    for ours, theirs in zip(weights_of(by_fit), weights_of(by_hand)):
        np.testing.assert_array_equal(ours, theirs)
    shuffled.compile(SGD(0.1), "sparse_categorical_crossentropy")
    shuffled.fit(x, y, batch_size=16, epochs=2, verbose=0)            # shuffle=True, Keras's default
    assert not np.array_equal(weights_of(shuffled)[0], weights_of(by_fit)[0])


def test_initial_epoch_counts_on_from_there():
    x, y = blobs(40)
    model = mlp()
    model.compile(SGD(0.1), "sparse_categorical_crossentropy")
    asked = []
    scheduler = LearningRateScheduler(lambda epoch, lr: asked.append(epoch) or 0.1)
    history = model.fit(x, y, epochs=4, initial_epoch=2, callbacks=[scheduler], verbose=0)
    assert history.epoch == [2, 3] and asked == [2, 3] and len(history.history["loss"]) == 2


def test_a_callback_can_stop_training_mid_epoch():
    class StopAfterTwoBatches(Callback):
        def on_batch_end(self, batch, logs=None):          # the older name reaches it too
            if batch == 1:
                self.model.stop_training = True

    x, y = blobs(64)
    model = mlp()
    model.compile(SGD(0.1), "sparse_categorical_crossentropy")
    history = model.fit(x, y, batch_size=8, epochs=5, callbacks=[StopAfterTwoBatches()], verbose=0)
    assert history.epoch == [0] and model.compiled.optimizer.iterations == 2


# --- callbacks -----------------------------------------------------------------------
def test_model_checkpoint_writes_loadable_files_named_by_epoch(tmp_path):
    x, y = blobs(40)
    model, recorder = mlp(), Recorder()
    model.compile(SGD(0.1), "sparse_categorical_crossentropy")
    path = tmp_path / "run" / "weights.{epoch:02d}-{loss:.2f}.npz"
    model.fit(x, y, epochs=2, callbacks=[ModelCheckpoint(str(path), monitor="loss"), recorder],
              verbose=0)
    written = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert written == [f"weights.{e + 1:02d}-{recorder.logs[e]['loss']:.2f}.npz" for e in (0, 1)]
    for epoch, name in enumerate(written):
        fresh = mlp(seed=42)
        fresh.load_weights(str(tmp_path / "run" / name))
        assert all(np.array_equal(a, b) for a, b in zip(weights_of(fresh), recorder.weights[epoch]))


def test_model_checkpoint_save_best_only_keeps_the_best_epoch(tmp_path):
    x, y = blobs(40)
    model, recorder = mlp(), Recorder()
    model.compile(SGD(0.1), "sparse_categorical_crossentropy")
    path = str(tmp_path / "best.npz")
    best = ModelCheckpoint(path, monitor="score", mode="max", save_best_only=True)
    model.fit(x, y, epochs=5, callbacks=[Scores([0.3, 0.7, 0.5, 0.6, 0.7]), recorder, best],
              verbose=0)
    fresh = mlp(seed=42)
    fresh.load_weights(path)
    assert best.best == 0.7
    assert all(np.array_equal(a, b) for a, b in zip(weights_of(fresh), recorder.weights[1]))
    assert [p.name for p in tmp_path.iterdir()] == ["best.npz"]          # no temporary left


def test_model_checkpoint_refuses_what_it_cannot_write():
    with pytest.raises(ValueError, match=r"to save the whole model the filepath must end in '\.keras'"):
        ModelCheckpoint("model.npz", save_weights_only=False)
    with pytest.raises(ValueError, match=r"with save_weights_only=True the filepath must end in "):
        ModelCheckpoint("model.keras", save_weights_only=True)
    with pytest.raises(ValueError, match="mode must be 'auto', 'min' or 'max'"):
        ModelCheckpoint("model.npz", mode="lowest")


def test_early_stopping_stops_and_restores_the_best_weights():
    x, y = blobs(40)
    model, recorder = mlp(), Recorder()
    model.compile(SGD(0.1), "sparse_categorical_crossentropy")
    stopper = EarlyStopping(monitor="score", mode="max", patience=2, restore_best_weights=True)
    history = model.fit(x, y, epochs=10, verbose=0,
                        callbacks=[Scores([0.5, 0.9, 0.8, 0.85, 0.95, 1, 1, 1, 1, 1]), recorder, stopper])
    assert history.epoch == [0, 1, 2, 3] and stopper.stopped_epoch == 3 and stopper.best_epoch == 1
    assert all(np.array_equal(a, b) for a, b in zip(weights_of(model), recorder.weights[1]))
    assert not np.array_equal(recorder.weights[3][0], recorder.weights[1][0])


def test_early_stopping_on_val_loss_without_validation_warns():
    x, y = blobs(40)
    model = mlp()
    model.compile(SGD(0.1), "sparse_categorical_crossentropy")
    with pytest.warns(UserWarning, match="watches 'val_loss', which is not in the logs"):
        history = model.fit(x, y, epochs=2, callbacks=[EarlyStopping()], verbose=0)
    assert history.epoch == [0, 1]


class FakeModel:
    """What EarlyStopping touches: stop_training and the weights (here: the epoch)."""

    def __init__(self):
        self.stop_training, self.epoch, self.restored = False, None, None

    def get_weights(self):
        return [np.array(self.epoch)]

    def set_weights(self, weights):
        self.restored = int(weights[0])


def run_early_stopping(callback, scores):
    """Drive an EarlyStopping over ``scores``; (epochs run, best epoch restored)."""
    model = FakeModel()
    callback.set_model(model)
    callback.on_train_begin()
    for epoch, score in enumerate(scores):
        model.epoch = epoch
        callback.on_epoch_end(epoch, {"score": score})
        if model.stop_training:
            break
    callback.on_train_end()
    return epoch + 1, model.restored


# (scores, EarlyStopping's arguments, (epochs run, epoch whose weights are restored)),
# the expected figures as Keras 3.15 gives them (test_early_stopping_against_keras)
EARLY_STOPPING_CASES = [
    ([1.0, 0.9, 0.95, 0.97, 0.8], dict(mode="min", patience=2), (4, 1)),
    ([1.0, 0.9, 0.95, 0.97, 0.8], dict(mode="min", patience=0), (3, 1)),
    ([1.0, 0.99, 0.985, 0.98, 0.5], dict(mode="min", patience=1, min_delta=0.02), (2, 0)),
    ([0.5, 0.6, 0.55, 0.7, 0.65, 0.6, 0.6], dict(mode="max", patience=2), (6, 3)),
    ([0.5, 0.6, 0.65, 0.7, 0.75, 0.8], dict(mode="max", patience=1, baseline=0.72), (6, 5)),
    ([0.5, 0.4, 0.3, 0.2], dict(mode="max", patience=1, baseline=0.72), (2, 0)),
    ([3.0, 2.0, 2.5, 2.6, 2.7, 1.0], dict(mode="min", patience=1, start_from_epoch=2), (4, 2)),
    ([0.2, 0.1, 0.3, 0.3], dict(mode="auto", patience=1), (3, 1)),
]


@pytest.mark.parametrize("scores, kwargs, expected", EARLY_STOPPING_CASES)
def test_early_stopping_rules(scores, kwargs, expected):
    """When it stops (min_delta, baseline, start_from_epoch, patience) and which
    epoch's weights it restores."""
    assert run_early_stopping(EarlyStopping("score", restore_best_weights=True, **kwargs),
                              scores) == expected


@pytest.mark.slow
@pytest.mark.parametrize("scores, kwargs, expected", EARLY_STOPPING_CASES)
def test_early_stopping_against_keras(scores, kwargs, expected):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if kwargs["mode"] == "auto":
        pytest.skip("Keras's auto mode reads the compiled metrics' directions")
    theirs = keras.callbacks.EarlyStopping("score", restore_best_weights=True, **kwargs)
    ours = EarlyStopping("score", restore_best_weights=True, **kwargs)
    assert run_early_stopping(ours, scores) == run_early_stopping(theirs, scores)


class RecordingSGD(SGD):
    """SGD that remembers the learning rate of every step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rates = []

    def step(self, model, learning_rate=None):
        self.rates.append(learning_rate)
        super().step(model, learning_rate)


def test_learning_rate_scheduler_sets_the_rate_of_each_epoch():
    x, y = blobs(40)
    model = mlp()
    optimizer = RecordingSGD(0.1)
    model.compile(optimizer, "sparse_categorical_crossentropy")
    seen = []

    def halve_after_the_first(epoch, lr):
        seen.append((epoch, lr))
        return lr if epoch == 0 else lr / 2

    history = model.fit(x, y, batch_size=16, epochs=3, verbose=0,
                        callbacks=[LearningRateScheduler(halve_after_the_first)])
    assert seen == [(0, 0.1), (1, 0.1), (2, 0.05)]
    assert history.history["learning_rate"] == [0.1, 0.05, 0.025]
    assert optimizer.rates == [0.1] * 3 + [0.05] * 3 + [0.025] * 3     # 40 samples: 3 batches
    assert optimizer.learning_rate == 0.025


def test_learning_rate_scheduler_refuses_a_bad_rate_and_a_second_schedule():
    x, y = blobs(40)
    model = mlp()
    model.compile(SGD(0.1), "sparse_categorical_crossentropy")
    with pytest.raises(TypeError, match=r"LearningRateScheduler: schedule\(0, 0\.1\): learning rate "
                                        r"must be a number, got None"):
        model.fit(x, y, callbacks=[LearningRateScheduler(lambda epoch, lr: None)], verbose=0)
    with pytest.raises(ValueError, match="either schedule= .* or the LearningRateScheduler callback"):
        fit(model, x, y, schedule=lambda t: 0.1,
            callbacks=[LearningRateScheduler(lambda epoch, lr: lr)], verbose=0)


# --- progress output -----------------------------------------------------------------
LINE = (r"Epoch {e}/3 - 2/2 - \d+s \d+[mu]?s/step - loss: \d\.\d{4} - accuracy: \d\.\d{4} - "
        r"val_loss: \d\.\d{4} - val_accuracy: \d\.\d{4}")


@pytest.mark.parametrize("verbose", [1, "auto", 2])
def test_progress_to_a_file_is_one_line_per_epoch(capsys, verbose):
    """Captured stdout is not a terminal: verbose 1 writes no redraws, one line an epoch."""
    x, y = blobs(40)
    model = mlp()
    model.compile(SGD(0.1), "sparse_categorical_crossentropy", ["accuracy"])
    model.fit(x, y, batch_size=16, epochs=3, validation_split=0.2, verbose=verbose)   # 32: 2 batches
    out = capsys.readouterr().out
    assert "\r" not in out
    lines = out.splitlines()
    assert len(lines) == 3, out
    for e, line in enumerate(lines, 1):
        assert re.fullmatch(LINE.replace("{e}", str(e)), line), line
    model.evaluate(x, y, verbose=verbose)
    model.predict(x, verbose=verbose)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("2/2 - ") and " - loss: " in lines[0]
    assert lines[1].startswith("2/2 - ") and lines[1].endswith("/step")


def test_verbose_0_prints_nothing(capsys):
    x, y = blobs(40)
    model = mlp()
    model.compile(SGD(0.1), "sparse_categorical_crossentropy", ["accuracy"])
    model.fit(x, y, epochs=2, validation_split=0.2, verbose=0)
    model.evaluate(x, y, verbose=0)
    model.predict(x, verbose=0)
    fit(mlp(), x, y, progress=False)                   # train.fit's older name for it
    assert capsys.readouterr().out == ""


def test_progress_on_a_terminal_is_redrawn_in_place(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    x, y = blobs(40)
    model = mlp()
    model.compile(SGD(0.1), "sparse_categorical_crossentropy", ["accuracy"])
    model.fit(x, y, batch_size=16, epochs=2, verbose=1)
    out = terminal.getvalue()
    assert out.startswith("Epoch 1/2\n\r1/3 [=========>....................] - ")
    assert out.count("\n") == 4                                 # per epoch: its title, its bar
    final = out.split("\n")[1].split("\r")[-1].rstrip()   # padded to erase a longer line
    assert re.fullmatch(r"3/3 \[={30}\] - \d+s \d+[mu]?s/step - loss: \d\.\d{4} - "
                                      r"accuracy: \d\.\d{4}", final), final


def test_progress_to_a_real_file_from_a_script(tmp_path):
    """A script's stdout sent to a file (as CI does): one line per epoch, nothing else."""
    script = textwrap.dedent("""
        import numpy as np
        from minires.layers import Dense, Input
        from minires.models import Model
        x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
        y = (x[:, 0] > 0).astype("int64")
        i = Input((4,))
        model = Model(i, Dense(2, activation="softmax")(i))
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(x, y, batch_size=4, epochs=3)
    """)
    out = tmp_path / "out.txt"
    with open(out, "w") as handle:
        subprocess.run([sys.executable, "-c", script], stdout=handle, check=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": ROOT})
    lines = out.read_text().splitlines()
    assert [line.split(" - ")[:2] for line in lines] == [[f"Epoch {e}/3", "16/16"] for e in (1, 2, 3)]


# --- metrics ------------------------------------------------------------------------
def test_accuracy_against_labels_and_one_hot_rows():
    """Keras's per-sample functions, (y_true, y_pred): 1.0 where the argmax hits."""
    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    labels = np.array([1, 1, 1, 0])
    for targets in (labels, labels[:, None]):
        np.testing.assert_array_equal(sparse_categorical_accuracy(targets, scores), [1, 0, 1, 1])
    np.testing.assert_array_equal(categorical_accuracy(np.eye(2)[labels], scores), [1, 0, 1, 1])
    with pytest.raises(ValueError, match="use categorical_accuracy for one-hot targets"):
        sparse_categorical_accuracy(np.eye(2)[labels], scores)


# --- softmax outputs and logits learn alike ----------------------------------------------
def test_softmax_model_and_logits_model_reach_the_same_accuracy_on_digits():
    """The softmax model with Keras's 'sparse_categorical_crossentropy' (from
    probabilities) and the same model without its softmax with from_logits=True
    take the same steps (both backward from p - y), so they end within 1 point."""
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    x, y = (digits.data[order] / 16).astype("float32"), digits.target[order]
    accuracies = []
    for activation, loss in [("softmax", "sparse_categorical_crossentropy"),
                             (None, SparseCategoricalCrossentropy(from_logits=True))]:
        model = mlp(activation, features=64, classes=10)
        model.compile(Adam(0.01), loss, metrics=["accuracy"])
        model.fit(x[:1400], y[:1400], batch_size=32, epochs=8, verbose=0)
        accuracies.append(model.evaluate(x[1400:], y[1400:], verbose=0)[1])
    assert min(accuracies) > 0.9
    assert abs(accuracies[0] - accuracies[1]) <= 0.01
