"""minires.distributed: data-parallel training over MPI (Horovod's Keras API).

The tests marked ``mpi`` start ``mpiexec -n 2`` on tests/distributed_runs.py
(skipped, saying why, without mpi4py and mpiexec: pip install 'minires[mpi]');
the rest run in this process, alone, or with a stand-in for the run's
communicator where only the rank matters."""
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import distributed_runs as runs
from minires import collective, gradcheck
from minires import distributed as hvd
from minires.backend import floatx_scope
from minires.callbacks import ModelCheckpoint
from minires.layers import BatchNormalization, SyncBatchNormalization
from minires.optim import SGD, KerasAdam, KerasSGD
from minires.train import fit

TESTS = Path(__file__).parent
FAULT_SECONDS = 60          # a failing run must end every rank within this


def mpiexec():
    """The mpiexec beside this Python (pip install mpich puts it there), or on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def why_no_mpi():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed: pip install 'minires[mpi]'"
    return "" if mpiexec() else "no mpiexec found: pip install mpich"


mpi = pytest.mark.skipif(bool(why_no_mpi()), reason=why_no_mpi() or "MPI is here")


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def on_two_ranks(*arguments, script=TESTS / "distributed_runs.py", **variables):
    """(exit code, what the ranks printed, seconds) of ``script arguments`` on 2
    ranks, with no thread counts set (init() shares the cores) but ``variables``."""
    env = {name: value for name, value in os.environ.items() if name not in THREAD_VARIABLES}
    env.update(PYTHONPATH=os.pathsep.join([str(TESTS.parent), str(TESTS)]), **variables)
    start = time.monotonic()
    done = subprocess.run([mpiexec(), "-n", "2", sys.executable, str(script),
                           *map(str, arguments)], env=env, capture_output=True, text=True,
                          timeout=FAULT_SECONDS * 2)
    return done.returncode, done.stdout + done.stderr, time.monotonic() - start


def ranks_weights(out):
    return [dict(np.load(out / f"rank{r}.npz", allow_pickle=False)) for r in range(2)]


def one_process_on_all_samples(batch_norm):
    model = runs.small_resnet(seed=100, batch_norm=batch_norm)
    runs.train(model, *runs.data(), runs.optimizer())
    return runs.weights(model)


def worst_relative_error(weights, reference, names):
    return max(np.abs(weights[n] - reference[n]).max() / np.abs(reference[n]).max() for n in names)


TRAINABLE = [f"{layer}/{name}" for layer in ("bn0", "bn1", "bn2") for name in ("gamma", "beta")] + \
    ["conv0/kernel", "conv1/kernel", "conv2/kernel", "logits/kernel", "logits/bias"]


@mpi
def test_sync_batch_norm_on_two_ranks_of_8_trains_as_one_process_on_16(tmp_path):
    """3 SGD-momentum steps, ranks starting from different random weights
    (BroadcastGlobalVariablesCallback gives them rank 0's): every weight and BN
    statistic as one process's on the whole batch, to 1e-9 relative."""
    code, output, _ = on_two_ranks("train", tmp_path, "sync")
    assert code == 0, output
    reference = one_process_on_all_samples(SyncBatchNormalization)
    rank0, rank1 = ranks_weights(tmp_path)
    assert worst_relative_error(rank0, reference, reference) <= 1e-9
    assert all(np.array_equal(rank0[n], rank1[n]) for n in reference)


@mpi
def test_plain_batch_norm_on_two_ranks_trains_another_model(tmp_path):
    """Each rank normalises by its own 8 samples' statistics: the averaged
    gradients keep the ranks' weights equal, but they are not the 16 samples' model."""
    code, output, _ = on_two_ranks("train", tmp_path, "plain")
    assert code == 0, output
    reference = one_process_on_all_samples(BatchNormalization)
    rank0, rank1 = ranks_weights(tmp_path)
    assert worst_relative_error(rank0, reference, TRAINABLE) > 1e-3
    assert all(np.allclose(rank0[n], rank1[n], rtol=1e-12) for n in TRAINABLE)
    assert not np.allclose(rank0["bn0/moving_mean"], rank1["bn0/moving_mean"])   # their own batches


@mpi
def test_ranks_whose_layers_are_named_otherwise_train_together(tmp_path):
    code, output, _ = on_two_ranks("renamed", tmp_path)
    assert code == 0, output
    reference = one_process_on_all_samples(SyncBatchNormalization)
    for weights in ranks_weights(tmp_path):
        assert worst_relative_error(weights, reference, reference) <= 1e-9


@mpi
def test_broadcast_weights_gives_every_rank_the_roots_weights(tmp_path):
    code, output, _ = on_two_ranks("broadcast", tmp_path)
    assert code == 0, output
    root = runs.weights(runs.small_resnet(seed=101))             # rank 1's draw
    own = runs.weights(runs.small_resnet(seed=100))              # rank 0's before
    for weights in ranks_weights(tmp_path):
        assert all(np.array_equal(weights[n], root[n]) for n in root)
    assert not np.array_equal(root["conv0/kernel"], own["conv0/kernel"])


@mpi
def test_allreduce_broadcast_and_a_summing_optimizer_on_two_ranks(tmp_path):
    code, output, _ = on_two_ranks("collectives", tmp_path)
    assert code == 0, output
    ranks = ranks_weights(tmp_path)
    for got in ranks:
        assert got["average"].tolist() == [1.5] * 3 and got["total"].tolist() == [3] * 3
        assert got["total"].dtype == np.int64
        assert got["half"].tolist() == [1.5] * 3 and got["half"].dtype == np.float16
        assert got["broadcast"].tolist() == [2.0] * 3 and got["broadcast"].dtype == np.float16
    # each rank's own gradient, for comparison: the sum is theirs added
    model = runs.small_resnet(seed=0, batch_norm=BatchNormalization)
    own = []
    for rank in range(2):
        x, y = runs.data()
        x, y = x[rank::2], y[rank::2]
        model.compile(optimizer=SGD(0.0), loss=runs.SparseCategoricalCrossentropy(from_logits=True))
        model.train_on_batch(x, y)
        own.append(model.get_layer("logits").grads["bias"].copy())
    np.testing.assert_allclose(ranks[0]["summed_gradient"], own[0] + own[1], rtol=1e-12)
    np.testing.assert_array_equal(ranks[0]["summed_gradient"], ranks[1]["summed_gradient"])


@mpi
def test_ranks_on_one_machine_share_its_cores(tmp_path):
    """Each of 2 ranks runs cores // 2 BLAS and Numba threads (unlimited, they
    ran 2 x cores spinning threads: 15 times slower on 2 cores)."""
    pytest.importorskip("threadpoolctl")
    code, output, _ = on_two_ranks("threads", tmp_path)
    assert code == 0, output
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    for threads in ranks_weights(tmp_path):
        assert threads["local_size"] == 2 and threads["numba"] == min(share, numba_threads())
        assert threads["blas"].tolist() and set(threads["blas"].tolist()) == {share}


@mpi
def test_thread_counts_you_set_are_yours(tmp_path):
    pytest.importorskip("threadpoolctl")
    """With one of them set, init() changes none: Numba keeps all its threads."""
    code, output, _ = on_two_ranks("threads", tmp_path, OPENBLAS_NUM_THREADS="1")
    assert code == 0, output
    for threads in ranks_weights(tmp_path):
        assert set(threads["blas"].tolist()) == {1} and threads["numba"] == numba_threads()


def numba_threads():
    import numba
    return numba.config.NUMBA_NUM_THREADS


@mpi
def test_horovods_keras_mnist_runs_with_its_imports_changed(tmp_path):
    """Both ranks evaluate the same model; rank 0 alone reports and checkpoints."""
    code, output, _ = on_two_ranks("horovod", tmp_path)
    assert code == 0, output
    scores = re.findall(r"Test loss: (\S+) Test accuracy: (\S+)", output)
    assert len(scores) == 2 and scores[0] == scores[1]
    assert output.count("finished gradual learning rate warmup to 0.02") == 1
    assert output.count("Epoch 2/2") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1.h5", "checkpoint-2.h5"]


@mpi
def test_a_rank_that_raises_ends_every_rank(tmp_path):
    """Rank 0 waits in a reduction that rank 1 never joins: the abort ends it."""
    code, output, seconds = on_two_ranks("raise", tmp_path)
    assert code != 0 and seconds < FAULT_SECONDS
    assert "planted failure on rank 1" in output
    assert "rank 1 of 2 failed; aborting every rank" in output


@mpi
@pytest.mark.parametrize("first_reduction", ["gradients", "broadcast"])
def test_models_that_differ_across_ranks_are_named_at_the_first_reduction(tmp_path,
                                                                          first_reduction):
    code, output, seconds = on_two_ranks("mismatch", tmp_path, first_reduction)
    assert code != 0 and seconds < FAULT_SECONDS
    assert "first difference: 'head/kernel (3, 3) float32' on rank 0, 'head/kernel (3, 4) " \
           "float32' on rank 1; ranks [1] differ from rank 0" in output


@mpi
@pytest.mark.slow
def test_the_digits_example_trains_one_model_on_two_ranks(tmp_path):
    """mpiexec -n 2 examples/train_digits.py --distributed: the README's 97% at
    least, and rank 0 alone prints, plots and checkpoints."""
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    code, output, _ = on_two_ranks("--distributed", "--plot", tmp_path / "curves.png",
                                   "--checkpoint", tmp_path / "last.npz",
                                   script=TESTS.parent / "examples" / "train_digits.py")
    assert code == 0, output
    accuracy = [float(a) for a in re.findall(r"test accuracy ([\d.]+)%", output)]
    assert len(accuracy) == 1 and accuracy[0] >= 97.0, output
    assert output.count("Epoch 15/15") == 1 and "2 rank(s) of 16 images per batch" in output
    assert (tmp_path / "curves.png").exists() and (tmp_path / "last.npz").exists()


# --- one process ----------------------------------------------------------------------
def test_sync_batch_norm_gradients_alone_float64():
    with floatx_scope("float64"):
        layer = SyncBatchNormalization(momentum=0.5)
        x = np.random.default_rng(0).standard_normal((4, 3, 3, 5)) * 3 + 1
        errors = gradcheck.check_layer(layer, x)
    assert errors.worst() < 1e-7, str(errors)


def test_sync_batch_norm_alone_is_batch_norm():
    x = np.random.default_rng(1).standard_normal((6, 4, 4, 3)).astype("float32")
    sync, plain = SyncBatchNormalization(), BatchNormalization()
    np.testing.assert_array_equal(sync.forward(x, training=True)[0], plain.forward(x, training=True)[0])
    np.testing.assert_array_equal(sync.params["moving_variance"], plain.params["moving_variance"])


def test_keras_synchronized_batch_norm_is_sync_batch_norm_and_saves_as_keras_writes_it(tmp_path):
    from minires import keras
    layer = keras.layers.BatchNormalization(synchronized=True)
    assert type(layer) is SyncBatchNormalization and layer.get_config()["synchronized"] is True
    assert BatchNormalization().get_config()["synchronized"] is False
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), layer])
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert type(loaded.layers[-1]) is SyncBatchNormalization
    import json
    import zipfile
    config = json.loads(zipfile.ZipFile(tmp_path / "m.keras").read("config.json"))
    assert config["config"]["layers"][-1]["class_name"] == "BatchNormalization"


