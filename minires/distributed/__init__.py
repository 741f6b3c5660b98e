"""Data-parallel training over MPI, in Horovod's Keras API:

    from minires import distributed as hvd           # Horovod users: `import ... as hvd`

    hvd.init()
    x, y = hvd.shard(x, y)                            # each rank trains on its own part
    model.compile(optimizer=hvd.DistributedOptimizer(KerasSGD(0.01 * hvd.size(), momentum=0.9)),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, batch_size=32, epochs=10, callbacks=[
        hvd.callbacks.BroadcastGlobalVariablesCallback(0),   # every rank starts from rank 0's weights
        hvd.callbacks.MetricAverageCallback(),               # the epoch's logs averaged over ranks
        hvd.callbacks.LearningRateWarmupCallback(0.01 * hvd.size(), warmup_epochs=3)])

    mpiexec -n 4 python train.py                      # pip install 'minires[mpi]' gives mpiexec

Why averaging gradients is training on the big batch. The loss of a batch is
the mean of its samples' losses. Split a batch of R n samples into R shards of
n, one per rank: the whole batch's loss is the mean of the shards' losses,
L = (1/R) sum_r L_r, so its gradient is the mean of theirs,
dL/dW = (1/R) sum_r dL_r/dW. Each rank runs forward and backward on its shard;
DistributedOptimizer averages the gradients (one allreduce) and every rank takes
the same step from the same weights: R processes train one model on batches of
R n, n per rank (scale the learning rate with R, as Horovod advises, to keep the
step of a sample the same).

Batch normalisation breaks the equation: in training it normalises with its
batch's mean and variance, so L_r depends on how the batch was split (n samples'
statistics, not R n's). SyncBatchNormalization reduces the statistics, and their
gradients, over the ranks (its docstring derives it): the equation holds again.
``convert_sync_batchnorm(model)`` makes a built model's BatchNormalization layers so.

Alone (no mpiexec, or mpi4py not installed) size() is 1, every collective returns
its input, and the same script trains on one process. Only rank 0 prints
progress (fit, evaluate, predict) and writes ModelCheckpoint and fit's
checkpoint files. An uncaught exception on any rank ends every rank (init's
``abort_on_error``); ranks whose models or messages differ are told so, every
rank naming the ranks that differ, at the first collective (minires/collective.py).
"""
from ..layers.normalization import SyncBatchNormalization
from . import callbacks
from .core import (Average, Compression, DistributedOptimizer, Sum, allreduce, broadcast,
                   broadcast_weights, convert_sync_batchnorm, init, is_initialized, local_rank,
                   local_size, rank, shard, size)

__all__ = ["init", "is_initialized", "rank", "size", "local_rank", "local_size", "allreduce", "broadcast",
           "Average", "Sum", "broadcast_weights", "DistributedOptimizer", "Compression", "shard",
           "SyncBatchNormalization", "convert_sync_batchnorm", "callbacks"]
