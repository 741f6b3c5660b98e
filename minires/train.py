"""Training and evaluation loops: what Keras's fit/evaluate do, written out.

One training step is the whole of backpropagation:

    outputs = model.forward(x_batch, training=True)     # BN uses batch statistics
    value = loss.forward(outputs, y_batch)
    model.backward(loss.backward(), input_grads=False)  # every layer's grads, not the images'
    optimizer.step(model, learning_rate)                # params -= ...

    history = fit(model, x, y, epochs=10, optimizer=SGD(0.05, momentum=0.9),
                  validation_data=(x_test, y_test), checkpoint="run/last.npz")

``Model.compile`` / ``Model.fit`` (minires/compile.py) run this same loop.

The loss: for a model that outputs logits, SoftmaxCrossEntropy (or any loss
with from_logits=True) applies the softmax itself, stably. For a model that
ends with a softmax (Keras's applications do), the loss takes probabilities
(from_logits=False), and its backward starts below that softmax: the two
cancel into the stable gradient dL/dlogits = (p - t)/N, which
``loss.backward(logits_grad=True)`` returns and
``model.backward(..., skip_output_softmax=True)`` takes. A from_logits=True
loss on a softmax output would apply the softmax twice: refused.

Reproducible: epoch e shuffles with its own generator, seeded by (seed, e),
so a run resumed from the checkpoint of epoch e continues exactly the
trajectory of a run that never stopped.
"""
import math
import os

import numpy as np

from . import losses
from . import metrics as metrics_module
from .backend import to_device
from .callbacks import History, LearningRateScheduler, Progbar, ProgbarLogger, check_verbose
from .io.checkpoint import load_checkpoint, save_checkpoint
from .optim import SGD


def fit(model, x, y, epochs=1, batch_size=32, optimizer=None, loss=None, metrics=("accuracy",),
        schedule=None, validation_data=None, validation_split=0.0, shuffle=True, initial_epoch=0,
        callbacks=None, seed=0, checkpoint=None, resume=False, verbose="auto", progress=None):
    """Train ``model`` on (x, y) for epochs ``initial_epoch`` to ``epochs - 1``;
    returns the history {'loss': [...], 'accuracy': [...], 'val_loss': ...}.

    x: (N, ...) inputs; y: (N,) class indices or (N, classes) targets.
    batch_size: None is 32. optimizer: default SGD(0.01). loss: default by the
    model's output (see the module docstring). metrics: names or functions
    (minires.metrics). schedule: epoch (float) -> learning rate, asked at
    every batch (epoch + batch / batches).
    validation_data: (x_val, y_val); validation_split: else the LAST fraction
    of x and y (taken before any shuffling, as Keras). shuffle: False keeps
    the data order. callbacks: minires.callbacks objects. verbose: 'auto' or
    1 (a progress bar on a terminal, one line per epoch elsewhere), 2 (one
    line per epoch), 0 (silent); progress=False is the older verbose=0.
    checkpoint: path of an .npz written atomically after every epoch (model,
    optimiser state, epoch, history); with resume=True training continues
    from it when it exists.
    """
    verbose = check_verbose(0 if progress is False else verbose, "fit")
    batch_size = check_batch_size(32 if batch_size is None else batch_size, "fit")
    optimizer = optimizer if optimizer is not None else SGD(0.01)
    model.build_like(x)
    check_data(model, x, y, "fit")
    loss = choose_loss(model, loss, y)
    metrics = metrics_module.get(metrics)
    (x, y), validation_data = split_validation(x, y, validation_split, validation_data)
    if validation_data is not None:
        check_validation_data(model, validation_data)
    callbacks, history = prepare_callbacks(callbacks, model, optimizer, schedule, verbose, {
        "epochs": epochs, "steps": math.ceil(len(x) / batch_size), "verbose": verbose})

    start, restored = initial_epoch, {}
    if resume and checkpoint and os.path.exists(checkpoint):
        start, restored = restore(model, optimizer, checkpoint)
    model.stop_training = False
    send(callbacks, "on_train_begin")
    if restored:                                 # a resumed run's earlier epochs
        history.history.update(restored)
        history.epoch = list(range(start))
    logs = {}
    for epoch in range(start, epochs):
        send(callbacks, "on_epoch_begin", epoch)
        order = np.random.default_rng([seed, epoch]).permutation(len(x)) if shuffle \
            else np.arange(len(x))
        logs = train_epoch(model, x, y, order, epoch, batch_size, optimizer, loss, metrics,
                           schedule, callbacks)
        if validation_data is not None:
            values = evaluate(model, *validation_data, loss=loss, metrics=metrics)
            logs.update({f"val_{name}": value for name, value in zip(["loss", *metrics], values)})
        send(callbacks, "on_epoch_end", epoch, logs)
        if checkpoint:
            save(model, optimizer, checkpoint, epoch + 1, history.history)
        if model.stop_training:
            break
    send(callbacks, "on_train_end", logs)
    return history.history


