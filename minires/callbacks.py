"""Callbacks: code that fit runs at fixed points of training, as Keras's.

    history = model.fit(x, y, epochs=30, validation_split=0.1, callbacks=[
        ModelCheckpoint("run/best.npz", save_best_only=True),
        EarlyStopping(patience=3, restore_best_weights=True),
        LearningRateScheduler(lambda epoch, lr: lr * 0.9)])
    history.history["val_loss"]         # one entry per epoch

The training loop (minires.train.fit) calls, in this order:

    on_train_begin()
      on_epoch_begin(epoch)                    epoch counts from 0, as in Keras
        on_train_batch_begin(batch)            (also reaches on_batch_begin)
        on_train_batch_end(batch, logs)        logs: running means {'loss': .., 'accuracy': ..}
      on_epoch_end(epoch, logs)                + 'val_loss', 'val_accuracy' with validation
    on_train_end(logs)

Each callback has ``model`` (the model being trained), ``optimizer`` (the one
it trains with: Keras's ``model.optimizer``) and ``params`` ({'epochs',
'steps', 'verbose'}). Setting ``model.stop_training = True`` ends training:
the loop finishes the batch, closes the epoch (validation, on_epoch_end) and stops.

This module also draws the progress output (Progbar, ProgbarLogger) that
fit, evaluate and predict write with ``verbose``.
"""
import inspect
import math
import os
import string
import sys
import time
import warnings

import numpy as np

from . import collective
from .optim import check_learning_rate
from .utils import check_flag, check_int, check_number

__all__ = ["Callback", "History", "ModelCheckpoint", "EarlyStopping", "LearningRateScheduler",
           "ReduceLROnPlateau", "ProgbarLogger"]


class Callback:
    """The base class: every hook does nothing; override the ones you need."""

    model = None
    optimizer = None
    params = {}
    sets_learning_rate = False       # True: it writes the optimizer's rate, as fit's schedule= does

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        self.params = params

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_batch_begin(self, batch, logs=None):
        pass

    def on_batch_end(self, batch, logs=None):
        pass

    def on_train_batch_begin(self, batch, logs=None):
        self.on_batch_begin(batch, logs)          # Keras: on_batch_* is the older name

    def on_train_batch_end(self, batch, logs=None):
        self.on_batch_end(batch, logs)


HOOKS = ("set_model", "set_params", "on_train_begin", "on_train_end", "on_epoch_begin",
         "on_epoch_end", "on_train_batch_begin", "on_train_batch_end")


def announce(message):
    """Print a callback's message, flushed, on rank 0 alone: one copy per run
    however many ranks train it (minires.distributed)."""
    if collective.leads():
        print(message, flush=True)


def callback_list(callbacks, caller):
    """fit's ``callbacks`` as a list: None is none; one callback alone is a list of
    one (as Keras 3, which flattens whatever it is given); each must have every
    hook fit calls (a Callback subclass does), else one TypeError naming it."""
    if callbacks is None:
        return []
    listed = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
    for position, callback in enumerate(listed):
        missing = [hook for hook in HOOKS if not callable(getattr(callback, hook, None))]
        if missing:
            raise TypeError(f"{caller}: callbacks[{position}] is {describe(callback)}, not a "
                            f"callback (it has no {missing[0]}()); subclass "
                            "minires.callbacks.Callback and override the hooks you need")
    return listed


def describe(value):
    """'function halve', 'builtin_function_or_method print', 'str 'x''."""
    name = getattr(value, "__name__", None)
    return f"{type(value).__name__} {name if name is not None else repr(value)}"


class History(Callback):
    """Records every epoch's logs: ``history`` {'loss': [...], 'val_loss': [...], ...}
    and ``epoch``, the epoch numbers (from 0). ``Model.fit`` returns it."""

    def __init__(self):
        self.history = {}
        self.epoch = []

    def on_train_begin(self, logs=None):
        self.epoch = []                           # as Keras: the history itself accumulates

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)


# --- watching a logged value: shared by ModelCheckpoint and EarlyStopping -------------
def monitor_mode(mode, monitor, caller):
    """'min' or 'max'; 'auto' watches accuracies go up and everything else go down."""
    if not isinstance(monitor, str):
        raise TypeError(f"{caller}: monitor must be the name of a logged value such as "
                        f"'val_loss', got {monitor!r}")
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"{caller}: mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        return "max" if "acc" in monitor else "min"
    return mode


