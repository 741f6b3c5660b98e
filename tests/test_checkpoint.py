"""minires's own checkpoints (minires.io.checkpoint): a bit-exact round trip,
a pickle-free .npz layout, atomic saving, and loads that either fit the model
completely or fail with a clear error and leave the model as it was (models
on ``--device``: the file always holds NumPy arrays)."""
import io
import os
import re

import numpy as np
import pytest
from conftest import on_cpu

from minires.backend import floatx_scope, to_device
from minires.initializers import set_random_seed
from minires.io import checkpoint
from minires.io.checkpoint import load_checkpoint, save_checkpoint
from minires.layers import (Activation, BatchNormalization, Conv2D, Dense, GlobalAveragePooling2D,
                            Input, clear_session)
from minires.models import Model

PARAM_KEYS = {"conv1/kernel", "conv1/bias", "bn_conv1/gamma", "bn_conv1/beta",
              "bn_conv1/moving_mean", "bn_conv1/moving_variance", "fc/kernel", "fc/bias"}


# --- helpers ------------------------------------------------------------------------
def tiny_net(seed=0, name="tiny", filters=4, units=3, head="fc"):
    """conv1 -> bn_conv1 -> relu -> pooling -> dense ``head``; weights from ``seed``."""
    clear_session()
    set_random_seed(seed)
    x = Input((6, 6, 3))
    y = Conv2D(filters, 3, padding="same", name="conv1")(x)
    y = BatchNormalization(name="bn_conv1")(y)
    y = Activation("relu")(y)
    y = GlobalAveragePooling2D()(y)
    return Model(x, Dense(units, name=head)(y), name=name)


def images(seed=1):
    return np.random.default_rng(seed).standard_normal((2, 6, 6, 3)).astype(np.float32)


def trained_net(seed=0, device="cpu", **kwargs):
    """tiny_net on ``device`` after one training-mode forward pass: BN's moving
    statistics moved."""
    model = tiny_net(seed, **kwargs).to(device)
    model.forward(to_device(images(), device), training=True)
    return model


def weights_of(model):
    """{'layer/param': NumPy copy} of every parameter."""
    return {checkpoint.parameter_key(layer, name): on_cpu(layer.params[name])
            for layer, name in model.parameters(trainable_only=False)}


