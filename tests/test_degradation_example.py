"""examples/degradation.py at its smallest (--quick: depths 8 and 14, width 4,
two epochs on 256 images): both variants train, every weighted layer gets a
gradient norm, the table and both PNGs come out; and the two variants differ
in their shortcuts only."""
import importlib.util
import json
import math
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import assert_gradients_match
from minires import gradcheck
from minires.backend import floatx_scope
from minires.initializers import set_random_seed
from minires.layers import Add, clear_session

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "degradation.py"
QUICK_NETWORKS = {"plain-8": 8, "resnet-8": 8, "plain-14": 14, "resnet-14": 14}
PNG = b"\x89PNG\r\n\x1a\n"


def load_example():
    spec = importlib.util.spec_from_file_location("degradation_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_quick(out):
    """(stdout, the --json numbers, the output folder) of one --quick run into ``out``."""
    result = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--output-dir", str(out),
                             "--json", str(out / "run.json")],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return result.stdout, json.loads((out / "run.json").read_text()), out


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    return run_quick(tmp_path_factory.mktemp("degradation"))


def without_timings(value):
    """The --json numbers without wall times ('seconds') and this run's own paths."""
    if isinstance(value, dict):
        return {key: without_timings(item) for key, item in value.items()
                if key not in ("seconds", "output_dir", "json")}
    if isinstance(value, list):
        return [without_timings(item) for item in value]
    return value


def test_the_same_seed_gives_the_same_numbers_and_pictures(quick_run, tmp_path):
    _, numbers, out = quick_run
    _, again, out_again = run_quick(tmp_path)
    assert without_timings(again) == without_timings(numbers)
    for png in ("degradation_training.png", "degradation_gradients.png"):
        assert (out_again / png).read_bytes() == (out / png).read_bytes(), png


def test_both_variants_train_at_both_depths(quick_run):
    _, run, _ = quick_run
    networks = run["networks"]
    assert set(networks) == set(QUICK_NETWORKS)
    for name, record in networks.items():
        losses = record["loss"]
        assert len(losses) == 2 * 8, name                   # 2 epochs of 256 / 32 batches
        assert all(math.isfinite(value) for value in losses), name
        # 16 iterations, all in the warm-up at rate 0.01: the loss falls, though not far
        assert np.mean(losses[-4:]) < 0.95 * losses[0], f"{name}: loss did not fall: {losses}"


def test_gradient_norms_for_every_weighted_layer(quick_run):
    _, run, _ = quick_run
    assert len(run["layers"]) == 14                         # 6n + 2 of the deepest, n = 2
    assert run["layers"][0] == "conv1_conv" and run["layers"][-1] == "predictions"
    assert sum(name.endswith("_conv") for name in run["layers"]) == 13
    for name, depth in QUICK_NETWORKS.items():
        norms = run["networks"][name]["gradient_norms"]
        assert sorted(norms, key=int) == ["0", "5"], name   # initialisation and --gradient-step
        for step, values in norms.items():
            assert len(values) == depth, f"{name} step {step}: {len(values)} norms"
            assert all(math.isfinite(v) and v > 0 for v in values), f"{name} step {step}: {values}"


def test_table_verdict_and_pictures(quick_run):
    stdout, _, out = quick_run
    for name in QUICK_NETWORKS:
        assert f"| {name} |" in stdout, stdout
    assert re.search(r"Degradation (APPEARS|does NOT appear|appears in part) at this scale", stdout), stdout
    assert "At initialisation (step 0), plain-14's first conv gets" in stdout, stdout
    for png in ("degradation_training.png", "degradation_gradients.png"):
        assert (out / png).read_bytes()[:8] == PNG, png
    assert sorted(p.name for p in out.iterdir()) == [
        "degradation_gradients.png", "degradation_training.png", "run.json"]   # no temp files left


def test_plain_and_residual_differ_only_in_their_shortcuts():
    """Same seed, same layers, same initial weights; only the Adds (and the
    weightless option-A pads) are extra, one Add per block."""
    example = load_example()
    models = []
    for residual in (False, True):
        clear_session()
        set_random_seed(0)
        models.append(example.cifar_net(20, residual, width=4))
    plain, residual = models
    assert plain.count_params() == residual.count_params()
    assert [layer.name for layer in example.weighted_layers(plain)] == \
           [layer.name for layer in example.weighted_layers(residual)]
    for a, b in zip(plain.weights, residual.weights):
        np.testing.assert_array_equal(a, b)
    assert sum(isinstance(layer, Add) for layer in plain.layers) == 0
    assert sum(isinstance(layer, Add) for layer in residual.layers) == 9
    x = np.random.default_rng(0).random((2, 16, 16, 1)).astype("float32")
    assert residual.forward(x).shape == plain.forward(x).shape == (2, 10)


def test_option_a_shortcut_gradient():
    example = load_example()
    with floatx_scope("float64"):
        layer = example.SubsampleAndPad(5, name="pad")
    x = np.random.default_rng(0).standard_normal((2, 6, 4, 3))
    y = layer(x)
    assert y.shape == (2, 3, 2, 5)
    np.testing.assert_array_equal(y[..., :3], x[:, 1::2, 1::2, :])
    assert not y[..., 3:].any()
    assert_gradients_match(gradcheck.check_layer(layer, x), "SubsampleAndPad (example)")


def test_option_a_shortcut_refuses_odd_sizes():
    example = load_example()
    layer = example.SubsampleAndPad(4, name="pad")
    with pytest.raises(ValueError, match="even height and width"):
        layer(np.zeros((1, 5, 4, 2), dtype="float32"))


def test_the_recipe_warms_up_as_the_paper_then_steps_down():
    """0.01 until the last 10 batches' error is below 80% (at most 400 iterations),
    for good; then the full rate, /10 at 50% and again at 75% of the run."""
    example = load_example()
    rate = example.paper_schedule(0.1, 1000)
    errors = [0.9] * 30
    assert [rate(i, errors[:i]) for i in (0, 10, 29)] == [0.01] * 3
    errors += [0.5] * 10                                  # the last 10 now average 50%
    assert rate(40, errors) == 0.1
    assert rate(41, errors + [1.0] * 10) == 0.1            # once over, for good
    assert rate(500, errors) == pytest.approx(0.01) and rate(750, errors) == pytest.approx(0.001)
    stuck = example.paper_schedule(0.1, 1000)
    assert stuck(399, [1.0] * 399) == 0.01 and stuck(400, [1.0] * 400) == 0.1    # at most 400
