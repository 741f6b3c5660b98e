"""Training and evaluation loops: what Keras's fit/evaluate do, written out.

One training step is the whole of backpropagation:

    logits = model.forward(x_batch, training=True)     # BN uses batch statistics
    value = loss.forward(logits, y_batch)
    model.backward(loss.backward())                     # every layer's grads
    optimizer.step(model, learning_rate)                # params -= ...

    history = fit(model, x, y, epochs=10, optimizer=SGD(0.05, momentum=0.9),
                  validation_data=(x_test, y_test), checkpoint="run/last.npz")

Reproducible: epoch e shuffles with its own generator, seeded by (seed, e),
so a run resumed from the checkpoint of epoch e continues exactly the
trajectory of a run that never stopped. The model must output logits (no
softmax): SoftmaxCrossEntropy applies the softmax itself, stably.
"""
import math
import os
import time

import numpy as np

from .backend import to_device
from .io.checkpoint import load_checkpoint, save_checkpoint
from .losses import SoftmaxCrossEntropy
from .optim import SGD


def fit(model, x, y, epochs=1, batch_size=32, optimizer=None, loss=None, schedule=None,
        validation_data=None, seed=0, checkpoint=None, resume=False, progress=True):
    """Train ``model`` on (x, y) for ``epochs`` epochs; returns the history.

    x: (N, ...) inputs; y: (N,) class indices or (N, classes) targets.
    optimizer: default SGD(0.01). schedule: epoch (float) -> learning rate.
    checkpoint: path of an .npz written atomically after every epoch (model,
    optimiser state, epoch, history); with resume=True training continues
    from it when it exists. History: {'loss', 'accuracy'[, 'val_loss',
    'val_accuracy'], 'seconds'}, one entry per epoch.
    """
    optimizer = optimizer if optimizer is not None else SGD(0.01)
    loss = loss if loss is not None else SoftmaxCrossEntropy()
    check_data(model, x, y, "fit")
    if validation_data is not None:
        check_data(model, *validation_data, "fit (validation_data)")
    history, start = {}, 0
    if resume and checkpoint and os.path.exists(checkpoint):
        start, history = restore(model, optimizer, checkpoint)
    for epoch in range(start, epochs):
        began = time.perf_counter()
        train_loss, train_acc = train_epoch(model, x, y, epoch, batch_size, optimizer, loss,
                                            schedule, seed, progress, epochs)
        record(history, loss=train_loss, accuracy=train_acc)
        if validation_data is not None:
            val_loss, val_acc = evaluate(model, *validation_data, loss=loss)
            record(history, val_loss=val_loss, val_accuracy=val_acc)
        record(history, seconds=time.perf_counter() - began)
        if progress:
            print(f"epoch {epoch + 1}/{epochs}: " + ", ".join(
                f"{k} {v[-1]:.4f}" for k, v in history.items() if k != "seconds")
                + f" ({history['seconds'][-1]:.1f} s)")
        if checkpoint:
            save(model, optimizer, checkpoint, epoch + 1, history)
    return history


def train_epoch(model, x, y, epoch, batch_size, optimizer, loss, schedule, seed, progress, epochs):
    """One pass over the data in a shuffled order; mean loss and accuracy."""
    order = np.random.default_rng([seed, epoch]).permutation(len(x))
    batches = [order[i:i + batch_size] for i in range(0, len(x), batch_size)]
    bar = progress_bar(len(batches), f"epoch {epoch + 1}/{epochs}", progress)
    total_loss = correct = seen = 0.0
    for b, index in enumerate(batches):
        x_batch, y_batch = to_model(model, x[index]), to_model(model, y[index])
        logits = model.forward(x_batch, training=True)
        value = float(loss.forward(logits, y_batch))
        if not math.isfinite(value):
            raise FloatingPointError(f"fit: the loss became {value} at epoch {epoch + 1}, batch "
                                     f"{b + 1}: training diverged; lower the learning rate (now "
                                     f"{rate(optimizer, schedule, epoch, b, len(batches)):g})")
        model.backward(loss.backward())
        optimizer.step(model, rate(optimizer, schedule, epoch, b, len(batches)))
        total_loss += value * len(index)
        correct += float((logits.argmax(axis=1) == class_indices(y_batch)).sum())
        seen += len(index)
        bar.update(1)
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", accuracy=f"{correct / seen:.4f}")
    bar.close()
    return total_loss / len(x), correct / len(x)


