"""Hostile weight files: each gets one clear WeightsFileError naming the file and
what in it is wrong, and the model and every file are left exactly as they were.

The files are keras_files.small_model's, in Keras 2's layout (four layers with
weights, eight arrays), then edited with h5py as a damaged or malicious file
would be.  Every case loads through both loaders (Model.load_weights by
position, load_by_name by names) into a fresh model and compares every
parameter, and the file's bytes, with what they were before.
"""
import hashlib
import json
import os
import re
import subprocess
import sys
import zlib

import h5py
import numpy as np
import pytest

import keras_files
from minires.io import h5_safety, keras_h5
from minires.io.keras_h5 import WeightsFileError, load_by_name, read_layer_weights

HERE = os.path.dirname(os.path.abspath(__file__))
LOADERS = {"by position": lambda model, path: model.load_weights(path),
           "by name": lambda model, path: load_by_name(model, path)}
KERNEL = "conv2d/conv2d/kernel:0"                    # (3, 3, 3, 4) float32
BIAS_1 = "conv2d_1/conv2d_1/bias:0"                  # (4,)


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def small(tmp_path):
    """(path of a good small file, the weights it holds)."""
    path = tmp_path / "small.h5"
    return path, keras_files.write_small_file(path)


def assert_refused(path, match, loaders=LOADERS, others=()):
    """Each loader raises WeightsFileError matching ``match`` (and naming the
    file); the model's parameters and the bytes of ``path`` and ``others`` are
    unchanged. Returns the messages."""
    messages = []
    for name in loaders:
        model = keras_files.small_model()
        before = [np.array(w) for w in model.get_weights()]
        files = {p: digest(p) for p in (path, *others)}
        with pytest.raises(WeightsFileError, match=match) as info:
            LOADERS[name](model, str(path))
        assert str(path) in str(info.value), f"{name}: the message names no file"
        for a, b in zip(before, model.get_weights()):
            np.testing.assert_array_equal(a, b, err_msg=f"{name}: the failed load changed the model")
        assert {p: digest(p) for p in files} == files, f"{name}: a file changed"
        messages.append(str(info.value))
    return messages


def test_the_good_file_loads_through_both(small):
    path, weights = small
    for name in LOADERS:
        model = keras_files.small_model()
        LOADERS[name](model, str(path))
        for layer, slot in model.parameters(trainable_only=False):
            np.testing.assert_array_equal(layer.params[slot], weights[layer.name][slot])


# --- 1. nothing written before everything is checked; one exception type ----------------
def test_string_dataset_is_refused_before_anything_is_written(small):
    path, _ = small
    keras_files.replace(path, BIAS_1, data=np.array([b"0.1", b"x", b"y", b"z"]))
    assert_refused(path, r"small.h5: '/conv2d_1/conv2d_1/bias:0' holds text, not real numbers")


def test_wrong_shape_in_the_second_layer_changes_nothing(small):
    path, _ = small
    keras_files.replace(path, "batch_normalization/batch_normalization/gamma:0",
                        data=np.ones(5, "float32"))
    by_position, by_name = assert_refused(path, r"layer 'batch_normalization', weight 'gamma'")
    assert "model expects shape (4,), the file's 'batch_normalization/gamma:0' has shape (5,)" in by_position
    assert "expected shape (4,), found (5,)" in by_name


@pytest.mark.parametrize("loop", ["itself", "each other", "a group"])
def test_soft_link_loops(small, loop):
    path, _ = small
    if loop == "itself":
        keras_files.replace(path, KERNEL, h5py.SoftLink("/" + KERNEL))
    elif loop == "each other":
        keras_files.replace(path, KERNEL, h5py.SoftLink("/conv2d/conv2d/bias:0"))
        keras_files.replace(path, "conv2d/conv2d/bias:0", h5py.SoftLink("/" + KERNEL))
    else:
        keras_files.replace(path, "conv2d/conv2d", h5py.SoftLink("/conv2d"))   # a group, in a loop
    assert_refused(path, r"small.h5: '/conv2d/conv2d(/kernel:0)?' is a soft link to '/conv2d.*'; "
                         r"weight files are read without following links")