def test_alone_every_collective_returns_its_input():
    assert (hvd.size(), hvd.rank(), hvd.local_rank()) == (1, 0, 0)
    a = np.arange(4.0)
    total = hvd.allreduce(a, hvd.Sum)
    assert np.array_equal(total, a) and total is not a
    assert np.array_equal(hvd.allreduce(a), a)


def test_allreduce_refuses_what_it_cannot_reduce():
    with pytest.raises(ValueError, match="op must be minires.distributed.Average or Sum"):
        hvd.allreduce(np.ones(2), op="Max")
    with pytest.raises(TypeError, match="op=Average needs a float array, got int64; use op=Sum"):
        hvd.allreduce(np.ones(2, np.int64))


def python_alone(code, **env):
    """Run ``code`` in a fresh Python where mpi4py cannot be imported."""
    blocker = "import sys; sys.modules['mpi4py'] = None\n"
    return subprocess.run([sys.executable, "-c", blocker + code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(TESTS.parent), **env}, timeout=120)


def test_importing_starts_no_mpi():
    """MPI_Init is a process-wide act: init() does it, not an import."""
    done = subprocess.run([sys.executable, "-c", "import sys, minires.distributed\n"
                           "print(sorted(m for m in sys.modules if m.startswith('mpi4py')))"],
                          capture_output=True, text=True, env={**os.environ,
                                                               "PYTHONPATH": str(TESTS.parent)})
    assert done.stdout.strip() == "[]", done.stderr


