"""Checkpoints that try to hurt: every one gets one clear error, and the model,
the optimiser and every file on disk are left exactly as they were.

- an entry that inflates to 1 GiB from a file of about a megabyte (refused from
  the file's metadata, in under a second, with less than 100 MB of memory);
- names the loader could not read back (save_weights('ckpt'), 'w.NPZ', 'w.h5');
- resuming one optimiser's checkpoint with another;
- temporaries orphaned by writers killed outright (kill -9), swept by the next save.
"""
import hashlib
import io
import os
import re
import signal
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

import keras_files
from minires.initializers import set_random_seed
from minires.io import atomic
from minires.io.checkpoint import load_checkpoint, parameter_key, save_checkpoint
from minires.layers import (Activation, BatchNormalization, Conv2D, Dense, GlobalAveragePooling2D,
                            Input, clear_session)
from minires.models import Model
from minires.optim import SGD, Adam, RMSprop
from minires.train import fit

ROOT = Path(__file__).resolve().parents[1]
GiB = 1 << 30


# --- helpers ------------------------------------------------------------------------
def tiny_net(seed=0, name="tiny"):
    """conv1 -> bn_conv1 -> relu -> pooling -> fc (4 x 3), weights from ``seed``."""
    clear_session()
    set_random_seed(seed)
    x = Input((6, 6, 3))
    y = Activation("relu")(BatchNormalization(name="bn_conv1")(Conv2D(4, 3, name="conv1")(x)))
    return Model(x, Dense(3, name="fc")(GlobalAveragePooling2D()(y)), name=name)


def weights_of(model):
    return {parameter_key(layer, name): np.array(layer.params[name])
            for layer, name in model.parameters(trainable_only=False)}


def assert_unchanged(model, before):
    after = weights_of(model)
    assert after.keys() == before.keys()
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=f"{key} changed")


def digest(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def arrays_of(path):
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def npy_bytes(array=None, shape=None, dtype=None):
    """What np.save writes: ``array`` in full, or only the header of an array
    of ``shape`` and ``dtype`` (the data to follow)."""
    buffer = io.BytesIO()
    if array is not None:
        np.lib.format.write_array(buffer, np.asanyarray(array), allow_pickle=False)
    else:
        np.lib.format.write_array_header_1_0(buffer, {
            "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
            "shape": shape})
    return buffer.getvalue()


def deflated(data, zero_mib=0):
    """(raw deflate stream, CRC-32, size) of ``data`` followed by ``zero_mib`` MiB
    of zeros. Quick: after a full flush a compressor starts afresh, so every MiB
    of zeros deflates to the same kilobyte, computed once (1 GiB: about 1 MB)."""
    mib = bytes(1 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(mib) + compressor.flush(zlib.Z_FULL_FLUSH)
    stream = head + block * zero_mib + compressor.flush(zlib.Z_FINISH)
    crc = zlib.crc32(data)
    for _ in range(zero_mib):
        crc = zlib.crc32(mib, crc)
    return stream, crc, len(data) + (zero_mib << 20)


def write_zip(path, members):
    """A zip file of ``members`` {name: deflated(...)}, written by hand (zipfile
    would deflate every GiB itself, in seconds): a local header before each
    member's data, then the central directory, then its end record."""
    local, central = bytearray(), bytearray()
    for name, (stream, crc, size) in members.items():
        name = name.encode()
        fields = (20, 0, 8, 0, 0x21, crc, len(stream), size, len(name), 0)   # deflated, 1980-01-01
        central += struct.pack("<IH", 0x02014B50, 20) + struct.pack("<HHHHHIIIHH", *fields) + \
            struct.pack("<HHHII", 0, 0, 0, 0, len(local)) + name
        local += struct.pack("<I", 0x04034B50) + struct.pack("<HHHHHIIIHH", *fields) + name + stream
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central),
                      len(local), 0)
    Path(path).write_bytes(bytes(local + central + end))


