"""Training and evaluation loops: what Keras's fit/evaluate do, written out.

One training step is the whole of backpropagation:

    outputs = model.forward(x_batch, training=True)     # BN uses batch statistics
    value = loss.forward(outputs, y_batch) + sum(model.losses)   # + the weight penalties
    model.backward(loss.backward(), input_grads=False)  # every layer's grads, not the images'
    model.add_penalty_gradients()                       # the penalties' share of dL/dW
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

Nothing half done: fit checks everything it can before its first step (its
arguments, x and y against the model and the loss, the validation data), so a
bad one raises and changes nothing. A step is all or nothing: it copies BN's
moving statistics (which its forward moves) and puts them back if anything
fails, and the optimizer writes the weights only after the loss and every
gradient and update were found finite. A fit that fails at a later step keeps
the steps before it (as Keras does), and nothing of the failed one.

Weighted samples, as Keras: sample_weight (one weight per sample) or
class_weight ({class index: weight}) scale each sample's term of the loss,
sum_n w_n L_n / N per batch (minires.losses), so the reported loss and the
gradients both follow; the metrics are not weighted (Keras weighs only its
weighted_metrics).

Reproducible: epoch e shuffles with its own generator, seeded by (seed, e),
so a run resumed from the checkpoint of epoch e continues exactly the
trajectory of a run that never stopped. seed=None (Model.fit's, as Keras)
draws the seed from minires's global generator: runs repeat after
keras.utils.set_random_seed(s), and differ without it.
"""
import contextlib
import copy
import inspect
import math
import numbers
import os
import warnings

import numpy as np

from . import collective, losses
from . import metrics as metrics_module
from . import optim
from .backend import get_array_module, is_array, quiet_overflow, to_device
from .callbacks import History, Progbar, ProgbarLogger, callback_list, check_verbose
from .initializers import draw_seed
from .io.checkpoint import load_checkpoint, save_checkpoint
from .optim import SGD, check_learning_rate
from .utils import (all_finite, check_flag, check_int, check_number, finite_flag, flags_all,
                    read_on_host)

CHECK_CHUNK_BYTES = 64 << 20     # the finiteness check of a data set reads it in pieces of this


