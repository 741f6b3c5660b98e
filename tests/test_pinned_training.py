"""Keras's training rules that a one-line slip breaks without any other test noticing:

  fit       validation_split's cut, the running mean the batch logs report,
            stop_training reset at every fit
  callbacks EarlyStopping / ModelCheckpoint(save_best_only): the direction
            mode='auto' picks per monitored name, and ties are no improvement
  optim     the first three steps of every optimiser, small and large gradients,
            weight decay on and off; a step never writes into layer.grads
  losses    cross-entropy on probabilities clips p to [eps, 1 - eps]: value and
            gradient at both ends of the clip

Every expected number comes from Keras's formulas written out here (checked
against Keras 3's source: keras/src/trainers/data_adapters/array_slicing.py,
callbacks/monitor_callback.py, optimizers/{sgd,rmsprop,adam}.py,
backend/numpy/nn.py), so these run without Keras installed.
"""
import math

import numpy as np
import pytest
from conftest import Scores

from minires.callbacks import Callback, EarlyStopping, ModelCheckpoint
from minires.initializers import set_random_seed
from minires.layers import Dense, Input
from minires.losses import CategoricalCrossentropy, SparseCategoricalCrossentropy
from minires.models import Model
from minires.optim import SGD, Adam, RMSprop
from minires.train import evaluate


# --- helpers -------------------------------------------------------------------------
def blobs(n, seed=0, features=4, classes=3):
    """Gaussian clusters, one per class (float32 inputs, int labels)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(0, 2, (classes, features))
    labels = rng.integers(0, classes, n)
    return (centres[labels] + rng.normal(0, 1, (n, features))).astype("float32"), labels


def tiny_model(features=4, classes=3, seed=0):
    """Input -> Dense(classes, softmax): the smallest model fit can train."""
    set_random_seed(seed)
    x = Input((features,))
    return Model(x, Dense(classes, activation="softmax", name="out")(x))


# ======================================================================================
# 6. fit: validation_split, running-mean batch logs, stop_training reset
# ======================================================================================
class ValidationProbe(Callback):
    """Counts training batches and, at each epoch's end, evaluates the model (same
    weights as fit's validation just used) on candidate hold-out slices."""

    def __init__(self, x, y, cuts):
        self.x, self.y, self.cuts = x, y, cuts
        self.batches, self.val_loss, self.candidates = 0, [], []

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1

    def on_epoch_end(self, epoch, logs=None):
        self.val_loss.append(logs["val_loss"])
        self.candidates.append({cut: evaluate(self.model, self.x[cut:], self.y[cut:],
                                              loss=SparseCategoricalCrossentropy(), metrics=[])[0]
                                for cut in self.cuts})


def test_validation_split_trains_on_the_first_floor_of_n_times_one_minus_split():
    """Keras 3: split_at = int(floor(N * (1 - validation_split))); the first split_at
    samples train, the rest validate. N = 10 at 0.25: 7 train, 3 validate (not 8/2)."""
    x, y = blobs(10)
    model = tiny_model()
    model.compile(SGD(0.1), "sparse_categorical_crossentropy", [])
    probe = ValidationProbe(x, y, cuts=(7, 8))
    history = model.fit(x, y, batch_size=1, epochs=1, validation_split=0.25, shuffle=False,
                        callbacks=[probe], verbose=0)
    assert probe.params["steps"] == 7 and probe.batches == 7 and model.compiled.optimizer.iterations == 7
    assert history.history["val_loss"][0] == pytest.approx(probe.candidates[0][7], rel=1e-6)
    assert probe.candidates[0][8] != pytest.approx(probe.candidates[0][7], rel=1e-6)   # 8/2 shows


class RecordingLoss(SparseCategoricalCrossentropy):
    """Keeps every training batch's loss value (the mean over its samples)."""

    def __init__(self):
        super().__init__()
        self.values = []

    def forward(self, outputs, targets):
        value = super().forward(outputs, targets)
        self.values.append((float(value), len(outputs)))
        return value

    __call__ = forward


class BatchLogs(Callback):
    def __init__(self):
        self.logs = []

    def on_batch_end(self, batch, logs=None):
        self.logs.append(dict(logs))


