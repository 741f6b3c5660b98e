"""Hostile inputs to every weight loader (issue 28): PyTorch state dicts
(.safetensors, .npz, a dict of arrays), minires .npz checkpoints and, for what
they share, Keras HDF5 files.  Each gets one clear exception naming what was
wrong; the model (every parameter and BN statistic: ``model.weights``) and
every file are left exactly as they were.

1. values that are not finite numbers: NaN, inf, a float64 beyond float32's range;
2. sizes refused from metadata, before any tensor is read: a safetensors header
   length past the file, an unexpected tensor of 256 MiB, an .npz entry that
   inflates to 512 MiB, a .npy header declaring 2**40 elements (measured in a
   fresh process: under a second and 100 MB each);
3. headers whose faults once surfaced as Python's or NumPy's own errors, and
   100,000 tensors (the message lists 20 problems and counts the rest);
4. weights that are not floats, models not built yet, paths that name no file.
"""
import functools
import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

import keras_files
from minires.initializers import set_random_seed
from minires.io.checkpoint import load_checkpoint, save_checkpoint
from minires.io.keras_h5 import WeightsFileError, load_by_name
from minires.io.torch_weights import (TorchWeightsError, load_torch_state_dict, read_state_dict,
                                      torch_state_dict, write_safetensors)
from minires.layers import (Activation, BatchNormalization, Conv2D, Dense, GlobalAveragePooling2D,
                            Input, clear_session)
from minires.models import Model, Sequential
from test_hostile_checkpoints import deflated, npy_bytes

HERE = os.path.dirname(os.path.abspath(__file__))
MiB = 1 << 20


# --- helpers ------------------------------------------------------------------------
def small_model(seed=0, name="small"):
    """conv1 -> bn1 -> relu -> pooling -> fc (4 x 3), PyTorch's module names; every
    weight and BN statistic random (so that each one is compared)."""
    clear_session()
    set_random_seed(seed)
    x = Input((6, 6, 3))
    y = Activation("relu")(BatchNormalization(name="bn1")(Conv2D(4, 3, name="conv1")(x)))
    model = Model(x, Dense(3, name="fc")(GlobalAveragePooling2D()(y)), name=name)
    rng = np.random.default_rng(seed)
    model.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(w.dtype) for w in model.weights])
    return model


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def refused(load, match, error=ValueError, files=(), model=None):
    """``load(model)`` raises ``error`` matching ``match``; every array of the model
    (model.weights: parameters and BN statistics) and every file in ``files``
    are unchanged. Returns the message."""
    model = model or small_model(seed=7)
    before = [np.array(w) for w in model.weights]
    stored = {path: digest(path) for path in files}
    with pytest.raises(error, match=match) as info:
        load(model)
    for i, (a, b) in enumerate(zip(before, model.weights)):
        np.testing.assert_array_equal(a, b, err_msg=f"weight {i} changed by a failed load")
    assert {path: digest(path) for path in files} == stored, "a file given to a loader changed"
    return str(info.value)


def state_dict(seed=1):
    return torch_state_dict(small_model(seed))


def checkpoint_arrays(tmp_path):
    """{key: array} of a minires checkpoint of small_model(seed=1)."""
    path = tmp_path / "source.npz"
    save_checkpoint(small_model(seed=1), path)
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def write_npz(path, arrays):
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def write_zip64(path, members):
    """A zip of ``members`` {name: (raw deflate stream, CRC-32, declared size)}
    (or a list of such pairs, a name maybe twice), written by hand with a zip64
    record for every entry, so that an entry may declare any size, 4 TiB
    included, whatever its stream holds."""
    members = list(members.items() if isinstance(members, dict) else members)
    local, central = bytearray(), bytearray()
    for name, (stream, crc, size) in members:
        name = name.encode()
        extra = struct.pack("<HHQQ", 1, 16, size, len(stream))       # zip64: sizes, 8 bytes each
        fields = (45, 0, 8, 0, 0x21, crc, 0xFFFFFFFF, 0xFFFFFFFF, len(name), len(extra))
        central += struct.pack("<IH", 0x02014B50, 45) + struct.pack("<HHHHHIIIHH", *fields) + \
            struct.pack("<HHHII", 0, 0, 0, 0, len(local)) + name + extra
        local += struct.pack("<I", 0x04034B50) + struct.pack("<HHHHHIIIHH", *fields) + name + \
            extra + stream
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central),
                      len(local), 0)
    Path(path).write_bytes(bytes(local + central + end))