def fit(model, x, y, epochs=1, batch_size=32, optimizer=None, loss=None, metrics=("accuracy",),
        schedule=None, validation_data=None, validation_split=0.0, shuffle=True, initial_epoch=0,
        callbacks=None, seed=0, checkpoint=None, resume=False, verbose="auto", progress=None,
        sample_weight=None, class_weight=None):
    """Train ``model`` on (x, y) for epochs ``initial_epoch`` to ``epochs - 1``;
    returns the history {'loss': [...], 'accuracy': [...], 'val_loss': ...}.

    x: (N, ...) inputs (a list of arrays, one per input, for several; Python
    lists and array-likes are converted with np.asarray, as Keras does); y: (N,)
    class indices or (N, classes) targets. sample_weight: (N,) weights of the
    samples' losses; or class_weight: {class index: weight} (1 for a class
    left out); not both (see the module docstring).
    batch_size: None is 32. optimizer: default SGD(0.01) (or Keras's names,
    'adam', ...). loss: default by the model's output (see the module
    docstring). metrics: names, objects or functions (minires.metrics).
    schedule: epoch (float) -> learning rate, asked at every batch (epoch +
    batch / batches).
    validation_data: (x_val, y_val) or (x_val, y_val, sample_weight_val);
    validation_split: else the LAST fraction of x, y and sample_weight (taken
    before any shuffling, as Keras). shuffle: False keeps the data order; seed:
    the shuffle's (None: drawn from minires's global generator). callbacks:
    minires.callbacks objects (one alone, or a list).
    verbose: 'auto' or 1 (a progress bar on a terminal, one line per epoch
    elsewhere), 2 (one line per epoch), 0 (silent); progress=False is the older
    verbose=0. checkpoint: path of an .npz written atomically after every epoch
    (model, optimiser state, epoch, history); with resume=True training
    continues from it when it exists.
    """
    verbose = check_verbose(0 if progress is False else verbose, "fit")
    batch_size = check_batch_size(batch_size, "fit")
    epochs, initial_epoch = check_epochs(epochs, initial_epoch)
    seed = None if seed is None else check_int(seed, "fit: seed")
    shuffle = check_flag(shuffle, "fit: shuffle")
    if schedule is not None and not callable(schedule):
        raise TypeError(f"fit: schedule must be a function epoch -> learning rate, got {schedule!r}")
    refuse_custom_steps(model, "fit", "train_step")
    optimizer = optim.get(SGD(0.01) if optimizer is None else optimizer)
    metrics = metrics_module.get(metrics)
    callbacks = callback_list(callbacks, "fit")
    x, y = as_data(model, x, y, "fit")
    w = as_sample_weight(sample_weight, class_weight, len(y), "fit")
    (x, y, w), validation_data = split_validation(model, x, y, w, validation_split, validation_data)
    loss, w = check_weighted_data(model, x, y, w, class_weight, loss, "fit")
    if validation_data is not None:
        refuse_custom_steps(model, "fit: validation", "test_step")
        check_weighted_data(model, *validation_data, None, loss, "fit: validation_data")
    if shuffle and seed is None:
        seed = draw_seed()                       # keras.utils.set_random_seed repeats a run
    callbacks, history = prepare_callbacks(callbacks, model, optimizer, schedule, verbose, {
        "epochs": epochs, "steps": math.ceil(samples(x) / batch_size), "verbose": verbose})

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
        order = np.random.default_rng([seed, epoch]).permutation(samples(x)) if shuffle \
            else np.arange(samples(x))
        logs = train_epoch(model, (x, y, w), order, epoch, batch_size, optimizer, loss, metrics,
                           schedule, callbacks)
        if validation_data is not None:
            values = measure(model, *validation_data, 256, loss, metrics, 0, "fit: validation_data")
            logs.update({f"val_{name}": value for name, value in zip(["loss", *metrics], values)})
        send(callbacks, "on_epoch_end", epoch, logs)
        if checkpoint and collective.leads():    # one file per run (minires.distributed)
            save(model, optimizer, checkpoint, epoch + 1, history.history)
        if model.stop_training:
            break
    send(callbacks, "on_train_end", logs)
    return history.history


def train_epoch(model, data, order, epoch, batch_size, optimizer, loss, metrics, schedule,
                callbacks):
    """One pass over the data (x, y, sample weights or None) in ``order``; the
    epoch's logs: the mean loss over its samples, the metrics' results."""
    x, y, w = data
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    metrics_module.reset(metrics)
    total, seen, logs = 0.0, 0, {}
    for b, index in enumerate(batches):
        send(callbacks, "on_train_batch_begin", b)
        logs = train_step(model, rows(x, index), y[index], optimizer, loss, metrics,
                          rate(optimizer, schedule, epoch, b, len(batches)),
                          at=f" at epoch {epoch + 1}, batch {b + 1}", sample_weight=rows(w, index))
        total, seen = total + logs["loss"] * len(index), seen + len(index)
        logs["loss"] = total / seen              # the running mean of the epoch, as Keras logs it
        send(callbacks, "on_train_batch_end", b, dict(logs))
        if model.stop_training:
            break
    return logs


