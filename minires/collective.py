"""The processes of one training run and the messages between them, over MPI:
what minires.distributed (Horovod's API) and SyncBatchNormalization build on.

``mpiexec -n R python train.py`` starts R copies of the script, the R *ranks*
of one run (0 .. R-1); MPI's collectives combine one array from every rank:

    allreduce_sum(a)    every rank gets a_0 + a_1 + ... + a_{R-1}
    broadcast(a, root)  every rank gets rank ``root``'s a

Started alone (no mpiexec, or mpi4py not installed) the run is one rank, and
each collective returns its input: the same script runs on one process.

Nothing starts MPI on import: ``init()`` does, once. A run under mpiexec that
forgets init(), or that lacks mpi4py, is refused at its first collective
(each rank would otherwise train a model of its own, silently).

Messages are buffers of numbers (NumPy arrays; a CuPy array goes through the
host: CUDA-aware MPI or NCCL would avoid that copy), never pickled objects.
Before a reduction first runs at a given place, the ranks compare what each is
about to send (``check_same``): different shapes would pair numbers that do not
belong together, or block forever; instead every rank raises one ValueError
naming the ranks that differ.

init(abort_on_error=True) makes an exception that no code catches end
EVERY rank: the failing rank prints its traceback, then calls MPI_Abort, which
mpiexec turns into the end of all ranks with a non-zero exit code. Without it
the other ranks would wait forever in their next collective for the rank that
died.
"""
import os
import sys

import numpy as np

from . import backend
from .backend import like, to_device

# What launchers tell each process about the run it is part of: MPICH's and Intel
# MPI's Hydra (PMI_SIZE), Open MPI (OMPI_COMM_WORLD_SIZE).
LAUNCHER_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")

_world = None          # the run's communicator, once init() connected to it


class Alone:
    """A run of one rank: every collective returns its input."""
    rank, size, local_rank, local_size = 0, 1, 0, 1

    def allreduce_sum(self, host_array):
        return host_array

    def broadcast(self, host_array, root):
        return host_array

    def allgather_texts(self, text):
        return [text]


