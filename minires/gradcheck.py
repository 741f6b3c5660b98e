"""Finite-difference gradient checking, for any layer, loss or function.

The idea: pick a random direction r and the scalar L = sum(f(x) * r), so that
dL/df = r.  Backward turns r into analytic gradients dL/dx and dL/dW; the
centred difference

    dL/dx_i  ~  (L(x + h e_i) - L(x - h e_i)) / 2h        (error O(h^2))

measures the same numbers one entry at a time.  They must agree to ~1e-8
in float64; a bug in a backward pass shows up as an error near 1.

Typical use, in float64 (float32 is too coarse for finite differences):

    >>> from minires import gradcheck, layers
    >>> conv = layers.Conv2D(4, 3, strides=2, padding="same", dtype="float64")
    >>> x = np.random.default_rng(0).standard_normal((2, 7, 7, 3))
    >>> print(gradcheck.check_layer(conv, x))
"""
import contextlib

import numpy as np

from .backend import get_array_module


class Report(dict):
    """{'input 0': rel. error, 'kernel': rel. error, ...}, printed as a table.

    ``magnitude[name]`` is max |analytic| + |numeric| for that array: a gradient
    that is truly zero (a conv bias just before a training-mode BN, whose mean
    subtraction cancels any constant shift) shows a magnitude at the level of
    rounding noise (~1e-10), where a relative error means nothing.
    """

    def __init__(self):
        super().__init__()
        self.magnitude = {}

    def worst(self):
        return max(self.values()) if self else 0.0

    def __str__(self):
        width = max(map(len, self), default=0)
        return "\n".join(f"{name:<{width}}  relative error {error:.2e}  (magnitude "
                         f"{self.magnitude.get(name, float('nan')):.1e})" for name, error in self.items())


def relative_error(analytic, numeric):
    """max_i |a_i - n_i| / max_i (|a_i| + |n_i|)  (0 when both are all zero).

    Scaled by the largest entry rather than entry by entry: an entry near zero
    carries the finite difference's rounding noise (~1e-10) and would otherwise
    report a large error for a correct gradient.
    """
    a, n = _to_numpy(analytic).astype(np.float64), _to_numpy(numeric).astype(np.float64)
    scale = np.max(np.abs(a) + np.abs(n), initial=0.0)
    return 0.0 if scale == 0 else float(np.max(np.abs(a - n)) / max(scale, 1e-300))


def numerical_gradient(f, x, d_output=1.0, h=1e-5, indices=None):
    """Gradient of L = sum(f() * d_output) with respect to x, by centred differences.

    f() reads x, which is perturbed in place one entry at a time and restored.
    The two outputs are subtracted BEFORE summing: outputs that x_i does not
    reach cancel exactly, so rounding noise comes only from those it does.
    ``indices`` (a list of index tuples) limits the check to some entries.
    """
    grad = get_array_module(x).zeros_like(x)
    for index in (np.ndindex(*x.shape) if indices is None else indices):
        original = x[index].item()
        x[index] = original + h
        f_plus = f()
        x[index] = original - h
        f_minus = f()
        x[index] = original
        grad[index] = ((f_plus - f_minus) * d_output).sum() / (2 * h)
    return grad


def check_gradients(forward, backward, inputs, params=None, h=1e-5, seed=0, max_entries=None):
    """Compare backward with finite differences of forward; returns a Report.

    forward(*inputs) -> output (one array)
    backward(d_output) -> d_input, or a list of them, one per input
    params: {name: (array, get_grad)} where get_grad() returns dL/d(array)
            after backward has run (e.g. a layer's params and grads).
    max_entries: check at most this many randomly chosen entries per array
                 (whole networks); None checks every entry.
    """
    # A stream of its own, so the direction never repeats the caller's data
    # (with r = x, the gradient of BN's sum(y * x) almost cancels to zero).
    rng = np.random.default_rng([seed, 0x5EED])
    inputs = [x.copy() for x in inputs]
    output = forward(*inputs)
    xp = get_array_module(output)
    direction = xp.asarray(rng.standard_normal(output.shape)).astype(output.dtype)

    def output_copy():
        return forward(*inputs).copy()

    input_grads = backward(direction)
    if not isinstance(input_grads, (list, tuple)):
        input_grads = [input_grads]
    targets = [(f"input {i}", x, g) for i, (x, g) in enumerate(zip(inputs, input_grads))]
    targets += [(name, array, get_grad()) for name, (array, get_grad) in (params or {}).items()]

    report = Report()
    for name, array, analytic in targets:
        indices = _sample(array.shape, max_entries, rng)
        numeric = numerical_gradient(output_copy, array, direction, h, indices)
        if indices is not None:
            mask = np.zeros(array.shape, dtype=bool)
            mask[tuple(np.array(indices).T)] = True
            analytic, numeric = _to_numpy(analytic)[mask], _to_numpy(numeric)[mask]
        report[name] = relative_error(analytic, numeric)
        report.magnitude[name] = float(np.max(np.abs(_to_numpy(analytic)) + np.abs(_to_numpy(numeric)),
                                              initial=0.0))
    return report