def train_step(model, x_batch, y_batch, optimizer, loss, metrics, learning_rate, at="",
               sample_weight=None):
    """One step of gradient descent on one batch; {'loss': value, metric: result},
    the loss (``total_loss``) measured before the step, the metrics updated
    with this batch. All or nothing: if anything fails (the loss's inputs, a
    loss that is not finite, a metric, the backward pass, the optimizer), the
    model's BN statistics and the metrics are put back and no weight or
    optimizer state has changed.

    Everything the step checks (the loss's inputs, the loss, BN's statistics,
    every gradient and updated weight) and reports (the loss, the metrics) is
    read on the host in ONE go, before anything is written: on a GPU the host
    waits for it once a step (minires/utils.py)."""
    learning_rate = check_learning_rate(learning_rate, "train_step")
    x_batch, y_batch, sample_weight = (to_model(model, a) for a in (x_batch, y_batch, sample_weight))
    with all_or_nothing(model, metrics) as undo, quiet_overflow():   # nan and inf: found below
        outputs = model.forward(x_batch, training=True)
        checks = []                              # the loss's checks of its inputs, read below
        value = total_loss(model, loss, outputs, y_batch, sample_weight, checks)
        results = metrics_module.update(metrics, y_batch, outputs)
        backpropagate(model, loss)
        model.add_penalty_gradients()            # once per step, whatever the calls of a layer
        step = optim.plan_step(optimizer, model, learning_rate)   # computed, nothing written yet
        good = flags_all([*(flag for flag, _ in checks), statistics_finite(model), step.finite])
        value, good, *results = read_on_host(value, good, *results.values())
        if not (good and math.isfinite(value)):
            refuse_step(model, (x_batch, y_batch), checks, value, step, at, undo)
        step.apply(finite=True)
    return {"loss": value, **dict(zip(metrics, results))}


def refuse_step(model, batch, checks, value, step, at, undo):
    """Raise what made a step fail, in the order its parts ran: the loss's
    inputs, the loss, BN's statistics, then the optimizer's gradients and updates."""
    losses.run_checks(checks)
    if not math.isfinite(value):
        undo()                                   # first: the cause is read from the model as it was
        raise FloatingPointError(f"the loss became {value}{at}: "
                                 f"{why_not_finite(model, *batch, step.lr)}; "
                                 "nothing of this step was applied")
    check_statistics(model, step.lr, at)
    step.apply()                                 # raises the optimizer's error, writes nothing


def total_loss(model, loss, outputs, targets, sample_weight, checks=None):
    """The loss of a batch as Keras's fit and evaluate report it: the loss's
    mean over the batch (each sample's term weighted: sum_n w_n L_n / N) plus
    the weight penalties of the model's weights (``model.losses``). Not read:
    on a GPU a 0-d array. ``checks``: where loss.forward queues its input checks
    (None, or a loss whose forward takes no ``checks``: it reads them itself)."""
    arguments = {} if sample_weight is None else {"sample_weight": sample_weight}
    if checks is not None and "checks" in inspect.signature(loss.forward).parameters:
        arguments["checks"] = checks
    return loss.forward(outputs, targets, **arguments) + sum(model.losses)


@contextlib.contextmanager
def all_or_nothing(model, metrics=None):
    """Put back what a training step writes before its end, the model's
    non-trainable weights (BN's moving statistics) and the metrics' states,
    if the block raises; yields the function that puts back the weights.
    Only these are copied: the weights change in the optimizer's step alone,
    which checks everything before it writes."""
    saved = [(layer, name, layer.params[name].copy()) for layer, name in state_arrays(model)]
    metric_states = [(metric, copy.deepcopy(vars(metric))) for metric in (metrics or {}).values()]

    def undo():
        for layer, name, value in saved:
            layer.params[name][...] = value
            layer.weights_changed()              # written in place: a folded inference plan is stale

    try:
        yield undo
    except BaseException:                        # an interrupt halfway through a forward too
        undo()
        for metric, state in metric_states:
            vars(metric).update(state)
        raise


def statistics_finite(model):
    """A 0-d flag on the model's device, not read: every non-trainable weight
    (BN's moving statistics) is finite."""
    return flags_all(finite_flag(layer.params[name]) for layer, name in state_arrays(model))


def state_arrays(model):
    """(layer, name) of the arrays that a training forward may write: those the
    layers declare non-trainable (BN's moving statistics)."""
    return [(layer, name) for layer, name in model.parameters(trainable_only=False)
            if name in layer.non_trainable_names]