def assert_weights_equal(model, expected):
    got = weights_of(model)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key].dtype == value.dtype, key
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def rewrite(path, change):
    """Apply ``change`` to the dict of arrays in the .npz at ``path`` and write it back."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    change(arrays)
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


@pytest.fixture
def saved(tmp_path, device):
    """(path, weights) of a checkpoint of trained_net(seed=0), saved from ``device``."""
    model = trained_net(0, device)
    path = tmp_path / "tiny.npz"
    save_checkpoint(model, path)
    return path, weights_of(model)


@pytest.fixture
def fresh(device):
    """A model of the same architecture as ``saved`` with other weights (on ``device``),
    and those weights."""
    model = tiny_net(seed=7).to(device)
    return model, weights_of(model)


# --- the round trip -------------------------------------------------------------------
def test_round_trip_is_bit_exact(saved, fresh, device):
    path, expected = saved
    model, before = fresh
    for key in ("conv1/kernel", "fc/kernel", "bn_conv1/moving_mean", "bn_conv1/moving_variance"):
        assert not np.array_equal(before[key], expected[key]), f"{key} should differ before loading"
    assert load_checkpoint(model, path) == {}
    assert_weights_equal(model, expected)
    original = trained_net(0, device)
    x = to_device(images(3), device)
    np.testing.assert_array_equal(on_cpu(model.forward(x)), on_cpu(original.forward(x)))


def test_loads_into_the_existing_arrays(saved, fresh):
    model, _ = fresh
    arrays = [layer.params[name] for layer, name in model.parameters(trainable_only=False)]
    load_checkpoint(model, saved[0])
    for (layer, name), array in zip(model.parameters(trainable_only=False), arrays):
        assert layer.params[name] is array, f"{layer.name}/{name} was replaced, not filled"


def test_float32_stays_float32(saved, fresh):
    model, _ = fresh
    with np.load(saved[0], allow_pickle=False) as data:
        assert {data[key].dtype for key in PARAM_KEYS} == {np.dtype("float32")}
    load_checkpoint(model, saved[0])
    assert {layer.params[name].dtype for layer, name in model.parameters(trainable_only=False)} == {np.dtype("float32")}


def test_values_are_cast_to_the_model_dtype(tmp_path, fresh, device):
    with floatx_scope("float64"):
        wide = trained_net(0, device)
    path = tmp_path / "wide.npz"
    save_checkpoint(wide, path)
    model, _ = fresh
    load_checkpoint(model, path)
    for layer, name in model.parameters(trainable_only=False):
        assert layer.params[name].dtype == np.float32
        np.testing.assert_array_equal(on_cpu(layer.params[name]),
                                      on_cpu(wide.get_layer(layer.name).params[name]).astype(np.float32))


# --- the file --------------------------------------------------------------------------
def test_file_layout_is_plain_npz_without_objects(tmp_path, device):
    model = trained_net(0, device)
    path = tmp_path / "tiny.npz"
    save_checkpoint(model, path, extra={"epoch": 3, "optimizer/fc/kernel/m": np.ones((4, 3))})
    with np.load(path, allow_pickle=False) as data:          # would fail on pickled arrays
        arrays = {key: data[key] for key in data.files}
    assert set(arrays) == PARAM_KEYS | {"__format__", "__architecture__", "__extra__/epoch",
                                        "__extra__/optimizer/fc/kernel/m"}
    assert not any(a.dtype.hasobject for a in arrays.values())
    assert arrays["__format__"].dtype.kind == "i" and arrays["__format__"] == 1
    assert arrays["__architecture__"].dtype.kind == "U" and str(arrays["__architecture__"]) == "tiny"
    np.testing.assert_array_equal(arrays["bn_conv1/moving_variance"],
                                  on_cpu(model.get_layer("bn_conv1").params["moving_variance"]))


def test_path_is_used_exactly_as_given(tmp_path, fresh, device):
    model = trained_net(0, device)
    path = tmp_path / "checkpoint"                           # no .npz: none is added
    save_checkpoint(model, str(path))
    assert os.listdir(tmp_path) == ["checkpoint"]
    load_checkpoint(fresh[0], str(path))
    assert_weights_equal(fresh[0], weights_of(model))


def test_overwrites_an_existing_checkpoint(saved, fresh, device):
    path, _ = saved
    model, weights = fresh
    save_checkpoint(model, path)
    assert os.listdir(path.parent) == [path.name]
    other = tiny_net(seed=3).to(device)
    load_checkpoint(other, path)
    assert_weights_equal(other, weights)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_new_file_gets_the_usual_permissions_not_tempfiles_private_ones(tmp_path):
    path = tmp_path / "tiny.npz"
    save_checkpoint(tiny_net(), path)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


# --- extra -------------------------------------------------------------------------------
def test_extra_round_trips(tmp_path, fresh, device):
    scalars = {"epoch": 12, "learning_rate": 0.05, "done": False, "optimizer": "sgd"}
    arrays = {"velocity/conv1/kernel": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
              "history": np.array([2.5, 1.25, 0.5]), "counts": np.array([3, 1], dtype=np.uint8)}
    path = tmp_path / "tiny.npz"
    save_checkpoint(trained_net(device=device), path, extra={**scalars, **arrays, "step": np.int64(7)})
    got = load_checkpoint(fresh[0], path)
    assert got.keys() == {*scalars, *arrays, "step"}
    for name, value in scalars.items():                  # scalars come back as Python scalars
        assert got[name] == value and type(got[name]) is type(value), name
    assert got["step"] == 7 and type(got["step"]) is int
    for name, value in arrays.items():
        assert isinstance(got[name], np.ndarray) and got[name].dtype == value.dtype, name
        np.testing.assert_array_equal(got[name], value)


@pytest.mark.parametrize("extra, message", [
    ({"state": None}, r"extra\['state'\]: NoneType becomes an object array"),
    ({"state": {"m": 1}}, r"extra\['state'\]: dict becomes an object array"),
    ({3: 1.0}, r"extra: names must be non-empty strings, got 3"),
    ([("epoch", 1)], r"extra must be a dict of name -> array or scalar, got list"),
])
def test_unsaveable_extra_is_refused_and_the_old_file_kept(saved, extra, message):
    path, _ = saved
    before = path.read_bytes()
    with pytest.raises(TypeError, match=message):
        save_checkpoint(tiny_net(seed=5), path, extra=extra)
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == [path.name]


# --- atomic saving ------------------------------------------------------------------------
def test_save_failing_midway_keeps_the_old_file_and_leaves_no_temp_file(saved, monkeypatch):
    path, _ = saved
    before = path.read_bytes()

    def savez_that_dies(handle, **arrays):
        handle.write(b"PK\x03\x04 half a zip")
        raise RuntimeError("disk full")

    monkeypatch.setattr(np, "savez", savez_that_dies)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(tiny_net(seed=5), path)
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == [path.name]


def test_failed_rename_leaves_no_temp_file(saved, monkeypatch):
    path, _ = saved
    before = path.read_bytes()

    def replace_that_fails(source, target):
        raise OSError("rename refused")

    monkeypatch.setattr(os, "replace", replace_that_fails)
    with pytest.raises(OSError, match="rename refused"):
        save_checkpoint(tiny_net(seed=5), path)
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == [path.name]


def test_data_is_synced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync")
        real_fsync(fd)

    def replace(source, target):
        events.append("replace")
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    save_checkpoint(tiny_net(), tmp_path / "tiny.npz")
    assert events == ["fsync", "replace"]


def test_reserved_layer_name_is_refused(tmp_path):
    x = Input((4,))
    model = Model(x, Dense(2, name="__extra__")(x), name="odd")
    with pytest.raises(ValueError, match=r"layer name '__extra__' starts with '__'"):
        save_checkpoint(model, tmp_path / "odd.npz")
    assert os.listdir(tmp_path) == []


# --- loads that do not fit: a clear error, and the model unchanged -------------------------
def test_other_architecture_is_refused_unless_not_strict(saved, device):
    path, expected = saved
    model = tiny_net(seed=7, name="resnet50").to(device)
    before = weights_of(model)
    with pytest.raises(ValueError, match=r"checkpoint of architecture 'tiny', but the model "
                                         r"is named 'resnet50'") as error:
        load_checkpoint(model, path)
    assert str(path) in str(error.value)
    assert_weights_equal(model, before)
    load_checkpoint(model, path, strict=False)
    assert_weights_equal(model, expected)


def test_missing_parameters_are_listed(saved, device):
    path, _ = saved
    model = tiny_net(seed=7, head="classifier").to(device)
    before = weights_of(model)
    with pytest.raises(ValueError, match=re.escape(
            "missing from the file: 'classifier/bias', 'classifier/kernel'; "
            "unexpected in the file: 'fc/bias', 'fc/kernel'")):
        load_checkpoint(model, path)
    assert_weights_equal(model, before)


def test_unexpected_keys_are_listed(saved, fresh):
    path, _ = saved

    def add_ghosts(arrays):
        arrays["ghost/kernel"] = np.zeros(3, np.float32)
        arrays["__notes__"] = np.array("hello")

    rewrite(path, add_ghosts)
    model, before = fresh
    with pytest.raises(ValueError, match=re.escape(
            "missing from the file: none; unexpected in the file: '__notes__', 'ghost/kernel'")):
        load_checkpoint(model, path)
    assert_weights_equal(model, before)


def test_missing_bn_statistic_is_an_error(saved, fresh):
    path, _ = saved
    rewrite(path, lambda arrays: arrays.pop("bn_conv1/moving_variance"))
    with pytest.raises(ValueError, match=re.escape("missing from the file: 'bn_conv1/moving_variance'")):
        load_checkpoint(fresh[0], path)
    assert_weights_equal(*fresh)


def test_long_key_lists_are_cut_short(saved, fresh):
    path, _ = saved
    rewrite(path, lambda arrays: arrays.update({f"ghost{i:02d}/kernel": np.zeros(1) for i in range(25)}))
    with pytest.raises(ValueError, match=r"'ghost09/kernel' and 15 more"):
        load_checkpoint(fresh[0], path)


def test_not_strict_loads_what_is_shared(saved, device):
    path, expected = saved
    model = tiny_net(seed=7, units=5, head="new_head").to(device)
    head = {k: v for k, v in weights_of(model).items() if k.startswith("new_head/")}
    load_checkpoint(model, path, strict=False)
    got = weights_of(model)
    for key in PARAM_KEYS - {"fc/kernel", "fc/bias"}:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    for key, value in head.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_not_strict_still_needs_something_in_common(saved):
    x = Input((4,))
    model = Model(x, Dense(2, name="other")(x), name="tiny")
    with pytest.raises(ValueError, match=r"shares no parameter with model 'tiny'"):
        load_checkpoint(model, saved[0], strict=False)


def test_wrong_shape_is_refused_before_anything_is_written(saved, device):
    path, _ = saved
    model = tiny_net(seed=7, units=4).to(device)   # fc is the last layer: conv1 and BN would fit
    before = weights_of(model)
    with pytest.raises(ValueError, match=re.escape(
            "layer 'fc' parameter 'kernel' has shape (4, 3) in the file, but (4, 4) in the model")):
        load_checkpoint(model, path)
    assert_weights_equal(model, before)


def test_wrong_shape_is_refused_also_when_not_strict(saved, device):
    model = tiny_net(seed=7, filters=5).to(device)
    before = weights_of(model)
    with pytest.raises(ValueError, match=re.escape("layer 'conv1' parameter 'kernel' has shape "
                                                   "(3, 3, 3, 4) in the file, but (3, 3, 3, 5)")):
        load_checkpoint(model, saved[0], strict=False)
    assert_weights_equal(model, before)


def test_non_numeric_parameter_is_refused(saved, fresh):
    path, _ = saved
    rewrite(path, lambda arrays: arrays.update({"fc/bias": np.array(["a", "b", "c"])}))
    with pytest.raises(ValueError, match=r"layer 'fc' parameter 'bias' has dtype <U1, not floating point"):
        load_checkpoint(fresh[0], path)
    assert_weights_equal(*fresh)


@pytest.mark.parametrize("version, message", [
    (np.array(2), r"has checkpoint format version 2; this minires reads version 1"),
    (np.array(1.0), r"the format version must be an integer, got float64"),
    (np.array([1]), r"the format version must be an integer, got int64 array of shape \(1,\)"),
])
def test_unknown_format_version_is_refused(saved, fresh, version, message):
    path, _ = saved
    rewrite(path, lambda arrays: arrays.update({"__format__": version}))
    with pytest.raises(ValueError, match=message) as error:
        load_checkpoint(fresh[0], path)
    assert str(path) in str(error.value)
    assert_weights_equal(*fresh)


def test_npz_without_metadata_is_not_a_checkpoint(tmp_path, fresh):
    path = tmp_path / "weights.npz"
    np.savez(path, **weights_of(trained_net()))
    with pytest.raises(ValueError, match=r"is a \.npz file but not a minires checkpoint: "
                                         r"it has no '__format__' entry"):
        load_checkpoint(fresh[0], path)
    assert_weights_equal(*fresh)


def test_architecture_must_be_a_string(saved, fresh):
    rewrite(saved[0], lambda arrays: arrays.update({"__architecture__": np.array(5)}))
    with pytest.raises(ValueError, match=r"'__architecture__' is missing or not a string"):
        load_checkpoint(fresh[0], saved[0])


# --- files that are not checkpoints at all ------------------------------------------------
def _empty(valid):
    return b""


def _first_half(valid):
    return valid[:len(valid) // 2]


def _text(valid):
    return b"epoch,loss\n1,0.5\n"


def _npy(valid):
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(3))
    return buffer.getvalue()


def _pickled(valid):
    """The valid checkpoint with one parameter pickled (entries are read only when needed)."""
    with np.load(io.BytesIO(valid), allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    arrays["fc/bias"] = np.array([{"a": 1}], dtype=object)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@pytest.mark.parametrize("contents", [_empty, _first_half, _text, _npy, _pickled],
                         ids=["empty", "truncated", "text", "npy", "pickled"])
def test_unreadable_files_are_named_in_a_value_error(saved, fresh, contents):
    path, _ = saved
    path.write_bytes(contents(path.read_bytes()))
    with pytest.raises(ValueError, match=re.escape(f"{path} is not a readable minires checkpoint")):
        load_checkpoint(fresh[0], path)
    assert_weights_equal(*fresh)


def test_missing_file_is_a_file_not_found_error(tmp_path, fresh):
    with pytest.raises(FileNotFoundError, match=re.escape(f"checkpoint not found: {tmp_path / 'no.npz'}")):
        load_checkpoint(fresh[0], tmp_path / "no.npz")


# --- across devices ------------------------------------------------------------------------
@pytest.mark.cuda
def test_round_trip_with_weights_on_the_gpu(tmp_path):
    import cupy
    source, target = trained_net(0), tiny_net(seed=7)
    expected = weights_of(source)
    source.to("cuda")
    target.to("cuda")
    path = tmp_path / "gpu.npz"
    save_checkpoint(source, path, extra={"m": cupy.arange(3, dtype=cupy.float32)})
    extra = load_checkpoint(target, path)
    assert isinstance(extra["m"], np.ndarray)
    for layer, name in target.parameters(trainable_only=False):
        value = layer.params[name]
        assert isinstance(value, cupy.ndarray) and value.dtype == np.float32
        np.testing.assert_array_equal(cupy.asnumpy(value), expected[f"{layer.name}/{name}"])
