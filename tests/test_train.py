"""fit/evaluate: learning for real, bit-identical resume, frozen layers, bad input
(models on ``--device``; fit moves each batch of the NumPy data there)."""
import numpy as np
import pytest
from conftest import on_cpu

from minires.applications import CifarResNet
from minires.initializers import set_random_seed
from minires.layers import BatchNormalization, Conv2D, Dense, Flatten, Input
from minires.losses import SoftmaxCrossEntropy
from minires.models import Model
from minires.optim import SGD, Adam, CosineDecay
from minires.train import evaluate, fit


def patterns(n=240, seed=0):
    """Three classes of 8x8 images, each a noisy copy of its own stripe pattern."""
    rng = np.random.default_rng(seed)
    stripes = np.zeros((3, 8, 8, 1), "float32")
    stripes[0, ::2], stripes[1, :, ::2], stripes[2, np.eye(8, dtype=bool)] = 1, 1, 1
    labels = rng.integers(0, 3, n)
    images = stripes[labels] + rng.normal(0, 0.5, (n, 8, 8, 1)).astype("float32")
    return images, labels


def small_net(seed=0, name="small_net", device="cpu"):
    set_random_seed(seed)
    return CifarResNet(blocks=(1,), width=4, input_shape=(8, 8, 1), classes=3,
                       classifier_activation=None, name=name).to(device)


def test_training_learns(device):
    x, y = patterns()
    x_test, y_test = patterns(seed=1)
    model = small_net(device=device)
    _, before = evaluate(model, x_test, y_test)
    history = fit(model, x, y, epochs=6, batch_size=16, optimizer=Adam(0.01),
                  validation_data=(x_test, y_test), verbose=0)
    assert history["loss"][-1] < history["loss"][0] / 4
    assert history["val_accuracy"][-1] >= 0.95 > before + 0.3


@pytest.mark.parametrize("optimizer", [lambda: SGD(0.05, momentum=0.9, weight_decay=1e-3),
                                       lambda: Adam(0.01, weight_decay=1e-4)], ids=["sgd", "adam"])
def test_resume_continues_the_same_trajectory_bit_for_bit(tmp_path, device, optimizer):
    x, y = patterns(96)
    schedule = CosineDecay(0.05, 2)
    straight = small_net(device=device)
    fit(straight, x, y, epochs=2, batch_size=16, optimizer=optimizer(), schedule=schedule,
        seed=3, verbose=0)

    path = str(tmp_path / "run.npz")
    first = small_net(device=device)
    fit(first, x, y, epochs=1, batch_size=16, optimizer=optimizer(), schedule=schedule, seed=3,
        checkpoint=path, verbose=0)
    resumed = small_net(seed=99, device=device)           # other initial weights: all restored
    history = fit(resumed, x, y, epochs=2, batch_size=16, optimizer=optimizer(),
                  schedule=schedule, seed=3, checkpoint=path, resume=True, verbose=0)
    assert len(history["loss"]) == 2                      # the first epoch's entry came back
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        assert a.dtype == np.float32 and np.array_equal(on_cpu(a), on_cpu(b))


def test_frozen_layers_and_their_statistics_do_not_change(device):
    x, y = patterns(64)
    model = small_net(device=device)
    frozen = [model.get_layer("conv1_conv"), model.get_layer("conv1_bn")]
    for layer in frozen:
        layer.trainable = False
    before = {(l.name, k): on_cpu(v) for l in frozen for k, v in l.params.items()}
    moving = on_cpu(model.get_layer("conv2_block1_1_bn").params["moving_mean"])
    fit(model, x, y, epochs=2, batch_size=16, optimizer=SGD(0.1, momentum=0.9), verbose=0)
    for (name, key), value in before.items():
        assert np.array_equal(on_cpu(model.get_layer(name).params[key]), value), (name, key)
    assert not np.array_equal(on_cpu(model.get_layer("conv2_block1_1_bn").params["moving_mean"]), moving)