def zip_members(arrays):
    """{name.npy: (stream, CRC, size)} of whole arrays, for write_zip64."""
    return {f"{key}.npy": deflated(npy_bytes(value)) for key, value in arrays.items()}


def declared_only(shape, dtype="<f4", zero_mib=0):
    """An entry: a .npy header of ``shape``, then ``zero_mib`` MiB of zeros; it
    declares the size the header and its shape need, whatever it holds."""
    header = npy_bytes(shape=shape, dtype=dtype)
    stream, crc, _ = deflated(header, zero_mib)
    return stream, crc, len(header) + int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize


def raw_safetensors(path, header, data=b"", header_len=None, size=None):
    """A .safetensors file from a header (dict or JSON text) and data, written by
    hand; ``size``: the file made that long, sparse (no blocks on disk)."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(text) if header_len is None else header_len))
        handle.write(text)
        handle.write(data)
        if size is not None:
            handle.truncate(size)


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


# --- 1. values that are not finite numbers ---------------------------------------------
NON_FINITE = [("nan", np.nan, "float32"), ("inf", np.inf, "float32"), ("-inf", -np.inf, "float32"),
              ("1e300 as float64", 1e300, "float64")]
TORCH_KEYS = [("fc.weight", (1, 2), 12), ("bn1.running_var", (3,), 4)]


def torch_source(tmp_path, kind, arrays):
    """``arrays`` as a .safetensors file, an .npz file or the dict itself."""
    if kind == "dict":
        return arrays
    path = tmp_path / f"state.{kind}"
    if kind == "safetensors":
        write_safetensors(path, arrays)
    else:
        write_npz(path, arrays)
    return path


@pytest.mark.parametrize("key, where, size", TORCH_KEYS, ids=[k for k, _, _ in TORCH_KEYS])
@pytest.mark.parametrize("case, value, dtype", NON_FINITE, ids=[c for c, _, _ in NON_FINITE])
@pytest.mark.parametrize("kind", ["safetensors", "npz", "dict"])
def test_non_finite_torch_weights_are_refused(tmp_path, kind, case, value, dtype, key, where, size):
    arrays = {k: v.astype(dtype) if v.dtype.kind == "f" else v for k, v in state_dict().items()}
    arrays[key][where] = value
    source = torch_source(tmp_path, kind, arrays)
    what = "the state dict" if kind == "dict" else re.escape(str(source))
    files = () if kind == "dict" else (source,)
    refused(lambda model: load_torch_state_dict(model, source),
            rf"{what} holds weights that are not finite numbers \(1 problem, nothing loaded\):\n"
            rf"  '{re.escape(key)}' in {what} holds 1 non-finite value\(s\) \(NaN or inf, as "
            rf"float32\) among {size}$", TorchWeightsError, files)


CHECKPOINT_LOADERS = {"load_checkpoint": load_checkpoint,
                      "Model.load_weights": lambda model, path: model.load_weights(path)}


@pytest.mark.parametrize("loader", CHECKPOINT_LOADERS)
@pytest.mark.parametrize("key, where", [("fc/kernel", (2, 1)), ("bn1/moving_mean", (0,))])
@pytest.mark.parametrize("case, value, dtype", NON_FINITE, ids=[c for c, _, _ in NON_FINITE])
def test_non_finite_checkpoint_weights_are_refused(tmp_path, case, value, dtype, key, where, loader):
    arrays = checkpoint_arrays(tmp_path)
    arrays[key] = arrays[key].astype(dtype)
    arrays[key][where] = value
    path = tmp_path / "bad.npz"
    write_npz(path, arrays)
    refused(lambda model: CHECKPOINT_LOADERS[loader](model, path),
            rf"^{re.escape(str(path))}: '{key}' holds 1 non-finite value\(s\) \(NaN or inf, as "
            r"float32\) among \d+; a weight must be a finite number \(nothing loaded\)$",
            files=[path])


# --- 2. sizes refused from metadata ------------------------------------------------------
def huge_header_length(path):
    """A 512 MiB sparse .safetensors whose header length field says 2**63."""
    raw_safetensors(path, b"", header_len=2**63, size=512 * MiB)


def unexpected_huge_tensor(path):
    """small_model's state dict and a 256 MiB 'ghost' tensor (sparse: its bytes are a hole)."""
    arrays = state_dict()
    header, chunks, offset = {}, [], 0
    for key, value in arrays.items():
        raw = value.astype(value.dtype.newbyteorder("<")).tobytes()
        name = {"f": "F32", "i": "I64"}[value.dtype.kind]
        header[key] = entry(name, list(value.shape), offset, offset + len(raw))
        chunks.append(raw)
        offset += len(raw)
    header["ghost"] = entry("F32", [64 * MiB], offset, offset + 256 * MiB)
    text = json.dumps(header).encode()
    raw_safetensors(path, header, b"".join(chunks), size=8 + len(text) + offset + 256 * MiB)


