"""Optimisers and schedules: hand-computed steps, frozen layers, errors,
state round trips, and (where installed) torch.optim as an oracle.

The hand-computed cases write every number out, so each test fails if the
update rule is off by a term: momentum applied at the first step, weight decay
forgotten or applied after the moments, epsilon inside the square root, bias
correction with the wrong step count. They run on ``--device``; torch.optim
compares on the CPU.
"""
import math
import os

import numpy as np
import pytest

from minires.backend import is_array, like, to_device
from minires.layers import Activation, BatchNormalization, Conv2D, Dense, Flatten, Input
from minires.models import Model
from minires.optim import SGD, Adam, CosineDecay, RMSprop, StepDecay

from conftest import on_cpu, randomize_offsets


# --- helpers -------------------------------------------------------------------------
def one_dense(kernel, bias=None, dtype="float64", device="cpu"):
    """Input -> Dense named 'fc' with the given weights, on ``device``: (model, layer)."""
    kernel = np.asarray(kernel, dtype=dtype)
    x = Input(shape=(kernel.shape[0],), dtype=dtype)
    fc = Dense(kernel.shape[1], use_bias=bias is not None, name="fc", dtype=dtype)
    model = Model(x, fc(x))
    fc.params["kernel"][...] = kernel
    if bias is not None:
        fc.params["bias"][...] = bias
    return model.to(device), fc


def step_with(optimizer, model, layer, grads, learning_rate=None):
    """Hand the layer these gradients (on its device), then take one optimiser step."""
    for name, g in grads.items():
        layer.grads[name] = like(np.asarray(g, dtype=layer.dtype), layer.params[name])
    optimizer.step(model, learning_rate)


def conv_net(dtype="float32"):
    """conv -> BN -> ReLU -> conv -> BN -> ReLU -> flatten -> dense, named by role."""
    x = Input(shape=(5, 5, 2), dtype=dtype)
    y = Conv2D(3, 3, padding="same", name="conv_a", dtype=dtype)(x)
    y = BatchNormalization(name="bn_a", dtype=dtype)(y)
    y = Activation("relu", dtype=dtype)(y)
    y = Conv2D(3, 3, name="conv_b", dtype=dtype)(y)
    y = BatchNormalization(name="bn_b", dtype=dtype)(y)
    y = Activation("relu", dtype=dtype)(y)
    y = Dense(4, name="fc", dtype=dtype)(Flatten(dtype=dtype)(y))
    return Model(x, y)


def snapshot(model):
    """{'layer/param': NumPy copy} of every parameter, trainable or not."""
    return {f"{layer.name}/{name}": on_cpu(layer.params[name])
            for layer, name in model.parameters(trainable_only=False)}


def random_grads(model, rng):
    """Random gradients for every trainable parameter, in the parameter's dtype."""
    return {(layer.name, name): rng.standard_normal(layer.params[name].shape)
            .astype(layer.params[name].dtype) for layer, name in model.parameters()}


def set_grads(model, grads):
    for (layer_name, name), g in grads.items():
        layer = model.get_layer(layer_name)
        layer.grads[name] = like(g, layer.params[name]).copy()


# --- SGD by hand -----------------------------------------------------------------------
def test_sgd_one_step_is_p_minus_lr_g(device):
    model, fc = one_dense([[1.0], [-2.0]], bias=[0.5], device=device)
    step_with(SGD(0.1), model, fc, {"kernel": [[0.5], [-3.0]], "bias": [2.0]})
    np.testing.assert_allclose(on_cpu(fc.params["kernel"]), [[1.0 - 0.05], [-2.0 + 0.3]],
                               rtol=0, atol=1e-15)
    np.testing.assert_allclose(on_cpu(fc.params["bias"]), [0.5 - 0.2], rtol=0, atol=1e-15)