def check_layer(layer, *inputs, training=True, h=1e-5, seed=0, max_entries=None):
    """Gradient check of one layer for each input and each trainable param.

    Pass one array for most layers, several for Add/Concatenate.  The layer must
    be float64 (``dtype='float64'`` or ``backend.floatx_scope('float64')``).
    Non-trainable state (BN moving statistics) is restored afterwards.
    """
    _require_float64([layer], "check_layer")
    merge = len(inputs) > 1
    last_call = {}

    def forward(*xs):
        y, last_call["cache"] = layer.forward(list(xs) if merge else xs[0], training=training)
        return y

    def backward(dy):
        layer.zero_grads()                # backward adds to grads: start from zero
        return layer.backward(dy, last_call["cache"])

    forward(*inputs)                      # builds the layer, so its params exist
    params = {name: (layer.params[name], lambda name=name: layer.grads[name])
              for name in layer.trainable_names()}
    with _state_restored([layer]):
        return check_gradients(forward, backward, inputs, params, h, seed, max_entries)


def check_model(model, *inputs, loss=None, labels=None, training=True, h=1e-6, seed=0,
                max_entries=20):
    """Gradient check of a whole model, optionally through a loss.

    With ``loss`` (e.g. SoftmaxCrossEntropy) and ``labels`` the checked output
    is the scalar loss, so the gradient flows loss -> logits -> ... -> input.
    Report keys: 'input i' and 'layer name/param name' for every trainable
    parameter; ``max_entries`` samples that many entries per array (a full
    check costs two forward passes per entry). Build the model in float64.

    The step ``h`` is smaller than for one layer: one weight moves thousands of
    ReLU inputs and max-pool candidates at once, and the larger the step, the
    likelier one of them crosses its kink, where the function is not smooth
    and a centred difference is wrong. In float64 a step of 1e-6 still leaves
    rounding noise near 1e-9.
    """
    layers = model.leaf_layers()             # nested models opened: their BN statistics too
    _require_float64(layers, "check_model")

    def forward(*xs):
        out = model.forward(list(xs) if len(xs) > 1 else xs[0], training=training, keep_cache=True)
        return out if loss is None else loss.forward(out, labels)

    def backward(d_output):
        return model.backward(d_output if loss is None else loss.backward(d_output))

    params = {f"{layer.name}/{name}": (layer.params[name], lambda l=layer, n=name: l.grads[n])
              for layer, name in model.parameters()}
    with _state_restored(layers):
        return check_gradients(forward, backward, inputs, params, h, seed, max_entries)


def _require_float64(layers, caller):
    for layer in layers:
        if layer.dtype != "float64":
            raise TypeError(f"{caller}: layer {layer.name!r} is {layer.dtype}; finite differences "
                            "need float64: create it with dtype='float64' (or inside "
                            "backend.floatx_scope('float64'))")


@contextlib.contextmanager
def _state_restored(layers):
    """Put non-trainable state (BN moving statistics) back after the check:
    every forward in training mode updates it."""
    saved = [(layer, name, layer.params[name].copy()) for layer in layers
             for name in layer.params if name in layer.non_trainable_names]
    try:
        yield
    finally:
        for layer, name, value in saved:
            layer.params[name][...] = value
            layer.weights_changed()          # written in place: a folded inference plan is stale


def _sample(shape, max_entries, rng):
    size = int(np.prod(shape))
    if max_entries is None or size <= max_entries:
        return None
    flat = rng.choice(size, size=max_entries, replace=False)
    return [tuple(int(i) for i in np.unravel_index(k, shape)) for k in flat]


def _to_numpy(x):
    return x.get() if get_array_module(x) is not np else np.asarray(x)