def inflating_entry(path, name):
    """small_model's state dict as an .npz of about 0.5 MiB whose entry ``name``
    (replaced or added) inflates to 512 MiB of float32, as its header declares."""
    members = zip_members(state_dict())
    members[f"{name}.npy"] = declared_only((128 * MiB,), zero_mib=512)
    write_zip64(path, members)


def declares_2_40(path, name, honest_size):
    """small_model's state dict as an .npz whose entry ``name`` has a .npy header of
    2**40 float32 (4 TiB); its zip entry declares those 4 TiB (honest_size) or
    only the header's bytes."""
    members = zip_members(state_dict())
    stream, crc, size = declared_only((2**40,))
    header_only = len(npy_bytes(shape=(2**40,), dtype="<f4"))
    members[f"{name}.npy"] = (stream, crc, size if honest_size else header_only)
    write_zip64(path, members)


BOMBS = {   # case: (file name, how it is made, the message of load_torch_state_dict)
    "header length 2**63": (
        "huge.safetensors", huge_header_length,
        r"is not a valid \.safetensors file: the header length is 9223372036854775808 bytes, "
        r"more than the 16777216 allowed"),
    "unexpected 256 MiB tensor": (
        "ghost.safetensors", unexpected_huge_tensor,
        r"does not fit model 'small' \(1 problem, nothing loaded\):\n  unexpected: 'ghost'$"),
    "unexpected 512 MiB entry": (
        "ghost.npz", lambda path: inflating_entry(path, "ghost"),
        r"does not fit model 'small' \(1 problem, nothing loaded\):\n  unexpected: 'ghost'$"),
    "512 MiB entry for fc.weight": (
        "fc.npz", lambda path: inflating_entry(path, "fc.weight"),
        r"\(1 problem, nothing loaded\):\n  'fc\.weight': shape \(134217728,\) in .*fc\.npz, "
        r"but layer 'fc' kernel needs \(3, 4\)$"),
    "2**40 elements declared in full": (
        "declared.npz", lambda path: declares_2_40(path, "fc.weight", True),
        r"'fc\.weight': shape \(1099511627776,\) in .*declared\.npz, but layer 'fc' kernel "
        r"needs \(3, 4\)$"),
    "2**40 elements in a short entry": (
        "short.npz", lambda path: declares_2_40(path, "fc.weight", False),
        r"short\.npz is not a readable \.npz state dict: entry 'fc\.weight\.npy' declares 128 "
        r"bytes, but its shape \(1099511627776,\) of float32 needs 4,398,046,511,232 with its "
        r"header"),
}


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bombs")
    paths = {}
    for case, (name, make, _) in BOMBS.items():
        paths[case] = folder / name
        make(paths[case])
        assert os.stat(paths[case]).st_blocks * 512 < 4 * MiB, f"{case}: not sparse or small"
    return paths


@pytest.mark.parametrize("case", BOMBS)
def test_bombs_are_refused_from_metadata(bombs, case):
    path = bombs[case]
    message = refused(lambda model: load_torch_state_dict(model, path),
                      BOMBS[case][2], TorchWeightsError, files=[path])
    assert message.startswith(str(path)), message