def improved(value, reference, mode, min_delta=0.0):
    """Is ``value`` better than ``reference`` by more than ``min_delta``? (None: yes.)"""
    if reference is None:
        return True
    if mode == "min":
        return value < reference - abs(min_delta)
    return value > reference + abs(min_delta)


def monitored(logs, monitor, caller, consequence=""):
    """logs[monitor], or None with a warning naming the keys there are (and
    ``consequence``, what the caller does without it)."""
    value = (logs or {}).get(monitor)
    if value is None:
        warnings.warn(f"{caller} watches {monitor!r}, which is not in the logs; they hold "
                      f"{', '.join(map(repr, logs or {})) or 'nothing'} ('val_' keys need "
                      f"validation_data or validation_split){consequence}", stacklevel=3)
    return value


def check_optional_number(value, where):
    return None if value is None else check_number(value, where)


class ModelCheckpoint(Callback):
    """Saves the model or its weights after every epoch, atomically, as Keras 3:

        save_weights_only=False   ``model.save(path)``: a '.keras' file (Keras 3's
                                  whole-model format); a '.h5' path (Keras 2
                                  tutorials' legacy models) gets the weights in
                                  Keras's classic layout, as ``model.save`` does
        save_weights_only=True    ``model.save_weights(path)``, by suffix:
                                  '.weights.h5' (Keras 3's; the only one Keras
                                  takes here), '.h5' (the classic layout) or
                                  '.npz' (minires's checkpoint)
        None (minires's default)  False, as Keras's default, except for a '.npz'
                                  path, which holds weights only

    filepath may hold Keras's placeholders: 'run/m.{epoch:02d}-{val_loss:.2f}.keras'
    (epoch counts from 1 there, and any key of the epoch's logs can appear).
    save_best_only: save only when ``monitor`` improves on its best so far
    (mode 'min', 'max', or 'auto': 'max' for accuracies); with one fixed
    filepath that keeps the best epoch's model. initial_value_threshold: a
    best to beat from the start.
    """

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False,
                 save_weights_only=None, mode="auto", initial_value_threshold=None):
        if not isinstance(filepath, (str, os.PathLike)) or not isinstance(os.fspath(filepath), str):
            raise TypeError(f"ModelCheckpoint: filepath must be a path (a str or a pathlib.Path), "
                            f"got {filepath!r}")
        self.filepath = os.fspath(filepath)
        check_placeholders(self.filepath)
        self.save_weights_only = checkpoint_kind(self.filepath, save_weights_only)
        self.monitor, self.verbose, self.save_best_only = monitor, verbose, save_best_only
        self.mode = monitor_mode(mode, monitor, "ModelCheckpoint")
        self.best = check_optional_number(initial_value_threshold,
                                          "ModelCheckpoint: initial_value_threshold")
        if self.best is None:
            self.best = math.inf if self.mode == "min" else -math.inf

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        path = self.path(epoch, logs)
        if self.save_best_only:
            current = monitored(logs, self.monitor, "ModelCheckpoint(save_best_only=True)",
                                "; nothing saved, as Keras skips")   # no 'best' without the value
            if current is None:
                return
            if not improved(current, self.best, self.mode):
                self.say(f"Epoch {epoch + 1}: {self.monitor} did not improve from {self.best:.5f}")
                return
            self.say(f"Epoch {epoch + 1}: {self.monitor} improved from {self.best:.5f} to "
                     f"{current:.5f}, saving model to {path}")
            self.best = current
        else:
            self.say(f"Epoch {epoch + 1}: saving model to {path}")
        if not collective.leads():           # one file per run, not per rank (minires.distributed)
            return
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        (self.model.save_weights if self.save_weights_only else self.model.save)(path)

    def path(self, epoch, logs):
        try:
            return self.filepath.format(epoch=epoch + 1, **logs)
        except KeyError as error:
            raise KeyError(f"ModelCheckpoint: filepath {self.filepath!r} names {error}, which is "
                           f"not among epoch and the logs' keys {list(logs)}") from None

    def say(self, message):
        if self.verbose:
            announce(f"\n{message}")


WEIGHT_SUFFIXES = (".weights.h5", ".h5", ".hdf5", ".npz")     # what model.save_weights writes