@pytest.mark.parametrize("attribute", ["weight_names", "layer_names"])
def test_text_that_is_not_utf8(small, attribute):
    path, _ = small
    with h5py.File(path, "r+") as f:
        if attribute == "weight_names":
            f["conv2d"].attrs["weight_names"] = np.array([b"conv2d/kernel\xff:0", b"conv2d/bias:0"])
        else:
            f.attrs["layer_names"] = np.array([name.encode() for name in keras_files.SMALL_LAYERS]
                                              + [b"\xc3\x28"])
    assert_refused(path, rf"small.h5: attribute '{attribute}' of '/(conv2d)?' is not UTF-8 text")


def test_a_layer_listed_but_absent(small):
    path, _ = small
    with h5py.File(path, "r+") as f:
        del f["conv2d_1"]
    assert_refused(path, r"small.h5 is damaged: '/conv2d_1', listed in 'layer_names', is missing")


def test_not_a_file(tmp_path):
    os.mkfifo(tmp_path / "pipe.h5")                  # reading it would wait forever
    (tmp_path / "folder.h5").mkdir()
    for name, match in [("pipe.h5", "is not a regular file"), ("folder.h5", "is a directory")]:
        for load in (keras_h5.load_weights, load_by_name):
            with pytest.raises(WeightsFileError, match=match):
                load(keras_files.small_model(), str(tmp_path / name))


# --- 2. memory bombs, refused from their metadata ---------------------------------------
def huge_dataset(path):
    """conv2d's kernel declared as 2**20 x 2**20 float32 (4 TiB), chunked, no data written."""
    keras_files.replace(path, KERNEL, shape=(2 ** 20, 2 ** 20), dtype="float32", chunks=(1024, 1024))