class OverMPI:
    """A run of ``comm.size`` ranks, through mpi4py's buffer interface."""

    def __init__(self, comm, mpi):
        self.comm, self.mpi = comm, mpi
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        on_this_machine = comm.Split_type(mpi.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = on_this_machine.Get_rank(), on_this_machine.Get_size()

    def allreduce_sum(self, host_array):
        total = np.empty_like(host_array)
        self.comm.Allreduce(host_array, total, op=self.mpi.SUM)
        return total

    def broadcast(self, host_array, root):
        self.comm.Bcast(host_array, root=root)
        return host_array

    def allgather_texts(self, text):
        """Every rank's ``text``: the lengths first, then the UTF-8 bytes."""
        data = np.frombuffer(text.encode(), np.uint8)
        lengths = np.empty(self.size, np.int64)
        self.comm.Allgather(np.array([data.size], np.int64), lengths)
        gathered = np.empty(int(lengths.sum()), np.uint8)
        self.comm.Allgatherv(data, (gathered, lengths))
        ends = np.cumsum(lengths)
        return [gathered[end - n:end].tobytes().decode() for n, end in zip(lengths, ends)]

    def abort_on_uncaught_exceptions(self):
        """Make an uncaught exception print its traceback, then end every rank."""
        previous = sys.excepthook

        def abort(kind, value, trace):
            sys.stderr.write(f"minires.distributed: rank {self.rank} of {self.size} failed; "
                             "aborting every rank (MPI_Abort)\n")
            previous(kind, value, trace)
            sys.stderr.flush()
            self.comm.Abort(1)

        sys.excepthook = abort


def init(abort_on_error=True, share_cores=True):
    """Join the run this process was started in (MPI_Init through mpi4py), once.
    Alone when not started by mpiexec, or when mpi4py is not installed and the
    launcher (if any) started one process. share_cores: the ranks on one
    machine split its cores between their BLAS and Numba threads
    (backend.share_cores). Returns the communicator."""
    global _world
    if _world is None:
        _world = connect()
        if _world.size > 1 and abort_on_error:
            _world.abort_on_uncaught_exceptions()
        if share_cores:
            backend.share_cores(_world.local_size)
    return _world


def initialized():
    return _world is not None


def connect():
    try:
        from mpi4py import MPI
    except ImportError:
        refuse_if_launched_as_many("mpi4py is not installed: pip install 'minires[mpi]'")
        return Alone()
    return OverMPI(MPI.COMM_WORLD, MPI) if MPI.COMM_WORLD.Get_size() > 1 else Alone()


def launched_size():
    """How many processes the launcher says it started with this one (1: none)."""
    for name in LAUNCHER_SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def refuse_if_launched_as_many(reason):
    size = launched_size()
    if size > 1:
        raise RuntimeError(f"minires.distributed: this process is one of {size} that mpiexec "
                           f"started, but {reason}; alone, each would train a model of its own")


def world():
    """The run's communicator: init()'s, or Alone where init() was not called
    and no launcher started several processes."""
    if _world is not None:
        return _world
    refuse_if_launched_as_many("minires.distributed.init() was not called")
    return Alone()


def leads():
    """False on the ranks other than 0 of a run that init() joined: rank 0 (or a
    process alone) is the one that prints progress and writes checkpoints."""
    return _world is None or _world.rank == 0


def size():
    """How many ranks the run has (1 alone)."""
    return world().size


def allreduce_sum(array):
    """The element-wise sum of ``array`` over the ranks, on ``array``'s device."""
    communicator = world()
    if communicator.size == 1:
        return array
    host = np.ascontiguousarray(to_device(array, "cpu"))
    return like(communicator.allreduce_sum(host), array)


def broadcast(array, root):
    """Rank ``root``'s ``array`` (same shape and dtype on every rank), on ``array``'s device."""
    communicator = world()
    if communicator.size == 1:
        return array
    host = np.ascontiguousarray(to_device(array, "cpu"))
    return like(communicator.broadcast(host, root), array)


_checked = set()       # the reductions whose messages the ranks have compared


def check_same(place, items, labels=None, once=True):
    """Raise one ValueError on every rank unless every rank describes what it is
    about to send at ``place`` with the same ``items`` (strings such as
    '(3, 4) float64', one per array): it names the ranks that differ from rank 0
    and the first array where they do, by its ``labels`` entry ('dense/kernel';
    labels are shown, not compared: layer names may differ between ranks).
    ``once``: compare at the first time only (the same code sends the same
    arrays afterwards)."""
    communicator = world()
    lines = items if labels is None else [f"{label} {item}" for label, item in zip(labels, items)]
    if communicator.size == 1 or (once and (place, tuple(lines)) in _checked):
        return
    # one line per array; what is compared is the item, after the last tab
    gathered = communicator.allgather_texts("\n".join(
        items if labels is None else [f"{label}\t{item}" for label, item in zip(labels, items)]))
    described = [text.split("\n") if text else [] for text in gathered]
    compared = [[line.rsplit("\t", 1)[-1] for line in lines] for lines in described]
    differing = [r for r, these in enumerate(compared) if these != compared[0]]
    if differing:
        raise ValueError(f"{place}: the ranks send different arrays, so their numbers cannot be "
                         f"combined: {difference(described, compared, differing[0])}; ranks "
                         f"{differing} differ from rank 0")
    _checked.add((place, tuple(lines)))


def difference(described, compared, other):
    """'rank 0 has 4 arrays, rank 1 has 4; first difference: ... on rank 0, ... on rank 1'."""
    ours, theirs = compared[0], compared[other]
    first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b),
                 min(len(ours), len(theirs)))

    def shown(rank):
        lines = described[rank]
        return repr(lines[first].replace("\t", " ")) if first < len(lines) else "nothing"
    return (f"rank 0 has {len(ours)} arrays, rank {other} has {len(theirs)}; first difference: "
            f"{shown(0)} on rank 0, {shown(other)} on rank {other}")