def test_sgd_momentum_three_steps_by_hand(device):
    model, fc = one_dense([[1.0], [0.0]], device=device)
    opt = SGD(0.1, momentum=0.5)
    g1, g2, g3 = np.array([[1.0], [2.0]]), np.array([[-2.0], [0.0]]), np.array([[4.0], [-1.0]])
    v1 = g1                               # first step: v = g, no momentum yet
    v2 = 0.5 * v1 + g2                    # [[-1.5], [1.0]]
    v3 = 0.5 * v2 + g3                    # [[3.25], [-0.5]]
    expected = np.array([[1.0], [0.0]])
    for g, v in ((g1, v1), (g2, v2), (g3, v3)):
        step_with(opt, model, fc, {"kernel": g})
        expected = expected - 0.1 * v
        np.testing.assert_allclose(on_cpu(fc.params["kernel"]), expected, rtol=0, atol=1e-15)
    # all three steps written out: p3 = p0 - lr (v1 + v2 + v3)
    np.testing.assert_allclose(on_cpu(fc.params["kernel"]), [[1.0 - 0.1 * (1 - 1.5 + 3.25)],
                                                     [0.0 - 0.1 * (2 + 1 - 0.5)]], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(on_cpu(opt.slots["velocity"]["fc/kernel"]), v3)


def test_sgd_momentum_uses_the_rate_of_each_step(device):
    """PyTorch's form p -= lr_t * v_t: a new rate scales the whole velocity at once."""
    model, fc = one_dense([[0.0]], device=device)
    opt = SGD(1.0, momentum=0.5)
    step_with(opt, model, fc, {"kernel": [[1.0]]}, learning_rate=0.1)   # v = 1,   p = -0.1
    step_with(opt, model, fc, {"kernel": [[1.0]]}, learning_rate=0.01)  # v = 1.5, p = -0.115
    np.testing.assert_allclose(on_cpu(fc.params["kernel"]), [[-0.115]], rtol=0, atol=1e-15)
    assert opt.learning_rate == 1.0                        # the argument does not stick


def test_weight_decay_adds_wd_times_p_to_the_gradient(device):
    model, fc = one_dense([[1.0], [-2.0]], device=device)
    step_with(SGD(0.1, weight_decay=0.1), model, fc, {"kernel": [[0.5], [0.5]]})
    # g + wd p = [0.5 + 0.1, 0.5 - 0.2] = [0.6, 0.3]
    np.testing.assert_allclose(on_cpu(fc.params["kernel"]), [[1.0 - 0.06], [-2.0 - 0.03]],
                               rtol=0, atol=1e-15)


def test_weight_decay_enters_the_momentum_buffer(device):
    model, fc = one_dense([[2.0]], device=device)
    opt = SGD(0.1, momentum=0.9, weight_decay=0.5)
    step_with(opt, model, fc, {"kernel": [[0.0]]})          # v1 = 0 + 0.5*2 = 1,  p1 = 1.9
    step_with(opt, model, fc, {"kernel": [[0.0]]})          # v2 = 0.9 + 0.95 = 1.85, p2 = 1.715
    np.testing.assert_allclose(on_cpu(fc.params["kernel"]), [[1.715]], rtol=0, atol=1e-15)


# --- Adam by hand ----------------------------------------------------------------------
def test_adam_first_step_is_lr_g_over_abs_g_plus_eps(device):
    """After one step m_hat = g and v_hat = g^2, so the step is lr g / (|g| + eps):
    about lr * sign(g) whatever the gradient's scale. A large eps makes the
    exact value visible (eps inside the square root would give another number)."""
    g = np.array([[0.5], [-3.0], [0.02]])
    model, fc = one_dense(np.zeros((3, 1)), device=device)
    step_with(Adam(0.1, epsilon=0.1), model, fc, {"kernel": g})
    exact = -0.1 * np.array([[0.5 / 0.6], [-3.0 / 3.1], [0.02 / 0.12]])
    np.testing.assert_allclose(on_cpu(fc.params["kernel"]), exact, rtol=1e-12, atol=0)

    model, fc = one_dense(np.zeros((3, 1)), device=device)
    step_with(Adam(0.1), model, fc, {"kernel": g})              # default eps 1e-8
    np.testing.assert_allclose(on_cpu(fc.params["kernel"]), -0.1 * np.sign(g), rtol=1e-6, atol=0)


def test_adam_two_steps_by_hand(device):
    """beta_1 = 0.5, beta_2 = 0.75 keep the arithmetic on paper. Entry 0 sees
    g = 2 then 1; entry 1 sees -1/4 of that, and Adam's steps ignore the scale.

    entry 0, step 1: m = 1, v = 1;     m_hat = 1 / 0.5 = 2,   v_hat = 1 / 0.25 = 4
                     p1 = -lr * 2 / (2 + eps)
    entry 0, step 2: m = 0.5 + 0.5 = 1, v = 0.75 + 0.25 = 1
                     m_hat = 1 / (1 - 0.25) = 4/3,  v_hat = 1 / (1 - 0.5625) = 16/7
                     p2 = p1 - lr * (4/3) / (4/sqrt(7) + eps)        (= p1 - lr sqrt(7)/3)
    entry 1: m_hat and sqrt(v_hat) are -1/4 and 1/4 of entry 0's.
    """
    lr, eps = 0.01, 1e-8
    model, fc = one_dense(np.zeros((2, 1)), device=device)
    opt = Adam(lr, beta_1=0.5, beta_2=0.75, epsilon=eps)
    step_with(opt, model, fc, {"kernel": [[2.0], [-0.5]]})
    p1 = np.array([[-lr * 2 / (2 + eps)], [lr * 0.5 / (0.5 + eps)]])
    np.testing.assert_allclose(on_cpu(fc.params["kernel"]), p1, rtol=1e-13, atol=0)
    step_with(opt, model, fc, {"kernel": [[1.0], [-0.25]]})
    p2 = p1 - lr * np.array([[(4 / 3) / (4 / math.sqrt(7) + eps)],
                             [(-1 / 3) / (1 / math.sqrt(7) + eps)]])
    np.testing.assert_allclose(on_cpu(fc.params["kernel"]), p2, rtol=1e-13, atol=0)
    total = lr * (1 + math.sqrt(7) / 3)                 # eps -> 0: both steps together
    np.testing.assert_allclose(p2, [[-total], [total]], rtol=1e-7)
    np.testing.assert_allclose(on_cpu(opt.slots["m"]["fc/kernel"]), [[1.0], [-0.25]], rtol=1e-15)
    np.testing.assert_allclose(on_cpu(opt.slots["v"]["fc/kernel"]), [[1.0], [1 / 16]], rtol=1e-15)


def test_adam_weight_decay_is_added_before_the_moments(device):
    """g + wd p can flip the gradient's sign; the first step then follows g + wd p."""
    model, fc = one_dense([[10.0], [-10.0]], device=device)
    step_with(Adam(0.1, weight_decay=0.1), model, fc, {"kernel": [[0.5], [0.5]]})
    # g + wd p = [1.5, -0.5]: both move by lr against the sign of that sum
    np.testing.assert_allclose(on_cpu(fc.params["kernel"]), [[10.0 - 0.1], [-10.0 + 0.1]], rtol=1e-9)


# --- schedules -------------------------------------------------------------------------
def test_step_decay_values():
    schedule = StepDecay(0.1, drop=0.5, every=10)
    for epoch, expected in [(0, 0.1), (5, 0.1), (9.99, 0.1), (10, 0.05), (19.5, 0.05),
                            (20, 0.025), (35, 0.0125), (100, 0.1 * 0.5 ** 10)]:
        assert schedule(epoch) == pytest.approx(expected, rel=1e-12), epoch


def test_cosine_decay_values():
    schedule = CosineDecay(1.0, 10, final=0.1)
    assert schedule(0) == pytest.approx(1.0, rel=1e-12)
    assert schedule(2.5) == pytest.approx(0.1 + 0.9 * (1 + math.sqrt(2) / 2) / 2, rel=1e-12)
    assert schedule(5) == pytest.approx(0.55, rel=1e-12)                 # halfway: the mean
    assert schedule(7.5) == pytest.approx(0.1 + 0.9 * (1 - math.sqrt(2) / 2) / 2, rel=1e-12)
    assert schedule(10) == pytest.approx(0.1, rel=1e-12)
    assert schedule(12) == schedule(30) == pytest.approx(0.1, rel=1e-12)    # flat after the end
    assert CosineDecay(0.05, 4)(4) == pytest.approx(0.0, abs=1e-15)        # final defaults to 0
    rates = [schedule(e / 4) for e in range(41)]
    assert all(a > b for a, b in zip(rates, rates[1:]))                   # strictly decreasing


# --- frozen layers ---------------------------------------------------------------------
@pytest.mark.parametrize("make_optimizer", [lambda: SGD(0.1, momentum=0.9, weight_decay=1e-2),
                                            lambda: Adam(0.01, weight_decay=1e-2)],
                         ids=["sgd", "adam"])
def test_frozen_layers_keep_every_parameter_bit_for_bit(make_optimizer, rng, device):
    model = conv_net().to(device)
    randomize_offsets(model, rng)                 # nonzero biases and betas: decay would move them
    for bn in (model.get_layer("bn_a"), model.get_layer("bn_b")):
        bn.params["moving_mean"][...] = to_device(rng.standard_normal(3) * 0.1, device)
        bn.params["moving_variance"][...] = to_device(1 + rng.random(3), device)
    model.get_layer("conv_a").trainable = False
    model.get_layer("bn_a").trainable = False
    frozen = {"conv_a/kernel", "conv_a/bias", "bn_a/gamma", "bn_a/beta",
              "bn_a/moving_mean", "bn_a/moving_variance"}
    assert {f"{layer.name}/{name}" for layer, name in model.parameters()}.isdisjoint(frozen)

    before = snapshot(model)
    opt = make_optimizer()
    images = to_device(rng.standard_normal((6, 5, 5, 2)).astype("float32"), device)
    for _ in range(4):
        out = model.forward(images, training=True)
        model.backward(np.ones_like(out) + out)      # L = sum(out + out^2 / 2)
        opt.step(model)
    # the frozen layers did get gradients: it is the optimiser that leaves them alone
    assert np.abs(model.get_layer("conv_a").grads["kernel"]).max() > 1e-3
    assert np.abs(model.get_layer("bn_a").grads["gamma"]).max() > 1e-3
    after = snapshot(model)
    for key in frozen:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    moved = {"conv_b/kernel", "bn_b/gamma", "bn_b/beta", "bn_b/moving_mean",
             "bn_b/moving_variance", "fc/kernel", "fc/bias"}
    for key in moved:
        assert not np.array_equal(after[key], before[key]), f"{key} did not change"


# --- errors ----------------------------------------------------------------------------
@pytest.mark.parametrize("make_optimizer", [SGD, Adam], ids=["sgd", "adam"])
def test_step_before_backward_names_the_layer(make_optimizer):
    model, fc = one_dense([[1.0], [2.0]])
    with pytest.raises(RuntimeError, match=r"layer 'fc' has no gradient for 'kernel'.*backward"):
        make_optimizer().step(model)
    np.testing.assert_array_equal(fc.params["kernel"], [[1.0], [2.0]])


@pytest.mark.parametrize("make, what", [
    (lambda: SGD(float("inf")), "learning_rate"),
    (lambda: SGD(-0.1), "learning_rate"),
    (lambda: SGD(float("nan")), "learning_rate"),
    (lambda: SGD(0.1, momentum=1.0), "momentum"),
    (lambda: SGD(0.1, momentum=-0.5), "momentum"),
    (lambda: SGD(0.1, weight_decay=-1e-4), "weight_decay"),
    (lambda: Adam(-1e-3), "learning_rate"),
    (lambda: Adam(1e-3, beta_1=1.0), "beta_1"),
    (lambda: Adam(1e-3, beta_1=-0.1), "beta_1"),
    (lambda: Adam(1e-3, beta_2=1.5), "beta_2"),
    (lambda: Adam(1e-3, weight_decay=-1.0), "weight_decay"),
])
def test_invalid_hyperparameters(make, what):
    with pytest.raises(ValueError, match=rf"{what}.* must be in "):
        make()


# --- state round trip ------------------------------------------------------------------
def copy_state(state):
    return {k: (v.copy() if is_array(v) else v) for k, v in state.items()}


@pytest.mark.parametrize("make_optimizer", [lambda: SGD(0.05, momentum=0.9, weight_decay=1e-3),
                                            lambda: Adam(0.01, weight_decay=1e-3)],
                         ids=["sgd", "adam"])
def test_state_round_trip_continues_bit_for_bit(make_optimizer, rng, device):
    model = conv_net().to(device)
    twin = conv_net().to(device)
    opt = make_optimizer()
    grads = [random_grads(model, rng) for _ in range(7)]
    for g in grads[:3]:
        set_grads(model, g)
        opt.step(model)
    state = copy_state(opt.state())
    assert state["iterations"] == 3
    twin.set_weights(model.get_weights())
    fresh, resumed, unloaded = make_optimizer(), make_optimizer(), make_optimizer()
    resumed.load_state(state)
    third = conv_net().to(device)                      # resumed without the state: must differ
    third.set_weights(model.get_weights())
    for g in grads[3:]:
        for m, o in ((model, opt), (twin, resumed), (third, unloaded)):
            set_grads(m, g)
            o.step(m)
    for a, b in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_array_equal(on_cpu(a), on_cpu(b))
    assert resumed.iterations == opt.iterations == 7
    assert not all(np.array_equal(on_cpu(a), on_cpu(c))
                   for a, c in zip(model.get_weights(), third.get_weights()))
    assert fresh.iterations == 0 and fresh.slots == {}


def test_state_holds_every_slot():
    model, fc = one_dense([[1.0], [2.0]], bias=[0.0])
    opt = Adam(0.1)
    step_with(opt, model, fc, {"kernel": [[1.0], [1.0]], "bias": [1.0]})
    assert set(opt.state()) == {"iterations", "m/fc/kernel", "m/fc/bias", "v/fc/kernel", "v/fc/bias"}
    opt = SGD(0.1, momentum=0.9)
    step_with(opt, model, fc, {"kernel": [[1.0], [1.0]], "bias": [1.0]})
    assert set(opt.state()) == {"iterations", "velocity/fc/kernel", "velocity/fc/bias"}


# --- once bugs: a failed step, shared state arrays, a negative epsilon ---------------
def test_a_failed_step_changes_nothing():
    model, fc = one_dense([[0.0], [0.0]])
    opt = Adam(0.1)
    with pytest.raises(RuntimeError):
        opt.step(model)
    assert opt.iterations == 0
    step_with(opt, model, fc, {"kernel": [[1.0], [-2.0]]})
    np.testing.assert_allclose(fc.params["kernel"], [[-0.1], [0.1]], rtol=1e-6)


def test_load_state_does_not_share_arrays_with_its_source(device):
    model, fc = one_dense([[0.0]], device=device)
    opt = SGD(0.1, momentum=0.9)
    step_with(opt, model, fc, {"kernel": [[1.0]]})
    other = SGD(0.1, momentum=0.9)
    other.load_state(opt.state())
    step_with(opt, model, fc, {"kernel": [[1.0]]})
    np.testing.assert_array_equal(on_cpu(other.slots["velocity"]["fc/kernel"]), [[1.0]])


def test_adam_rejects_a_negative_epsilon():
    with pytest.raises(ValueError, match="epsilon"):
        Adam(1e-3, epsilon=-1e-8)


# --- torch.optim as an oracle ----------------------------------------------------------
TORCH_TOLERANCE = {"float32": 1e-6, "float64": 1e-13}
RATES = [0.1, 0.1, 0.05, 0.05, 0.2, 0.02, 0.02, 0.01, 0.1, 0.003]   # changed between steps


def run_against_torch(make_ours, make_theirs, dtype, seed=0):
    """The same random gradients and learning rates through both; max |difference|."""
    torch = pytest.importorskip("torch")
    model = conv_net(dtype)
    rng = np.random.default_rng(seed)
    for layer, name in model.parameters():
        layer.params[name][...] = 0.5 * rng.standard_normal(layer.params[name].shape)
    keys = [(layer.name, name) for layer, name in model.parameters()]
    theirs = [torch.tensor(model.get_layer(lname).params[n].copy(), requires_grad=True)
              for lname, n in keys]
    ours, torch_opt = make_ours(), make_theirs(theirs)
    worst = 0.0
    for rate in RATES:
        grads = random_grads(model, rng)
        set_grads(model, grads)
        for tensor, key in zip(theirs, keys):
            tensor.grad = torch.from_numpy(grads[key].copy())
        for group in torch_opt.param_groups:
            group["lr"] = rate
        ours.step(model, rate)
        torch_opt.step()
        for tensor, (lname, n) in zip(theirs, keys):
            ours_p = model.get_layer(lname).params[n]
            assert ours_p.dtype == tensor.detach().numpy().dtype == np.dtype(dtype)
            worst = max(worst, float(np.abs(ours_p.astype(np.float64)
                                            - tensor.detach().numpy().astype(np.float64)).max()))
    return worst


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sgd_matches_torch(dtype):
    torch = pytest.importorskip("torch")
    worst = run_against_torch(lambda: SGD(0.1, momentum=0.9, weight_decay=1e-2),
                              lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
                              dtype)
    print(f"SGD vs torch.optim.SGD ({dtype}): max |difference| {worst:.1e}")
    assert worst <= TORCH_TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_adam_matches_torch(dtype):
    torch = pytest.importorskip("torch")
    worst = run_against_torch(lambda: Adam(0.1, weight_decay=1e-2),
                              lambda p: torch.optim.Adam(p, lr=0.1, weight_decay=1e-2), dtype)
    print(f"Adam vs torch.optim.Adam ({dtype}): max |difference| {worst:.1e}")
    assert worst <= TORCH_TOLERANCE[dtype]


def test_rmsprop_matches_keras():
    """compile()'s default optimizer, step for step against Keras's RMSprop
    (epsilon inside the square root, as Keras has it; torch puts it outside)."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(7)
    model = conv_net("float32")
    layer, name = next(iter(model.parameters()))
    start = layer.params[name].copy()
    variable = keras.Variable(start.copy())
    theirs, ours = keras.optimizers.RMSprop(learning_rate=0.01), RMSprop(learning_rate=0.01)
    for _ in range(5):
        grads = random_grads(model, rng)
        set_grads(model, grads)
        ours.step(model)
        theirs.apply_gradients([(keras.ops.convert_to_tensor(grads[(layer.name, name)]), variable)])
    np.testing.assert_allclose(layer.params[name], keras.ops.convert_to_numpy(variable), rtol=1e-5, atol=1e-6)
    assert not np.allclose(layer.params[name], start)
