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


def init(abort_on_error=True, share_cores=True):
    """Join the run that mpiexec started this process in (alone without one).
    abort_on_error: an uncaught exception on this rank ends every rank
    (minires/collective.py); False leaves sys.excepthook alone. share_cores:
    the ranks on one machine split its cores, each limiting its BLAS and Numba
    threads to cores // ranks (minires.backend.share_cores; not where you set
    OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, MKL_NUM_THREADS or NUMBA_NUM_THREADS)."""
    collective.init(abort_on_error, share_cores)


def rank():
    """This process's number in the run, 0 .. size() - 1."""
    return collective.world().rank


def size():
    """How many processes train together (1 alone)."""
    return collective.size()


def local_rank():
    """This process's number among the ranks on its machine (pick its GPU with it)."""
    return collective.world().local_rank


def local_size():
    """How many ranks run on this process's machine."""
    return collective.world().local_size


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
    return reduced(array, op)


def reduced(array, op):
    """``array`` (numbers of one type on every rank) summed or averaged over the
    ranks, a new array of its type. float16 is added up in float32: one rounding
    at the end, and not every MPI has a float16 type (MPICH has)."""
    total = collective.allreduce_sum(array.astype(np.promote_types(array.dtype, np.float32))
                                     if array.dtype.kind == "f" else array.copy())
    return (total / size() if op == Average else total).astype(array.dtype, copy=False)


def broadcast(array, root_rank=0, name=None):
    """Rank ``root_rank``'s ``array`` on every rank (a new array on its device);
    the ranks' shapes and dtypes are checked first, as allreduce's."""
    root_rank = check_root(root_rank, "broadcast")
    array = get_array_module(array).array(array)          # a contiguous copy: ours to send into
    collective.check_same(f"broadcast {name or ''}".rstrip(), [f"{array.shape} {array.dtype}"],
                          once=False)
    received = collective.broadcast(array.reshape(-1).view(np.uint8), root_rank)
    return received.view(array.dtype).reshape(array.shape)


def is_initialized():
    """Whether init() was called."""
    return collective.initialized()


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


class Compression:
    """Horovod's gradient compression choices: ``none`` (what minires does: the
    gradients travel in their own float type) and ``fp16`` (refused)."""
    none, fp16 = "none", "fp16"


# Horovod's DistributedOptimizer arguments minires has no machinery for, at the values
# that change nothing; another value is refused by name
HOROVOD_OPTIONS = {"compression": Compression.none, "backward_passes_per_step": 1,
                   "gradient_predivide_factor": 1.0, "device_dense": "", "device_sparse": "",
                   "num_groups": 0, "groups": None}
HOROVOD_HARMLESS = ("name", "sparse_as_dense", "average_aggregated_gradients")   # no effect here


class AveragingGradients:
    """What DistributedOptimizer adds to an optimizer's class: ``step`` first
    averages (or sums) every gradient over the ranks, in one allreduce per
    float type (a flat buffer, not one message per array), then takes the step
    of the optimizer's own rule on every rank alike."""
    _gradient_op = Average

    def planned_step(self, model, learning_rate=None):          # what step() takes, too
        reduce_gradients(model, self._gradient_op)
        return super().planned_step(model, learning_rate)


def reduce_gradients(model, op=Average):
    """Replace each trainable weight's gradient by its mean (or sum) over the ranks."""
    pairs = [(layer, name) for layer, name in model.parameters() if name in layer.grads]
    grads = [layer.grads[name] for layer, name in pairs]
    collective.check_same(f"DistributedOptimizer (model {model.name!r}): gradients",
                          *described(pairs, grads))
    if size() == 1:
        return
    for group, flat in flat_groups(grads):
        for index, piece in split(reduced(flat, op), [grads[i] for i in group]):
            layer, name = pairs[group[index]]
            layer.grads[name] = piece


def DistributedOptimizer(optimizer, op=Average, **horovod_options):
    """A copy of ``optimizer`` (minires.optim's, or Keras's name: 'sgd', ...)
    whose step averages the gradients over the ranks first (op=Sum: adds them).
    Its class is a subclass of the optimizer's, under the same name:
    hyper-parameters, learning-rate callbacks, state and checkpoints are the
    optimizer's own. Horovod's other arguments are taken at the values that
    change nothing (compression=Compression.none, backward_passes_per_step=1,
    ...) and refused by name at any other."""
    check_horovod_options(horovod_options)
    if op not in (Average, Sum):
        raise ValueError(f"DistributedOptimizer: op must be minires.distributed.Average or Sum, "
                         f"got {op!r}")
    optimizer = optim.get(optimizer)
    kind = type(optimizer)
    if isinstance(optimizer, AveragingGradients):
        kind = kind.__mro__[2]                           # the optimizer's own class
    distributed = copy.deepcopy(optimizer)
    distributed.__class__ = type(kind.__name__, (AveragingGradients, kind),
                                 {"__module__": kind.__module__, "__doc__": kind.__doc__})
    distributed._gradient_op = op
    return distributed


def check_horovod_options(options):
    for name, value in options.items():
        if name in HOROVOD_HARMLESS or (name in HOROVOD_OPTIONS and value == HOROVOD_OPTIONS[name]):
            continue
        what = (f"a Horovod option minires does not implement (it reduces every gradient of "
                f"every step, in its own float type); leave it at {HOROVOD_OPTIONS[name]!r}"
                if name in HOROVOD_OPTIONS else "not an argument of it")
        raise TypeError(f"DistributedOptimizer: {name}={value!r} is {what}")


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