def measured(function, *args, **kwargs):
    """(exception raised or result, seconds, peak bytes allocated by Python and NumPy)."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        outcome = function(*args, **kwargs)
    except Exception as error:                   # noqa: BLE001 - the test checks it
        outcome = error
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return outcome, seconds, peak


# --- 1. entries that inflate to far more than their file ----------------------------
@pytest.fixture(scope="module")
def inflating(tmp_path_factory):
    """{case: path} of checkpoints of tiny_net() (about 1 MB each), each holding
    one entry that inflates to far more than its file."""
    folder = tmp_path_factory.mktemp("inflating")
    source = folder / "good.npz"
    save_checkpoint(tiny_net(), source)
    good = {f"{key}.npy": deflated(npy_bytes(array)) for key, array in arrays_of(source).items()}
    gib = deflated(npy_bytes(shape=(GiB // 4,), dtype="<f4"), GiB >> 20)   # says 1 GiB, holds it
    overfull = deflated(npy_bytes(shape=(4, 3), dtype="<f4"), 16)          # says 48 B, holds 16 MiB
    cases = {   # case: (entry replaced or added, its contents)
        "wrong shape": ("fc/kernel.npy", gib),
        "more data than its shape": ("fc/kernel.npy", overfull),
        "huge extra": ("__extra__/history/loss.npy", gib),
        "huge unexpected key": ("ghost/kernel.npy", gib),
    }
    paths = {}
    for case, (name, member) in cases.items():
        paths[case] = folder / (case.replace(" ", "_") + ".npz")
        write_zip(paths[case], {**{k: v for k, v in good.items() if k != name}, name: member})
    return paths


@pytest.mark.parametrize("case, message", [
    ("wrong shape", r"layer 'fc' parameter 'kernel' has shape \(268435456,\) in the file, "
                    r"but \(4, 3\) in the model"),
    ("more data than its shape", r"is not a readable minires checkpoint: entry 'fc/kernel\.npy' "
                                 r"declares 16,777,\d{3} bytes, but its shape \(4, 3\) of "
                                 r"float32 needs \d+ with its header"),
    ("huge extra", r"its arrays would take 1,07\d,\d{3},\d{3} bytes, more than max_bytes="
                   r"[\d,]+ \(the default: 8 x the model's [\d,]+ bytes of parameters \+ 64 MiB\); "
                   r"the largest is '__extra__/history/loss\.npy', shape \(268435456,\) of "
                   r"float32"),
    ("huge unexpected key", r"unexpected in the file: 'ghost/kernel'"),
])
def test_an_entry_inflating_to_1_gib_is_refused_from_metadata(inflating, case, message):
    path = inflating[case]
    assert path.stat().st_size < 8 << 20          # a few MB on disk for 1 GiB of data
    before_file = digest(path)
    model = tiny_net(seed=7)
    before = weights_of(model)
    error, seconds, peak = measured(load_checkpoint, model, path)
    assert isinstance(error, ValueError), error
    assert re.search(message, str(error)), str(error)
    assert str(path) in str(error)
    assert seconds < 1.0, f"refused after {seconds:.2f} s"
    assert peak < 100 << 20, f"{peak / 2 ** 20:.0f} MB allocated before refusing"
    assert_unchanged(model, before)
    assert digest(path) == before_file


def test_an_unexpected_entry_is_never_inflated_when_not_strict(inflating):
    """strict=False loads what the model shares: the 1 GiB 'ghost' entry is not read."""
    path = inflating["huge unexpected key"]
    model = tiny_net(seed=7)
    result, seconds, peak = measured(load_checkpoint, model, path, strict=False)
    assert result == {}
    assert seconds < 1.0 and peak < 100 << 20, (seconds, peak)
    assert_unchanged(model, weights_of(tiny_net()))


def test_max_bytes_bounds_what_is_read(tmp_path):
    path = tmp_path / "tiny.npz"
    source = tiny_net()
    save_checkpoint(source, path, extra={"history/loss": np.zeros(100_000)})   # 800 kB
    model = tiny_net(seed=7)
    before = weights_of(model)
    with pytest.raises(ValueError, match=r"its arrays would take 800,\d{3} bytes, more than "
                                         r"max_bytes=100,000 \(as given\); the largest is "
                                         r"'__extra__/history/loss\.npy'"):
        load_checkpoint(model, path, max_bytes=100_000)
    assert_unchanged(model, before)
    assert load_checkpoint(model, path, max_bytes=1_000_000)["history/loss"].shape == (100_000,)
    assert_unchanged(model, weights_of(source))
    with pytest.raises(ValueError, match="max_bytes must be a number of bytes or None, got '1MB'"):
        load_checkpoint(model, path, max_bytes="1MB")


BIAS = np.array([1.5, 2.5, 3.5], "<f4")


@pytest.mark.parametrize("damage, message", [
    ("duplicate", r"it holds two entries named 'fc/bias\.npy'"),
    ("not npy", r"its entry 'notes\.txt' is not a \.npy array"),
    ("long header", r"entry 'fc/bias\.npy': a header of 60000 bytes \(at most 10000 are read\)"),
    ("negative shape", r"entry 'fc/bias\.npy' has shape \(-3,\)"),
    ("bad crc", r"entry 'fc/bias(\.npy)?': Bad CRC-32"),
    ("version 3", r"entry 'fc/bias\.npy': \.npy format version 3\.0 \(minires reads 1\.0 "
                  r"and 2\.0\)"),
])
def test_crafted_entries_are_refused(tmp_path, damage, message):
    """Entries written by hand, stored as they are: each is refused from its header
    (or, a flipped byte, by the zip's checksum), with the model unchanged."""
    path = tmp_path / "crafted.npz"
    save_checkpoint(tiny_net(), path)
    good = arrays_of(path)
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }"
    if damage == "negative shape":
        header = header.replace(b"(3,)", b"(-3,)")
    if damage == "long header":
        header = header.ljust(60000)
    version = b"\x03\x00" if damage == "version 3" else b"\x01\x00"
    size = len(header).to_bytes(4 if damage == "version 3" else 2, "little")
    bias = b"\x93NUMPY" + version + size + header + BIAS.tobytes()
    with zipfile.ZipFile(path, "w") as archive:
        for key, array in good.items():
            if key != "fc/bias":
                with archive.open(key + ".npy", "w") as member:
                    np.lib.format.write_array(member, array)
        archive.writestr("fc/bias.npy", bias)
        if damage == "duplicate":
            with pytest.warns(UserWarning, match="Duplicate name"):
                archive.writestr("fc/bias.npy", bias)
        if damage == "not npy":
            archive.writestr("notes.txt", "hello")
    if damage == "bad crc":                              # flip one byte of fc/bias's data
        data = bytearray(path.read_bytes())
        data[data.rfind(BIAS.tobytes())] ^= 0xFF
        path.write_bytes(bytes(data))
    model = tiny_net(seed=7)
    before = weights_of(model)
    with pytest.raises(ValueError, match=message) as error:
        load_checkpoint(model, path)
    assert str(error.value).startswith(f"{path} is not a readable minires checkpoint")
    assert_unchanged(model, before)


