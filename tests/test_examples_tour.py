"""examples/backprop_tour.py runs, prints every section, and every gradient
check it prints passes; the block it walks through is identity_block's."""
import importlib.util
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from minires.backend import floatx_scope
from minires.blocks import identity_block
from minires.initializers import set_random_seed
from minires.layers import Input, clear_session
from minires.models import Model

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOUR = ROOT / "examples" / "backprop_tour.py"
HEADINGS = [
    "=== 1. Forward pass, layer by layer",
    "=== 2. Backward pass, layer by layer (last layer first)",
    "=== 3. Where the shortcut's gradient is added",
    "=== 4. model.backward walks the same graph",
    "=== 5. Gradient check of the whole block (check_model)",
]
FLOAT = r"[-+]?\d+\.\d+(?:e[-+]\d+)?"
SCIENTIFIC = r"\d\.\de[-+]\d\d"


def run_tour():
    result = subprocess.run([sys.executable, str(TOUR)], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def output():
    return run_tour()


def section(text, number):
    """The lines of section ``number`` (up to the next heading)."""
    start = text.index(HEADINGS[number - 1])
    end = text.index(HEADINGS[number]) if number < len(HEADINGS) else len(text)
    return text[start:end]


def vector(line):
    """The numbers between the brackets of a printed array."""
    return np.array([float(v) for v in re.findall(FLOAT, line[line.index("["):line.index("]")])])


@pytest.mark.slow
def test_tour_prints_every_section_in_order(output):
    positions = [output.index(h) for h in HEADINGS]
    assert positions == sorted(positions)
    assert 60 <= len(output.splitlines()) <= 120
    for name in ("res2a_branch2a", "bn2a_branch2b", "res2a_add", "res2a_out"):
        assert len(re.findall(rf"^\[\d+\]\s+{name}\b", output, re.M)) == 2   # forward and backward


@pytest.mark.slow
def test_every_printed_relative_error_is_small(output):
    errors = [float(e) for line in output.splitlines() if "relative error" in line
              for e in re.findall(SCIENTIFIC, line)]
    # 10 layers checked one by one (23 arrays), the whole block (10 arrays), the worst
    assert len(errors) >= 33, output
    assert max(errors) <= 1e-7, [e for e in errors if e > 1e-7]
    layer_checks = [line for line in section(output, 2).splitlines() if "check_layer" in line]
    assert len(layer_checks) == 10
    zeros = [float(m) for m in re.findall(r"zero gradient \(magnitude (\d(?:\.\d+)?e[-+]\d\d)\)",
                                          section(output, 5))]
    assert len(zeros) == 3 and max(zeros) < 1e-6           # the three conv biases before BN


@pytest.mark.slow
def test_shortcut_gradient_is_the_printed_sum(output):
    lines = section(output, 3).splitlines()
    through = vector(next(line for line in lines if "through the convs" in line))
    shortcut = vector(next(line for line in lines if "down the shortcut" in line))
    total = vector(next(line for line in lines if "their sum" in line))
    np.testing.assert_allclose(through + shortcut, total, atol=0.011)    # printed to 2 decimals
    assert np.abs(through).max() > 0.05 and np.abs(shortcut).max() > 0.05  # both parts matter
    assert "d_main is d_shortcut: True" in section(output, 2)


@pytest.mark.slow
def test_model_backward_agrees_with_the_hand_pass(output):
    differences = re.findall(rf"= ({SCIENTIFIC})", section(output, 4))
    assert len(differences) == 2 and all(float(d) <= 1e-12 for d in differences)


@pytest.mark.slow
def test_tour_is_deterministic(output):
    assert run_tour() == output


def test_tour_block_is_identity_block():
    """The hand-built block computes exactly what minires.blocks.identity_block does."""
    spec = importlib.util.spec_from_file_location("backprop_tour", TOUR)
    tour = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tour)
    x = np.random.default_rng(0).standard_normal((2, 4, 4, 4))
    clear_session()
    set_random_seed(0)
    with floatx_scope("float64"):
        _, model = tour.build_block()
    clear_session()
    set_random_seed(0)
    with floatx_scope("float64"):
        x_in = Input(shape=(4, 4, 4))
        reference = Model(x_in, identity_block(x_in, 3, [2, 2, 4], stage=2, block="a"))
    np.testing.assert_array_equal(model.forward(x, training=True), reference.forward(x, training=True))
    r = np.random.default_rng(1).standard_normal((2, 4, 4, 4))
    np.testing.assert_array_equal(model.backward(r), reference.backward(r))
