"""Keras's cross-entropies (from logits and from probabilities) and Dropout:
float64 gradient checks, the stable logits_grad route, the errors that keep a
wrong call from failing silently, and the randomness of the dropout mask."""
import os

import numpy as np
import pytest
from conftest import assert_gradients_match, on_cpu

from minires import gradcheck, losses
from minires.backend import device_of, to_device
from minires.initializers import set_random_seed
from minires.layers import Dropout, Input
from minires.layers.activations import softmax, softmax_backward
from minires.losses import (CategoricalCrossentropy, SoftmaxCrossEntropy,
                            SparseCategoricalCrossentropy)

N, K = 5, 4
F64 = {"dtype": "float64"}


def softmax_np(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def targets_of(kind, rng, n=N, k=K):
    """Class indices, one-hot rows or soft rows (each summing to 1)."""
    labels = rng.integers(0, k, n)
    if kind == "indices":
        return labels
    if kind == "column":
        return labels[:, None]
    if kind == "one-hot":
        return np.eye(k)[labels]
    return softmax_np(rng.standard_normal((n, k)))       # soft


# Every loss, in both modes, with each kind of target it takes.
CASES = [(SoftmaxCrossEntropy, None, "indices"), (SoftmaxCrossEntropy, None, "soft")] + [
    (cls, from_logits, kind) for from_logits in (True, False)
    for cls, kinds in [(CategoricalCrossentropy, ("one-hot", "soft")),
                       (SparseCategoricalCrossentropy, ("indices", "column"))]
    for kind in kinds]


def make(cls, from_logits):
    return cls() if from_logits is None else cls(from_logits=from_logits)


def case_id(case):
    cls, from_logits, kind = case
    mode = "" if from_logits is None else f"-from_logits={from_logits}"
    return f"{cls.__name__}{mode}-{kind}"


# --- gradient checks ---------------------------------------------------------
@pytest.mark.parametrize("cls,from_logits,kind", CASES, ids=map(case_id, CASES))
def test_loss_gradient(rng, device, cls, from_logits, kind):
    loss = make(cls, from_logits)
    logits = rng.standard_normal((N, K))
    # probabilities from small logits: p >~ 0.03, where log p's curvature (1/p^2)
    # leaves the centred difference's O(h^2) error far below the tolerance
    outputs = logits * 2 if loss.from_logits else softmax_np(logits * 0.5)
    targets = to_device(targets_of(kind, rng), device)
    report = gradcheck.check_gradients(lambda x: loss.forward(x, targets), loss.backward,
                                       [to_device(outputs, device)])
    assert_gradients_match(report, case_id((cls, from_logits, kind)))


@pytest.mark.parametrize("from_logits", [True, False])
def test_gradient_for_targets_not_summing_to_one(rng, from_logits):
    """(p - t)/N assumes rows of t sum to 1; (s p - t)/N, s = sum_k t_k, is exact for any."""
    targets = rng.uniform(0, 1, (N, K))                # rows summing to ~2
    logits = rng.standard_normal((N, K))
    loss = CategoricalCrossentropy(from_logits=from_logits)
    if from_logits:
        report = gradcheck.check_gradients(lambda z: loss.forward(z, targets), loss.backward, [logits])
    else:                                              # logits_grad: through the softmax
        report = gradcheck.check_gradients(lambda z: loss.forward(softmax(z), targets),
                                           lambda d: loss.backward(d, logits_grad=True), [logits])
    assert_gradients_match(report, "CategoricalCrossentropy-unnormalised-targets")


@pytest.mark.parametrize("cls,kind", [(CategoricalCrossentropy, "soft"),
                                      (SparseCategoricalCrossentropy, "indices")])
def test_logits_grad_is_the_softmax_backward_of_the_probability_gradient(rng, device, cls, kind):
    """Where nothing underflows both routes give dL/dz, and so does the loss on the logits."""
    logits = to_device(rng.standard_normal((N, K)) * 2, device)
    targets = to_device(targets_of(kind, rng), device)
    probs = softmax(logits)
    loss = cls()
    loss.forward(probs, targets)
    chained = softmax_backward(loss.backward(), probs)
    direct = loss.backward(logits_grad=True)
    np.testing.assert_allclose(on_cpu(direct), on_cpu(chained), rtol=1e-10, atol=1e-14)
    on_logits = cls(from_logits=True)
    on_logits.forward(logits, targets)
    np.testing.assert_allclose(on_cpu(direct), on_cpu(on_logits.backward()), rtol=1e-10, atol=1e-14)
    # and a dloss scales it
    np.testing.assert_allclose(on_cpu(loss.backward(2.5, logits_grad=True)), 2.5 * on_cpu(direct))


@pytest.mark.parametrize("gap", [200.0, 800.0])    # p ~ 1e-87 (clipped), p == 0 (underflowed)
def test_logits_grad_stays_exact_where_the_probability_underflows(device, gap):
    logits = to_device(np.array([[gap, 0.0, -5.0], [1.0, 2.0, 0.5]]), device)
    labels = to_device(np.array([1, 2]), device)              # row 0: the nearly impossible class
    probs = softmax(logits)
    expected = (on_cpu(probs) - np.eye(3)[[1, 2]]) / 2         # p - t, over N = 2
    loss = SparseCategoricalCrossentropy()
    loss.forward(probs, labels)
    chained = on_cpu(softmax_backward(loss.backward(), probs))
    assert not np.allclose(chained[0], expected[0], atol=0.1)  # ~0 (or NaN) where it should be +-1/2
    direct = on_cpu(loss.backward(logits_grad=True))
    np.testing.assert_allclose(direct, expected, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(direct[0], [0.5, -0.5, 0.0], atol=1e-12)


def test_the_probability_gradient_is_zero_where_the_clip_cut():
    """L depends on p only through clip(p): below eps it is flat, so dL/dp = 0 there
    (finite differences agree), not -t/eps."""
    probs = np.array([[5e-8, 0.6, 0.4 - 5e-8], [0.2, 0.3, 0.5]])
    targets = np.array([[0.3, 0.3, 0.4], [0.0, 1.0, 0.0]])
    loss = CategoricalCrossentropy()
    loss.forward(probs, targets)
    analytic = loss.backward()
    numeric = gradcheck.numerical_gradient(lambda: loss.forward(probs, targets), probs, h=1e-8,
                                           indices=[(0, 0)])
    assert analytic[0, 0] == 0 and numeric[0, 0] == 0
    np.testing.assert_allclose(analytic[1], [0.0, -1 / 0.3 / 2, 0.0])


# --- values ------------------------------------------------------------------
def test_keras_documented_values():
    """Keras's docstring example: 1.177 for both losses."""
    probs = np.array([[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]])
    assert float(CategoricalCrossentropy().forward(probs, np.array([[0, 1, 0], [0, 0, 1]]))) == \
        pytest.approx(1.1769392, abs=1e-6)
    assert float(SparseCategoricalCrossentropy().forward(probs, np.array([1, 2]))) == \
        pytest.approx(1.1769392, abs=1e-6)


@pytest.mark.parametrize("cls,kind", [(CategoricalCrossentropy, "soft"),
                                      (SparseCategoricalCrossentropy, "indices")])
def test_from_logits_is_softmax_cross_entropy(rng, device, cls, kind):
    logits = to_device(rng.standard_normal((N, K)) * 3, device)
    targets = to_device(targets_of(kind, rng), device)
    ours, reference = cls(from_logits=True), SoftmaxCrossEntropy()
    assert float(ours.forward(logits, targets)) == pytest.approx(float(reference(logits, targets)), rel=1e-14)
    np.testing.assert_allclose(on_cpu(ours.backward()), on_cpu(reference.backward()), rtol=1e-14)
    assert float(cls().forward(softmax(logits), targets)) == pytest.approx(float(reference.forward(logits, targets)),
                                                                   rel=1e-12)


@pytest.mark.parametrize("from_logits", [True, False])
def test_float32_stays_float32(rng, from_logits):
    logits = rng.standard_normal((N, K)).astype(np.float32)
    outputs = logits if from_logits else softmax(logits)
    loss = CategoricalCrossentropy(from_logits=from_logits)
    assert loss.forward(outputs, targets_of("one-hot", rng).astype(np.float32)).dtype == np.float32
    assert loss.backward().dtype == np.float32


def test_from_logits_attribute_and_defaults():
    assert SoftmaxCrossEntropy().from_logits is True
    assert CategoricalCrossentropy().from_logits is False
    assert SparseCategoricalCrossentropy().from_logits is False
    assert SparseCategoricalCrossentropy(from_logits=True).from_logits is True
    with pytest.raises(TypeError, match=r"CategoricalCrossentropy: from_logits must be True or False, got 'yes'"):
        CategoricalCrossentropy(from_logits="yes")


# --- errors --------------------------------------------------------------------
@pytest.mark.parametrize("cls,targets", [(CategoricalCrossentropy, np.eye(K)[[0, 1, 2]]),
                                         (SparseCategoricalCrossentropy, np.array([0, 1, 2]))])
@pytest.mark.parametrize("outputs", [
    np.array([[2.0, -1.0, 0.5, 0.1]] * 3),             # logits: negative and above 1
    np.array([[0.9, 0.8, 0.1, 0.7]] * 3),              # in [0, 1], rows summing to 2.5 (sigmoids)
    np.array([[0.2, 0.2, 0.2, 0.2]] * 3),              # rows summing to 0.8
], ids=["logits", "sigmoids", "short-rows"])
def test_logits_given_to_a_probability_loss(cls, targets, outputs):
    loss = cls()
    good = softmax_np(np.arange(12.0).reshape(3, 4))
    loss.forward(good, targets)
    before = loss.backward()
    with pytest.raises(ValueError, match=rf"{cls.__name__}: from_logits=False expects probabilities"
                                         rf".*they look like logits\. Use {cls.__name__}\(from_logits=True\)"):
        loss.forward(outputs, targets)
    np.testing.assert_array_equal(loss.backward(), before)     # the failed call changed nothing


def test_a_probability_row_within_the_tolerance_is_accepted():
    probs = np.array([[0.3, 0.3, 0.4 + 9e-4]])
    CategoricalCrossentropy().forward(probs, np.array([[0.0, 0.0, 1.0]]))
    with pytest.raises(ValueError, match="look like logits"):
        CategoricalCrossentropy().forward(probs + np.array([[0, 0, 2e-4]]), np.array([[0.0, 0.0, 1.0]]))


@pytest.mark.parametrize("from_logits", [True, False])
def test_sparse_target_errors(from_logits):
    loss = SparseCategoricalCrossentropy(from_logits=from_logits)
    outputs = np.full((3, 4), 0.25)
    what = "logits" if from_logits else "probability"
    with pytest.raises(ValueError, match=r"SparseCategoricalCrossentropy: labels must lie in \[0, 4\), "
                                         r"got values from -1 to 2"):
        loss.forward(outputs, np.array([0, -1, 2]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\), got values from 0 to 4"):
        loss.forward(outputs, np.array([0, 4, 2]))
    with pytest.raises(ValueError, match=rf"3 {what} rows but labels of shape \(2,\); class indices "
                                         r"must have shape \(3,\)"):
        loss.forward(outputs, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"3 .* rows but labels of shape \(3, 2\)"):
        loss.forward(outputs, np.zeros((3, 2), dtype=int))
    with pytest.raises(ValueError, match=r"labels must be int class indices of shape \(3,\), got float64 \(3,\)$"):
        loss.forward(outputs, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"got float64 \(3, 4\); for one-hot or probability rows use "
                                         r"CategoricalCrossentropy"):
        loss.forward(outputs, np.eye(4)[[0, 1, 2]])


def test_a_column_of_class_indices_is_accepted(rng):
    """keras.datasets.cifar10 gives labels of shape (N, 1); Keras takes them."""
    probs, labels = softmax_np(rng.standard_normal((N, K))), rng.integers(0, K, N)
    loss = SparseCategoricalCrossentropy()
    assert float(loss.forward(probs, labels[:, None])) == float(loss.forward(probs, labels))


def test_categorical_target_errors():
    loss, outputs = CategoricalCrossentropy(), np.full((3, 4), 0.25)
    with pytest.raises(ValueError, match=r"CategoricalCrossentropy: labels must be one-hot or probability "
                                         r"rows of shape \(3, 4\), got int64 \(3,\); for class indices "
                                         r"use SparseCategoricalCrossentropy"):
        loss.forward(outputs, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"rows of shape \(3, 4\), got float64 \(3, 5\)$"):
        loss.forward(outputs, np.zeros((3, 5)))
    # int one-hot rows are rows, as in Keras
    assert float(loss.forward(outputs, np.eye(4, dtype=int)[[0, 1, 2]])) == pytest.approx(np.log(4))


@pytest.mark.parametrize("cls", [CategoricalCrossentropy, SparseCategoricalCrossentropy])
def test_output_shape_and_dtype_errors(cls):
    with pytest.raises(ValueError, match=rf"{cls.__name__}: probabilities must be a float array of "
                                         r"shape \(N, classes\), got \(4,\) float64"):
        cls().forward(np.full(4, 0.25), np.array([0]))
    with pytest.raises(ValueError, match=r"logits must be a float array of shape \(N, classes\), got "
                                         r"\(2, 4\) int64"):
        cls(from_logits=True).forward(np.zeros((2, 4), dtype=int), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"got list"):
        cls().forward([[0.5, 0.5]], np.array([0]))


def test_backward_errors():
    with pytest.raises(RuntimeError, match="CategoricalCrossentropy: backward called before forward"):
        CategoricalCrossentropy().backward()
    for loss in (SoftmaxCrossEntropy(), CategoricalCrossentropy(from_logits=True),
                 SparseCategoricalCrossentropy(from_logits=True)):
        with pytest.raises(ValueError, match=rf"{type(loss).__name__}: logits_grad=True is for losses "
                                             r"on probabilities \(from_logits=False\)"):
            loss.backward(logits_grad=True)


# --- losses.get ----------------------------------------------------------------------
@pytest.mark.parametrize("name,cls", [("categorical_crossentropy", CategoricalCrossentropy),
                                      ("Sparse_Categorical_Crossentropy", SparseCategoricalCrossentropy),
                                      ("SPARSE_CATEGORICAL_CROSSENTROPY", SparseCategoricalCrossentropy)])
def test_get_by_name(name, cls):
    loss = losses.get(name)
    assert type(loss) is cls and loss.from_logits is False
    assert losses.get(name) is not loss                     # a new one each time


def test_get_passes_a_loss_through_and_refuses_anything_else():
    loss = SparseCategoricalCrossentropy(from_logits=True)
    assert losses.get(loss) is loss

    class MeanSquares:                                   # a loss of one's own
        def forward(self, outputs, targets): ...
        def backward(self, dloss=1.0): ...
    own = MeanSquares()
    assert losses.get(own) is own
    choices = r"; use a loss object or one of 'categorical_crossentropy', 'sparse_categorical_crossentropy'"
    for wrong in ("mse", "categorical-crossentropy", None, CategoricalCrossentropy, MeanSquares, 3):
        with pytest.raises(ValueError, match=rf"^unknown loss .*{choices}$"):
            losses.get(wrong)


# --- Keras itself ------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("gap", [3.0, 200.0])
def test_against_keras(gap):
    """Keras's values, and its gradient dL/dz through a softmax (torch autograd):
    the chained probability route agrees with Keras even where it vanishes;
    logits_grad and from_logits=True give the true p - t."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    torch = pytest.importorskip("torch")
    if keras.backend.backend() != "torch":
        pytest.skip("needs KERAS_BACKEND=torch")
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((N, K))
    logits[0, 0] += gap
    labels = rng.integers(1, K, N)                     # row 0's target is far below its top logit
    onehot = np.eye(K)[labels]
    # Keras's loss functions (its Loss classes compute in floatx, float32), averaged
    # over the batch as the classes do
    for keras_loss, ours, targets in [(keras.losses.categorical_crossentropy, CategoricalCrossentropy, onehot),
                                      (keras.losses.sparse_categorical_crossentropy,
                                       SparseCategoricalCrossentropy, labels)]:
        for from_logits in (False, True):
            z = torch.tensor(logits, requires_grad=True)
            value = keras_loss(torch.tensor(targets), z if from_logits else torch.softmax(z, 1),
                               from_logits=from_logits).mean()
            value.backward()
            loss = ours(from_logits=from_logits)
            probs = softmax_np(logits)
            ours_value = loss.forward(logits if from_logits else probs, targets)
            assert float(ours_value) == pytest.approx(value.item(), rel=1e-10)
            dz = loss.backward() if from_logits else softmax_backward(loss.backward(), probs)
            np.testing.assert_allclose(dz, z.grad.numpy(), rtol=1e-8, atol=1e-12)
            if not from_logits:
                true = (probs - onehot) / N
                np.testing.assert_allclose(loss.backward(logits_grad=True), true, rtol=1e-12, atol=1e-15)
                if gap > 100:                          # Keras's gradient for row 0 has vanished
                    assert np.abs(z.grad.numpy()[0]).max() < 1e-6 < np.abs(true[0]).max()


# --- Dropout -----------------------------------------------------------------------------
def masks(layer, x, calls=1):
    """The scaled masks of ``calls`` training forwards, on the CPU."""
    return [on_cpu(layer.forward(x, training=True)[1]) for _ in range(calls)]


@pytest.mark.parametrize("rate,noise_shape", [(0.4, None), (0.5, (None, 1, None)), (0.3, (4, 1, None))])
def test_dropout_gradient(rng, device, rate, noise_shape):
    """With the call's mask fixed, y is linear in x. The finite differences call the
    layer's own forward, on a fresh layer with the same seed each time: the same
    first mask at every evaluation, as the cache the backward is given."""
    x = to_device(rng.standard_normal((4, 5, 6)), device)

    def fresh_forward(x):
        return Dropout(rate, noise_shape=noise_shape, seed=11, **F64).forward(x, training=True)[0]

    layer = Dropout(rate, noise_shape=noise_shape, seed=11, **F64)
    _, cache = layer.forward(x, training=True)
    kept = on_cpu(cache) != 0
    assert kept.any() and not kept.all()          # a mask with both: a backward ignoring it fails
    np.testing.assert_array_equal(on_cpu(cache)[kept], 1 / (1 - rate))
    report = gradcheck.check_gradients(fresh_forward, lambda dy: layer.backward(dy, cache), [x])
    assert_gradients_match(report, "Dropout")


def test_dropout_inference_is_the_identity(rng, device):
    layer = Dropout(0.5, seed=0, **F64)
    x = to_device(rng.standard_normal((3, 4)), device)
    y, cache = layer.forward(x, training=False)
    assert cache is None
    np.testing.assert_array_equal(on_cpu(y), on_cpu(x))
    np.testing.assert_array_equal(on_cpu(layer(x)), on_cpu(x))           # __call__: inference
    dy = to_device(rng.standard_normal((3, 4)), device)
    np.testing.assert_array_equal(on_cpu(layer.backward(dy, cache)), on_cpu(dy))


def test_dropout_rate_zero_is_the_identity_in_training(rng):
    x = rng.standard_normal((3, 4))
    y, cache = Dropout(0.0, **F64).forward(x, training=True)
    assert cache is None
    np.testing.assert_array_equal(y, x)


def test_dropout_keeps_the_mean(device):
    """Inverted dropout: a fraction ``rate`` is zeroed, the rest is scaled by 1/(1 - rate),
    so the mean stays 1 (std of the mean here: sqrt(rate/(1-rate)/1e6) ~ 7e-4)."""
    rate = 0.3
    x = to_device(np.ones((1000, 1000), np.float32), device)
    y, cache = Dropout(rate, seed=1).forward(x, training=True)
    assert device_of(y) == device_of(cache) == device and y.dtype == np.float32
    y = on_cpu(y)
    assert abs(y.mean() - 1) < 5e-3
    assert abs((y == 0).mean() - rate) < 5e-3
    np.testing.assert_allclose(y[y != 0], 1 / (1 - rate), rtol=1e-6)


def test_dropout_seeds_repeat(rng):
    x = rng.standard_normal((6, 7))
    first, second = masks(Dropout(0.5, seed=3), x, 2), masks(Dropout(0.5, seed=3), x, 2)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)                        # same seed: same masks
    assert not np.array_equal(first[0], first[1])                  # a new mask every call
    assert not np.array_equal(first[0], masks(Dropout(0.5, seed=4), x)[0])
    unseeded = []
    for _ in range(2):                        # unseeded: repeatable through set_random_seed
        set_random_seed(42)
        unseeded.append(masks(Dropout(0.5), x)[0])
    np.testing.assert_array_equal(*unseeded)
    assert not np.array_equal(unseeded[0], masks(Dropout(0.5), x)[0])


def test_dropout_noise_shape_broadcasts(rng, device):
    """(None, 1, 1, None) on (N, H, W, C): one draw per example and channel."""
    x = to_device(rng.uniform(1, 2, (3, 4, 5, 8)), device)          # no zeros: y / x is the mask
    layer = Dropout(0.5, noise_shape=(None, 1, 1, None), seed=2, **F64)
    y, cache = layer.forward(x, training=True)
    assert cache.shape == (3, 1, 1, 8)
    ratio = on_cpu(y) / on_cpu(x)
    np.testing.assert_allclose(ratio, np.broadcast_to(on_cpu(cache), ratio.shape), rtol=1e-15)
    assert (ratio == 0).any() and (ratio != 0).any()
    dx = on_cpu(layer.backward(to_device(np.ones(x.shape), device), cache))
    np.testing.assert_array_equal(dx, np.broadcast_to(on_cpu(cache), dx.shape))
    with pytest.raises(ValueError, match=r"layer 'drop': noise_shape \(None, 2, 1, None\) does not "
                                         r"broadcast to the input's shape \(3, 4, 5, 8\)"):
        Dropout(0.5, noise_shape=(None, 2, 1, None), name="drop").forward(x, training=True)
    with pytest.raises(ValueError, match=r"noise_shape \(None, 1\) does not broadcast"):
        Dropout(0.5, noise_shape=(None, 1), name="drop2").forward(x, training=True)


@pytest.mark.parametrize("rate", [-0.1, 1, 1.5, float("nan"), "0.5", True, None])
def test_dropout_rate_validation(rate):
    with pytest.raises(ValueError, match=r"layer 'drop': rate must be a number in \[0, 1\)"):
        Dropout(rate, name="drop")


@pytest.mark.parametrize("kwargs,message", [
    ({"noise_shape": (None, 0)}, r"noise_shape must be None or a tuple of positive ints and Nones"),
    ({"noise_shape": 3}, r"noise_shape must be None or a tuple"),
    ({"seed": -1}, r"seed must be None or a non-negative int, got -1"),
    ({"seed": 1.5}, r"seed must be None or a non-negative int"),
])
def test_dropout_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=rf"layer 'drop': {message}"):
        Dropout(0.5, name="drop", **kwargs)


def test_dropout_backward_with_a_gradient_of_the_wrong_shape(rng):
    layer = Dropout(0.5, seed=0, name="drop", **F64)
    _, cache = layer.forward(rng.standard_normal((3, 4)), training=True)
    with pytest.raises(ValueError, match=r"layer 'drop': backward got a gradient of shape \(3, 5\), "
                                         r"which its mask of shape \(3, 4\) does not fit"):
        layer.backward(np.ones((3, 5)), cache)


def test_dropout_keeps_no_mask_and_is_a_keras_layer(rng):
    layer = Dropout(0.25, seed=0)
    assert layer.name == "dropout" and Dropout(0.5).name == "dropout_1"
    layer.forward(rng.standard_normal((3, 4)), training=True)
    assert not any(isinstance(value, np.ndarray) for value in vars(layer).values())
    assert layer.params == {} and layer.trainable_names() == []
    assert layer(Input((7, 3))).shape == (None, 7, 3)


@pytest.mark.parametrize("from_logits", [True, False])
def test_a_keras_loss_object_is_called_as_keras_calls_it(rng, from_logits):
    """TensorFlow's quickstart: ``loss_fn(y_train[:1], predictions)``, targets first."""
    logits = rng.standard_normal((N, K))
    outputs = logits if from_logits else softmax_np(logits)
    labels = rng.integers(0, K, N)
    for loss, targets in ((SparseCategoricalCrossentropy(from_logits), labels),
                          (CategoricalCrossentropy(from_logits), np.eye(K)[labels])):
        expected = float(type(loss)(from_logits).forward(outputs, targets))
        assert float(loss(targets, outputs)) == expected
        weights = rng.uniform(0.5, 2.0, N)
        assert float(loss(targets, outputs, weights)) == pytest.approx(
            float(type(loss)(from_logits).forward(outputs, targets, weights)))


@pytest.mark.parametrize("from_logits", [False, True])
def test_keras_loss_functions_give_each_samples_loss_as_keras(from_logits):
    """keras.losses.categorical_crossentropy and sparse_categorical_crossentropy
    (compile(loss=...) in Keras 2 tutorials, Horovod's keras_mnist): per-sample
    losses as Keras's, and compile trains with the matching loss class."""
    from minires.keras import losses as keras_losses
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("needs KERAS_BACKEND=torch")
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((6, 4)).astype("float32")
    outputs = logits if from_logits else np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 4, 6)
    for name, targets in [("categorical_crossentropy", np.eye(4, dtype="float32")[labels]),
                          ("sparse_categorical_crossentropy", labels)]:
        ours = getattr(keras_losses, name)(targets, outputs, from_logits=from_logits)
        theirs = keras.ops.convert_to_numpy(getattr(keras.losses, name)(targets, outputs,
                                                                        from_logits=from_logits))
        assert ours.shape == (6,)
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
    assert type(keras_losses.get(keras_losses.categorical_crossentropy)) is CategoricalCrossentropy
    with pytest.raises(ValueError, match="labels must lie in"):
        keras_losses.sparse_categorical_crossentropy(labels + 4, outputs, from_logits=from_logits)
