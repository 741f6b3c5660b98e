"""Bounds of the HDF5 reader pinned by measurement, and duplicates refused in every layout.

test_hostile_weights.py checks that hostile files are refused and with which
message; these tests check what the refusal cost (how many bytes a lying gzip
chunk was allowed to inflate to, how much text was read from an oversized
attribute), which a refusal message alone does not show, and refuse layers
listed twice or weights that fit nothing in each Keras layout and loader.
"""
import hashlib
import tracemalloc

import h5py
import numpy as np
import pytest

import keras_files
from minires.io import h5_safety
from minires.io.keras_h5 import WeightsFileError, load_by_name, load_weights, read_layer_weights
from test_hostile_weights import KERNEL, lying_chunk, zeros_deflated

LOADERS = {"by position": lambda model, path: load_weights(model, path),
           "by_name=True": lambda model, path: load_weights(model, path, by_name=True),
           "load_by_name": lambda model, path: load_by_name(model, path)}
SMALL_CLASSES = [("input_layer", "InputLayer"), ("conv2d", "Conv2D"),
                 ("batch_normalization", "BatchNormalization"), ("activation", "Activation"),
                 ("conv2d_1", "Conv2D"), ("global_average_pooling2d", "GlobalAveragePooling2D"),
                 ("dense", "Dense")]


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def refused(load, path, match):
    """``load`` (model, path) raises WeightsFileError matching ``match``, naming the
    file; the model and the file are unchanged.  Returns the message."""
    model = keras_files.small_model()
    before, stored = [np.array(w) for w in model.get_weights()], digest(path)
    with pytest.raises(WeightsFileError, match=match) as info:
        load(model, str(path))
    assert str(path) in str(info.value)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b, err_msg="the failed load changed the model")
    assert digest(path) == stored
    return str(info.value)


# --- 10a. a lying gzip chunk is inflated up to its declared size, no further ---------------
@pytest.fixture
def inflated(monkeypatch):
    """Bytes produced by every zlib inflation h5_safety does, one entry per call
    (zlib.decompressobj's decompress/flush and zlib.decompress are counted)."""
    produced = []

    class Counted:
        def __init__(self, inner):
            self._inner = inner

        def decompress(self, *args, **kwargs):
            out = self._inner.decompress(*args, **kwargs)
            produced.append(len(out))
            return out

        def flush(self, *args):
            out = self._inner.flush(*args)
            produced.append(len(out))
            return out

        def __getattr__(self, name):
            return getattr(self._inner, name)

    class CountingZlib:
        error = h5_safety.zlib.error

        def __getattr__(self, name):
            return getattr(zlib_module, name)

        @staticmethod
        def decompressobj(*args, **kwargs):
            return Counted(zlib_module.decompressobj(*args, **kwargs))

        @staticmethod
        def decompress(*args, **kwargs):
            out = zlib_module.decompress(*args, **kwargs)
            produced.append(len(out))
            return out

    zlib_module = h5_safety.zlib
    monkeypatch.setattr(h5_safety, "zlib", CountingZlib())
    return produced


@pytest.mark.parametrize("loader", LOADERS)
def test_a_lying_chunk_is_inflated_only_to_its_declared_size(tmp_path, inflated, loader):
    """conv2d's kernel declares one 432-byte chunk whose 4 kB of gzip inflate to
    4 MiB: refused after at most 433 bytes came out of zlib."""
    path = tmp_path / "lying.h5"
    keras_files.write_small_file(path)
    lying_chunk(path, inflated=4 << 20)
    refused(LOADERS[loader], path, r"'/conv2d/conv2d/kernel:0' \(chunk at \(0, 0, 0, 0\)\) inflates to "
                                   r"more than its declared 432 bytes \(a compression bomb\?\)")
    assert inflated, "the chunk was not inflated by h5_safety"
    assert sum(inflated) <= 433, f"{sum(inflated):,} bytes inflated for a 432-byte chunk"