def test_checkpoint_is_written_every_epoch(tmp_path, device):
    x, y = patterns(32)
    path = tmp_path / "ckpt.npz"
    fit(small_net(device=device), x, y, epochs=1, batch_size=16, checkpoint=str(path), verbose=0)
    with np.load(path, allow_pickle=False) as data:
        assert int(data["__extra__/epoch"]) == 1
        assert "__extra__/optimizer/iterations" in data.files
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.npz"]      # no temporary left


def test_labels_out_of_range():
    x, y = patterns(16)
    y[3] = 3
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\).*from 0 to 3"):
        fit(small_net(), x, y, verbose=0)


def test_data_and_labels_of_different_lengths():
    x, y = patterns(16)
    with pytest.raises(ValueError, match="x has 16 samples but y has 15 labels"):
        fit(small_net(), x, y[:15], verbose=0)
    with pytest.raises(ValueError, match="x has 16 samples but y has 15 labels"):
        evaluate(small_net(), x, y[:15])


def test_float_labels_are_refused():
    x, y = patterns(16)
    with pytest.raises(ValueError, match=r"fit: SoftmaxCrossEntropy: labels must be int class "
                                         r"indices of shape \(16,\) or float targets of shape "
                                         r"\(16, 3\), got float32 \(16,\)"):
        fit(small_net(), x, y.astype("float32"), verbose=0)


def test_a_nan_pixel_is_named_before_training(device):
    x, y = patterns(32)
    x[5, 0, 0, 0] = np.nan
    model = small_net(device=device)
    before = [on_cpu(w) for w in model.weights]
    with pytest.raises(ValueError, match=r"fit: x holds nan or inf \(first in sample 5\)"):
        fit(model, x, y, batch_size=8, verbose=0)
    assert all(np.array_equal(a, on_cpu(b)) for a, b in zip(before, model.weights))


def test_diverging_training_stops_with_a_clear_message(device):
    set_random_seed(0)
    x_in = Input((8, 8, 1))
    out = Dense(3)(Flatten()(BatchNormalization()(Conv2D(4, 3)(x_in))))
    model = Model(x_in, out).to(device)
    x, y = patterns(64)
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        fit(model, x * 1e3, y, epochs=20, batch_size=8, optimizer=SGD(1e6), verbose=0)


def test_fit_asks_the_schedule_for_a_rate_at_every_batch():
    """The schedule sees fractional epochs, epoch + batch / batches: a decay is
    applied per batch, not in steps at epoch boundaries."""
    x, y = patterns(40)
    seen = []

    def recording(epoch):
        seen.append(epoch)
        return 0.01

    fit(small_net(), x, y, epochs=2, batch_size=16, schedule=recording, verbose=0)
    assert seen == [epoch + batch / 3 for epoch in (0, 1) for batch in range(3)]   # 40 samples: 3 batches


def test_fit_takes_the_steps_of_a_hand_written_loop_at_per_batch_rates():
    """fit against the loop its docstring writes out, with the documented shuffle
    (epoch e's order from default_rng([seed, e])) and rate(e + b / batches)."""
    x, y = patterns(48)
    schedule = lambda t: 0.2 * 0.3 ** t                           # noqa: E731  (steep: steps differ)
    by_fit, by_hand = small_net(), small_net()
    fit(by_fit, x, y, epochs=2, batch_size=16, optimizer=SGD(momentum=0.9), schedule=schedule,
        seed=7, verbose=0)
    loss, optimizer, batches = SoftmaxCrossEntropy(), SGD(momentum=0.9), 3
    for epoch in range(2):
        order = np.random.default_rng([7, epoch]).permutation(len(x))
        for b in range(batches):
            index = order[b * 16:(b + 1) * 16]
            loss.forward(by_hand.forward(x[index], training=True), y[index])
            by_hand.backward(loss.backward())
            optimizer.step(by_hand, schedule(epoch + b / batches))
    for ours, theirs in zip(by_fit.get_weights(), by_hand.get_weights()):
        np.testing.assert_array_equal(ours, theirs)
