"""Metrics: numbers to watch while training that are not the loss.

A metric here is a function (outputs, targets) -> float: its mean over one
batch. fit and evaluate average it over the batches, weighted by their sizes,
so the figure of an epoch is its mean over every sample seen.

    metrics = get(["accuracy"])          # {'accuracy': accuracy}, as compile(metrics=[...])
    metrics["accuracy"](outputs, y)      # 0.875

The name a metric is logged under is the one it was asked by ('acc' gives
'acc' and 'val_acc', as in Keras); a function is logged under its __name__.
"""

__all__ = ["accuracy", "sparse_categorical_accuracy", "categorical_accuracy", "get"]


def sparse_categorical_accuracy(outputs, labels):
    """Fraction of rows whose largest score is at the true class.

    outputs: (N, K) class scores (logits or probabilities: the argmax is the
    same); labels: (N,) integer class indices.
    """
    if labels.ndim != 1:
        raise ValueError(f"sparse_categorical_accuracy: labels must be class indices of shape "
                         f"(N,), got shape {tuple(labels.shape)}; use categorical_accuracy "
                         "for one-hot targets")
    return float((outputs.argmax(axis=-1) == labels).mean())


def categorical_accuracy(outputs, targets):
    """Fraction of rows whose largest score is at the target's largest entry.

    outputs: (N, K) class scores; targets: (N, K) one-hot (or probability) rows.
    """
    if targets.ndim != 2:
        raise ValueError(f"categorical_accuracy: targets must be one-hot rows of shape (N, K), "
                         f"got shape {tuple(targets.shape)}; use sparse_categorical_accuracy "
                         "for class indices")
    return float((outputs.argmax(axis=-1) == targets.argmax(axis=-1)).mean())


def accuracy(outputs, targets):
    """Classification accuracy against class indices (N,) or one-hot rows (N, K),
    whichever ``targets`` holds (Keras's 'accuracy' picks one the same way)."""
    if targets.ndim == 1:
        return sparse_categorical_accuracy(outputs, targets)
    return categorical_accuracy(outputs, targets)


METRICS = {
    "accuracy": accuracy,
    "acc": accuracy,
    "sparse_categorical_accuracy": sparse_categorical_accuracy,
    "categorical_accuracy": categorical_accuracy,
}


def get(identifiers):
    """{log name: metric function} for compile's ``metrics``.

    identifiers: None (no metrics), or a list of names (see METRICS) and
    functions (outputs, targets) -> float. A dict of name -> function
    (what this returns) comes back as it is.
    """
    if identifiers is None:
        return {}
    if isinstance(identifiers, dict):
        items = list(identifiers.items())
    elif isinstance(identifiers, (list, tuple)):
        items = [(_name(identifier), identifier) for identifier in identifiers]
    else:
        raise TypeError(f"metrics must be a list such as ['accuracy'], got "
                        f"{type(identifiers).__name__} {identifiers!r}")
    metrics = {}
    for name, identifier in items:
        function = METRICS.get(identifier) if isinstance(identifier, str) else identifier
        if not callable(function):
            raise ValueError(f"unknown metric {identifier!r}; minires has "
                             f"{', '.join(map(repr, METRICS))} or a function (outputs, targets) -> float")
        if name in metrics or name == "loss":
            raise ValueError(f"metric name {name!r} appears twice (the loss is logged as 'loss')")
        metrics[name] = function
    return metrics


def _name(identifier):
    return identifier if isinstance(identifier, str) else getattr(identifier, "__name__",
                                                                  type(identifier).__name__)
