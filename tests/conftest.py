import functools
import pathlib

import numpy as np
import pytest

from minires import backend
from minires.callbacks import Callback
from minires.initializers import set_random_seed
from minires.layers import clear_session

# Gradient checks must agree to this in float64 (issue: max relative error <= 1e-7).
GRAD_TOL = 1e-7


# --- devices: `pytest --device cuda` runs the device-sensitive tests on CuPy ------------
def pytest_addoption(parser):
    parser.addoption("--device", choices=["cpu", "cuda"], default="cpu",
                     help="where tests taking the `device` fixture put their arrays and models "
                          "(default: cpu; cuda needs CuPy and a CUDA device)")


def pytest_configure(config):
    """--device cuda where no CUDA device can be used: one message, before any test."""
    if config.getoption("device") == "cuda" and cuda_missing():
        raise pytest.UsageError(f"--device cuda: {cuda_missing()}")


@functools.lru_cache(maxsize=None)
def cuda_missing():
    """Why no CUDA device can be used here: backend.check_device's message ('' if one can)."""
    try:
        backend.check_device("cuda")
    except RuntimeError as error:
        return str(error)
    return ""


def pytest_collection_modifyitems(items):
    """Tests marked ``cuda`` skip, saying why, where no CUDA device can be used."""
    marked = [item for item in items if item.get_closest_marker("cuda")]
    if marked and cuda_missing():
        skip = pytest.mark.skip(reason=f"needs a CUDA device: {cuda_missing()}")
        for item in marked:
            item.add_marker(skip)


@pytest.fixture
def device(request):
    """'cpu' or 'cuda' (``--device``): where this test puts its arrays and models."""
    return request.config.getoption("device")


def on_cpu(x):
    """A NumPy copy of ``x``, wherever it lives: np.testing needs NumPy, and a CuPy
    array refuses to be converted silently. A copy on the CPU too, so that what a
    test keeps does not change when the model later updates its arrays in place."""
    return np.array(backend.to_device(x, "cpu"))


def relative_difference(a, b):
    """Largest difference over the largest value of the reference ``b``."""
    return float(np.abs(a - b).max() / np.abs(b).max())


def plain_predict(model, x, **kwargs):
    """The model's outputs with every layer run as written (no inference plan)."""
    model.fast_inference = False
    try:
        return model.predict(x, verbose=0, **kwargs)
    finally:
        model.fast_inference = True


@pytest.fixture(autouse=True)
def fresh_names():
    """Every test starts with Keras's automatic layer names reset and the
    initialisers' global seed fixed, so every run builds the same weights."""
    clear_session()
    set_random_seed(0)


KERNEL_PATHS = ["numpy"] + (["numba"] if backend.numba_available() else [])


@pytest.fixture(params=KERNEL_PATHS)
def each_kernel_path(request):
    """Run the test once per CPU kernel path installed (NumPy slicing, Numba)."""
    previous = backend.kernel_path()
    backend.set_kernel_path(request.param)
    yield request.param
    backend.set_kernel_path(previous)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def distinct_values(rng, shape, gap=1e-2):
    """Random values at least ``gap`` apart: max-pooling has no ties to break,
    so a finite-difference step never changes which input wins a window."""
    size = int(np.prod(shape))
    return ((rng.permutation(size) + 0.5 - size / 2) * gap).reshape(shape)   # none is 0


_worst_by_subject = {}


def assert_gradients_match(report, subject, tol=GRAD_TOL):
    """Fail naming each input/param whose relative error exceeds ``tol``; keep the
    worst figure per ``subject`` (a layer type) for the summary at the end."""
    _worst_by_subject[subject] = max(_worst_by_subject.get(subject, 0.0), report.worst())
    bad = {name: error for name, error in report.items() if not error <= tol}
    assert not bad, f"{subject}: gradient check failed (tolerance {tol:.0e}):\n{report}"


def pytest_terminal_summary(terminalreporter):
    if _worst_by_subject:
        terminalreporter.section("worst float64 gradient-check error per layer")
        for subject, error in sorted(_worst_by_subject.items()):
            terminalreporter.write_line(f"{subject:<28} {error:.2e}")


def bias_before_training_bn(model):
    """'layer/bias' names of layers whose output only feeds BatchNormalization:
    in training mode BN subtracts the batch mean, so their gradient is zero."""
    return {f"{layer.name}/bias" for layer in model.layers if "bias" in layer.params
            and all(model.readers(t) and all(type(r.layer).__name__ == "BatchNormalization"
                                             for r in model.readers(t)) for t in layer.call_outputs)}


def assert_model_gradients_match(report, model, subject, tol=1e-6, training=True):
    """Every gradient matches to ``tol``; a bias that only feeds a training-mode
    BN must instead be zero both analytically and numerically (magnitude at
    rounding-noise level), where a relative error would only compare noise."""
    zero = bias_before_training_bn(model) if training else set()
    nonzero = [name for name in zero if not report.magnitude[name] < 1e-8]
    assert not nonzero, f"{subject}: these gradients should vanish:\n{report}"
    checked = type(report)()
    checked.update({k: v for k, v in report.items() if k not in zero})
    checked.magnitude = report.magnitude
    assert_gradients_match(checked, subject, tol)


def randomize_offsets(model, rng, scale=0.1):
    """Random biases, BN betas and gammas instead of Keras's zeros and ones: with
    zero biases, a unit whose receptive field is all dead ReLUs sits exactly on
    ReLU's kink, where a finite difference is one-sided."""
    for layer in model.layers:
        for name, shift in (("bias", 0), ("beta", 0), ("gamma", 1)):
            if name in layer.params:
                param = layer.params[name]
                param[...] = backend.like(shift + rng.standard_normal(param.shape) * scale, param)


def with_imports(module, imports):
    """The namespace of ``module``'s source executed with its import block (between
    "# --- imports" and "# --- end of imports ---") replaced by ``imports``:
    tutorial code run on Keras itself, to compare with minires."""
    source = pathlib.Path(module.__file__).read_text()
    start, end = source.index("# --- imports"), source.index("# --- end of imports ---")
    namespace = {}
    exec(source[:start] + imports + source[end:], namespace)
    return namespace


class Scores(Callback):
    """logs['score'] = scores[epoch]: a monitored value the test chooses."""

    def __init__(self, scores):
        self.scores = scores

    def on_epoch_end(self, epoch, logs=None):
        logs["score"] = self.scores[epoch]