def test_batch_logs_are_the_mean_over_the_samples_seen_so_far():
    """Keras's progress bar and on_train_batch_end logs hold the running mean of the
    epoch so far: sum_b n_b loss_b / sum_b n_b over the batches done (8 + 8 + 4
    samples here), not divided by the dataset size; the epoch's History entry is
    the mean over every sample."""
    x, y = blobs(20)
    model, loss, logger = tiny_model(), RecordingLoss(), BatchLogs()
    model.compile(SGD(0.1), loss, [])
    history = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, callbacks=[logger], verbose=0)
    values = np.array([v for v, _ in loss.values])
    sizes = np.array([n for _, n in loss.values])
    assert sizes.tolist() == [8, 8, 4]
    running = np.cumsum(values * sizes) / np.cumsum(sizes)
    np.testing.assert_allclose([log["loss"] for log in logger.logs], running, rtol=1e-12)
    assert history.history["loss"] == [pytest.approx(running[-1], rel=1e-12)]


def test_stop_training_is_reset_at_the_start_of_every_fit():
    """Keras sets model.stop_training = False when fit starts: a second fit after
    EarlyStopping ended the first one runs all its epochs."""
    x, y = blobs(16)
    model = tiny_model()
    model.compile(SGD(0.1), "sparse_categorical_crossentropy", [])
    stopper = EarlyStopping("score", patience=0, mode="min")
    first = model.fit(x, y, epochs=5, callbacks=[Scores([1.0, 2.0, 3.0, 4.0, 5.0]), stopper],
                      verbose=0)
    assert first.epoch == [0, 1] and model.stop_training
    second = model.fit(x, y, epochs=3, verbose=0)
    assert second.epoch == [0, 1, 2]


# ======================================================================================
# 7. EarlyStopping and ModelCheckpoint(save_best_only): mode and strict improvement
# ======================================================================================
# mode='auto' (Keras 2's rule, which Keras 3's metric directions reproduce for its
# built-in metrics): an accuracy ('acc' in the name) is maximised, anything else minimised.
MAXIMISED = ["accuracy", "val_accuracy", "acc", "val_acc", "sparse_categorical_accuracy",
             "val_sparse_categorical_accuracy", "categorical_accuracy", "val_categorical_accuracy",
             "top_k_categorical_accuracy", "val_binary_accuracy"]
MINIMISED = ["loss", "val_loss", "mean_squared_error", "val_mean_absolute_error",
             "categorical_crossentropy", "val_sparse_categorical_crossentropy"]
RISING, FALLING = [0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]


def expected_direction(monitor, mode):
    return mode if mode != "auto" else ("max" if "acc" in monitor else "min")


def monitor_mode_cases():
    return [(m, mode) for m in MAXIMISED + MINIMISED for mode in ("auto", "min", "max")]


class FakeModel:
    """What the two callbacks touch: stop_training, weights, save_weights."""

    def __init__(self):
        self.stop_training, self.saved = False, []

    def get_weights(self):
        return []

    def set_weights(self, weights):
        pass

    def save_weights(self, path):
        self.saved.append(path)


def epochs_run(callback, monitor, values):
    """Drive EarlyStopping through the callback API; how many epochs ran."""
    model = FakeModel()
    callback.set_model(model)
    callback.on_train_begin()
    for epoch, value in enumerate(values):
        callback.on_epoch_end(epoch, {monitor: value, "other": -1.0})
        if model.stop_training:
            return epoch + 1
    return len(values)


def epochs_saved(callback, monitor, values):
    """Drive ModelCheckpoint(save_best_only=True); the epochs (from 1) it saved."""
    model = FakeModel()
    callback.set_model(model)
    callback.on_train_begin()
    for epoch, value in enumerate(values):
        callback.on_epoch_begin(epoch)
        callback.on_epoch_end(epoch, {monitor: value, "other": -1.0})
    return [int(path.split("-")[1][:-len(".npz")]) for path in model.saved]


@pytest.mark.parametrize("monitor, mode", monitor_mode_cases())
def test_early_stopping_direction_per_monitor_and_mode(monitor, mode):
    """patience=0: the run goes on while every epoch improves. Rising values
    improve only for 'max', falling only for 'min' (which 'auto' picks by name)."""
    direction = expected_direction(monitor, mode)
    rising = epochs_run(EarlyStopping(monitor, patience=0, mode=mode), monitor, RISING)
    falling = epochs_run(EarlyStopping(monitor, patience=0, mode=mode), monitor, FALLING)
    assert (rising, falling) == ((4, 2) if direction == "max" else (2, 4))