def test_read_state_dict_bounds_what_it_reads(bombs):
    """read_state_dict has no model to compare with: its bound is max_bytes (2 GiB)."""
    path = bombs["2**40 elements declared in full"]
    with pytest.raises(TorchWeightsError, match=r"declared\.npz declares 4,398,046,511,\d{3} bytes "
                                                r"of tensors, more than max_bytes=2,147,483,648"):
        read_state_dict(path)
    path = bombs["unexpected 512 MiB entry"]
    with pytest.raises(TorchWeightsError, match=r"ghost\.npz declares 536,87\d,\d{3} bytes of "
                                                r"tensors, more than max_bytes=1,048,576"):
        read_state_dict(path, max_bytes=MiB)


@pytest.mark.parametrize("case, name, message", [
    ("512 MiB entry", "fc/kernel", r"layer 'fc' parameter 'kernel' has shape \(134217728,\) in the "
                                   r"file, but \(4, 3\) in the model"),
    ("2**40 elements", "fc/kernel", r"layer 'fc' parameter 'kernel' has shape \(1099511627776,\) "
                                    r"in the file, but \(4, 3\) in the model"),
    ("2**40 elements", "ghost/kernel", r"unexpected in the file: 'ghost/kernel'"),
])
def test_checkpoint_bombs_are_refused_from_metadata(tmp_path, case, name, message):
    members = zip_members(checkpoint_arrays(tmp_path))
    members[f"{name}.npy"] = (declared_only((128 * MiB,), zero_mib=512) if case == "512 MiB entry"
                              else declared_only((2**40,)))
    path = tmp_path / "bomb.npz"
    write_zip64(path, members)
    for load in CHECKPOINT_LOADERS.values():
        refused(lambda model: load(model, path), message, files=[path])


BOMB_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from test_hostile_loaders import small_model
from minires.io.checkpoint import load_checkpoint
from minires.io.torch_weights import load_torch_state_dict, read_state_dict

def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

def reset_peak():                      # Linux: the peak starts again from what is in use now
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")

model = small_model()
good = sys.argv[2]
load_torch_state_dict(model, good)     # a good load first: lazy imports and buffers settled
results = []
for case, path, loader in json.loads(sys.argv[3]):
    load = {"torch": lambda p: load_torch_state_dict(model, p), "read": read_state_dict,
            "checkpoint": lambda p: load_checkpoint(model, p)}[loader]
    reset_peak()
    base, start = peak(), time.perf_counter()
    try:
        load(path)
        outcome = "loaded"
    except ValueError as error:
        outcome = str(error)
    results.append([case, loader, outcome, time.perf_counter() - start, peak() - base])
