"""Metrics: numbers to watch while training that are not the loss, as ``keras.metrics``.

A metric is an object with Keras's three methods:

    m = SparseCategoricalAccuracy()
    m.update_state(y_true, y_pred)      # add a batch: labels (N,), scores (N, K)
    m.result()                          # the mean over every sample added since: 0.875
    m.reset_state()                     # forget them

``Mean`` keeps total = sum_n w_n v_n and count = sum_n w_n (w_n = 1 without
sample_weight) and returns total / count (0 before any sample), in float64.
``MeanMetricWrapper(fn)`` takes the per-sample values v from fn(y_true, y_pred),
Keras's order (targets first); the accuracies are such wrappers.

compile(metrics=[...]) takes names (METRICS), metric objects (logged under their
``name``) and functions fn(y_true, y_pred) -> per-sample values (logged under
their __name__). 'accuracy' and 'acc' pick, as Keras, from the shapes of the
first batch: binary accuracy for outputs of one unit, sparse categorical for
labels (N,) or (N, 1), else categorical; logged under the name asked ('acc'
gives 'acc' and 'val_acc'). fit resets the metrics at every epoch's start and
logs result() after every batch: the mean over the samples seen so far, not
weighted by fit's sample_weight (Keras weighs only its ``weighted_metrics``).
"""
import re

import numpy as np

from .backend import get_array_module, to_device

__all__ = ["Metric", "Mean", "MeanMetricWrapper", "Accuracy", "BinaryAccuracy",
           "CategoricalAccuracy", "SparseCategoricalAccuracy", "binary_accuracy",
           "categorical_accuracy", "sparse_categorical_accuracy", "get"]


# --- per-sample functions, Keras's (y_true, y_pred) -> (N,) of 0.0 and 1.0 -----------
def same_rank(a, b):
    """Keras's squeeze_or_expand_to_same_rank: where the ranks differ by one and
    the longer ends in an axis of 1, the shorter gains it (a (N,) one) or the
    longer loses it."""
    if a.ndim == b.ndim + 1 and a.shape[-1] == 1:
        return (a, b[..., None]) if b.ndim == 1 else (a[..., 0], b)
    if b.ndim == a.ndim + 1 and b.shape[-1] == 1:
        return (a[..., None], b) if a.ndim == 1 else (a, b[..., 0])
    return a, b


def as_pair(y_true, y_pred):
    xp = get_array_module(y_pred)
    return xp.asarray(y_true), xp.asarray(y_pred)


def accuracy(y_true, y_pred):
    """1.0 where y_pred equals y_true (keras.metrics.Accuracy's: values, not argmax)."""
    y_true, y_pred = same_rank(*as_pair(y_true, y_pred))
    return (y_true == y_pred).astype(np.float64)


def binary_accuracy(y_true, y_pred, threshold=0.5):
    """1.0 where (y_pred > threshold) equals the 0/1 label."""
    y_true, y_pred = same_rank(*as_pair(y_true, y_pred))
    return (y_true == (y_pred > threshold)).astype(np.float64)


def sparse_categorical_accuracy(y_true, y_pred):
    """1.0 where the largest score of a row of y_pred (N, K) is at its label
    (y_true (N,), or a column (N, 1) as keras.datasets gives)."""
    labels, scores = as_pair(y_true, y_pred)
    if labels.ndim == scores.ndim and labels.shape[-1] == 1:
        labels = labels[..., 0]
    if labels.shape != scores.shape[:-1]:
        raise ValueError(f"sparse_categorical_accuracy: labels must be class indices of shape "
                         f"{tuple(scores.shape[:-1])} for scores of shape {tuple(scores.shape)}, "
                         f"got shape {tuple(labels.shape)}; use categorical_accuracy for "
                         "one-hot targets")
    return (scores.argmax(axis=-1) == labels).astype(np.float64)


