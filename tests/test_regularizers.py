"""Weight penalties (minires/regularizers.py), as keras.regularizers: their
values and gradients against Keras's and finite differences, how layers take
them, and the model's sum (``model.losses``), once per parameter."""
import os

import numpy as np
import pytest

from minires import gradcheck, keras, regularizers
from minires.layers import Conv2D, Dense, Input
from minires.models import Model

PENALTIES = [regularizers.l2(0.1), regularizers.l1(0.03), regularizers.l1_l2(l1=0.02, l2=0.05),
             regularizers.L1L2()]


@pytest.mark.parametrize("penalty", PENALTIES, ids=repr)
def test_the_gradient_is_the_penaltys(rng, penalty):
    w = rng.standard_normal((3, 4)) + 0.05 * np.sign(rng.standard_normal((3, 4)))   # away from 0's kink
    report = gradcheck.check_gradients(lambda w: np.array(penalty(w)), lambda d: d * penalty.gradient(w), [w])
    assert report.worst() < 1e-7, report


@pytest.mark.parametrize("penalty", PENALTIES, ids=repr)
def test_values_and_configs_are_keras(rng, penalty):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    real = pytest.importorskip("keras")
    w = rng.standard_normal((5, 6)).astype("float32")
    theirs = getattr(real.regularizers, type(penalty).__name__)(**penalty.get_config())
    assert theirs.get_config() == pytest.approx(penalty.get_config())
    assert penalty(w) == pytest.approx(float(theirs(w)), rel=1e-5)


def test_a_layer_called_twice_is_penalised_once(rng):
    """The penalty is a function of the weight: once per step, not per call."""
    x_in = Input((4,))
    dense = Dense(4, kernel_regularizer=keras.regularizers.l2(0.1), bias_regularizer="l1", name="twice")
    model = Model(x_in, dense(dense(x_in)))
    kernel, bias = dense.params["kernel"], dense.params["bias"]
    bias[...] = rng.standard_normal(4)
    dense.weights_changed()
    assert model.losses == pytest.approx([0.1 * (kernel ** 2).sum(), 0.01 * np.abs(bias).sum()])
    model.zero_grads()
    model.add_penalty_gradients()
    np.testing.assert_allclose(dense.grads["kernel"], 0.2 * kernel)
    np.testing.assert_allclose(dense.grads["bias"], 0.01 * np.sign(bias))


def test_frozen_layers_add_no_penalty():
    x_in = Input((4,))
    frozen = Dense(3, kernel_regularizer="l2", trainable=False)
    model = Model(x_in, Dense(2, kernel_regularizer="l2")(frozen(x_in)))
    assert len(model.losses) == 1


@pytest.mark.parametrize("make, message", [
    (lambda: Dense(2, kernel_regularizer="l3", name="d"), r"layer 'd': unknown regularizer 'l3'"),
    (lambda: Conv2D(2, 3, activity_regularizer="l2", name="c"),
     r"layer 'c': activity_regularizer='l2' is not implemented in minires"),
    (lambda: regularizers.l2(-1.0), r"L2: l2 must be a finite number >= 0, got -1.0"),
    (lambda: regularizers.l1_l2(l1=float("nan")), r"L1L2: l1 must be a finite number >= 0"),
])
def test_bad_regularizers_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()