def check_statistics(model, learning_rate, at):
    """A FloatingPointError if the forward left a non-trainable weight (a BN
    moving statistic) nan or inf: a batch variance that overflowed, though the
    loss (which reads the batch's statistics) may still be finite. Array by
    array: refuse_step calls it, once a step has failed, to name the array."""
    for layer, name in state_arrays(model):
        if not all_finite(layer.params[name]):
            raise FloatingPointError(f"{layer.name}/{name} became nan or inf{at}: the activations "
                                     "overflowed, training diverged; lower the learning rate "
                                     f"(now {learning_rate:g}); nothing of this step was applied")


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
    """This batch's learning rate: the optimizer's, or the schedule's, checked."""
    if schedule is None:
        return optimizer.learning_rate
    progress = epoch + batch / n_batches
    return check_learning_rate(schedule(progress), f"fit: schedule({progress:g})")


def evaluate(model, x, y, batch_size=256, loss=None, metrics=("accuracy",), verbose=0,
             sample_weight=None):
    """(mean loss, then each metric's result) of ``model`` on (x, y), in inference
    mode: (loss, accuracy) by default; sample_weight weighs the loss as fit's.
    verbose as fit's, one line at most. A loss that is not finite comes with a
    RuntimeWarning naming the cause."""
    verbose = check_verbose(verbose, "evaluate")
    batch_size = check_batch_size(batch_size, "evaluate")
    refuse_custom_steps(model, "evaluate", "test_step")
    metrics = metrics_module.get(metrics)
    x, y, w, loss = prepare(model, x, y, loss, "evaluate", sample_weight)
    return measure(model, x, y, w, batch_size, loss, metrics, verbose, "evaluate")


def measure(model, x, y, w, batch_size, loss, metrics, verbose, caller):
    """evaluate on data already checked: the mean loss over the samples and the
    metrics' results, batch by batch."""
    n = samples(x)
    bar = Progbar(math.ceil(n / batch_size), verbose)
    metrics_module.reset(metrics)
    total, logs = 0.0, {}
    for b, start in enumerate(range(0, n, batch_size)):
        batch = slice(start, start + batch_size)
        logs = test_step(model, rows(x, batch), y[batch], loss, metrics, rows(w, batch))
        total += logs["loss"] * len(y[batch])
        logs["loss"] = total / min(start + batch_size, n)
        bar.update(b + 1, logs)
    bar.finish(logs)
    if not math.isfinite(logs["loss"]):
        warnings.warn(f"{caller}: the loss is {logs['loss']}: {why_not_finite(model, x, y)}",
                      RuntimeWarning, stacklevel=3)
    return tuple(logs.values())


def test_step(model, x_batch, y_batch, loss, metrics, sample_weight=None):
    """{'loss': value, metric: result} of one batch, in inference mode."""
    x_batch, y_batch, sample_weight = (to_model(model, a) for a in (x_batch, y_batch, sample_weight))
    outputs = model.forward(x_batch, training=False)
    value = total_loss(model, loss, outputs, y_batch, sample_weight)
    results = metrics_module.update(metrics, y_batch, outputs)
    value, *results = read_on_host(value, *results.values())       # one wait for a GPU
    return {"loss": value, **dict(zip(metrics, results))}


def why_not_finite(model, x, y, learning_rate=None):
    """Why a loss came out nan or inf: the data, the model's weights, or (both
    finite) an overflow: training diverged."""
    for what, array in [*zip(input_names(model, x), as_list(x)), ("y", y)]:
        sample = first_non_finite(array)
        if sample is not None:
            return f"{what} holds nan or inf (first in sample {sample})"
    broken = [f"{layer.name}/{name}" for layer, name in model.parameters(trainable_only=False)
              if not all_finite(layer.params[name])]
    if broken:
        return (f"the model's weights are not finite ({', '.join(broken[:3])}"
                f"{', ...' if len(broken) > 3 else ''}): they were loaded so, or an earlier "
                "training diverged")
    if learning_rate is None:
        return "the outputs overflowed, though the data and the weights are finite"
    return ("the outputs overflowed, though the data and the weights are finite: training "
            f"diverged; lower the learning rate (now {learning_rate:g})")