# --- 2. names: whatever save_weights writes, load_weights reads back ----------------------
@pytest.mark.parametrize("name", ["ckpt", "w.NPZ", "run.weights", "w.npz"])
def test_save_weights_then_load_weights_under_any_name(tmp_path, name):
    source, model = tiny_net(), tiny_net(seed=7)
    source.save_weights(tmp_path / name)
    assert os.listdir(tmp_path) == [name]                # exactly there, nothing appended
    assert model.load_weights(tmp_path / name) == {}
    assert_unchanged(model, weights_of(source))


@pytest.mark.parametrize("name", ["w.h5", "w.weights.h5", "W.H5", "w.hdf5"])
def test_save_weights_writes_keras_s_formats_for_hdf5_names(tmp_path, name):
    """The suffix decides the format (issue 29): Keras's HDF5 layouts, read back whole."""
    source, model = tiny_net(), tiny_net(seed=7)
    source.save_weights(tmp_path / name)
    assert os.listdir(tmp_path) == [name] and (tmp_path / name).read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"
    model.load_weights(tmp_path / name)
    assert_unchanged(model, weights_of(source))


def test_save_weights_refuses_a_keras_model_file_name(tmp_path):
    path = tmp_path / "m.keras"
    path.write_bytes(b"an earlier file")
    with pytest.raises(ValueError, match=r"a \.keras file holds a whole model: write it with model\.save"):
        tiny_net().save_weights(path)
    assert path.read_bytes() == b"an earlier file" and os.listdir(tmp_path) == ["m.keras"]


def test_load_weights_reads_hdf5_content_whatever_the_name(tmp_path):
    source, model = tiny_net(), tiny_net(seed=7)
    path = tmp_path / "looks_like.npz"                   # a Keras file under a misleading name
    weights = {layer.name: {k: np.array(v) for k, v in layer.params.items()}
               for layer in source.layers if layer.params}
    keras_files.write_legacy_layout(path, [layer.name for layer in source.layers], weights)
    assert model.load_weights(path) == []
    assert_unchanged(model, weights_of(source))