print(json.dumps(results))
"""


def test_bombs_cost_under_a_second_and_100_mb(bombs, tmp_path):
    """Each refusal in a fresh process: its time, and how much its peak memory
    (VmHWM) grew, after a good load; where a bomb were read, it would take
    256 MiB to 4 TiB."""
    good = tmp_path / "good.safetensors"
    write_safetensors(good, state_dict())
    checkpoint = tmp_path / "bomb_checkpoint.npz"
    members = zip_members(checkpoint_arrays(tmp_path))
    members["fc/kernel.npy"] = declared_only((128 * MiB,), zero_mib=512)
    write_zip64(checkpoint, members)
    cases = [[case, str(path), "torch"] for case, path in bombs.items()]
    cases += [["2**40 elements declared in full", str(bombs["2**40 elements declared in full"]),
               "read"], ["512 MiB checkpoint entry", str(checkpoint), "checkpoint"]]
    result = subprocess.run([sys.executable, "-c", BOMB_CHILD, HERE, str(good), json.dumps(cases)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)
    assert len(results) == len(cases)
    for case, loader, outcome, seconds, extra in results:
        label = f"{case} ({loader})"
        assert outcome != "loaded" and "/" in outcome, (label, outcome)
        assert seconds < 1.0, f"{label}: refused after {seconds:.2f} s"
        assert extra < 100e6, f"{label}: peak memory grew by {extra / 1e6:.0f} MB"


@pytest.mark.parametrize("loader", ["torch", *CHECKPOINT_LOADERS])
def test_a_key_given_twice_in_an_npz_is_refused(tmp_path, loader):
    """np.load would keep the last one silently."""
    arrays = state_dict() if loader == "torch" else checkpoint_arrays(tmp_path)
    key = "fc.weight" if loader == "torch" else "fc/kernel"
    members = list(zip_members(arrays).items())
    members += zip_members({key: arrays[key] + 1}).items()
    path = tmp_path / "twice.npz"
    write_zip64(path, members)
    load = (load_torch_state_dict if loader == "torch" else CHECKPOINT_LOADERS[loader])
    kind = r"\.npz state dict" if loader == "torch" else "minires checkpoint"
    refused(lambda model: load(model, path),
            rf"^{re.escape(str(path))} is not a readable {kind}: it holds two entries named "
            rf"'{re.escape(key)}\.npy' \(which one is meant\?\)$",
            TorchWeightsError if loader == "torch" else ValueError, files=[path])


# --- 3. headers that once gave Python's or NumPy's own errors ------------------------------
NESTED = b'{"w": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
BAD_HEADERS = {   # case: (header, data, message, the tensor named or None)
    "deeply nested JSON": (NESTED, b"", r"the header's JSON is nested too deeply to read", None),
    "dtype a list": ({"w": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, bytes(4),
                     r"dtype \['F32'\] is not one minires reads \(BOOL, ", "w"),
    "dtype an object": ({"w": {"dtype": {"F32": 1}, "shape": [1], "data_offsets": [0, 4]}},
                        bytes(4), r"dtype \{'F32': 1\} is not one minires reads", "w"),
    "shape of huge product": ({"w": entry("F32", [0, 2**62, 2**62], 0, 0)}, b"",
                              r"its shape \(0, 4611686018427387904, 4611686018427387904\) "
                              r"multiplies to more than 2\*\*62 bytes, more than any array can "
                              r"hold", "w"),
    "shape of 100 dimensions": ({"w": entry("F32", [1] * 100, 0, 4)}, bytes(4),
                                r"its shape has 100 dimensions, more than the 32 an array may "
                                r"have", "w"),
    "a float dimension": ({"w": entry("F32", [1.0], 0, 4)}, bytes(4),
                          r"shape must be a list of non-negative integers, got \[1\.0\]", "w"),
    "a long value": ({"w": {**entry("F32", [1], 0, 4), "x": "y" * 10**6}}, bytes(4),
                     r"got \{'dtype': 'F32', .*\.\.\. \(1,000,0\d\d characters\)$", "w"),
    "a list, not an object": (b"[1, 2]", b"", r"does not start with '\{'", None),
}


@pytest.mark.parametrize("case", BAD_HEADERS)
def test_malformed_safetensors_headers_get_a_clear_message(tmp_path, case):
    header, data, message, key = BAD_HEADERS[case]
    path = tmp_path / "bad.safetensors"
    raw_safetensors(path, header, data)
    where = f" \\(tensor '{key}'\\)" if key else ""
    refused(lambda model: load_torch_state_dict(model, path),
            rf"^{re.escape(str(path))} is not a valid \.safetensors file{where}: .*{message}",
            TorchWeightsError, files=[path])


@pytest.mark.parametrize("header_len, size, message", [
    (1000, 2, r"the header length is 1000 bytes, but only 2 follow it \(truncated, or another "
              r"kind of file\)"),
    (2**64 - 1, 0, r"the header length is 18446744073709551615 bytes, more than the 16777216 "
                   r"allowed"),
    (16 << 20, 0, r"the header length is 16777216 bytes, but only 0 follow it"),
])
def test_a_header_length_past_the_file_is_refused_before_reading(tmp_path, header_len, size,
                                                                   message):
    path = tmp_path / "short.safetensors"
    raw_safetensors(path, b"{}"[:size], header_len=header_len)
    refused(lambda model: load_torch_state_dict(model, path), message, TorchWeightsError,
            files=[path])


@pytest.mark.parametrize("case", ["not npy", "100 dimensions", "huge product", "pickled",
                                  "version 3"])
def test_malformed_npz_entries_get_a_clear_message(tmp_path, case):
    arrays = state_dict()
    members = zip_members(arrays)
    if case == "not npy":
        members["notes.txt"] = deflated(b"hello")
        message = r"its entry 'notes\.txt' is not a \.npy array"
    elif case == "100 dimensions":
        members["fc.bias.npy"] = deflated(npy_bytes(shape=(1,) * 100, dtype="<f4") + bytes(4))
        message = r"entry 'fc\.bias\.npy': its shape has 100 dimensions, more than the 32"
    elif case == "huge product":
        members["fc.bias.npy"] = deflated(npy_bytes(shape=(0, 2**62, 2**62), dtype="<f4"))
        message = r"entry 'fc\.bias\.npy': its shape \(0, 4611686018427387904, " \
                  r"4611686018427387904\) multiplies to more than 2\*\*62 bytes"
    elif case == "pickled":
        members["fc.bias.npy"] = deflated(npy_bytes(shape=(3,), dtype=object) + bytes(8))
        message = r"entry 'fc\.bias\.npy' holds pickled Python objects \(dtype object\)"
    else:
        header = npy_bytes(arrays["fc.bias"])
        members["fc.bias.npy"] = deflated(header[:6] + b"\x03\x00" + header[8:])
        message = r"entry 'fc\.bias\.npy': \.npy format version 3\.0"
    path = tmp_path / "bad.npz"
    write_zip64(path, members)
    refused(lambda model: load_torch_state_dict(model, path),
            rf"^{re.escape(str(path))} is not a readable \.npz state dict: {message}",
            TorchWeightsError, files=[path])


@pytest.mark.parametrize("kind", ["safetensors", "npz", "dict"])
def test_100000_tensors_give_a_short_message_quickly(tmp_path, kind):
    """Zero-size tensors, none the model's: listed 20 at most, counted, in little time."""
    arrays = {f"t{i:06d}": np.zeros(0, "f4") for i in range(100_000)}
    if kind == "safetensors":
        source = tmp_path / "many.safetensors"
        raw_safetensors(source, {key: entry("F32", [0], 0, 0) for key in arrays})
    else:
        source = torch_source(tmp_path, kind, arrays)
    seconds = []

    def load(model):
        start = os.times().elapsed
        try:
            load_torch_state_dict(model, source)
        finally:
            seconds.append(os.times().elapsed - start)

    message = refused(load, r"does not fit model 'small' \(100,008 problems, nothing loaded\):\n"
                            r"  missing: 'bn1\.bias' \(for layer 'bn1' beta\)\n",
                      TorchWeightsError, files=[] if kind == "dict" else [source])
    assert message.count("\n") == 21 and message.endswith("\n  ... and 99,988 more"), message
    assert len(message) < 2000, len(message)
    assert seconds[0] < 3.0, f"{seconds[0]:.2f} s for 100,000 keys"


