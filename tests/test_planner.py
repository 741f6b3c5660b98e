"""The planner (minires/planner.py) is the one place that rewrites a graph for
speed: each plan is made once per graph, the inference plan again only when a
weight it was folded from changed, and the engine that runs the plans knows
no op."""
import pathlib
import re
import tokenize

import numpy as np
import pytest

from minires import planner
from minires.layers import (Activation, Add, BatchNormalization, Conv2D, Dense, GlobalAveragePooling2D,
                            Input)
from minires.models import Model, Sequential
from minires.optim import SGD

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def plans_made(monkeypatch):
    """(model name, kind) of every plan made."""
    made, make = [], planner.make_plan

    def counted(model, kind):
        made.append((model.name, kind))
        return make(model, kind)

    monkeypatch.setattr(planner, "make_plan", counted)
    return made


def residual_net():
    x_in = Input((8, 8, 16))
    y = Activation("relu")(BatchNormalization()(Conv2D(16, 3, padding="same")(x_in)))
    y = BatchNormalization()(Conv2D(16, 3, padding="same")(y))
    y = Activation("relu")(Add()([y, x_in]))
    return Model(x_in, Dense(3, activation="softmax")(GlobalAveragePooling2D()(y)), name="net")


def test_one_gradient_plan_serves_every_training_step(rng, plans_made):
    model = residual_net()
    model.compile(optimizer=SGD(0.01), loss="sparse_categorical_crossentropy")
    x, y = rng.standard_normal((40, 8, 8, 16)).astype("float32"), rng.integers(0, 3, 40)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)                 # 10 steps, 2 evaluations
    model.train_on_batch(x[:8], y[:8])
    assert plans_made.count(("net", "gradient")) == 1
    assert {kind for _, kind in plans_made} == {"gradient"}            # fit's loss: no predict


def test_the_inference_plan_is_made_again_only_when_weights_change(rng, plans_made):
    model, x = residual_net(), rng.standard_normal((2, 8, 8, 16)).astype("float32")
    for _ in range(3):
        model.predict(x, verbose=0)
    assert plans_made == [("net", "inference")]
    model.get_layer(index=2).set_weights(model.get_layer(index=2).get_weights())
    model.predict(x, verbose=0)
    model.predict(x, verbose=0)
    assert plans_made == [("net", "inference")] * 2
    model.forward(x, training=True)                  # a training step lets the folded copies go
    model.predict(x, verbose=0)
    assert plans_made == [("net", "inference")] * 2 + [("net", "gradient"), ("net", "inference")]


def test_a_new_graph_gets_new_plans(rng, plans_made):
    model = Sequential([Input((4,)), Dense(3)], name="stack")
    x = rng.standard_normal((2, 4)).astype("float32")
    model.forward(x, training=True)
    model.add(Dense(2))
    assert model.forward(x, training=True).shape == (2, 2)
    assert plans_made == [("stack", "gradient")] * 2


def test_each_plan_computes_the_same_outputs(rng):
    model, x = residual_net(), rng.standard_normal((5, 8, 8, 16)).astype("float32")
    from minires.graph import run_steps
    outputs = [run_steps(model, model.plan(kind).steps, x)[0] for kind in planner.KINDS]
    for got in outputs[1:]:
        np.testing.assert_allclose(got, outputs[0], rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="unknown plan kind 'fast'"):
        planner.make_plan(model, "fast")


@pytest.mark.parametrize("module", ["models.py", "graph.py"])
def test_the_engine_knows_no_op(module):
    """Forward and backward run any op through its forward and backward: no test of
    a cache's type or identity, no op or layer class named in the engine."""
    with open(ROOT / "minires" / module, "rb") as file:           # the code: no docstring, no comment
        source = " ".join(token.string for token in tokenize.tokenize(file.readline)
                          if token.type not in (tokenize.STRING, tokenize.COMMENT))
    op_names = ["RELU_APPLIED", "BnReluCache", "isinstance(cache", "cache is", "Winograd",
                "BatchNorm", "Conv2D", "FoldedConv", "AddRelu", "Softmax", "KernelLayer"]
    found = [name for name in op_names if re.search(r"\b" + re.escape(name), source)]
    assert not found, f"minires/{module} names {found}"


def test_the_model_class_fits_on_250_lines():
    source = (ROOT / "minires" / "models.py").read_text()
    start = source.index("\nclass Model(")
    end = source.index("\nclass Sequential(")
    assert source[start:end].count("\n") <= 250


def test_the_planner_sizes_inference_batches_for_the_device(monkeypatch):
    """4 images at a time on the CPU, where their activations stay in cache; a
    GPU takes the caller's batch whole (the device is read from the weights)."""
    assert residual_net().plan("inference").batch_size == planner.CPU_BATCH == 4
    monkeypatch.setattr(Model, "device", property(lambda model: "cuda"))
    assert residual_net().plan("inference").batch_size is None