@pytest.mark.parametrize("monitor, mode", monitor_mode_cases())
def test_model_checkpoint_best_only_direction_per_monitor_and_mode(monitor, mode):
    """save_best_only saves at epoch 1 and then only where the monitor improves:
    every rising epoch for 'max', every falling one for 'min'."""
    direction = expected_direction(monitor, mode)
    make = lambda: ModelCheckpoint("w-{epoch}.npz", monitor=monitor, save_best_only=True, mode=mode)
    rising = epochs_saved(make(), monitor, RISING)
    falling = epochs_saved(make(), monitor, FALLING)
    assert (rising, falling) == (([1, 2, 3, 4], [1]) if direction == "max" else ([1], [1, 2, 3, 4]))


# Ties: Keras's improvement is strict, monitor_op(current -/+ min_delta, best) with
# np.less / np.greater, so an equal value (or one exactly min_delta better) is no
# improvement and counts towards patience.
TIE_CASES = [   # (mode, values, min_delta, epochs run with patience=1)
    ("min", [1.0, 0.9, 0.9, 0.9, 1.0], 0.0, 3),
    ("max", [0.5, 0.6, 0.6, 0.6, 0.5], 0.0, 3),
    ("auto", [1.0, 0.9, 0.9, 0.9, 1.0], 0.0, 3),            # val_loss
    ("min", [1.0, 0.75, 0.75, 0.5, 0.5], 0.25, 2),          # exactly min_delta better: no
    ("max", [0.25, 0.5, 0.5, 0.75, 0.75], 0.25, 2),
]


@pytest.mark.parametrize("mode, values, min_delta, expected", TIE_CASES)
def test_early_stopping_a_tie_is_not_an_improvement(mode, values, min_delta, expected):
    """Keras: patience=1 stops at the first epoch that merely equals the best."""
    monitor = "val_accuracy" if mode == "max" else "val_loss"
    stopper = EarlyStopping(monitor, patience=1, mode=mode, min_delta=min_delta)
    assert epochs_run(stopper, monitor, values) == expected


@pytest.mark.parametrize("monitor, mode, values, saved", [
    ("val_loss", "auto", [1.0, 1.0, 0.5, 0.5, 0.7], [1, 3]),
    ("val_accuracy", "auto", [0.5, 0.5, 0.8, 0.8, 0.6], [1, 3]),
    ("score", "min", [2.0, 2.0, 2.0], [1]),
    ("score", "max", [2.0, 2.0, 2.0], [1]),
])
def test_model_checkpoint_a_tie_is_not_an_improvement(monitor, mode, values, saved):
    """Keras's ModelCheckpoint(save_best_only=True) saves only on a strict improvement."""
    checkpoint = ModelCheckpoint("w-{epoch}.npz", monitor=monitor, save_best_only=True, mode=mode)
    assert epochs_saved(checkpoint, monitor, values) == saved


# ======================================================================================
# 8. optimisers: three steps by Keras's formulas, small and large gradients
# ======================================================================================
START = np.array([0.5, -1.5, 2.0, 0.0])
GRADS = np.array([[1.0, -2.0, 0.5, 3.0], [0.5, 1.0, -1.5, 3.0], [-2.0, 0.25, 1.0, -3.0]])
SCALES = {"small": 1e-4, "large": 10.0}     # 1e-4: g^2 ~ 1e-8 sits below RMSprop's eps 1e-7


def keras_sgd(momentum):
    """Keras's SGD.update_step: m <- momentum m - lr g; w <- w + m (w -= lr g without momentum)."""
    def update(w, g, state, lr, t):
        if not momentum:
            return w - lr * g
        state["m"] = momentum * state.get("m", 0.0) - lr * g
        return w + state["m"]
    return update


def keras_rmsprop(rho=0.9, epsilon=1e-7):
    """Keras 3's RMSprop.update_step: v <- rho v + (1 - rho) g^2; w -= lr g / sqrt(v + eps)
    (epsilon INSIDE the square root, keras/src/optimizers/rmsprop.py)."""
    def update(w, g, state, lr, t):
        state["v"] = rho * state.get("v", 0.0) + (1 - rho) * g * g
        return w - lr * g / np.sqrt(state["v"] + epsilon)
    return update


