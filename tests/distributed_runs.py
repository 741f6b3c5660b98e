"""Programs that tests/test_distributed.py runs under ``mpiexec -n 2``, and the
single-process twins it compares them with.

    mpiexec -n 2 python tests/distributed_runs.py train OUT sync|plain
    mpiexec -n 2 python tests/distributed_runs.py renamed OUT
    mpiexec -n 2 python tests/distributed_runs.py broadcast OUT
    mpiexec -n 2 python tests/distributed_runs.py collectives OUT
    mpiexec -n 2 python tests/distributed_runs.py threads OUT
    mpiexec -n 2 python tests/distributed_runs.py horovod OUT
    mpiexec -n 2 python tests/distributed_runs.py raise OUT
    mpiexec -n 2 python tests/distributed_runs.py mismatch OUT gradients|broadcast

Each rank writes what it ended with to OUT/rank<r>.npz (weights by
'layer/param'), or ends as the test expects.
"""
import os
import sys

import numpy as np

from minires import backend
from minires import distributed as hvd
from minires.initializers import set_random_seed
from minires.layers import (Activation, Add, BatchNormalization, Conv2D, Dense,
                            GlobalAveragePooling2D, Input, SyncBatchNormalization)
from minires.losses import SparseCategoricalCrossentropy
from minires.models import Model
from minires.optim import SGD

SAMPLES, CLASSES, STEPS = 16, 3, 3


def small_resnet(seed, batch_norm=SyncBatchNormalization, width=4):
    """conv-BN-ReLU, one residual block of two conv-BNs (no conv bias: BN's beta is
    the bias, and a bias before BN has no gradient), pooling, a classifier:
    float64, weights drawn from ``seed``."""
    set_random_seed(seed)
    with backend.floatx_scope("float64"):
        x_in = Input((6, 6, 2))
        x = Activation("relu")(batch_norm(momentum=0.9, name="bn0")(
            Conv2D(width, 3, padding="same", use_bias=False, name="conv0")(x_in)))
        y = Activation("relu")(batch_norm(momentum=0.9, name="bn1")(
            Conv2D(width, 3, padding="same", use_bias=False, name="conv1")(x)))
        y = batch_norm(momentum=0.9, name="bn2")(Conv2D(width, 3, padding="same", use_bias=False, name="conv2")(y))
        x = Activation("relu")(Add()([x, y]))
        out = Dense(CLASSES, name="logits")(GlobalAveragePooling2D()(x))
        return Model(x_in, out, name="small_resnet")


def data():
    """16 samples and their classes, the same on every rank."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((SAMPLES, 6, 6, 2)) * 2.0 + 0.5
    return x, np.arange(SAMPLES) % CLASSES


def train(model, x, y, optimizer, callbacks=()):
    """STEPS steps of SGD with momentum, the whole of (x, y) a batch."""
    model.compile(optimizer=optimizer, loss=SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=len(x), epochs=STEPS, shuffle=False, verbose=0,
              callbacks=list(callbacks))


def optimizer():
    return SGD(0.1, momentum=0.9)


def weights(model):
    return {f"{layer.name}/{name}": backend.to_device(layer.params[name], "cpu")
            for layer, name in model.parameters(trainable_only=False)}


def save(out, model):
    np.savez(os.path.join(out, f"rank{hvd.rank()}.npz"), **weights(model))


def run_train(out, kind):
    """Each rank starts from its own random weights and trains on its 8 samples."""
    batch_norm = SyncBatchNormalization if kind == "sync" else BatchNormalization
    model = small_resnet(seed=100 + hvd.rank(), batch_norm=batch_norm)
    x, y = hvd.shard(*data())
    train(model, x, y, hvd.DistributedOptimizer(optimizer()),
          [hvd.callbacks.BroadcastGlobalVariablesCallback(0)])
    save(out, model)


def run_renamed(out):
    """Rank 1's layers have other names (another script's auto-names, say): the
    arrays match in shape and type, which is what the reductions need."""
    model = small_resnet(seed=100 + hvd.rank())
    if hvd.rank() == 1:
        for layer in model.layers:
            layer.name = f"rank1_{layer.name}"
    x, y = hvd.shard(*data())
    train(model, x, y, hvd.DistributedOptimizer(optimizer()),
          [hvd.callbacks.BroadcastGlobalVariablesCallback(0)])
    np.savez(os.path.join(out, f"rank{hvd.rank()}.npz"),
             **{name.removeprefix("rank1_"): value for name, value in weights(model).items()})


def run_broadcast(out):
    model = small_resnet(seed=100 + hvd.rank())
    hvd.broadcast_weights(model, root_rank=1)
    save(out, model)


def run_collectives(out):
    """hvd.allreduce and hvd.broadcast on what each rank holds: 1.0 on rank 0,
    2.0 on rank 1; a DistributedOptimizer with op=Sum."""
    mine = np.full(3, hvd.rank() + 1.0)
    model = small_resnet(seed=0, batch_norm=BatchNormalization)     # each rank's own gradients
    x, y = hvd.shard(*data())
    model.compile(optimizer=hvd.DistributedOptimizer(SGD(0.0), op=hvd.Sum),
                  loss=SparseCategoricalCrossentropy(from_logits=True))
    model.train_on_batch(x, y)
    np.savez(os.path.join(out, f"rank{hvd.rank()}.npz"),
             average=hvd.allreduce(mine), half=hvd.allreduce(mine.astype(np.float16)), total=hvd.allreduce(mine.astype(np.int64), op=hvd.Sum),
             broadcast=hvd.broadcast(mine.astype(np.float16), root_rank=1),
             summed_gradient=model.get_layer("logits").grads["bias"])


def run_threads(out):
    """How many threads this rank's BLAS and Numba run, after init()."""
    import numba
    from threadpoolctl import threadpool_info
    blas = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    np.savez(os.path.join(out, f"rank{hvd.rank()}.npz"), blas=blas,
             numba=numba.get_num_threads(), local_size=hvd.local_size())


