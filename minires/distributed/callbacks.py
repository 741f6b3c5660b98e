"""Horovod's Keras callbacks, for fit on every rank (minires.distributed):

    callbacks=[BroadcastGlobalVariablesCallback(0),   # one starting model for every rank
               MetricAverageCallback(),               # before the callbacks that read the logs
               ReduceLROnPlateau(...), ...]
"""
from .. import collective
from ..callbacks import Callback
from .core import Average, allreduce, broadcast_weights, check_root


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