@pytest.mark.parametrize("kind", ["safetensors", "npz"])
def test_a_name_of_a_million_characters_is_quoted_short(tmp_path, kind):
    """An unexpected key (safetensors) or an entry that is not .npy (npz) named by
    a million characters: the message quotes 200 of them and counts the rest."""
    name = "x" * 10**6
    arrays = {**state_dict(), name: np.zeros(0, "f4")}
    if kind == "safetensors":
        source = torch_source(tmp_path, kind, arrays)
        message = r"unexpected: 'x{199}\.\.\. \(1,000,002 characters\)$"
    else:
        source = tmp_path / "long.npz"
        write_zip64(source, {**zip_members(state_dict()), "y" * 60_000: deflated(b"")})
        message = r"its entry 'y{199}\.\.\. \(60,002 characters\) is not a \.npy array$"
    text = refused(lambda model: load_torch_state_dict(model, source), message,
                   TorchWeightsError, files=[source])
    assert len(text) < 1000, len(text)


def test_more_than_100000_tensors_are_refused_by_their_count(tmp_path):
    path = tmp_path / "many.safetensors"
    raw_safetensors(path, {f"t{i}": entry("F32", [0], 0, 0) for i in range(100_001)})
    refused(lambda model: load_torch_state_dict(model, path),
            r"the header lists 100,001 tensors, more than the 100,000 allowed",
            TorchWeightsError, files=[path])