# --- the data: as Keras takes it, checked before anything runs ---------------------------
def prepare(model, x, y, loss, caller, sample_weight=None, class_weight=None):
    """(x, y, sample weights or None, loss), everything checked that can fail a
    step: ``as_data``, ``as_sample_weight``, ``check_weighted_data``."""
    x, y = as_data(model, x, y, caller)
    w = as_sample_weight(sample_weight, class_weight, len(y), caller)
    loss, w = check_weighted_data(model, x, y, w, class_weight, loss, caller)
    return x, y, w, loss


def as_sample_weight(sample_weight, class_weight, n, caller):
    """fit's ``sample_weight`` as (n,) weights (minires.losses.sample_weights), or None."""
    if sample_weight is not None and class_weight is not None:
        raise ValueError(f"{caller}: give sample_weight or class_weight, not both (as Keras): "
                         "fold the class weights into sample_weight")
    if sample_weight is None:
        return None
    return losses.sample_weights(as_array(sample_weight, f"{caller}: sample_weight"), n, caller)


def check_weighted_data(model, x, y, w, class_weight, loss, caller):
    """``check_data``, then the weights the steps take: ``w``, or the class
    weights of y (once the model is built: its classes are known); (loss, weights)."""
    loss = check_data(model, x, y, loss, caller)
    if w is None and class_weight is None:
        return loss, None
    takes = inspect.signature(loss.forward).parameters
    if "sample_weight" not in takes and not any(p.kind == p.VAR_KEYWORD for p in takes.values()):
        raise TypeError(f"{caller}: the loss {type(loss).__name__} cannot weigh samples: its "
                        "forward has no sample_weight argument; give it one (forward(outputs, "
                        "targets, sample_weight=None)) or use a minires.losses loss")
    if class_weight is not None:
        w = class_weights(class_weight, y, model.outputs[0].shape[-1], caller)
    return loss, w


def class_weights(class_weight, y, classes, caller):
    """Keras's class_weight {class index: weight} as one weight per sample: its
    class's (the class of a one-hot row is its largest entry), 1.0 for a class
    the dict leaves out."""
    if not isinstance(class_weight, dict):
        raise TypeError(f"{caller}: class_weight must be a dict {{class index: weight}}, got "
                        f"{type(class_weight).__name__}")
    table = np.ones(classes)
    for key, value in class_weight.items():
        if isinstance(key, (bool, np.bool_)) or not isinstance(key, numbers.Integral) \
                or not 0 <= key < classes:
            raise ValueError(f"{caller}: class_weight has the key {key!r}, which is no class "
                             f"index of the model's {classes} outputs (0 to {classes - 1})")
        table[int(key)] = check_number(value, f"{caller}: class_weight[{key!r}]", 0.0)
    xp = get_array_module(y)
    labels = y.reshape(len(y)) if y.ndim == 1 or y.shape[1:] == (1,) else y.argmax(axis=1)
    return xp.asarray(table)[xp.rint(labels).astype(np.int64)]


def as_data(model, x, y, caller):
    """(x, y) as arrays (``as_inputs``, ``as_targets``) with as many samples, and
    some, and x finite: what can be checked before the model is built."""
    x, y = as_inputs(model, x, caller), as_targets(y, caller)
    if samples(x) != len(y):
        raise ValueError(f"{caller}: x has {samples(x)} samples but y has {len(y)} labels")
    if len(y) == 0:
        raise ValueError(f"{caller}: no samples")
    for name, array in zip(input_names(model, x), as_list(x)):   # before a traced model is built
        sample = first_non_finite(array)
        if sample is not None:
            raise ValueError(f"{caller}: {name} holds nan or inf (first in sample {sample}): "
                             "the loss would be nan, and a training step would make BN's "
                             "moving statistics nan; clean or drop those samples")
    return x, y


