"""minires against Keras itself (dev-only oracle: `pip install keras torch==2.13.0`,
run with KERAS_BACKEND=torch; skipped where Keras is absent).

keras.applications.ResNet50 gets random weights (BN statistics included) and
writes them in both of Keras 3's formats; minires loads each file by name and
must give Keras's probabilities and logits on the same inputs.
"""
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")

import keras_files  # noqa: E402
from minires.applications import ResNet50  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def keras_resnet50(tmp_path_factory):
    """Keras's ResNet-50 (softmax and logits) with random weights, saved twice."""
    rng = np.random.default_rng(0)
    probs_model = keras.applications.ResNet50(weights=None)
    weights = [keras_files.random_value(w.path.rsplit("/", 1)[-1], tuple(w.shape), rng)
               for w in probs_model.weights]
    logits_model = keras.applications.ResNet50(weights=None, classifier_activation=None)
    logits_model.set_weights(weights)
    x = np.random.default_rng(1).uniform(-120, 140, (2, 224, 224, 3)).astype("float32")
    scale = 4 / np.abs(logits_model.predict(x, verbose=0)).max()  # logits of a few units: the
    weights[-2:] = [w * scale for w in weights[-2:]]               # softmax is not saturated
    logits_model.set_weights(weights)
    probs_model.set_weights(weights)
    folder = tmp_path_factory.mktemp("keras")
    files = {"weights.h5": folder / "resnet50.weights.h5", "model.h5": folder / "resnet50.h5"}
    probs_model.save_weights(files["weights.h5"])
    probs_model.save(files["model.h5"])
    return files, x, probs_model.predict(x, verbose=0), logits_model.predict(x, verbose=0)


@pytest.mark.parametrize("file", ["weights.h5", "model.h5"])
def test_minires_matches_keras_resnet50(keras_resnet50, file):
    files, x, keras_probs, keras_logits = keras_resnet50
    probs = ResNet50(weights=str(files[file])).predict(x)
    logits = ResNet50(weights=str(files[file]), classifier_activation=None).predict(x)
    prob_error = np.abs(probs - keras_probs).max()
    logit_error = np.abs(logits - keras_logits).max() / np.abs(keras_logits).max()
    print(f"\n{file}: max |prob diff| {prob_error:.2e}, max |logit diff| / max |logit| {logit_error:.2e}")
    assert prob_error <= 1e-4
    assert logit_error <= 1e-4
    assert keras_probs.max() < 0.5           # not saturated: the comparison says something
    top5 = np.argsort(-probs, axis=1)[:, :5]
    np.testing.assert_array_equal(top5, np.argsort(-keras_probs, axis=1)[:, :5])