@pytest.mark.parametrize("name, message", [
    ("junk.npz", r"junk\.npz is not a readable minires checkpoint"),
    ("junk", r"junk is not a readable HDF5 file"),
    ("junk.h5", r"junk\.h5 is not a readable HDF5 file"),
])
def test_load_weights_of_neither_kind(tmp_path, name, message):
    (tmp_path / name).write_bytes(b"epoch,loss\n1,0.5\n")
    model = tiny_net(seed=7)
    before = weights_of(model)
    with pytest.raises(ValueError, match=message):
        model.load_weights(tmp_path / name)
    assert_unchanged(model, before)


# --- 3. resuming with another optimiser ------------------------------------------------
def data(n=16):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 6, 6, 3)).astype("float32"), rng.integers(0, 3, n)


@pytest.fixture
def sgd_checkpoint(tmp_path):
    """A checkpoint of one epoch of training tiny_net with SGD(0.1, momentum=0.9)."""
    path = tmp_path / "run.npz"
    fit(tiny_net(), *data(), epochs=1, batch_size=8, optimizer=SGD(0.1, momentum=0.9),
        checkpoint=str(path), verbose=0)
    return path


@pytest.mark.parametrize("optimizer, described", [
    (lambda: Adam(0.01), r"Adam\(beta_1=0\.9, beta_2=0\.999, epsilon=1e-08, weight_decay=0\.0\)"),
    (lambda: SGD(0.1, momentum=0.5), r"SGD\(momentum=0\.5, weight_decay=0\.0\)"),
    (lambda: SGD(0.1, momentum=0.9, weight_decay=1e-4),
     r"SGD\(momentum=0\.9, weight_decay=0\.0001\)"),
    (lambda: RMSprop(), r"RMSprop\(epsilon=1e-07, rho=0\.9, weight_decay=0\.0\)"),
], ids=["adam", "other-momentum", "other-weight-decay", "rmsprop"])
def test_resuming_with_another_optimizer_is_refused(sgd_checkpoint, optimizer, described):
    model, opt = tiny_net(seed=7), optimizer()
    before, before_file = weights_of(model), digest(sgd_checkpoint)
    with pytest.raises(ValueError, match=r"was written while training with SGD\(momentum=0\.9, "
                                         rf"weight_decay=0\.0\), but this run's optimizer is "
                                         rf"{described}: resuming would go on with another "
                                         r"update rule") as error:
        fit(model, *data(), epochs=2, batch_size=8, optimizer=opt, checkpoint=str(sgd_checkpoint),
            resume=True, verbose=0)
    assert str(sgd_checkpoint) in str(error.value) and "resume=False" in str(error.value)
    assert_unchanged(model, before)
    assert opt.iterations == 0 and opt.slots == {}
    assert digest(sgd_checkpoint) == before_file
    assert os.listdir(sgd_checkpoint.parent) == [sgd_checkpoint.name]


def test_the_same_optimizer_resumes_even_at_another_learning_rate(sgd_checkpoint):
    """Documented: the learning rate is not compared (schedules change it)."""
    opt = SGD(0.05, momentum=0.9)
    history = fit(tiny_net(seed=7), *data(), epochs=2, batch_size=8, optimizer=opt,
                  checkpoint=str(sgd_checkpoint), resume=True, verbose=0)
    assert len(history["loss"]) == 2 and opt.iterations == 4
    assert set(opt.slots) == {"velocity"}


def test_a_checkpoint_without_the_record_still_resumes(sgd_checkpoint):
    """Checkpoints written before the optimiser was recorded: not checked for it."""
    arrays = {k: v for k, v in arrays_of(sgd_checkpoint).items()
              if not k.startswith(("__extra__/optimizer_class", "__extra__/optimizer_config/"))}
    with open(sgd_checkpoint, "wb") as handle:
        np.savez(handle, **arrays)
    opt = SGD(0.1, momentum=0.9)
    fit(tiny_net(seed=7), *data(), epochs=2, batch_size=8, optimizer=opt,
        checkpoint=str(sgd_checkpoint), resume=True, verbose=0)
    assert opt.iterations == 4