def test_a_64_mib_bomb_declaring_1_mib_costs_about_1_mib(tmp_path, inflated):
    """A 1 MiB chunk (the largest CHUNK_SLACK allows) whose 64 kB of gzip inflate
    to 64 MiB: refused, with at most 1 MiB + 1 byte inflated, and Python's peak
    allocation during the load (tracemalloc: the 1 MiB output array and the
    1 MiB inflated, about 3.3 MB in all) under 8 MiB, where inflating it all takes 149 MB."""
    path = tmp_path / "bomb.h5"
    keras_files.write_small_file(path)
    count = 1 << 18                                   # float32: 1 MiB
    with h5py.File(path, "r+") as f:
        del f[KERNEL]
        dataset = f.create_dataset(KERNEL, shape=(count,), dtype="float32", chunks=(count,),
                                   compression="gzip")
        dataset.id.write_direct_chunk((0,), zeros_deflated(64 << 20))
    tracemalloc.start()
    try:
        with pytest.raises(WeightsFileError, match=r"'/conv2d/conv2d/kernel:0' \(chunk at \(0,\)\) "
                                                   r"inflates to more than its declared 1,048,576 bytes"):
            read_layer_weights(str(path), max_bytes=8 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sum(inflated) <= (1 << 20) + 1, f"{sum(inflated):,} bytes inflated for a 1 MiB chunk"
    assert peak < 8 << 20, f"peak Python allocation {peak:,} bytes while refusing a 1 MiB chunk"


# --- 10b. every text attribute the loaders read is read within its byte bound ----------------
BOUND = 1024                                           # MAX_TEXT_BYTES, scaled down for the test
LONG = "x" * 2000                                      # one text value beyond BOUND on its own


def layout_file(path, layout):
    """small_model's weights in one of Keras's layouts."""
    weights = keras_files.random_weights(keras_files.small_model(), np.random.default_rng(0))
    if layout == "keras3 .weights.h5":
        keras_files.write_keras3_layout(path, SMALL_CLASSES, weights)
        return
    style, as_bytes, full = {"keras1 bytes": ("keras1", True, False),
                             "keras2 str": ("keras2", False, False),
                             "keras2 bytes model_weights": ("keras2", True, True),
                             "keras3 legacy .h5 str": ("keras3", False, False),
                             "keras2 split layer_names": ("keras2", True, False)}[layout]
    keras_files.write_legacy_layout(path, keras_files.SMALL_LAYERS, weights, style, as_bytes, full)
    if layout == "keras2 split layer_names":           # as Keras writes a long one
        with h5py.File(path, "r+") as f:
            names = f.attrs["layer_names"]
            del f.attrs["layer_names"]
            f.attrs["layer_names0"], f.attrs["layer_names1"] = names[:3], names[3:]


LAYOUTS = ["keras1 bytes", "keras2 str", "keras2 bytes model_weights", "keras3 legacy .h5 str",
           "keras2 split layer_names", "keras3 .weights.h5"]


def text_attributes(path):
    """(object path, attribute name) of every attribute in the file (all are text)."""
    found = []
    with h5py.File(path, "r") as f:
        for obj in [f] + [f[name] for name in _all_names(f)]:
            found += [(obj.name, name) for name in obj.attrs]
    return found


def _all_names(f):
    names = []
    f.visit(names.append)
    return names


def oversize(path, where, name, variable_length):
    """Attribute ``name`` of ``where``, its values plus LONG: fixed-length bytes
    (which HDF5 stores inline, so the file declares its size) or variable-length
    str (stored in the global heap)."""
    with h5py.File(path, "r+") as f:
        obj = f[where]
        value = obj.attrs[name]
        values = [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(value).ravel()]
        values = values + [LONG] if np.ndim(value) else [LONG]
        del obj.attrs[name]
        if variable_length:
            obj.attrs[name] = values if np.ndim(value) else values[0]
        else:
            encoded = np.array([v.encode() for v in values])
            obj.attrs[name] = encoded if np.ndim(value) else encoded[0]


@pytest.fixture
def attribute_reads(monkeypatch):
    """(attribute name, bytes of text returned) for every attribute value h5py hands out."""
    reads, getitem = [], h5py.AttributeManager.__getitem__

    def spy(self, name):
        value = getitem(self, name)
        texts = np.asarray(value).ravel()
        reads.append((name, sum(len(v if isinstance(v, bytes) else str(v).encode()) for v in texts)))
        return value

    monkeypatch.setattr(h5py.AttributeManager, "__getitem__", spy)
    monkeypatch.setattr(h5_safety, "MAX_TEXT_BYTES", BOUND)
    return reads


def check_every_attribute(tmp_path, layout, attribute_reads, variable_length):
    good = tmp_path / "good.h5"
    layout_file(good, layout)
    checked = []
    for where, name in text_attributes(good):
        path = tmp_path / f"{len(checked)}.h5"
        path.write_bytes(good.read_bytes())
        oversize(path, where, name, variable_length)
        for loader in ("by position", "load_by_name"):
            attribute_reads.clear()
            model = keras_files.small_model()
            try:
                LOADERS[loader](model, str(path))
            except WeightsFileError as error:
                message = str(error)
            else:
                message = None
            label = f"{layout}: {where}@{name} oversized, {loader}"
            too_long = [(n, size) for n, size in attribute_reads if size > BOUND]
            assert not too_long, f"{label}: read beyond the {BOUND}-byte bound: {too_long}"
            if message is None:                        # loaded: then it never read the attribute
                assert name not in [n for n, _ in attribute_reads], label
            else:
                assert f"attribute {name!r} of {where!r} declares" in message, (label, message)
                assert "more than any weights file needs" in message, (label, message)
                checked.append(name)
    assert checked, f"{layout}: no attribute was refused"   # the loader reads at least one
    return checked


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_text_attribute_read_is_bounded(tmp_path, layout, attribute_reads):
    """Each attribute of the file in turn made longer than the bound (as
    fixed-length bytes): every one the loaders read is refused by name, from its
    declared size, before its text is read; the others (backend, keras_version)
    are never read."""
    checked = check_every_attribute(tmp_path, layout, attribute_reads, variable_length=False)
    expected = {"layer_names", "weight_names"} if "weights.h5" not in layout else {"name"}
    if "split" in layout:
        expected = {"layer_names0", "layer_names1", "weight_names"}
    assert set(checked) == expected


@pytest.mark.parametrize("layout", ["keras2 str", "keras3 .weights.h5"])
def test_every_variable_length_text_attribute_read_is_bounded(tmp_path, layout, attribute_reads):
    """The same with variable-length str attributes (h5py's default, Keras 3's
    names), whose storage size counts 16 bytes a value whatever its length:
    their lengths are read from the attribute message, before the text."""
    check_every_attribute(tmp_path, layout, attribute_reads, variable_length=True)


# --- 10c. a layer listed twice, or weights that fit nothing, in every layout ------------------
def duplicated_layer(path, layout, weights):
    """conv2d_1 listed twice: twice in layer_names, or two Keras 3 paths named conv2d_1."""
    if layout == "keras3 .weights.h5":
        with h5py.File(path, "r+") as f:
            variables = f.create_group("layers/conv2d_2/vars")
            variables.attrs["name"] = "conv2d_1"
            for i, array in enumerate(weights["conv2d_1"].values()):
                variables.create_dataset(str(i), data=array + 1)
        return "conv2d_1"
    with h5py.File(path, "r+") as f:
        root = f["model_weights"] if "model_weights" in f else f
        key = "layer_names" if "layer_names" in root.attrs else "layer_names1"
        root.attrs[key] = np.array([n if isinstance(n, bytes) else n.encode()
                                    for n in root.attrs[key]] + [b"conv2d_1"])
    return "conv2d_1"


def extra_layer(path, layout, weights):
    """A layer 'foo' holding dense's shapes, which is in no model."""
    with h5py.File(path, "r+") as f:
        if layout == "keras3 .weights.h5":
            variables = f.create_group("layers/dense_1/vars")
            variables.attrs["name"] = "foo"
            for i, array in enumerate(weights["dense"].values()):
                variables.create_dataset(str(i), data=array)
            return "foo"
        root = f["model_weights"] if "model_weights" in f else f
        key = "layer_names" if "layer_names" in root.attrs else "layer_names1"
        root.attrs[key] = np.array([n if isinstance(n, bytes) else n.encode()
                                    for n in root.attrs[key]] + [b"foo"])
        group = root.create_group("foo")
        group.attrs["weight_names"] = np.array([b"foo/kernel:0", b"foo/bias:0"])
        group.create_dataset("foo/kernel:0", data=weights["dense"]["kernel"])
        group.create_dataset("foo/bias:0", data=weights["dense"]["bias"])
    return "foo"


def extra_weight(path, layout, weights):
    """conv2d holds a third array, which is none of its weights."""
    with h5py.File(path, "r+") as f:
        if layout == "keras3 .weights.h5":
            f["layers/conv2d/vars"].create_dataset("2", data=weights["conv2d"]["bias"])
            return "conv2d/2"
        group = (f["model_weights"] if "model_weights" in f else f)["conv2d"]
        names = [n if isinstance(n, bytes) else n.encode() for n in group.attrs["weight_names"]]
        group.attrs["weight_names"] = np.array(names + [b"conv2d/extra:0"])
        group.create_dataset("conv2d/extra:0", data=weights["conv2d"]["bias"])
    return "conv2d/extra:0"


def expected_refusal(case, loader, key):
    """The message each loader gives (None: the loader's documented behaviour is to
    load; load_weights(by_name=True), like Keras, skips file layers not in the model)."""
    if loader == "load_by_name":
        return {"twice": rf"file layers '{key}' and '{key}' both hold weights for model layer '{key}'",
                "extra layer": rf"file layer '{key}' is not in the model",
                "extra weight": rf"layer 'conv2d': the file's weight '{key}' matches none of its "
                                rf"weights"}[case]
    if case == "extra weight":
        return r"layer 'conv2d' has 2 weights \['kernel', 'bias'\], the file's layer 'conv2d' has 3"
    if loader == "by_name=True":
        return rf"lists layer '{key}' twice" if case == "twice" else None
    return r"holds weights for 5 layers but model 'small' has 4 layers with weights"


EDITS = {"twice": duplicated_layer, "extra layer": extra_layer, "extra weight": extra_weight}


@pytest.mark.parametrize("case", EDITS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_layer_twice_or_a_weight_that_fits_nothing_is_refused(tmp_path, layout, case):
    path = tmp_path / "edited.h5"
    layout_file(path, layout)
    weights = keras_files.random_weights(keras_files.small_model(), np.random.default_rng(0))
    key = EDITS[case](path, layout, weights)
    for loader in LOADERS:
        match = expected_refusal(case, loader, key)
        if match is not None:
            refused(LOADERS[loader], path, match)
