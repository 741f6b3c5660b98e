"""Horovod's Keras callbacks, for fit on every rank (minires.distributed):

    callbacks=[BroadcastGlobalVariablesCallback(0),   # one starting model for every rank
               MetricAverageCallback(),               # before the callbacks that read the logs
               LearningRateWarmupCallback(initial_lr=0.1 * hvd.size(), warmup_epochs=5),
               ReduceLROnPlateau(...), ...]
"""
from .. import collective
from ..callbacks import Callback, announce, set_learning_rate
from ..optim import check_learning_rate
from ..utils import check_flag, check_number
from .core import Average, allreduce, broadcast_weights, check_root, size


class BroadcastGlobalVariablesCallback(Callback):
    """At the start of fit, every rank takes rank ``root_rank``'s weights
    (minires.distributed.broadcast_weights): ranks initialised from different
    random draws, or only rank 0 loading a file, train one model from then on.
    It also checks that every rank will take as many steps per epoch and as
    many epochs: otherwise one rank would wait forever in a reduction the
    others never make."""

    def __init__(self, root_rank=0):
        self.root_rank = check_root(root_rank, "BroadcastGlobalVariablesCallback")

    def on_train_begin(self, logs=None):
        collective.check_same("fit (BroadcastGlobalVariablesCallback)",
                              [f"{self.params['steps']} steps per epoch",
                               f"{self.params['epochs']} epochs"], once=False)
        broadcast_weights(self.model, self.root_rank)


class MetricAverageCallback(Callback):
    """At the end of each epoch, every number in the logs becomes its mean over
    the ranks (one allreduce), so that every rank, and every callback after
    this one (EarlyStopping, ReduceLROnPlateau, ModelCheckpoint's best), sees
    the same values and takes the same decisions; without it each rank would
    judge its own shard's loss, and the ranks could part ways."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or collective.size() == 1:
            return
        names = sorted(name for name, value in logs.items() if isinstance(value, (int, float)))
        values = allreduce([float(logs[name]) for name in names], Average,
                           name=f"MetricAverageCallback {names}")
        logs.update({name: float(value) for name, value in zip(names, values)})


class LearningRateWarmupCallback(Callback):
    """Horovod's gradual warm-up (Goyal et al. 2017, "Accurate, large minibatch
    SGD"): R ranks train on batches R times larger, with a rate R times larger
    (``initial_lr``), which is unstable from random weights; so the rate climbs
    linearly, batch by batch, from initial_lr / R to initial_lr over the first
    ``warmup_epochs`` epochs:

        lr(e) = initial_lr / R * (e (R - 1) / warmup_epochs + 1),  e = epoch + (batch + 1) / steps

    momentum_correction: for the optimisers whose momentum holds the rate
    (Keras's SGD and RMSprop: m <- momentum m - lr g), the momentum is scaled
    by new_lr / old_lr for the one batch whose rate changed, so that the old
    steps in m do not keep their old rate; PyTorch's SGD multiplies by the rate
    after the momentum, and needs no correction. Logs the rate as 'lr'.
    """
    sets_learning_rate = True

    def __init__(self, initial_lr, warmup_epochs=5, momentum_correction=True, steps_per_epoch=None,
                 verbose=0):
        self.initial_lr = check_learning_rate(initial_lr, "LearningRateWarmupCallback: initial_lr")
        self.warmup_epochs = check_number(warmup_epochs, "LearningRateWarmupCallback: "
                                          "warmup_epochs", 0.0, include_low=False)
        self.momentum_correction = check_flag(momentum_correction,
                                              "LearningRateWarmupCallback: momentum_correction")
        self.steps_per_epoch, self.verbose = steps_per_epoch, verbose
        self.epoch, self.restore_momentum = 0, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.epoch >= self.warmup_epochs:
            return
        steps = self.steps_per_epoch or self.params["steps"]
        progress = self.epoch + (batch + 1) / steps
        multiplier = (progress * (size() - 1) / self.warmup_epochs + 1) / size()
        old_lr = self.optimizer.learning_rate
        new_lr = set_learning_rate(self.optimizer, self.initial_lr * multiplier,
                                   "LearningRateWarmupCallback")
        if self.momentum_correction and getattr(self.optimizer, "rate_in_momentum", False) \
                and old_lr > 0:
            self.restore_momentum = self.optimizer.momentum
            self.optimizer.momentum = self.restore_momentum * new_lr / old_lr

    def on_train_batch_end(self, batch, logs=None):
        if self.restore_momentum is not None:
            self.optimizer.momentum, self.restore_momentum = self.restore_momentum, None

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = float(self.optimizer.learning_rate)
        if epoch + 1 == self.warmup_epochs and self.verbose:
            announce(f"\nEpoch {epoch + 1}: finished gradual learning rate warmup to "
                     f"{self.optimizer.learning_rate:g}.")