@pytest.mark.parametrize("change, message", [
    (lambda a: a.update({"__extra__/optimizer/velocity/fc/kernel": np.zeros((5, 5), "f4")}),
     r"optimizer state 'optimizer/velocity/fc/kernel' of shape \(5, 5\) fits no parameter"),
    (lambda a: a.update({"__extra__/optimizer/velocity/ghost/kernel": np.zeros(3, "f4")}),
     r"optimizer state 'optimizer/velocity/ghost/kernel' of shape \(3,\) fits no parameter"),
    (lambda a: a.pop("__extra__/optimizer/iterations"), r"'optimizer/iterations' is missing"),
    (lambda a: a.update({"__extra__/epoch": np.array(1.5)}),
     r"'epoch' is missing or not an integer"),
    (lambda a: a.update({"__extra__/history/loss": np.array(["a"])}),
     r"history 'history/loss' is not a list of numbers"),
], ids=["slot-shape", "slot-name", "no-iterations", "float-epoch", "text-history"])
def test_optimizer_state_that_does_not_fit_is_refused(sgd_checkpoint, change, message):
    arrays = arrays_of(sgd_checkpoint)
    change(arrays)
    with open(sgd_checkpoint, "wb") as handle:
        np.savez(handle, **arrays)
    model, opt = tiny_net(seed=7), SGD(0.1, momentum=0.9)
    before = weights_of(model)
    with pytest.raises(ValueError, match=message):
        fit(model, *data(), epochs=2, batch_size=8, optimizer=opt, checkpoint=str(sgd_checkpoint),
            resume=True, verbose=0)
    assert_unchanged(model, before)
    assert opt.iterations == 0 and opt.slots == {}


# --- 4. writers killed outright leave temporaries: the next save sweeps them ------------
KILLED_WRITER = """
import os, signal, sys
import numpy as np
from minires.io.checkpoint import save_checkpoint
from minires.layers import Dense, Input
from minires.models import Model

def savez_then_killed(handle, **arrays):        # half a checkpoint written, then kill -9
    handle.write(b"PK\\x03\\x04" + bytes(200_000))
    handle.flush()
    os.kill(os.getpid(), signal.SIGKILL)

np.savez = savez_then_killed
x = Input((4,))
save_checkpoint(Model(x, Dense(2, name="fc")(x), name="tiny"), sys.argv[1])
"""


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL and process ids: POSIX")
def test_the_next_save_sweeps_the_temporaries_of_killed_writers(tmp_path):
    path = tmp_path / "run.npz"
    source = tiny_net()
    save_checkpoint(source, path)
    before_file = digest(path)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for _ in range(3):         # each killed writer leaves its temporary; the next sweeps it
        writer = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)], env=env,
                                timeout=120)
        assert writer.returncode == -signal.SIGKILL
        orphans = sorted(set(os.listdir(tmp_path)) - {"run.npz"})
        assert len(orphans) == 1 and re.fullmatch(
            r"\.run\.npz\.[0-9a-f]{8}-\d+\.[0-9a-f]{8}\.npz", orphans[0]), orphans
        assert os.path.getsize(tmp_path / orphans[0]) > 200_000
        assert digest(path) == before_file              # the killed writers never touched it

    live = Path(atomic.temporary_name(path, ".npz"))     # this process's: a live writer's
    live.write_bytes(b"in progress")
    old_style = tmp_path / ".run.npz.k2j4h6g8.npz"           # an earlier minires's names
    recent_old_style = tmp_path / ".run.npz.abcdefgh.npz"
    for stale in (old_style, recent_old_style):
        stale.write_bytes(b"earlier minires")
    two_hours_ago = time.time() - 7200
    os.utime(old_style, (two_hours_ago, two_hours_ago))
    bystanders = [tmp_path / name for name in (".run.npz.notes", "run.npz.bak",
                                               ".other.npz.k2j4h6g8.npz")]
    for bystander in bystanders:
        bystander.write_bytes(b"not minires's")

    save_checkpoint(tiny_net(seed=3), path)
    assert sorted(os.listdir(tmp_path)) == sorted(["run.npz", live.name, recent_old_style.name,
                                                   *(b.name for b in bystanders)])
    model = tiny_net(seed=7)
    load_checkpoint(model, path)
    assert_unchanged(model, weights_of(tiny_net(seed=3)))