def torch_adam(beta_1=0.9, beta_2=0.999, epsilon=1e-8):
    """minires's documented Adam (PyTorch's form): lr m_hat / (sqrt(v_hat) + eps)."""
    def update(w, g, state, lr, t):
        state["m"] = beta_1 * state.get("m", 0.0) + (1 - beta_1) * g
        state["v"] = beta_2 * state.get("v", 0.0) + (1 - beta_2) * g * g
        m_hat, v_hat = state["m"] / (1 - beta_1 ** t), state["v"] / (1 - beta_2 ** t)
        return w - lr * m_hat / (np.sqrt(v_hat) + epsilon)
    return update


def keras_adam(beta_1=0.9, beta_2=0.999, epsilon=1e-8):
    """Keras's Adam.update_step: alpha = lr sqrt(1 - b2^t) / (1 - b1^t);
    w -= alpha m / (sqrt(v) + eps) (eps not bias-corrected)."""
    def update(w, g, state, lr, t):
        state["m"] = beta_1 * state.get("m", 0.0) + (1 - beta_1) * g
        state["v"] = beta_2 * state.get("v", 0.0) + (1 - beta_2) * g * g
        alpha = lr * math.sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)
        return w - alpha * state["m"] / (np.sqrt(state["v"]) + epsilon)
    return update


OPTIMISERS = {   # name: (minires optimiser for a weight decay, reference update)
    "sgd": (lambda wd: SGD(0.1, weight_decay=wd), keras_sgd(0.0)),
    "sgd_momentum": (lambda wd: SGD(0.1, momentum=0.9, weight_decay=wd), keras_sgd(0.9)),
    "rmsprop": (lambda wd: RMSprop(0.01, weight_decay=wd), keras_rmsprop()),
    "adam": (lambda wd: Adam(0.01, weight_decay=wd), torch_adam()),
}


def one_layer(start):
    """Input -> Dense(1, no bias) whose float64 kernel is ``start``: (model, layer)."""
    x = Input((len(start),), dtype="float64")
    layer = Dense(1, use_bias=False, name="fc", dtype="float64")
    model = Model(x, layer(x))
    layer.params["kernel"][...] = start[:, None]
    return model, layer


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", OPTIMISERS)
def test_first_three_steps_match_the_formula(name, scale, weight_decay):
    """Three steps against the update rule written out; weight decay as minires
    documents it (L2: g <- g + wd w before the rule). The grads handed to the
    layer stay as they were: a step reads layer.grads, never writes it."""
    make, reference = OPTIMISERS[name]
    optimizer = make(weight_decay)
    model, layer = one_layer(START * (1 if scale == "large" else 1e-3))
    w, state, handed = layer.params["kernel"][:, 0].copy(), {}, []
    for t, g in enumerate(GRADS * SCALES[scale], start=1):
        given = g[:, None].copy()
        layer.grads["kernel"] = given
        handed.append((given, g[:, None]))
        optimizer.step(model)
        for array, value in handed:              # not written into, now or by a later step
            np.testing.assert_array_equal(array, value)
        assert layer.grads["kernel"] is given
        w = reference(w, g + weight_decay * w, state, optimizer.learning_rate, t)
        np.testing.assert_allclose(layer.params["kernel"][:, 0], w, rtol=1e-10, atol=1e-300,
                                   err_msg=f"step {t}")


def test_rmsprop_first_step_for_a_small_gradient_is_keras_s_not_ten_times_it():
    """Keras 3: w -= lr g / sqrt((1 - rho) g^2 + eps) at the first step. For g = 1e-4:
    sqrt(1e-9 + 1e-7) ~ 3.18e-4, a step of 0.314 lr; with eps outside the root the
    step would be ~3.15 lr, ten times larger."""
    model, layer = one_layer(np.zeros(1))
    layer.grads["kernel"] = np.array([[1e-4]])
    RMSprop(0.01).step(model)
    expected = -0.01 * 1e-4 / math.sqrt(0.1 * 1e-8 + 1e-7)
    assert layer.params["kernel"][0, 0] == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(-0.01 * 0.3145, rel=1e-3)