def as_inputs(model, x, caller):
    """``x`` as the model takes it: one array for a model of one input, a list
    of arrays (one per input, in ``model.inputs`` order) for several. As Keras:
    a list of one array for a one-input model, a dict {input name: array}, and
    Python lists and array-likes (a pandas DataFrame) through np.asarray."""
    if isinstance(x, (list, tuple)) and not x:
        raise ValueError(f"{caller}: x is an empty {type(x).__name__}; give an array with a batch "
                         "axis, or a list of arrays, one per model input")
    if isinstance(x, dict):
        arrays = [as_array(x[name], f"{caller}: x[{name!r}]") for name in dict_order(model, x, caller)]
    elif isinstance(x, (list, tuple)) and all(map(is_array_like, x)):
        arrays = [as_array(a, f"{caller}: x[{i}]") for i, a in enumerate(x)]
    else:
        arrays = [as_array(x, f"{caller}: x")]
    if model.built and len(arrays) != len(model.inputs):
        names = ", ".join(repr(tensor.layer.name) for tensor in model.inputs)
        raise ValueError(f"{caller}: model {model.name!r} has {len(model.inputs)} "
                         f"input{'s' if len(model.inputs) > 1 else ''} ({names}) but x holds "
                         f"{len(arrays)} arrays (a list of samples: np.stack it first)")
    counts = [len(a) for a in arrays]
    if len(set(counts)) > 1:
        raise ValueError(f"{caller}: the arrays of x hold different numbers of samples: {counts}")
    return arrays[0] if len(arrays) == 1 else arrays


def dict_order(model, x, caller):
    """The keys of a dict ``x``, in the order of the model's inputs (named by their layers)."""
    if not model.built:
        raise ValueError(f"{caller}: x is a dict, but model {model.name!r} is not built yet, so "
                         "its inputs have no names; give an array, or a list of them")
    names = [tensor.layer.name for tensor in model.inputs]
    if sorted(map(str, x)) != sorted(names):
        raise ValueError(f"{caller}: x is a dict with keys {sorted(map(str, x))}, but model "
                         f"{model.name!r} has the inputs {names}")
    return names


def as_targets(y, caller):
    """``y`` as one array: a list of one array (one per output) is that array."""
    if y is None:
        raise ValueError(f"{caller}: y is None; minires trains on arrays (no datasets or "
                         "generators, so y cannot come with x): give the targets")
    if isinstance(y, (list, tuple)) and y and all(map(is_array_like, y)):
        if len(y) != 1:
            raise ValueError(f"{caller}: y is a list of {len(y)} arrays, one per output, but "
                             "minires trains models of one output")
        y = y[0]
    return as_array(y, f"{caller}: y")


def is_array_like(value):
    """An array of one or more axes (NumPy, CuPy, or one np.asarray converts), not a list."""
    return not isinstance(value, (list, tuple)) and getattr(value, "ndim", 0) >= 1


def as_array(value, what):
    """``value`` as an array of numbers with a batch axis: arrays as they are,
    Python lists and array-likes (with __array__) through np.asarray."""
    if value is None:
        raise ValueError(f"{what} is None; give an array")
    if not is_array(value):
        if isinstance(value, (str, bytes, dict)) or not (isinstance(value, (list, tuple)) or
                                                         hasattr(value, "__array__")):
            raise TypeError(f"{what} must be an array (NumPy or CuPy), a list or an array-like "
                            f"such as a pandas DataFrame, got {type(value).__name__}")
        try:
            value = np.asarray(value)
        except (TypeError, ValueError) as error:       # ragged lists
            raise ValueError(f"{what} cannot be made one array: {error}") from None
    if value.ndim == 0:
        raise ValueError(f"{what} must have a batch axis (one entry per sample), got a single "
                         f"value {value!r}")
    if value.dtype.kind not in "fiub":
        raise TypeError(f"{what} must hold real numbers (float, int or bool), got dtype "
                        f"{value.dtype} with shape {value.shape}")
    return value


