import numpy as np
import pytest

from minires.layers import clear_session

# Gradient checks must agree to this in float64 (issue: max relative error <= 1e-7).
GRAD_TOL = 1e-7


@pytest.fixture(autouse=True)
def fresh_names():
    """Every test starts with Keras's automatic layer names reset."""
    clear_session()


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