def test_a_dict_with_keys_that_are_not_strings_is_refused():
    """1 and '1' would both become '1': one would be lost."""
    arrays = state_dict()
    arrays[3] = arrays.pop("fc.bias")
    refused(lambda model: load_torch_state_dict(model, arrays),
            r"the state dict's keys must be strings, got 3 \(int\)", TorchWeightsError)


# --- 4. weights that are not floats, models not built, paths that name no file -------------
@pytest.mark.parametrize("dtype", ["int32", "int64", "uint8", "bool", "complex64"])
@pytest.mark.parametrize("loader", CHECKPOINT_LOADERS)
def test_checkpoint_weights_that_are_not_floats_are_refused(tmp_path, dtype, loader):
    arrays = checkpoint_arrays(tmp_path)
    arrays["fc/kernel"] = np.ones((4, 3), dtype)
    path = tmp_path / "ints.npz"
    write_npz(path, arrays)
    refused(lambda model: CHECKPOINT_LOADERS[loader](model, path),
            rf"{re.escape(str(path))}: layer 'fc' parameter 'kernel' has dtype {dtype}, not "
            r"floating point \(weights are never cast from other types\)", files=[path])


@pytest.mark.parametrize("dtype", ["int32", "bool"])
@pytest.mark.parametrize("kind", ["safetensors", "npz", "dict"])
def test_torch_weights_that_are_not_floats_are_refused(tmp_path, kind, dtype):
    arrays = state_dict()
    arrays["bn1.running_mean"] = arrays["bn1.running_mean"].astype(dtype)
    source = torch_source(tmp_path, kind, arrays)
    refused(lambda model: load_torch_state_dict(model, source),
            rf"'bn1\.running_mean': dtype {dtype}, not floating point", TorchWeightsError,
            files=[] if kind == "dict" else [source])


@pytest.mark.parametrize("dtype", ["int32", "uint8"])
def test_keras_weights_that_are_not_floats_are_refused(tmp_path, dtype):
    path = tmp_path / "ints.h5"
    keras_files.write_small_file(path)
    keras_files.replace(path, "conv2d_1/conv2d_1/bias:0", data=np.arange(4, dtype=dtype))
    for load in (lambda m: m.load_weights(str(path)), lambda m: load_by_name(m, str(path))):
        refused(load, rf"^{re.escape(str(path))}: '/conv2d_1/conv2d_1/bias:0' has dtype {dtype}, "
                      r"not floating point \(weights are never cast from other types\)$",
                WeightsFileError, files=[path], model=keras_files.small_model())


class Subclassed(Model):
    def __init__(self):
        super().__init__(name="subclassed")
        self.fc = Dense(3, name="fc")

    def call(self, inputs, training=None):
        return self.fc(inputs)


UNBUILT = {"Sequential": lambda: Sequential([Dense(3, name="fc")], name="seq"),
           "subclassed": Subclassed}


@pytest.mark.parametrize("kind", UNBUILT)
def test_save_weights_of_a_model_not_built_writes_nothing(tmp_path, kind):
    model = UNBUILT[kind]()
    with pytest.raises(ValueError, match=rf"model '{model.name}' has not been built yet, so it "
                                         r"has no weights to save: build it first \(call it on a "
                                         r"batch, or model\.build\(input_shape\)\)"):
        model.save_weights(tmp_path / "w.npz")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kind", UNBUILT)
@pytest.mark.parametrize("file", ["checkpoint .npz", "Keras .h5", "torch .safetensors"])
def test_load_weights_into_a_model_not_built_says_to_build_it(tmp_path, kind, file):
    model = UNBUILT[kind]()
    built = Sequential([Input((4,)), Dense(3, name="fc")], name=model.name)
    if file == "checkpoint .npz":
        path = tmp_path / "w.npz"
        built.save_weights(path)
        load = model.load_weights
    elif file == "Keras .h5":
        path = tmp_path / "w.h5"
        weights = {"fc": {k: np.array(v) for k, v in built.get_layer("fc").params.items()}}
        keras_files.write_legacy_layout(path, ["fc"], weights)
        load = model.load_weights
    else:
        path = tmp_path / "w.safetensors"
        write_safetensors(path, torch_state_dict(built))
        load = functools.partial(load_torch_state_dict, model)
    stored = digest(path)
    with pytest.raises(ValueError, match=rf"model '{model.name}' has not been built yet, so it "
                                         r"has no weights to load into: build it first"):
        load(path)
    assert digest(path) == stored and not model.built


