"""minires.distributed's functions (the package docstring explains them)."""
import copy

import numpy as np

from .. import collective, optim
from ..backend import get_array_module
from ..graph import Graph
from ..io.validate import require_built
from ..layers.normalization import BatchNormalization, SyncBatchNormalization
from ..utils import check_int

Average, Sum = "Average", "Sum"          # allreduce's ops, as hvd.Average and hvd.Sum


def init(abort_on_error=True):
    """Join the run that mpiexec started this process in (alone without one).
    abort_on_error: an uncaught exception on this rank ends every rank
    (minires/collective.py); False leaves sys.excepthook alone."""
    collective.init(abort_on_error)


def rank():
    """This process's number in the run, 0 .. size() - 1."""
    return collective.world().rank


def size():
    """How many processes train together (1 alone)."""
    return collective.size()


def local_rank():
    """This process's number among the ranks on its machine (pick its GPU with it)."""
    return collective.world().local_rank


def allreduce(array, op=Average, name=None):
    """``array`` summed (op=Sum) or averaged (op=Average, floats only) over the
    ranks, a new array on its device. Every call checks first that the ranks
    give the same shape and dtype (``name`` labels the call in that message)."""
    if op not in (Average, Sum):
        raise ValueError(f"allreduce: op must be minires.distributed.Average or Sum, got {op!r}")
    xp = get_array_module(array)
    array = xp.asarray(array)
    if op == Average and array.dtype.kind != "f":
        raise TypeError(f"allreduce: op=Average needs a float array, got {array.dtype}; use op=Sum")
    if array.dtype.kind not in "fiu":
        raise TypeError(f"allreduce: a {array.dtype} array has no sum; give numbers")
    collective.check_same(f"allreduce {name or ''}".rstrip(), [f"{array.shape} {array.dtype}"],
                          once=False)
    total = collective.allreduce_sum(array.copy())
    return total / size() if op == Average else total


def broadcast_weights(model, root_rank=0):
    """Give every rank rank ``root_rank``'s weights, all of them (BN's moving
    statistics too), in one message per float type. Call it once before
    training (BroadcastGlobalVariablesCallback does, in fit), so that the ranks
    start from one model."""
    root_rank = check_root(root_rank, "broadcast_weights")
    require_built(model, "broadcast")
    pairs = list(model.parameters(trainable_only=False))
    arrays = [layer.params[name] for layer, name in pairs]
    collective.check_same(f"broadcast_weights (model {model.name!r})", *described(pairs, arrays))
    for group, flat in flat_groups(arrays):
        # sent as bytes: a float16 weight needs no MPI type of its own
        flat = collective.broadcast(flat.view(np.uint8), root_rank).view(flat.dtype)
        for index, piece in split(flat, [arrays[i] for i in group]):
            layer, name = pairs[group[index]]
            layer.params[name][...] = piece
            layer.weights_changed()


def check_root(root_rank, caller):
    root_rank = check_int(root_rank, f"{caller}: root_rank")
    if root_rank >= size():
        raise ValueError(f"{caller}: root_rank {root_rank} is not a rank of this run of {size()}")
    return root_rank


def described(pairs, arrays):
    """(['(shape) dtype' of each array], ['layer/param' of each]): what check_same
    compares, and how it names them."""
    return ([f"{array.shape} {array.dtype}" for array in arrays],
            [f"{layer.name}/{name}" for layer, name in pairs])


def flat_groups(arrays):
    """(indices, one flat array of them) for each float type among ``arrays``."""
    groups = {}
    for index, array in enumerate(arrays):
        groups.setdefault(array.dtype, []).append(index)
    for indices in groups.values():
        xp = get_array_module(arrays[indices[0]])
        yield indices, xp.concatenate([arrays[i].ravel() for i in indices])


def split(flat, like):
    """(index, the piece of ``flat`` shaped as like[index]) in order."""
    start = 0
    for index, array in enumerate(like):
        yield index, flat[start:start + array.size].reshape(array.shape)
        start += array.size


class AveragingGradients:
    """What DistributedOptimizer adds to an optimizer's class: ``step`` first
    averages every gradient over the ranks, in one allreduce per float type
    (a flat buffer, not one message per array), then takes the step of the
    optimizer's own rule on every rank alike."""

    def step(self, model, learning_rate=None):
        average_gradients(model)
        super().step(model, learning_rate)


def average_gradients(model):
    """Replace each trainable weight's gradient by its mean over the ranks."""
    pairs = [(layer, name) for layer, name in model.parameters() if name in layer.grads]
    grads = [layer.grads[name] for layer, name in pairs]
    collective.check_same(f"DistributedOptimizer (model {model.name!r}): gradients",
                          *described(pairs, grads))
    if size() == 1:
        return
    for group, flat in flat_groups(grads):
        # float16 has no MPI sum: its gradients travel as float32
        total = collective.allreduce_sum(flat.astype(np.promote_types(flat.dtype, np.float32)))
        mean = (total / size()).astype(flat.dtype)
        for index, piece in split(mean, [grads[i] for i in group]):
            layer, name = pairs[group[index]]
            layer.grads[name] = piece


def DistributedOptimizer(optimizer):
    """A copy of ``optimizer`` (minires.optim's, or Keras's name: 'sgd', ...)
    whose step averages the gradients over the ranks first. Its class is a
    subclass of the optimizer's, under the same name: hyper-parameters,
    learning-rate callbacks, state and checkpoints are the optimizer's own."""
    optimizer = optim.get(optimizer)
    if isinstance(optimizer, AveragingGradients):
        return optimizer
    kind = type(optimizer)
    distributed = copy.deepcopy(optimizer)
    distributed.__class__ = type(kind.__name__, (AveragingGradients, kind),
                                 {"__module__": kind.__module__, "__doc__": kind.__doc__})
    return distributed


def convert_sync_batchnorm(model):
    """Make every BatchNormalization of ``model`` (nested models' too) a
    SyncBatchNormalization, in place, as PyTorch's SyncBatchNorm.convert_sync_batchnorm:
    the same weights and statistics, reduced over the ranks from now on (for
    models built by code that writes BatchNormalization, such as
    minires.applications). Returns ``model``."""
    for layer in model.layers:
        if isinstance(layer, Graph):
            convert_sync_batchnorm(layer)
        elif type(layer) is BatchNormalization:
            layer.__class__ = SyncBatchNormalization      # the same object: the graph still holds it
            layer.synchronized = True
    return model


def shard(x, y=None):
    """This rank's part of (x, y): rows rank, rank + R, rank + 2R, ... (R = size()),
    the same number on every rank (the last N % R rows are left out, so that
    every rank takes as many steps). x: an array, or a list or dict of arrays
    (one per model input). Returns x's part, or (x's, y's)."""
    rows = slice(rank(), None, size())
    count = samples(x) // size()
    if count == 0:
        raise ValueError(f"shard: {samples(x)} samples cannot be split over {size()} ranks")

    def part(array):
        return array[rows][:count]

    if isinstance(x, dict):
        x_part = {key: part(value) for key, value in x.items()}
    elif isinstance(x, (list, tuple)):
        x_part = type(x)(part(a) for a in x)
    else:
        x_part = part(x)
    if y is None:
        return x_part
    if len(y) != samples(x):
        raise ValueError(f"shard: x has {samples(x)} samples but y has {len(y)}")
    return x_part, part(y)


def samples(x):
    first = next(iter(x.values())) if isinstance(x, dict) else x[0] if isinstance(x, (list, tuple)) else x
    return len(first)