def test_without_mpi4py_a_script_runs_alone():
    done = python_alone("from minires import distributed as hvd\nhvd.init()\n"
                        "print(hvd.size(), hvd.rank())")
    assert done.returncode == 0 and done.stdout.split() == ["1", "0"], done.stderr


def test_without_mpi4py_under_mpiexec_init_says_what_to_install():
    """Alone, each of mpiexec's processes would train a model of its own."""
    done = python_alone("from minires import distributed as hvd\nhvd.init()", PMI_SIZE="2")
    assert done.returncode != 0
    assert "one of 2 that mpiexec started, but mpi4py is not installed: pip install " \
           "'minires[mpi]'" in done.stderr


def test_under_mpiexec_without_init_the_first_collective_refuses():
    done = python_alone("import numpy as np\nfrom minires.layers import SyncBatchNormalization\n"
                        "SyncBatchNormalization().forward(np.ones((2, 3), 'float32'), training=True)",
                        PMI_SIZE="2")
    assert "minires.distributed.init() was not called" in done.stderr


@pytest.fixture
def as_rank(monkeypatch):
    """Make this process rank ``r`` of ``size`` for the code that asks (no messages)."""
    def become(r, size=2):
        monkeypatch.setattr(collective, "_world", SimpleNamespace(rank=r, size=size, local_rank=r))
    return become