def train_epoch(model, x, y, order, epoch, batch_size, optimizer, loss, metrics, schedule,
                callbacks):
    """One pass over the data in ``order``; the epoch's logs, means over its samples."""
    batches = [order[i:i + batch_size] for i in range(0, len(x), batch_size)]
    totals, seen = {}, 0
    for b, index in enumerate(batches):
        send(callbacks, "on_train_batch_begin", b)
        values = train_step(model, x[index], y[index], optimizer, loss, metrics,
                            rate(optimizer, schedule, epoch, b, len(batches)),
                            at=f" at epoch {epoch + 1}, batch {b + 1}")
        seen += len(index)
        for name, value in values.items():
            totals[name] = totals.get(name, 0.0) + value * len(index)
        send(callbacks, "on_train_batch_end", b, {name: total / seen for name, total in totals.items()})
        if model.stop_training:
            break
    return {name: total / seen for name, total in totals.items()}


def train_step(model, x_batch, y_batch, optimizer, loss, metrics, learning_rate, at=""):
    """One step of gradient descent on one batch; {'loss': value, metric: value}."""
    x_batch, y_batch = to_model(model, x_batch), to_model(model, y_batch)
    outputs = model.forward(x_batch, training=True)
    value = float(loss.forward(outputs, y_batch))
    if not math.isfinite(value):
        raise FloatingPointError(f"the loss became {value}{at}: training diverged; lower the "
                                 f"learning rate (now {learning_rate:g})")
    backpropagate(model, loss)
    optimizer.step(model, learning_rate)
    return {"loss": value, **{name: metric(outputs, y_batch) for name, metric in metrics.items()}}


def backpropagate(model, loss):
    """Fill every layer's grads from the loss's last forward (the gradients of
    the input images are not wanted: input_grads=False skips their work)."""
    if getattr(loss, "from_logits", None) is False and model.output_applies_softmax():
        # dL/dp through the softmax divides by p, then multiplies by it again;
        # start below the softmax with dL/dlogits = (p - t)/N instead.
        model.backward(loss.backward(logits_grad=True), skip_output_softmax=True, input_grads=False)
    else:
        model.backward(loss.backward(), input_grads=False)


def rate(optimizer, schedule, epoch, batch, n_batches):
    return optimizer.learning_rate if schedule is None else schedule(epoch + batch / n_batches)


def evaluate(model, x, y, batch_size=256, loss=None, metrics=("accuracy",), verbose=0):
    """(mean loss, then each metric's mean) of ``model`` on (x, y), in inference
    mode: (loss, accuracy) by default. verbose as fit's, one line at most."""
    verbose = check_verbose(verbose, "evaluate")
    batch_size = check_batch_size(batch_size, "evaluate")
    model.build_like(x)
    check_data(model, x, y, "evaluate")
    loss = choose_loss(model, loss, y)
    metrics = metrics_module.get(metrics)
    bar = Progbar(math.ceil(len(x) / batch_size), verbose)
    totals = {}
    for b, start in enumerate(range(0, len(x), batch_size)):
        x_batch = to_model(model, x[start:start + batch_size])
        y_batch = to_model(model, y[start:start + batch_size])
        values = test_step(model, x_batch, y_batch, loss, metrics)
        for name, value in values.items():
            totals[name] = totals.get(name, 0.0) + value * len(x_batch)
        bar.update(b + 1, {name: total / (start + len(x_batch)) for name, total in totals.items()})
    means = {name: total / len(x) for name, total in totals.items()}
    bar.finish(means)
    return tuple(means.values())