def categorical_accuracy(y_true, y_pred):
    """1.0 where the largest score of a row of y_pred is at the largest entry
    of its target row (one-hot or probabilities), both (N, K)."""
    targets, scores = as_pair(y_true, y_pred)
    if targets.shape != scores.shape:
        raise ValueError(f"categorical_accuracy: targets must be one-hot rows of the scores' "
                         f"shape {tuple(scores.shape)}, got shape {tuple(targets.shape)}; use "
                         "sparse_categorical_accuracy for class indices")
    return (scores.argmax(axis=-1) == targets.argmax(axis=-1)).astype(np.float64)


def accuracy_by_shapes(y_true, y_pred):
    """What compile's 'accuracy' means, chosen from the shapes as Keras's
    compile_utils.get_metric: binary for one output unit, sparse categorical
    for labels of lower rank (or a column), else categorical."""
    if y_pred.shape[-1] == 1:
        return binary_accuracy(y_true, y_pred)
    if y_true.ndim < y_pred.ndim or y_true.shape[-1] == 1:
        return sparse_categorical_accuracy(y_true, y_pred)
    return categorical_accuracy(y_true, y_pred)


# --- the metric objects -----------------------------------------------------------
def snake_case(name):
    """'SparseCategoricalAccuracy' -> 'sparse_categorical_accuracy' (Keras's default names)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class Metric:
    """Keras's metric protocol: ``update_state``, ``result``, ``reset_state``;
    calling a metric updates it, then returns its result, as Keras's does."""

    def __init__(self, dtype=None, name=None):
        self.name = name if name is not None else snake_case(type(self).__name__)
        self.dtype = dtype

    def __call__(self, *args, **kwargs):
        self.update_state(*args, **kwargs)
        return self.result()

    def update_state(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define update_state")

    def result(self):
        raise NotImplementedError(f"{type(self).__name__} must define result")

    def reset_state(self):
        raise NotImplementedError(f"{type(self).__name__} must define reset_state")

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r}>"


class Mean(Metric):
    """The (weighted) mean of the values given: total / count, Keras's Mean.

    update_state(values, sample_weight=None): values (N, ...) are first averaged
    over their non-batch axes, one value per sample; sample_weight (N,) or (N, 1)
    weighs each, a single number weighs the batch's mean as one value (Keras's).
    """

    def __init__(self, name="mean", dtype=None):
        super().__init__(dtype=dtype, name=name)
        self.reset_state()

    def update_state(self, values, sample_weight=None):
        # on the values' device, in float64; the count on the host: on a GPU nothing
        # waits here (fit reads the results with the loss, once a step)
        xp = get_array_module(values)
        values = xp.asarray(values).astype(np.float64)
        per_sample = values.reshape(len(values), -1).mean(axis=1) if values.ndim else values[None]
        if sample_weight is None:
            self.total = self.total + per_sample.sum()
            self.count += len(per_sample)
            return
        weights = to_device(sample_weight, "cpu").astype(np.float64)
        if weights.ndim == 0:
            per_sample, weights = per_sample.mean(keepdims=True), weights[None]
        elif weights.shape in ((len(per_sample),), (len(per_sample), 1)):
            weights = weights.reshape(-1)
        else:
            raise ValueError(f"{self.name}: sample_weight of shape {weights.shape} does not "
                             f"fit {len(per_sample)} values; give one weight per sample")
        self.total = self.total + (per_sample * xp.asarray(weights)).sum()
        self.count += float(weights.sum())

    def result(self):
        """total / count: a number, or a 0-d array on the values' device."""
        return self.total / self.count if self.count else 0.0

    def reset_state(self):
        self.total = self.count = 0.0


class MeanMetricWrapper(Mean):
    """The mean of fn(y_true, y_pred, **kwargs), a function of per-sample values."""

    def __init__(self, fn, name=None, dtype=None, **kwargs):
        super().__init__(name, dtype)            # None: 'mean_metric_wrapper', as Keras
        self.fn, self.fn_kwargs = fn, kwargs

    def update_state(self, y_true, y_pred, sample_weight=None):
        super().update_state(self.fn(y_true, y_pred, **self.fn_kwargs), sample_weight)