def test_adam_agrees_with_keras_s_form_for_large_gradients():
    """Keras's Adam puts eps outside the bias correction; for gradients far above
    eps that is the same step as minires's (PyTorch's) form to ~1e-9."""
    model, layer = one_layer(START.copy())
    optimizer, w, state = Adam(0.01), START.copy(), {}
    update = keras_adam(epsilon=1e-8)
    for t, g in enumerate(GRADS * 10.0, start=1):
        layer.grads["kernel"] = g[:, None].copy()
        optimizer.step(model)
        w = update(w, g, state, 0.01, t)
    np.testing.assert_allclose(layer.params["kernel"][:, 0], w, rtol=1e-8)


# ======================================================================================
# 9. cross-entropy on probabilities: clip to [eps, 1 - eps], both ends
# ======================================================================================
EPS = 1e-7      # Keras's backend.epsilon()


def loss_on(cls, probs, true_class):
    """(loss value, dL/dp) of ``cls`` for one-hot / index targets of ``true_class``."""
    probs = np.asarray(probs, dtype="float64")
    labels = np.asarray(true_class)
    targets = labels if cls is SparseCategoricalCrossentropy else np.eye(probs.shape[1])[labels]
    loss = cls()
    value = float(loss.forward(probs, targets))
    return value, loss.backward()


@pytest.mark.parametrize("cls", [CategoricalCrossentropy, SparseCategoricalCrossentropy])
def test_clip_at_the_top_p_equal_one_costs_minus_log_one_minus_eps_with_zero_gradient(cls):
    """Keras: L = -log clip(p, eps, 1 - eps). At p = 1 for the true class that is
    -log(1 - eps) ~ 1e-7 (not 0), and the clip is flat there, so dL/dp = 0 (not -1)."""
    value, grad = loss_on(cls, [[1.0, 0.0, 0.0]], [0])
    assert value == pytest.approx(-math.log(1 - EPS), rel=1e-9)
    np.testing.assert_array_equal(grad, [[0.0, 0.0, 0.0]])


@pytest.mark.parametrize("cls", [CategoricalCrossentropy, SparseCategoricalCrossentropy])
def test_clip_at_the_bottom_p_equal_zero_costs_minus_log_eps_with_zero_gradient(cls):
    """At p = 0 for the true class: -log(eps) ~ 16.12 (not inf), dL/dp = 0 (not -1/eps)."""
    value, grad = loss_on(cls, [[0.0, 1.0, 0.0]], [0])
    assert value == pytest.approx(-math.log(EPS), rel=1e-12)
    np.testing.assert_array_equal(grad, [[0.0, 0.0, 0.0]])


@pytest.mark.parametrize("cls", [CategoricalCrossentropy, SparseCategoricalCrossentropy])
def test_clip_bounds_over_a_batch(cls):
    """Rows at the top, the bottom, just inside both bounds, and in the middle:
    value = mean of -log clip(p_true); dL/dp_true = -1/(N p) inside the clip, 0 where cut."""
    probs = np.array([[1.0, 0.0, 0.0],                  # p_true = 1: cut at 1 - eps
                      [0.0, 1.0, 0.0],                  # p_true = 0: cut at eps
                      [1 - 2 * EPS, EPS, EPS],          # just inside the top
                      [2 * EPS, 0.5, 0.5 - 2 * EPS],    # just inside the bottom
                      [0.25, 0.5, 0.25]])
    clipped_true = np.array([1 - EPS, EPS, 1 - 2 * EPS, 2 * EPS, 0.25])
    n = len(probs)
    value, grad = loss_on(cls, probs, [0] * n)
    assert value == pytest.approx(-np.log(clipped_true).sum() / n, rel=1e-12)
    expected = np.zeros_like(probs)
    expected[2:, 0] = -1 / (n * probs[2:, 0])
    np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("cls", [CategoricalCrossentropy, SparseCategoricalCrossentropy])
def test_float32_p_equal_one_has_zero_gradient_too(cls):
    """In float32, 1 - eps rounds to 1 - 2^-23 < 1: p = 1 is still cut, dL/dp = 0."""
    probs = np.array([[1.0, 0.0], [0.5, 0.5]], dtype="float32")
    loss = cls()
    targets = np.array([0, 0]) if cls is SparseCategoricalCrossentropy else np.eye(2)[[0, 0]]
    loss.forward(probs, targets)
    grad = loss.backward()
    assert grad.dtype == np.float32
    np.testing.assert_allclose(grad, [[0.0, 0.0], [-1.0, 0.0]], rtol=1e-6)