@pytest.mark.parametrize("name, message", [
    ("", r"the checkpoint path is empty \(''\): give a file name, e.g\. 'weights\.npz'"),
    (".", r"^\. is a directory: give the checkpoint a file name in it, e\.g\. '\./weights\.npz'"),
    ("sub/", r"^sub/ is a directory: give the checkpoint a file name in it"),
    ("sub", r"^sub is a directory: give the checkpoint a file name in it, e\.g\. 'sub/weights\.npz'"),
])
def test_save_weights_to_a_name_that_is_no_file_writes_nothing(tmp_path, monkeypatch, name, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    before = sorted(p.name for p in tmp_path.parent.iterdir())
    with pytest.raises(ValueError, match=message):
        small_model().save_weights(name)
    assert sorted(os.listdir(tmp_path)) == ["sub"] and os.listdir(tmp_path / "sub") == []
    assert sorted(p.name for p in tmp_path.parent.iterdir()) == before


@pytest.fixture
def pipe(tmp_path):
    """(make the named pipe ``name``, readers that opened it). A loader that opens
    a pipe waits for a writer forever: a watcher plays the writer (then closes,
    so the reader sees the end of the file) and counts it, so such a loader
    fails the test instead of hanging it."""
    paths, readers, stop = [], [], threading.Event()

    def watch():
        while not stop.wait(0.05):
            for path in paths:
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
                except OSError:             # ENXIO: nobody is reading it, as it should be
                    continue
                readers.append(path)
                os.close(fd)

    def make(name):
        paths.append(tmp_path / name)
        os.mkfifo(paths[-1])
        return paths[-1]

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    yield make, readers
    stop.set()
    watcher.join()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes: POSIX")
@pytest.mark.parametrize("name, load, error", [
    ("w.npz", lambda model, path: model.load_weights(path), ValueError),
    ("w", lambda model, path: model.load_weights(path), WeightsFileError),
    ("w.npz", load_checkpoint, ValueError),
    ("w.npz", load_torch_state_dict, TorchWeightsError),
    ("w.safetensors", load_torch_state_dict, TorchWeightsError),
])
def test_a_pipe_is_refused_without_waiting_for_a_writer(pipe, name, load, error):
    make, readers = pipe
    path = make(name)
    refused(lambda model: load(model, path),
            rf"^{re.escape(str(path))} is not a regular file \(a device, a pipe, a socket \.\.\.\)$",
            error)
    assert not readers, "a loader opened the pipe"


# --- 5. HDF5: variable-length text that cannot be measured before it is read ----------------
def test_variable_length_text_stored_densely_is_refused(tmp_path, monkeypatch):
    """Past 8 attributes (in files written with libver='latest') HDF5 keeps them
    in a fractal heap, where minires does not look for the strings' lengths:
    refused, never read blind."""
    path = tmp_path / "dense.h5"
    model = keras_files.small_model()
    weights = keras_files.random_weights(model, np.random.default_rng(0))
    with monkeypatch.context() as patched:
        patched.setattr(h5py, "File", functools.partial(h5py.File, libver="latest"))
        keras_files.write_legacy_layout(path, keras_files.SMALL_LAYERS, weights)
    with h5py.File(path, "r+") as f:
        for i in range(10):
            f.attrs[f"note{i}"] = "x"
    refused(lambda m: load_by_name(m, str(path)),
            rf"^{re.escape(str(path))}: attribute 'layer_names' of '/' holds variable-length text "
            r"whose size minires cannot check before reading it: its object header holds no such "
            r"attribute message \(the attribute is stored densely", WeightsFileError, files=[path],
            model=keras_files.small_model())