class Accuracy(MeanMetricWrapper):
    """How often y_pred equals y_true, value for value (not an argmax: for class
    scores use SparseCategoricalAccuracy or CategoricalAccuracy)."""

    def __init__(self, name="accuracy", dtype=None):
        super().__init__(accuracy, name, dtype)


class BinaryAccuracy(MeanMetricWrapper):
    """How often y_pred > threshold matches 0/1 labels."""

    def __init__(self, name="binary_accuracy", dtype=None, threshold=0.5):
        super().__init__(binary_accuracy, name, dtype, threshold=threshold)


class CategoricalAccuracy(MeanMetricWrapper):
    """How often the argmax of y_pred (N, K) is the argmax of one-hot y_true (N, K)."""

    def __init__(self, name="categorical_accuracy", dtype=None):
        super().__init__(categorical_accuracy, name, dtype)


class SparseCategoricalAccuracy(MeanMetricWrapper):
    """How often the argmax of y_pred (N, K) is the label y_true (N,) or (N, 1)."""

    def __init__(self, name="sparse_categorical_accuracy", dtype=None):
        super().__init__(sparse_categorical_accuracy, name, dtype)


METRICS = {     # compile's names: a new metric, logged under the name asked
    "accuracy": lambda name: MeanMetricWrapper(accuracy_by_shapes, name),
    "acc": lambda name: MeanMetricWrapper(accuracy_by_shapes, name),
    "binary_accuracy": lambda name: BinaryAccuracy(name),
    "sparse_categorical_accuracy": lambda name: SparseCategoricalAccuracy(name),
    "categorical_accuracy": lambda name: CategoricalAccuracy(name),
}


def get(identifiers):
    """{log name: Metric} for compile's ``metrics``: None (none), or a list of
    names (METRICS), Metric objects (as they are: fit resets and updates them),
    Metric classes (a new one) and functions fn(y_true, y_pred) -> per-sample
    values (a MeanMetricWrapper). A dict {name: Metric} (what this returns)
    comes back as it is."""
    if identifiers is None:
        return {}
    if isinstance(identifiers, dict):
        return dict(identifiers)
    if not isinstance(identifiers, (list, tuple)):
        raise TypeError(f"metrics must be a list such as ['accuracy'], got "
                        f"{type(identifiers).__name__} {identifiers!r}")
    metrics = {}
    for identifier in identifiers:
        metric = as_metric(identifier)
        if metric.name in metrics or metric.name == "loss":
            raise ValueError(f"metric name {metric.name!r} appears twice (the loss is logged as "
                             "'loss')")
        metrics[metric.name] = metric
    return metrics


def as_metric(identifier):
    """A Metric from one of compile's metrics (see ``get``)."""
    if isinstance(identifier, str) and identifier.lower() in METRICS:
        return METRICS[identifier.lower()](identifier)
    if isinstance(identifier, type) and issubclass(identifier, Metric):
        return identifier()
    if isinstance(identifier, Metric):
        return identifier
    if callable(identifier) and not isinstance(identifier, (str, type)):
        return MeanMetricWrapper(identifier, getattr(identifier, "__name__", type(identifier).__name__))
    raise ValueError(f"unknown metric {identifier!r}; minires has {', '.join(map(repr, METRICS))}, "
                     "keras.metrics objects, or a function (y_true, y_pred) -> per-sample values")


def reset(metrics):
    """reset_state() every metric of {name: Metric}."""
    for metric in metrics.values():
        metric.reset_state()


def update(metrics, y_true, y_pred):
    """Add a batch to every metric; {name: result so far}, as the metrics give
    them (on a GPU, 0-d arrays not read yet: float() each, or read them with
    other values at once, as minires.train does)."""
    for metric in metrics.values():
        metric.update_state(y_true, y_pred)
    return {name: metric.result() for name, metric in metrics.items()}