def rate(optimizer, schedule, epoch, batch, n_batches):
    return optimizer.learning_rate if schedule is None else schedule(epoch + batch / n_batches)


def evaluate(model, x, y, batch_size=256, loss=None):
    """(mean loss, accuracy) of ``model`` on (x, y), in inference mode."""
    loss = loss if loss is not None else SoftmaxCrossEntropy()
    check_data(model, x, y, "evaluate")
    total_loss = correct = 0.0
    for start in range(0, len(x), batch_size):
        x_batch = to_model(model, x[start:start + batch_size])
        y_batch = to_model(model, y[start:start + batch_size])
        logits = model.forward(x_batch, training=False)
        total_loss += float(loss.forward(logits, y_batch)) * len(x_batch)
        correct += float((logits.argmax(axis=1) == class_indices(y_batch)).sum())
    return total_loss / len(x), correct / len(x)


# --- checks and small helpers ------------------------------------------------------
def check_data(model, x, y, caller):
    """Clear errors for data that would otherwise train on silently or fail deep inside."""
    if len(x) != len(y):
        raise ValueError(f"{caller}: x has {len(x)} samples but y has {len(y)} labels")
    if len(x) == 0:
        raise ValueError(f"{caller}: no samples")
    classes = model.outputs[0].shape[-1]
    if np.ndim(y) == 1:
        labels = to_device(y, "cpu")
        if labels.dtype.kind not in "iu":
            raise TypeError(f"{caller}: labels must be integer class indices, got dtype {labels.dtype}")
        if labels.min() < 0 or labels.max() >= classes:
            raise ValueError(f"{caller}: labels must lie in [0, {classes}) for model "
                             f"{model.name!r} with {classes} outputs, got labels from "
                             f"{labels.min()} to {labels.max()}")
    elif tuple(np.shape(y)[1:]) != (classes,):
        raise ValueError(f"{caller}: targets must have shape (N, {classes}), got {np.shape(y)}")


def class_indices(y):
    return y if y.ndim == 1 else y.argmax(axis=1)


def to_model(model, array):
    """``array`` on the device of the model's parameters."""
    return array if model.device is None else to_device(array, model.device)


def record(history, **values):
    for key, value in values.items():
        history.setdefault(key, []).append(float(value))


def progress_bar(total, description, enabled):
    """tqdm over the batches where installed and wanted, else a silent stand-in."""
    if enabled:
        try:
            from tqdm import tqdm
            return tqdm(total=total, desc=description, leave=False)
        except ImportError:
            pass
    return _Silent()


class _Silent:
    def update(self, n):
        pass

    def set_postfix(self, **values):
        pass

    def close(self):
        pass


# --- checkpoints -------------------------------------------------------------------
def save(model, optimizer, path, epochs_done, history):
    extra = {"epoch": epochs_done}
    extra.update({f"optimizer/{k}": v for k, v in optimizer.state().items()})
    extra.update({f"history/{k}": np.array(v) for k, v in history.items()})
    save_checkpoint(model, path, extra=extra)


def restore(model, optimizer, path):
    """Load a checkpoint written by ``save``; returns (epochs done, history)."""
    extra = load_checkpoint(model, path)
    optimizer.load_state({k[len("optimizer/"):]: to_model(model, v) if k != "optimizer/iterations"
                          else v for k, v in extra.items() if k.startswith("optimizer/")})
    history = {k[len("history/"):]: list(map(float, v)) for k, v in extra.items()
               if k.startswith("history/")}
    return int(extra["epoch"]), history