def zeros_deflated(nbytes, block=1 << 20):
    """A zlib stream that inflates to ``nbytes`` zero bytes (about nbytes / 1000 long)."""
    compressor, zeros = zlib.compressobj(9), bytes(block)
    return b"".join([compressor.compress(zeros) for _ in range(nbytes // block)] + [compressor.flush()])


def gzip_gigabyte(path):
    """conv2d's kernel as 1 GiB of gzip-compressed zeros, 1 MB in the file."""
    chunk = 1 << 20                                   # 4 MiB of float32 per chunk
    stream = zeros_deflated(4 * chunk)
    with h5py.File(path, "r+") as f:
        del f[KERNEL]
        dataset = f.create_dataset(KERNEL, shape=(256 * chunk,), dtype="float32", chunks=(chunk,),
                                   compression="gzip")
        for i in range(256):
            dataset.id.write_direct_chunk((i * chunk,), stream)


def lying_chunk(path, inflated=256 << 20):
    """conv2d's kernel of the right shape, in one gzip chunk that inflates to
    ``inflated`` bytes instead of its 432: HDF5 alone would inflate it all."""
    with h5py.File(path, "r+") as f:
        del f[KERNEL]
        dataset = f.create_dataset(KERNEL, shape=(3, 3, 3, 4), dtype="float32", chunks=(3, 3, 3, 4),
                                   compression="gzip")
        dataset.id.write_direct_chunk((0, 0, 0, 0), zeros_deflated(inflated))


BOMBS = {"huge": huge_dataset, "gzip GiB": gzip_gigabyte, "lying chunk": lying_chunk}


def test_declared_huge_dataset_is_refused_by_its_shape(small):
    path, _ = small
    huge_dataset(path)
    by_position, by_name = assert_refused(path, r"layer 'conv2d', weight 'kernel'")
    assert ("model expects shape (3, 3, 3, 4), the file's 'conv2d/kernel:0' has shape "
            "(1048576, 1048576)") in by_position
    assert "expected shape (3, 3, 3, 4), found (1048576, 1048576)" in by_name
    with pytest.raises(WeightsFileError, match=r"declares 4,398,046,[\d,]+ bytes of weights, more than "
                                               r"the bound of 2,147,483,648 bytes"):
        read_layer_weights(str(path))


def test_a_chunk_that_inflates_beyond_its_size_is_refused(small):
    """Two bounds: the bytes a chunk stores (gzip inflates at most about 1000-fold),
    then the bytes it inflates to, counted as it inflates."""
    path, _ = small
    lying_chunk(path)
    assert_refused(path, r"small.h5: '/conv2d/conv2d/kernel:0' stores [\d,]+ bytes for its chunk at "
                         r"\(0, 0, 0, 0\), more than a chunk of 432 bytes needs")
    lying_chunk(path, inflated=4 << 20)              # 4 kB stored: within the first bound
    assert_refused(path, r"small.h5: '/conv2d/conv2d/kernel:0' \(chunk at \(0, 0, 0, 0\)\) inflates "
                         r"to more than its declared 432 bytes")


CHILD = r"""
import json, resource, sys, time
import keras_files
from minires.io.keras_h5 import WeightsFileError, load_by_name, read_layer_weights

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024     # KiB on Linux

model = keras_files.small_model()
model.load_weights(sys.argv[1])          # a good load first: lazy imports and buffers settled
load_by_name(model, sys.argv[1])
base, results = peak(), []
for path in sys.argv[2:]:
    for name, load in [("by position", model.load_weights), ("by name", lambda p: load_by_name(model, p)),
                       ("read all", lambda p: read_layer_weights(p, max_bytes=64 << 20))]:
        start = time.perf_counter()
        try:
            load(path)
            outcome = "loaded"
        except WeightsFileError as error:
            outcome = str(error)
        results.append([path, name, outcome, time.perf_counter() - start, peak() - base])
print(json.dumps(results))
"""


def test_memory_bombs_cost_under_a_second_and_100_mb(tmp_path):
    """Measured in a fresh process: its peak memory (ru_maxrss) after a good load,
    then after each refusal; the peak only grows, so the last figure bounds all.
    read_layer_weights has no model to check shapes against: its bound is max_bytes."""
    good = tmp_path / "good.h5"
    keras_files.write_small_file(good)
    paths = []
    for name, make in BOMBS.items():
        paths.append(str(tmp_path / f"{name}.h5"))
        keras_files.write_small_file(paths[-1])
        make(paths[-1])
    assert os.path.getsize(tmp_path / "gzip GiB.h5") < 2 << 20
    result = subprocess.run([sys.executable, "-c", CHILD, str(good), *paths], capture_output=True,
                            text=True, timeout=120, env=dict(os.environ, PYTHONPATH=HERE))
    assert result.returncode == 0, result.stderr
    for path, loader, outcome, seconds, extra in json.loads(result.stdout):
        label = f"{os.path.basename(path)} {loader}"
        assert outcome != "loaded", label
        assert outcome.startswith(path), (label, outcome)
        assert seconds < 1.0, (label, seconds)
        assert extra < 100e6, (label, extra)


def test_the_bound_on_bytes_read_is_configurable(small, monkeypatch):
    path, _ = small
    model = keras_files.small_model()
    total = sum(w.nbytes for w in model.get_weights())
    assert total == 1164                             # 291 float32
    with pytest.raises(WeightsFileError, match=r"small.h5: loading it would read 1,164 bytes, more "
                                               r"than the bound of 100 bytes"):
        load_by_name(model, str(path), max_bytes=100)
    monkeypatch.setattr(keras_h5, "MAX_READ_BYTES", 1000)
    assert_refused(path, r"would read 1,164 bytes, more than the bound of 1,000 bytes")
    load_by_name(model, str(path), max_bytes=1164)


def test_text_attributes_are_bounded(small, monkeypatch):
    path, _ = small
    monkeypatch.setattr(h5_safety, "MAX_TEXT_ITEMS", 3)
    assert_refused(path, r"attribute 'layer_names' of '/' declares 7 values in \d+ bytes, more than "
                         r"any weights file needs")


def test_too_many_chunks(small):
    path, _ = small
    keras_files.replace(path, KERNEL, data=np.ones((3, 3, 3, 4), "float32"), chunks=(1, 1, 1, 1))
    h5_safety.MAX_CHUNKS, saved = 100, h5_safety.MAX_CHUNKS
    try:
        assert_refused(path, r"'/conv2d/conv2d/kernel:0' is cut into 108 chunks of shape "
                             r"\(1, 1, 1, 1\), more than 100")
    finally:
        h5_safety.MAX_CHUNKS = saved


# --- 3. links and other files: never followed ---------------------------------------------
def test_external_link_is_refused(small, tmp_path):
    path, weights = small
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["kernel"] = weights["conv2d"]["kernel"] + 1
    keras_files.replace(path, KERNEL, h5py.ExternalLink(str(other), "/kernel"))
    assert_refused(path, r"small.h5: '/conv2d/conv2d/kernel:0' is an external link to '/kernel' in "
                         r"the file '.*other.h5'; weight files are read without following links",
                   others=[other])


def test_soft_link_within_the_file_is_refused(small):
    """Refused, though harmless here: following none is simpler than proving each one safe."""
    path, _ = small
    with h5py.File(path, "r+") as f:
        f["spare"] = np.asarray(f[KERNEL])
    keras_files.replace(path, KERNEL, h5py.SoftLink("/spare"))
    assert_refused(path, r"'/conv2d/conv2d/kernel:0' is a soft link to '/spare'")


def test_external_storage_and_virtual_datasets_are_refused(small, tmp_path):
    path, weights = small
    raw = tmp_path / "kernel.bin"
    raw.write_bytes(weights["conv2d"]["kernel"].tobytes())
    keras_files.replace(path, KERNEL, shape=(3, 3, 3, 4), dtype="float32",
                        external=[(str(raw), 0, 432)])
    assert_refused(path, r"'/conv2d/conv2d/kernel:0' keeps its data in the external file\(s\) "
                         r"\['.*kernel.bin'\]; weights are read from this file only", others=[raw])

    source = tmp_path / "source.h5"
    with h5py.File(source, "w") as f:
        f["kernel"] = weights["conv2d"]["kernel"]
    layout = h5py.VirtualLayout(shape=(3, 3, 3, 4), dtype="float32")
    layout[...] = h5py.VirtualSource(str(source), "kernel", shape=(3, 3, 3, 4))
    with h5py.File(path, "r+") as f:
        del f[KERNEL]
        f.create_virtual_dataset(KERNEL, layout)
    assert_refused(path, r"'/conv2d/conv2d/kernel:0' is a virtual dataset", others=[source])


# --- 4. no silent wrong answers -----------------------------------------------------------
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused(small, value):
    path, weights = small
    kernel = weights["conv2d_1"]["kernel"].copy()
    kernel[1, 2, 0, 3] = value
    keras_files.replace(path, "conv2d_1/conv2d_1/kernel:0", data=kernel)
    assert_refused(path, r"small.h5: '/conv2d_1/conv2d_1/kernel:0' holds 1 non-finite value\(s\) "
                         r"\(NaN or inf, as float32\) among 144")


def test_float64_too_large_for_float32_is_refused(small):
    path, _ = small
    keras_files.replace(path, BIAS_1, data=np.array([1.0, 2.0, 1e300, 3.0]))
    assert_refused(path, r"'/conv2d_1/conv2d_1/bias:0' holds 1 non-finite value")


@pytest.mark.parametrize("dtype, words", [("complex64", "complex numbers"), ("bool", "enumerated values"),
                                          ("f4,f4", "compound records")])
def test_values_that_are_not_real_numbers(small, dtype, words):
    path, _ = small
    keras_files.replace(path, BIAS_1, data=np.zeros(4, dtype))
    assert_refused(path, rf"'/conv2d_1/conv2d_1/bias:0' holds {words}, not real numbers")


def test_two_file_layers_for_one_model_layer(small):
    path, weights = small
    order = keras_files.SMALL_LAYERS + ["fc"]
    weights["fc"] = {slot: array + 1 for slot, array in weights["dense"].items()}
    keras_files.write_legacy_layout(path, order, weights)
    model = keras_files.small_model()
    before = [np.array(w) for w in model.get_weights()]
    with pytest.raises(WeightsFileError, match=r"file layers 'dense' and 'fc' both hold weights for "
                                               r"model layer 'dense'"):
        load_by_name(model, str(path), renames={"fc": "dense"})
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_unknown_filters_are_refused_and_gzip_loads(small, tmp_path):
    path, weights = small
    keras_files.replace(path, KERNEL, data=weights["conv2d"]["kernel"], compression="lzf")
    assert_refused(path, r"'/conv2d/conv2d/kernel:0' is stored through the HDF5 filter 32000 \(lzf\), "
                         r"which minires does not read: only gzip, shuffle, fletcher32")
    keras_files.replace(path, KERNEL, data=weights["conv2d"]["kernel"], compression="gzip",
                        shuffle=True, fletcher32=True, chunks=(3, 3, 1, 4))
    for name in LOADERS:
        model = keras_files.small_model()
        LOADERS[name](model, str(path))
        np.testing.assert_array_equal(model.get_layer("conv2d").params["kernel"], weights["conv2d"]["kernel"])


def test_keras_split_attributes_load(small):
    """Keras writes an attribute too long for an object header as name0, name1, ..."""
    path, weights = small
    with h5py.File(path, "r+") as f:
        names = f.attrs["layer_names"]
        del f.attrs["layer_names"]
        f.attrs["layer_names0"], f.attrs["layer_names1"] = names[:3], names[3:]
    model = keras_files.small_model()
    load_by_name(model, str(path))
    np.testing.assert_array_equal(model.get_layer("dense").params["bias"], weights["dense"]["bias"])


def free_space_of_size_zero(path):
    """Edit the bytes of ``path``: the free-space object of its first global heap
    (where h5py keeps variable-length strings) gets size 0."""
    data = bytearray(open(path, "rb").read())
    start = data.index(b"GCOL")
    at = start + 16
    while int.from_bytes(data[at:at + 2], "little") != 0:          # objects up to index 0
        at += 16 + -(-int.from_bytes(data[at + 8:at + 16], "little") // 8) * 8
    data[at + 8:at + 16] = bytes(8)
    open(path, "wb").write(bytes(data))


def free_list_in_a_loop(path):
    """Edit the bytes of ``path``: the first local heap (a group's link names) with
    a free list gets a first free block that points back to itself."""
    data = bytearray(open(path, "rb").read())
    start = data.index(b"HEAP")
    while int.from_bytes(data[start + 16:start + 24], "little") == 1:   # no free list here
        start = data.index(b"HEAP", start + 1)
    head = int.from_bytes(data[start + 16:start + 24], "little")
    address = int.from_bytes(data[start + 24:start + 32], "little")
    data[address + head:address + head + 8] = head.to_bytes(8, "little")
    open(path, "wb").write(bytes(data))


LOAD_IN_A_CHILD = ("import sys, keras_files\n"
                   "from minires.io.keras_h5 import WeightsFileError, load_by_name\n"
                   "try:\n    load_by_name(keras_files.small_model(), sys.argv[1])\n"
                   "except WeightsFileError as error:\n    print(error)\n")


@pytest.mark.parametrize("heap", ["global", "local"])
def test_a_heap_that_would_loop_forever(tmp_path, heap):
    """HDF5 1.14 loops forever on either (found by the byte-flip test): refused
    before HDF5 reads it.  In a child, with a time limit."""
    path = tmp_path / "small.weights.h5"
    model = keras_files.small_model()
    keras_files.write_keras3_layout(path, [(layer.name, type(layer).__name__) for layer in model.layers],
                                    keras_files.random_weights(model, np.random.default_rng(0)))
    (free_space_of_size_zero if heap == "global" else free_list_in_a_loop)(path)
    result = subprocess.run([sys.executable, "-c", LOAD_IN_A_CHILD, str(path)], capture_output=True,
                            text=True, timeout=60, env=dict(os.environ, PYTHONPATH=HERE))
    assert result.returncode == 0, result.stderr
    expected = {"global": r"small.weights.h5 is damaged: the global heap at byte \d+ \(which holds "
                          r"variable-length strings\) has an object at byte \d+ of size 0, on which "
                          r"HDF5 would loop forever",
                "local": r"small.weights.h5 is damaged: the free list of the local heap at byte \d+ "
                         r"\(which holds a group's names\) comes back to offset \d+, on which HDF5 "
                         r"would loop forever"}[heap]
    assert re.search(expected, result.stdout), result.stdout