def test_step(model, x_batch, y_batch, loss, metrics):
    """{'loss': value, metric: value} of one batch, in inference mode."""
    x_batch, y_batch = to_model(model, x_batch), to_model(model, y_batch)
    outputs = model.forward(x_batch, training=False)
    return {"loss": float(loss.forward(outputs, y_batch)),
            **{name: metric(outputs, y_batch) for name, metric in metrics.items()}}


# --- choices, checks and small helpers ---------------------------------------------
def choose_loss(model, loss, y):
    """``loss``, or the cross-entropy that fits the model's output and the labels;
    a ValueError for a loss on logits after a softmax (applied twice). (A loss
    of your own without ``from_logits`` is used as it is: model.backward(loss.backward()).)"""
    softmax_output = model.output_applies_softmax()
    if loss is None:
        if not softmax_output:
            return losses.SoftmaxCrossEntropy()
        if np.ndim(y) == 1:
            return losses.SparseCategoricalCrossentropy()
        return losses.CategoricalCrossentropy()
    if softmax_output and getattr(loss, "from_logits", None):
        raise ValueError(f"model {model.name!r} ends with a softmax, so its outputs are "
                         f"probabilities, but {type(loss).__name__} has from_logits=True and would "
                         "apply a softmax again; use from_logits=False (Keras's default, e.g. "
                         "'sparse_categorical_crossentropy'), or build the model without the "
                         "softmax (classifier_activation=None)")
    return loss


def split_validation(x, y, validation_split, validation_data):
    """((x_train, y_train), validation data): Keras's validation_split holds out
    the LAST fraction of the samples; validation_data, when given, wins."""
    if not 0 <= validation_split < 1:
        raise ValueError(f"fit: validation_split must be in [0, 1), got {validation_split}")
    if validation_data is not None or validation_split == 0:
        return (x, y), validation_data
    keep = int(math.floor(len(x) * (1 - validation_split)))
    if keep == 0 or keep == len(x):
        raise ValueError(f"fit: validation_split={validation_split} of {len(x)} samples leaves "
                         f"{keep} for training and {len(x) - keep} for validation; both need some")
    return (x[:keep], y[:keep]), (x[keep:], y[keep:])


def check_validation_data(model, validation_data):
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
        raise ValueError("fit: validation_data must be a pair (x_val, y_val), got "
                         f"{type(validation_data).__name__} of length {len(validation_data)}"
                         if isinstance(validation_data, (tuple, list)) else
                         f"fit: validation_data must be a pair (x_val, y_val), got "
                         f"{type(validation_data).__name__}")
    check_data(model, *validation_data, "fit (validation_data)")


def check_batch_size(batch_size, caller):
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"{caller}: batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


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


def to_model(model, array):
    """``array`` on the device of the model's parameters."""
    return array if model.device is None else to_device(array, model.device)


def prepare_callbacks(callbacks, model, optimizer, schedule, verbose, params):
    """(every callback of the run, its History): the user's, then the progress
    output (it shows what they log), then a History unless they gave one."""
    callbacks = list(callbacks or [])
    if schedule is not None and any(isinstance(c, LearningRateScheduler) for c in callbacks):
        raise ValueError("fit: give either schedule= (a rate per batch) or a LearningRateScheduler "
                         "callback (a rate per epoch), not both")
    if verbose:
        callbacks.append(ProgbarLogger(verbose))
    history = next((c for c in callbacks if isinstance(c, History)), None)
    if history is None:
        history = History()
        callbacks.append(history)
    for callback in callbacks:
        callback.set_model(model)
        callback.set_params(params)
        callback.optimizer = optimizer
    return callbacks, history


def send(callbacks, hook, *args):
    """Call ``hook`` on every callback, in order."""
    for callback in callbacks:
        getattr(callback, hook)(*args)