def check_data(model, x, y, loss, caller):
    """Everything about (x, y) (from ``as_data``) that can fail a step, checked
    before the first: the model's one output, x against its inputs, y against
    the loss and the output. Builds a model traced at its first call;
    returns the loss (``choose_loss``)."""
    model.build_like(x)
    if len(model.outputs) != 1:
        raise NotImplementedError(f"{caller}: model {model.name!r} has {len(model.outputs)} "
                                  "outputs; minires trains models of one output (one loss)")
    for tensor, array in zip(model.inputs, as_list(x)):
        try:
            tensor.layer.check(array, model.name)
        except (TypeError, ValueError) as error:
            raise type(error)(f"{caller}: {error}") from None
    loss = choose_loss(model, loss, y)
    if callable(getattr(loss, "check_targets", None)):
        loss.check_targets(y, (len(y), *model.outputs[0].shape[1:]), caller)
    return loss


def input_names(model, x):
    """How messages name each array of ``x``: 'x' alone, else "x[1] (input 'b')"
    (the input's name once the model is built)."""
    if not isinstance(x, list):
        return ["x"]
    if not model.built:
        return [f"x[{i}]" for i in range(len(x))]
    return [f"x[{i}] (input {tensor.layer.name!r})" for i, tensor in enumerate(model.inputs)]