def checkpoint_kind(filepath, save_weights_only):
    """Whether ModelCheckpoint saves weights only (True) or the model (False) at
    ``filepath``, which must end in a suffix that kind is written to (the class
    docstring); None picks by suffix, '.npz' weights, anything else the model."""
    if save_weights_only is None:
        save_weights_only = filepath.endswith(".npz")
    save_weights_only = check_flag(save_weights_only, "ModelCheckpoint: save_weights_only")
    if save_weights_only and not filepath.endswith(WEIGHT_SUFFIXES):
        hint = "; a .keras file is a whole model: save_weights_only=False" \
            if filepath.endswith(".keras") else ""
        raise ValueError(f"ModelCheckpoint: with save_weights_only=True the filepath must end in "
                         f"'.weights.h5' (Keras 3's weights file), '.h5' or '.npz', got "
                         f"{filepath!r}{hint}")
    if not save_weights_only and not filepath.endswith((".keras", ".h5", ".hdf5")):
        raise ValueError(f"ModelCheckpoint: to save the whole model the filepath must end in "
                         f"'.keras' (Keras 3's model format; '.h5' saves the weights in Keras's "
                         f"classic layout), got {filepath!r}; for weights alone pass "
                         "save_weights_only=True with '.weights.h5', '.h5' or '.npz'")
    return save_weights_only


def check_placeholders(filepath):
    """Each {placeholder} of a ModelCheckpoint filepath names a key ({epoch} or one
    of the logs') and formats a number: refused here, not after an epoch trained."""
    formatter = string.Formatter()
    try:
        fields = [(field, spec, conversion) for _, field, spec, conversion
                  in formatter.parse(filepath) if field is not None]
    except ValueError as error:
        raise ValueError(f"ModelCheckpoint: filepath {filepath!r} is not a format string "
                         f"({error}); a literal brace is written {{{{ or }}}}") from None
    for field, spec, conversion in fields:
        placeholder = "{" + field + (f"!{conversion}" if conversion else "") + \
            (f":{spec}" if spec else "") + "}"
        if not field.isidentifier():
            raise ValueError(f"ModelCheckpoint: filepath {filepath!r} has the placeholder "
                             f"{placeholder}, which names no key; name one: {{epoch}}, or a key "
                             "of the logs such as {val_loss}")
        if not any(formats(formatter, number, spec, conversion) for number in (1, 0.5)):
            raise ValueError(f"ModelCheckpoint: filepath {filepath!r}: the placeholder "
                             f"{placeholder} cannot format a number (epoch is an int, the "
                             "logs' values floats), e.g. {epoch:02d} or {val_loss:.2f}")


def formats(formatter, number, spec, conversion):
    try:
        formatter.format_field(formatter.convert_field(number, conversion), spec)
        return True
    except (ValueError, TypeError):
        return False