# --- checkpoints -------------------------------------------------------------------
def save(model, optimizer, path, epochs_done, history):
    """Checkpoint ``model`` with what resuming needs: the epochs done, the
    optimiser's class, hyper-parameters and state, and the history so far."""
    extra = {"epoch": epochs_done, "optimizer_class": type(optimizer).__name__}
    extra.update({f"optimizer_config/{k}": v for k, v in optimizer_config(optimizer).items()})
    extra.update({f"optimizer/{k}": v for k, v in optimizer.state().items()})
    extra.update({f"history/{k}": np.array(v) for k, v in history.items()})
    save_checkpoint(model, path, extra=extra)


def restore(model, optimizer, path):
    """Load a checkpoint written by ``save``; returns (epochs done, history).

    ``optimizer`` must be of the class and hyper-parameters the checkpoint
    records (momentum, betas, epsilon, rho, weight decay ...; not the learning
    rate, which schedules change): resuming SGD's velocities with Adam would
    silently start Adam from nothing. A mismatch, or optimiser state that does
    not fit the model, raises ValueError naming both, and changes nothing
    (model, optimiser, file). Checkpoints written before minires recorded the
    optimiser are not checked for it.
    """
    def check(extra):                            # before load_checkpoint writes any weight
        check_optimizer(extra, optimizer, path)
        check_resume_state(extra, model, path)

    extra = load_checkpoint(model, path, validate=check)
    optimizer.load_state({k[len("optimizer/"):]: to_model(model, v) if k != "optimizer/iterations"
                          else v for k, v in extra.items() if k.startswith("optimizer/")})
    history = {k[len("history/"):]: list(map(float, v)) for k, v in extra.items()
               if k.startswith("history/")}
    return extra["epoch"], history


def optimizer_config(optimizer):
    """An optimiser's hyper-parameters that fix its update rule: its public
    numbers and strings, but not its learning rate (schedules change it) or
    its step count; e.g. SGD(0.1, momentum=0.9) -> {'momentum': 0.9, 'weight_decay': 0.0}."""
    return {k: v for k, v in sorted(vars(optimizer).items())
            if not k.startswith("_") and k not in ("learning_rate", "iterations")
            and isinstance(v, (bool, int, float, str))}


def check_optimizer(extra, optimizer, path):
    """The checkpoint's optimiser (class and config, if recorded) is ``optimizer``'s."""
    saved = extra.get("optimizer_class")
    if saved is None:
        return
    config = {k[len("optimizer_config/"):]: v for k, v in extra.items()
              if k.startswith("optimizer_config/")}
    ours, theirs = type(optimizer).__name__, optimizer_config(optimizer)
    if (saved, config) != (ours, theirs):
        raise ValueError(f"{path} was written while training with {_described(saved, config)}, "
                         f"but this run's optimizer is {_described(ours, theirs)}: resuming "
                         "would go on with another update rule, without its state. Pass the "
                         "same optimizer to resume, or start afresh (resume=False; "
                         "model.load_weights(path) loads the weights alone)")


def check_resume_state(extra, model, path):
    """What restore reads from ``extra`` is there and fits the model."""
    for key in ("epoch", "optimizer/iterations"):
        if not isinstance(extra.get(key), int):
            raise ValueError(f"{path}: {key!r} is missing or not an integer; the file was "
                             "not written by fit(checkpoint=...)")
    shapes = {f"{layer.name}/{name}": tuple(layer.params[name].shape)
              for layer, name in model.parameters(trainable_only=False)}
    for key, value in extra.items():
        if key.startswith("optimizer/") and key != "optimizer/iterations":
            parameter = key[len("optimizer/"):].partition("/")[2]     # <kind>/<layer>/<param>
            if shapes.get(parameter) != np.shape(value):
                raise ValueError(f"{path}: optimizer state {key!r} of shape {np.shape(value)} "
                                 "fits no parameter of the model")
        if key.startswith("history/") and (np.ndim(value) != 1 or
                                           np.asarray(value).dtype.kind not in "iuf"):
            raise ValueError(f"{path}: history {key!r} is not a list of numbers")


def _described(name, config):
    """'SGD(momentum=0.9, weight_decay=0.0)'."""
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in sorted(config.items()))})"