def first_non_finite(array):
    """The index of the first sample of ``array`` holding nan or inf, or None;
    read in pieces, so that no mask the size of a data set is made."""
    if array.dtype.kind != "f" or array.size == 0:
        return None
    xp = get_array_module(array)
    per_piece = max(1, CHECK_CHUNK_BYTES // max(1, array[:1].nbytes))
    for start in range(0, len(array), per_piece):
        piece = array[start:start + per_piece]
        finite = xp.isfinite(piece.reshape(len(piece), -1)).all(axis=1)
        if not bool(finite.all()):
            return start + int(xp.argmin(finite))
    return None


def as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def samples(x):
    return len(as_list(x)[0])


def rows(x, index):
    """The samples ``index`` of x (one array, or one per model input; None: no sample weights)."""
    if x is None:
        return None
    return [a[index] for a in x] if isinstance(x, list) else x[index]


def to_model(model, x):
    """``x`` (an array, or a list of them; None stays) on the device of the model's parameters."""
    if model.device is None or x is None:
        return x
    return [to_device(a, model.device) for a in x] if isinstance(x, list) else to_device(x, model.device)


# --- choices and checks of the arguments -------------------------------------------
def choose_loss(model, loss, y):
    """``loss`` (Keras's name or a loss object), or the cross-entropy that fits the
    model's output and the labels; a ValueError for a loss on logits after a
    softmax (applied twice). (A loss of your own without ``from_logits`` is used
    as it is: model.backward(loss.backward()).)"""
    softmax_output = model.output_applies_softmax()
    if loss is None:
        if not softmax_output:
            return losses.SoftmaxCrossEntropy(refuse_probabilities=True)   # a softmax it cannot see
        indices = y is not None and y.dtype.kind in "iu" and y.shape[1:] in ((), (1,))
        return losses.SparseCategoricalCrossentropy() if indices else losses.CategoricalCrossentropy()
    loss = losses.get(loss)
    if softmax_output and getattr(loss, "from_logits", None):
        raise ValueError(f"model {model.name!r} ends with a softmax, so its outputs are "
                         f"probabilities, but {type(loss).__name__} has from_logits=True and would "
                         "apply a softmax again; use from_logits=False (Keras's default, e.g. "
                         "'sparse_categorical_crossentropy'), or build the model without the "
                         "softmax (classifier_activation=None)")
    return loss


def split_validation(model, x, y, w, validation_split, validation_data):
    """((x_train, y_train, w_train), validation data (x, y, w)): Keras's
    validation_split holds out the LAST fraction of the samples (and of their
    weights, w None without); validation_data, when given, wins."""
    validation_split = check_number(validation_split, "fit: validation_split", 0.0, 1.0)
    if validation_data is not None:
        return (x, y, w), as_validation_data(model, validation_data)
    if validation_split == 0:
        return (x, y, w), None
    n = samples(x)
    keep = int(math.floor(n * (1 - validation_split)))
    if keep == 0 or keep == n:
        raise ValueError(f"fit: validation_split={validation_split} of {n} samples leaves "
                         f"{keep} for training and {n - keep} for validation; both need some")
    train, held_out = slice(None, keep), slice(keep, None)
    return (rows(x, train), y[train], rows(w, train)), (rows(x, held_out), y[held_out], rows(w, held_out))


def as_validation_data(model, validation_data):
    """(x_val, y_val, sample weights or None) from Keras's pair or triple."""
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
        got = type(validation_data).__name__
        if isinstance(validation_data, (tuple, list)):
            got += f" of length {len(validation_data)}"
        raise ValueError(f"fit: validation_data must be a pair (x_val, y_val) or a triple "
                         f"(x_val, y_val, sample_weight_val), got {got}")
    x, y = as_data(model, *validation_data[:2], "fit: validation_data")
    weights = validation_data[2] if len(validation_data) == 3 else None
    return x, y, as_sample_weight(weights, None, len(y), "fit: validation_data")


def check_batch_size(batch_size, caller):
    """None is Keras's default, 32."""
    return check_int(32 if batch_size is None else batch_size, f"{caller}: batch_size", 1)


def check_epochs(epochs, initial_epoch):
    """(epochs, initial_epoch) as ints >= 0; a warning when there is nothing to train."""
    epochs = check_int(epochs, "fit: epochs")
    initial_epoch = check_int(initial_epoch, "fit: initial_epoch")
    if initial_epoch > epochs:
        warnings.warn(f"fit: initial_epoch={initial_epoch} is past epochs={epochs}, so no epoch "
                      "runs (epochs is the number of the last epoch, not a count of more)",
                      UserWarning, stacklevel=3)
    return epochs, initial_epoch


def prepare_callbacks(callbacks, model, optimizer, schedule, verbose, params):
    """(every callback of the run, its History): the user's, then the progress
    output (it shows what they log), then a History unless they gave one."""
    callbacks = list(callbacks)
    setter = next((c for c in callbacks if c.sets_learning_rate), None)
    if schedule is not None and setter is not None:
        raise ValueError(f"fit: give either schedule= (a rate per batch) or the "
                         f"{type(setter).__name__} callback, which sets the rate too, not both: "
                         "the schedule would overwrite the callback's rate at every batch")
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


# Keras's step methods that its guide "customizing what happens in fit" overrides, and
# what to do instead: minires has no automatic differentiation to run them with
CUSTOM_STEPS = {
    "train_step": "compile(optimizer=..., loss=..., metrics=[...]) and fit train the model as "
                  "it is, or write the loop with minires.train (its train_step(model, x, y, "
                  "optimizer, loss, metrics, learning_rate) is one step of it)",
    "test_step": "compile(loss=..., metrics=[...]) and evaluate measure the model as it is",
    "predict_step": "predict runs the model's call() as it is",
}


def refuse_custom_steps(model, caller, *methods):
    """A NotImplementedError if ``model``'s class overrides one of Keras's step
    ``methods``: it is written with GradientTape, which minires cannot run, and
    training past it would silently train something else."""
    for method in methods:
        owner = next((cls for cls in type(model).__mro__ if method in vars(cls)), None)
        if owner is not None and not owner.__module__.startswith("minires."):
            raise NotImplementedError(
                f"{caller}: {type(model).__name__} overrides {method}(), which minires cannot "
                "run (it has no automatic differentiation, no GradientTape) and will not "
                f"silently skip; remove the override: {CUSTOM_STEPS[method]}")


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