def test_shard_gives_each_rank_every_size_th_row_as_many_on_every_rank(as_rank):
    x, y = np.arange(11 * 2).reshape(11, 2), np.arange(11)
    as_rank(1, size=3)
    x1, y1 = hvd.shard(x, y)
    assert y1.tolist() == [1, 4, 7] and np.array_equal(x1, x[[1, 4, 7]])   # 11 // 3 rows
    assert hvd.shard({"a": x, "b": y})["b"].tolist() == [1, 4, 7]
    assert hvd.shard([x, y])[1].tolist() == [1, 4, 7]
    with pytest.raises(ValueError, match="2 samples cannot be split over 3 ranks"):
        hvd.shard(x[:2])
    with pytest.raises(ValueError, match="x has 11 samples but y has 10"):
        hvd.shard(x, y[:10])


def small_model():
    return runs.small_resnet(seed=3, batch_norm=BatchNormalization)


def test_only_rank_0_prints_and_writes_checkpoints(as_rank, tmp_path, capsys):
    x, y = runs.data()
    for r in (1, 0):
        as_rank(r)
        model = small_model()
        path = tmp_path / f"rank{r}"
        model.compile(optimizer=SGD(0.01), loss=runs.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, batch_size=8, epochs=1, verbose=2,
                  callbacks=[ModelCheckpoint(str(path / "m.weights.h5"), monitor="loss", verbose=1)])
        printed = capsys.readouterr().out
        if r == 1:
            assert printed == "" and not path.exists()
        else:
            assert "saving model" in printed and (path / "m.weights.h5").exists()


