"""Keras's training API: compile, fit, evaluate, predict, train_on_batch, test_on_batch.

    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, batch_size=32, epochs=10, validation_split=0.1,
                        callbacks=[EarlyStopping(patience=2)])
    loss, accuracy = model.evaluate(x_test, y_test)
    probabilities = model.predict(x_test)

minires.models.Model takes these methods from TrainingAPI here. They hold no
loop of their own: fit is minires.train.fit (read it there),
with the optimizer, loss and metrics that compile stored in ``model.compiled``.
Keras's signatures and defaults, except: x and y are arrays (no datasets or
generators). Every argument and x and y are checked before anything runs
(minires.train: a failed call changes nothing). fit shuffles from minires's
global generator, as Keras: keras.utils.set_random_seed(s) repeats a run. A
model that overrides Keras's train_step, test_step or predict_step is refused
by the calls that would run them (minires.train.refuse_custom_steps).
"""
from . import losses
from . import metrics as metrics_module
from . import optim
from . import train
from .callbacks import History, Progbar, callback_list, check_verbose


class Compiled:
    """What compile() chose: ``optimizer``, ``loss`` (None: fit picks the
    cross-entropy that fits the output and the labels, minires.train.choose_loss)
    and ``metrics`` {log name: function}."""

    def __init__(self, optimizer, loss, metrics):
        self.optimizer, self.loss, self.metrics = optimizer, loss, metrics

    def __repr__(self):
        return (f"Compiled(optimizer={type(self.optimizer).__name__}, loss="
                f"{type(self.loss).__name__ if self.loss is not None else None}, "
                f"metrics={list(self.metrics)})")


class TrainingAPI:
    """Keras's training methods of minires.models.Model."""

    def compile(self, optimizer="rmsprop", loss=None, metrics=None):
        """Choose the optimizer, loss and metrics of ``fit``; stored in ``model.compiled``.

        optimizer: 'rmsprop', 'adam', 'sgd' (Keras's: minires.optim.KerasRMSprop(0.001),
        KerasAdam(0.001), KerasSGD(0.01)) or an optimizer object.
        loss: 'sparse_categorical_crossentropy', 'categorical_crossentropy' (on
        probabilities, as Keras) or a loss object. metrics: e.g. ['accuracy'],
        keras.metrics objects, functions (y_true, y_pred) (minires.metrics).
        Everything is checked here, before any training: a loss on logits
        (from_logits=True) for a model ending with a softmax is a ValueError.
        """
        optimizer = optim.get(optimizer)
        loss = losses.get(loss) if loss is not None else None
        metrics = metrics_module.get(metrics)
        if loss is not None and self.built:            # else traced at its first call: fit checks
            train.choose_loss(self, loss, None)        # the softmax-twice check
        self.compiled = Compiled(optimizer, loss, metrics)

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
            sample_weight=None, initial_epoch=0):
        """Keras's Model.fit on arrays: minires.train.fit with the compiled choices,
        shuffling from the global generator (seed=None). Returns the History (its
        ``history`` dict: loss, metrics, val_ ...)."""
        state = compiled(self, "fit")
        history = History()
        train.fit(self, x, y, epochs=epochs, batch_size=batch_size, optimizer=state.optimizer,
                  loss=state.loss, metrics=state.metrics, validation_data=validation_data,
                  validation_split=validation_split, shuffle=shuffle, initial_epoch=initial_epoch,
                  callbacks=[*callback_list(callbacks, "fit"), history], verbose=verbose,
                  seed=None, sample_weight=sample_weight, class_weight=class_weight)
        return history

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None):
        """The loss on (x, y) in inference mode, then each metric: [loss, accuracy],
        or the loss alone (a float) without metrics, as Keras."""
        state = compiled(self, "evaluate")
        values = train.evaluate(self, x, y, batch_size=train.check_batch_size(batch_size, "evaluate"),
                                loss=state.loss, metrics=state.metrics, verbose=verbose,
                                sample_weight=sample_weight)
        return as_keras_result(values)

    def predict(self, x, batch_size=None, verbose="auto"):
        """The model's outputs for ``x``, in inference mode, in batches of at most
        ``batch_size`` (None: 32), fewer where the plan runs fewer at once."""
        verbose = check_verbose(verbose, "predict")
        batch_size = train.check_batch_size(batch_size, "predict")
        train.refuse_custom_steps(self, "predict", "predict_step")
        x = train.as_inputs(self, x, "predict")
        bar = Progbar(-(-train.samples(x) // batch_size), verbose)
        outputs = self.predict_arrays(x, batch_size)
        bar.finish()
        return outputs

    def train_on_batch(self, x, y=None, sample_weight=None, class_weight=None):
        """One optimizer step on the batch (x, y); its loss [and metrics], measured
        before the step, as Keras (the metrics reset first). A failed step
        changes nothing."""
        state = compiled(self, "train_on_batch")
        train.refuse_custom_steps(self, "train_on_batch", "train_step")
        x, y, w, loss = train.prepare(self, x, y, state.loss, "train_on_batch", sample_weight,
                                      class_weight)
        metrics_module.reset(state.metrics)
        values = train.train_step(self, x, y, state.optimizer, loss, state.metrics,
                                  state.optimizer.learning_rate, sample_weight=w)
        return as_keras_result(values.values())

    def test_on_batch(self, x, y=None, sample_weight=None):
        """The loss [and metrics] of the batch (x, y) in inference mode."""
        state = compiled(self, "test_on_batch")
        train.refuse_custom_steps(self, "test_on_batch", "test_step")
        x, y, w, loss = train.prepare(self, x, y, state.loss, "test_on_batch", sample_weight)
        metrics_module.reset(state.metrics)
        return as_keras_result(train.test_step(self, x, y, loss, state.metrics, w).values())


def compiled(model, caller):
    """``model.compiled``, or a RuntimeError saying to compile first."""
    state = getattr(model, "compiled", None)
    if state is None:
        raise RuntimeError(f"{caller}: model {model.name!r} is not compiled; call "
                           "model.compile(optimizer=..., loss=..., metrics=[...]) first")
    return state


def as_keras_result(values):
    """[loss, metric, ...], or the loss alone without metrics."""
    values = [float(v) for v in values]
    return values[0] if len(values) == 1 else values