class EarlyStopping(Callback):
    """Stops training once ``monitor`` has not improved for ``patience`` epochs.

    Improving means beating the best so far by more than ``min_delta`` (mode
    'min', 'max', or 'auto': 'max' for accuracies). baseline: the wait restarts
    only on epochs that also beat it. start_from_epoch: epochs before it are
    not watched. restore_best_weights: at the end of training, put back the
    weights of the best epoch. Keras's rules, step for step.
    """

    def __init__(self, monitor="val_loss", min_delta=0, patience=0, verbose=0, mode="auto",
                 baseline=None, restore_best_weights=False, start_from_epoch=0):
        self.monitor, self.verbose = monitor, verbose
        self.min_delta = abs(check_number(min_delta, "EarlyStopping: min_delta"))
        self.patience = check_int(patience, "EarlyStopping: patience")
        self.baseline = check_optional_number(baseline, "EarlyStopping: baseline")
        self.restore_best_weights = restore_best_weights
        self.start_from_epoch = check_int(start_from_epoch, "EarlyStopping: start_from_epoch")
        self.mode = monitor_mode(mode, monitor, "EarlyStopping")
        self.on_train_begin()

    def on_train_begin(self, logs=None):
        self.wait = 0                  # epochs since the last improvement
        self.stopped_epoch = 0
        self.best = None
        self.best_weights = None
        self.best_epoch = 0

    def on_epoch_end(self, epoch, logs=None):
        current = monitored(logs, self.monitor, "EarlyStopping")
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights, self.best_epoch = self.model.get_weights(), epoch
        self.wait += 1
        if improved(current, self.best, self.mode, self.min_delta):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or improved(current, self.baseline, self.mode, self.min_delta):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose:
            announce(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose:
                announce(f"Restoring model weights from the end of the best epoch: "
                         f"{self.best_epoch + 1}.")
            self.model.set_weights(self.best_weights)


class LearningRateScheduler(Callback):
    """Sets the optimizer's learning rate at the start of every epoch to
    ``schedule(epoch, lr)`` (epoch from 0, lr the current rate), or to
    ``schedule(epoch)`` for a schedule of one argument, as Keras's; logs the
    rate as 'learning_rate'.

    (minires.train.fit's own ``schedule`` argument is finer: a rate for every
    batch, from the fractional epoch. Use one or the other.)
    """
    sets_learning_rate = True

    def __init__(self, schedule, verbose=0):
        if not callable(schedule):
            raise TypeError(f"LearningRateScheduler: schedule must be a function (epoch, lr) -> lr, "
                            f"got {type(schedule).__name__}")
        self.schedule, self.verbose = schedule, verbose
        self.arguments = schedule_arguments(schedule)

    def on_epoch_begin(self, epoch, logs=None):
        lr = float(self.optimizer.learning_rate)
        asked = (epoch, lr)[:self.arguments]
        rate = set_learning_rate(self.optimizer, self.schedule(*asked), "LearningRateScheduler: "
                                 f"schedule({', '.join(map(str, asked))})")
        if self.verbose:
            announce(f"\nEpoch {epoch + 1}: LearningRateScheduler setting learning rate to {rate}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(self.optimizer.learning_rate)


def set_learning_rate(optimizer, rate, where):
    """Write ``rate`` into the optimizer through the one check of a rate
    (minires.optim.check_learning_rate, naming ``where``); returns it as a float."""
    rate = check_learning_rate(rate, where)
    optimizer.learning_rate = rate
    return rate


class ReduceLROnPlateau(Callback):
    """Multiplies the optimizer's learning rate by ``factor`` once ``monitor``
    has not improved for ``patience`` epochs; Keras 3's rules, step for step:

    - improving means beating the best so far by more than ``min_delta`` (mode
      'min', 'max', or 'auto': 'max' for accuracies); the first value does, and
      an improvement restarts the wait;
    - for ``cooldown`` epochs after a reduction nothing waits: each of them
      counts the cooldown down and sets the wait to 0;
    - an epoch that neither improves nor cools down adds to the wait; at
      ``patience`` the rate becomes max(rate * factor, min_lr), the wait
      restarts and the cooldown begins; a rate at min_lr already stays, and
      the wait goes on growing (compared as float32: Keras's rate is a float32
      variable, so min_lr reached by multiplying counts as reached).

    Logs the epoch's rate as 'learning_rate' (before this epoch's reduction).
    """
    sets_learning_rate = True

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto",
                 min_delta=1e-4, cooldown=0, min_lr=0.0):
        self.factor = check_number(factor, "ReduceLROnPlateau: factor (new rate = rate * factor)",
                                   0.0, 1.0)
        self.patience = check_int(patience, "ReduceLROnPlateau: patience")
        self.cooldown = check_int(cooldown, "ReduceLROnPlateau: cooldown")
        self.min_delta = abs(check_number(min_delta, "ReduceLROnPlateau: min_delta"))
        self.min_lr = check_learning_rate(min_lr, "ReduceLROnPlateau: min_lr")
        self.monitor, self.verbose = monitor, verbose
        self.mode = monitor_mode(mode, monitor, "ReduceLROnPlateau")
        self.on_train_begin()

    def on_train_begin(self, logs=None):
        self.best, self.wait, self.cooldown_counter = None, 0, 0

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        logs["learning_rate"] = float(self.optimizer.learning_rate)
        current = monitored(logs, self.monitor, "ReduceLROnPlateau", "; the rate stays")
        if current is None:
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if improved(current, self.best, self.mode, self.min_delta):
            self.best, self.wait = current, 0
        elif self.cooldown_counter == 0:
            self.wait += 1
            if self.wait >= self.patience and self.reduce(epoch):
                self.cooldown_counter, self.wait = self.cooldown, 0

    def reduce(self, epoch):
        """Lower the rate unless it is at min_lr already; whether it did."""
        rate = float(self.optimizer.learning_rate)
        if not np.float32(rate) > np.float32(self.min_lr):
            return False
        rate = set_learning_rate(self.optimizer, max(rate * self.factor, self.min_lr),
                                 f"ReduceLROnPlateau at epoch {epoch + 1}")
        if self.verbose:
            announce(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {rate}.")
        return True


def schedule_arguments(schedule):
    """2 for a schedule (epoch, lr), 1 for a schedule (epoch): Keras takes both."""
    try:
        signature = inspect.signature(schedule)
    except (TypeError, ValueError):          # no signature to read (some builtins): Keras's form
        return 2
    for count in (2, 1):
        try:
            signature.bind(*range(count))
            return count
        except TypeError:
            pass
    raise TypeError(f"LearningRateScheduler: schedule {describe(schedule)}{signature} takes "
                    "neither (epoch, lr) nor (epoch)")


# --- progress output ----------------------------------------------------------------
def check_verbose(verbose, caller):
    """Keras's verbose as 0, 1 or 2: 'auto' is 1; 0 on the ranks other than 0
    of a distributed run (minires.distributed), which rank 0 reports."""
    if verbose == "auto":
        verbose = 1
    if isinstance(verbose, (bool, int)) and verbose in (0, 1, 2):
        return int(verbose) if collective.leads() else 0
    raise ValueError(f"{caller}: verbose must be 'auto', 0, 1 or 2, got {verbose!r}")


def redraws(stream):
    """Can a line be redrawn in place (a terminal, or a notebook)?"""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) or "ipykernel" in sys.modules


class Progbar:
    """Keras's progress line over ``target`` steps:

        12/57 [=====>........................] - 1s 20ms/step - loss: 0.4100 - accuracy: 0.8800

    verbose=1 where the line can be redrawn (a terminal): redrawn in place as
    steps finish (at most every ``interval`` seconds), after a ``title`` line.
    verbose=1 elsewhere (a file, a pipe, CI) and verbose=2: ONE line, written
    by finish(), the title in front. verbose=0: nothing.
    """

    def __init__(self, target, verbose=1, title=None, width=30, interval=0.05, stream=None):
        self.target, self.verbose, self.width, self.interval = target, verbose, width, interval
        self.stream = stream if stream is not None else sys.stdout
        self.live = verbose == 1 and redraws(self.stream)
        self.prefix = "" if self.live or title is None else f"{title} - "
        self.start = time.perf_counter()
        self.drawn_at, self.drawn_width, self.current = -math.inf, 0, 0
        if self.live and title is not None:
            self.write(title + "\n")

    def update(self, current, logs=None):
        """``current`` steps done; logs: the running values to show."""
        self.current = current
        now = time.perf_counter()
        if self.live and now - self.drawn_at >= self.interval:
            self.draw(self.line(current, logs, bar=True))
            self.drawn_at = now

    def finish(self, logs=None):
        """The final line: every step done (or where training stopped), final values."""
        if self.live:
            self.draw(self.line(self.current or self.target, logs, bar=True))
            self.write("\n")
        elif self.verbose:
            self.write(self.prefix + self.line(self.current or self.target, logs, bar=False) + "\n")

    def line(self, current, logs, bar):
        seconds = time.perf_counter() - self.start
        digits = len(str(self.target))
        text = f"{current:>{digits}}/{self.target}"
        if bar:
            done = int(self.width * current / self.target) if self.target else self.width
            arrow = "" if done == 0 else "=" * (done - 1) + (">" if current < self.target else "=")
            text += f" [{arrow}{'.' * (self.width - done)}]"
        text += f" - {seconds:.0f}s {per_step(seconds / max(current, 1))}"
        for key, value in (logs or {}).items():
            text += f" - {key}: {value:.4f}" if abs(value) > 1e-3 else f" - {key}: {value:.4e}"
        return text

    def draw(self, text):
        self.write("\r" + text + " " * max(0, self.drawn_width - len(text)))
        self.drawn_width = len(text)

    def write(self, text):
        self.stream.write(text)
        self.stream.flush()


def per_step(seconds):
    """'20ms/step', as Keras writes a time per step."""
    if seconds >= 1 or seconds == 0:
        return f"{seconds:.0f}s/step"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.0f}ms/step"
    return f"{seconds * 1e6:.0f}us/step"


class ProgbarLogger(Callback):
    """fit's progress output: one Progbar per epoch (fit adds it for verbose 1 and 2)."""

    def __init__(self, verbose=1):
        self.verbose = verbose
        self.bar = None

    def on_epoch_begin(self, epoch, logs=None):
        self.bar = Progbar(self.params["steps"], self.verbose,
                           title=f"Epoch {epoch + 1}/{self.params['epochs']}")

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(batch + 1, logs)

    def on_epoch_end(self, epoch, logs=None):
        self.bar.finish(logs)