def test_distributed_optimizer_is_its_optimizer_alone():
    """Its class is a subclass of the optimizer's, with the same name (checkpoints,
    callbacks, Keras's config see the optimizer); alone it steps as the optimizer."""
    wrapped = hvd.DistributedOptimizer(KerasAdam(0.01))
    assert isinstance(wrapped, KerasAdam) and type(wrapped).__name__ == "KerasAdam"
    assert type(hvd.DistributedOptimizer("sgd")).__name__ == "KerasSGD"
    x, y = runs.data()
    trained = []
    for optimizer in (KerasAdam(0.01), wrapped):
        model = small_model()
        runs.train(model, x, y, optimizer)
        trained.append(runs.weights(model))
    assert all(np.array_equal(trained[0][n], trained[1][n]) for n in trained[0])


def test_distributed_optimizer_takes_horovods_arguments_that_change_nothing():
    hvd.DistributedOptimizer(SGD(0.1), compression=hvd.Compression.none, backward_passes_per_step=1,
                             average_aggregated_gradients=True, name="opt")
    with pytest.raises(TypeError, match="compression='fp16' is a Horovod option minires does not "
                                        "implement"):
        hvd.DistributedOptimizer(SGD(0.1), compression=hvd.Compression.fp16)
    with pytest.raises(TypeError, match="backward_passes_per_step=2 is a Horovod option"):
        hvd.DistributedOptimizer(SGD(0.1), backward_passes_per_step=2)
    with pytest.raises(TypeError, match="clipnorm=1.0 is not an argument of it"):
        hvd.DistributedOptimizer(SGD(0.1), clipnorm=1.0)
    with pytest.raises(ValueError, match="op must be minires.distributed.Average or Sum"):
        hvd.DistributedOptimizer(SGD(0.1), op="Max")


class RecordingSGD(KerasSGD):
    """Keras's SGD that notes the rate and momentum of every step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []

    def step(self, model, learning_rate=None):
        self.seen.append((learning_rate, self.momentum))
        super().step(model, learning_rate)


def test_learning_rate_warmup_climbs_from_lr_over_ranks_to_lr(as_rank):
    """Horovod's formula on 2 ranks, 2 steps an epoch, 2 warm-up epochs:
    lr (e (R - 1) / warmup + 1) / R at e = epoch + (batch + 1) / steps; Keras's
    SGD has the rate in its momentum, scaled for the batch whose rate moved."""
    as_rank(0)
    x, y = runs.data()
    model, optimizer = small_model(), RecordingSGD(0.4, momentum=0.9)
    model.compile(optimizer=optimizer, loss=runs.SparseCategoricalCrossentropy(from_logits=True))
    warmup = hvd.callbacks.LearningRateWarmupCallback(0.4, warmup_epochs=2)
    history = model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0, callbacks=[warmup])
    rates = [rate for rate, _ in optimizer.seen]
    assert rates == pytest.approx([0.4 * m for m in (0.625, 0.75, 0.875, 1.0, 1.0, 1.0)])
    momenta = [momentum for _, momentum in optimizer.seen]
    assert momenta[1:4] == pytest.approx([0.9 * 0.75 / 0.625, 0.9 * 0.875 / 0.75, 0.9 / 0.875])
    assert momenta[4:] == [0.9, 0.9] and optimizer.momentum == 0.9
    assert history.history["lr"] == pytest.approx([0.3, 0.4, 0.4])


def test_learning_rate_warmup_is_one_more_rate_setter_than_fit_allows(as_rank):
    x, y = runs.data()
    with pytest.raises(ValueError, match="the LearningRateWarmupCallback callback, which sets the "
                                         "rate too"):
        fit(small_model(), x, y, schedule=lambda t: 0.1, verbose=0,
            callbacks=[hvd.callbacks.LearningRateWarmupCallback(0.1)])


def test_broadcast_callback_checks_its_root():
    with pytest.raises(ValueError, match="root_rank 1 is not a rank of this run of 1"):
        hvd.callbacks.BroadcastGlobalVariablesCallback(1)


def test_metric_average_alone_leaves_the_logs():
    logs = {"loss": 0.5, "accuracy": 0.25}
    hvd.callbacks.MetricAverageCallback().on_epoch_end(0, logs)
    assert logs == {"loss": 0.5, "accuracy": 0.25}