def run_horovod_keras(out):
    """Horovod's examples/keras/keras_mnist.py, its imports changed (random
    12x12 images for MNIST's: no download here): the Keras namespace, Keras's
    SGD scaled by size(), the warm-up, a checkpoint callback on rank 0 only."""
    import math

    from minires import keras
    from minires.keras.layers import Conv2D, Dense, Dropout, Flatten, MaxPooling2D
    from minires.keras.models import Sequential
    num_classes, epochs = 10, int(math.ceil(4.0 / hvd.size()))
    rng = np.random.default_rng(0)
    x_train, y_train = rng.random((128, 12, 12, 1)).astype("float32"), rng.integers(0, 10, 128)
    x_test, y_test = rng.random((32, 12, 12, 1)).astype("float32"), rng.integers(0, 10, 32)
    y_train = keras.utils.to_categorical(y_train, num_classes)
    y_test = keras.utils.to_categorical(y_test, num_classes)
    model = Sequential()
    model.add(Conv2D(8, kernel_size=(3, 3), activation="relu", input_shape=(12, 12, 1)))
    model.add(MaxPooling2D(pool_size=(2, 2)))
    model.add(Dropout(0.25))
    model.add(Flatten())
    model.add(Dense(num_classes, activation="softmax"))
    opt = hvd.DistributedOptimizer(keras.optimizers.SGD(0.01 * hvd.size(), momentum=0.9))
    model.compile(loss=keras.losses.categorical_crossentropy, optimizer=opt, metrics=["accuracy"])
    callbacks = [hvd.callbacks.BroadcastGlobalVariablesCallback(0),
                 hvd.callbacks.MetricAverageCallback(),
                 hvd.callbacks.LearningRateWarmupCallback(initial_lr=0.01 * hvd.size(),
                                                          warmup_epochs=1, verbose=1)]
    if hvd.rank() == 0:
        callbacks.append(keras.callbacks.ModelCheckpoint(os.path.join(out, "checkpoint-{epoch}.h5")))
    model.fit(x_train, y_train, batch_size=32, callbacks=callbacks, epochs=epochs,
              verbose=1 if hvd.rank() == 0 else 0, validation_data=(x_test, y_test))
    score = model.evaluate(x_test, y_test, verbose=0)
    print("Test loss:", score[0], "Test accuracy:", score[1])


def run_raise(out):
    """Rank 1 fails after a first reduction; rank 0 goes on to the next one,
    which rank 1 never joins: without the abort it would wait forever."""
    hvd.allreduce(np.ones(3), name="before")
    if hvd.rank() == 1:
        raise RuntimeError("planted failure on rank 1")
    hvd.allreduce(np.ones(3), name="after")


def run_mismatch(out, where):
    """Rank r's classifier has 3 + r classes."""
    model = small_resnet(seed=0, width=4)
    x_in = model.inputs[0]
    head = Dense(CLASSES + hvd.rank(), name="head")(model.outputs[0])
    model = Model(x_in, head)
    x, y = hvd.shard(*data())
    callbacks = [hvd.callbacks.BroadcastGlobalVariablesCallback(0)] if where == "broadcast" else []
    train(model, x, y, hvd.DistributedOptimizer(optimizer()), callbacks)


if __name__ == "__main__":
    program, out, *options = sys.argv[1:]
    hvd.init()
    {"train": run_train, "renamed": run_renamed, "broadcast": run_broadcast,
     "collectives": run_collectives, "threads": run_threads, "horovod": run_horovod_keras,
     "raise": run_raise,
     "mismatch": run_mismatch}[program](out, *options)
