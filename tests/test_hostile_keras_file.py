"""Hostile .keras files (issue 30): each refused with one KerasFileError naming the
file and what is wrong, from the zip's headers, the JSON or the HDF5 metadata
before any data is read; the model being loaded into unchanged; the file only
read; time and memory bounded. Byte flips of whole files end refused, or as a
clean load, and never in anything else.

Run this file as a script (``python tests/test_hostile_keras_file.py JOB``) to be
the byte-flip child.
"""
import io
import json
import os
import pathlib
import signal
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile

import h5py
import numpy as np
import pytest

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import keras_file_models as models  # noqa: E402
from minires import keras as mk  # noqa: E402
from minires.io.keras_file import KerasFileError  # noqa: E402
from minires.keras.saving import load_model  # noqa: E402

SOURCE = HERE / "data" / "nested.keras"          # written by Keras (deflated members)
MAX_SECONDS = 2.0
MAX_PEAK_BYTES = 64 << 20                         # Python and NumPy memory one refusal may take


# --- making hostile files --------------------------------------------------------------------
def members_of(path=SOURCE):
    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def write_zip(path, members, compression=zipfile.ZIP_STORED):
    """``members``: {name: bytes} or [(name, bytes)] (names may repeat)."""
    items = members.items() if isinstance(members, dict) else members
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in items:
            archive.writestr(name, data)
    return path


def with_config(tmp_path, edit):
    members = members_of()
    config = json.loads(members["config.json"])
    edit(config)
    members["config.json"] = json.dumps(config).encode()
    return write_zip(tmp_path / "hostile.keras", members)


def with_weights(tmp_path, edit):
    """A copy of SOURCE whose weights file ``edit(h5py.File)`` changed."""
    members = members_of()
    buffer = io.BytesIO(members["model.weights.h5"])
    with h5py.File(buffer, "r+") as f:
        edit(f)
    members["model.weights.h5"] = buffer.getvalue()
    return write_zip(tmp_path / "hostile.keras", members)


def layers_of(config):
    return config["config"]["layers"]


def entry(config, name):
    return next(e for e in layers_of(config) if e["name"] == name)


def target_model():
    """The architecture of SOURCE in minires, random weights: what load_weights fills."""
    model = models.nested(mk)
    models.randomize_minires(model, seed=5)
    return model


# --- the checks ------------------------------------------------------------------------------
def refused(path, match, into=None, **kwargs):
    """Loading ``path`` (load_model, or load_weights into ``into``) raises one
    KerasFileError matching ``match`` that names the file; the file and the
    model are unchanged; the refusal is quick and small. Returns (s, peak bytes)."""
    before_file = pathlib.Path(path).read_bytes() if os.path.isfile(path) else None
    before = [w.copy() for w in into.get_weights()] if into is not None else None
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(KerasFileError, match=match) as error:
            if into is None:
                load_model(path, **kwargs)
            else:
                into.load_weights(path)
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(error.value).startswith(str(path)), str(error.value)
    assert seconds < MAX_SECONDS and peak < MAX_PEAK_BYTES, (seconds, peak)
    if before_file is not None:
        assert pathlib.Path(path).read_bytes() == before_file
    if into is not None:
        for a, b in zip(before, into.get_weights()):
            np.testing.assert_array_equal(a, b)
    return seconds, peak


def test_the_source_file_itself_loads():
    assert load_model(SOURCE).count_params() == 307
    target_model().load_weights(SOURCE)


# --- the zip container -------------------------------------------------------------------------
def test_not_a_zip_empty_or_missing(tmp_path):
    (tmp_path / "junk.keras").write_bytes(os.urandom(5000))
    refused(tmp_path / "junk.keras", r"not a readable \.keras file.*no zip end record")
    (tmp_path / "empty.keras").write_bytes(b"")
    refused(tmp_path / "empty.keras", r"not a readable \.keras file")
    refused(tmp_path, r"is not a regular file")
    h5py.File(tmp_path / "weights.keras", "w").close()
    refused(tmp_path / "weights.keras", r"is an HDF5 file, not a \.keras zip")
    with pytest.raises(FileNotFoundError, match="missing.keras"):
        load_model(tmp_path / "missing.keras")


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.99])
def test_a_truncated_zip(tmp_path, fraction):
    data = SOURCE.read_bytes()
    path = tmp_path / "cut.keras"
    path.write_bytes(data[:int(len(data) * fraction)])
    refused(path, r"not a readable \.keras file", into=target_model())
    refused(path, r"not a readable \.keras file")


def test_a_directory_of_too_many_members_is_refused_before_it_is_read(tmp_path):
    path = write_zip(tmp_path / "many.keras", {f"m{i}": b"" for i in range(70)})
    refused(path, r"lists 70 members in [\d,]+ bytes; a \.keras file has 3")


@pytest.mark.parametrize("name, kind", [("../config.json", "unsafe member name"),
                                        ("/etc/passwd", "unsafe member name"),
                                        ("a/../../x", "unsafe member name"),
                                        ("..\\evil", "unsafe member name"),
                                        ("C:evil.txt", "unsafe member name"),
                                        ("assets/vocab.txt", "unexpected member")])
def test_a_member_name_outside_the_three(tmp_path, name, kind):
    path = write_zip(tmp_path / "names.keras", {**members_of(), name: b"x"})
    refused(path, rf"{kind} {name!r}".replace("\\", "\\\\").replace(".", r"\."), into=target_model())
    assert sorted(os.listdir(tmp_path)) == ["names.keras"]          # nothing was extracted


def test_duplicate_members(tmp_path):
    members = list(members_of().items())
    with pytest.warns(UserWarning, match="Duplicate name"):
        path = write_zip(tmp_path / "twice.keras", members + [("config.json", b"{}")])
    refused(path, r"two members named 'config\.json'", into=target_model())


@pytest.mark.parametrize("missing", ["config.json", "model.weights.h5"])
def test_a_missing_member(tmp_path, missing):
    members = {k: v for k, v in members_of().items() if k != missing}
    refused(write_zip(tmp_path / "short.keras", members), rf"no '{missing}' member")


def patched(path, name, field, value, fmt):
    """Set a field of member ``name``'s central directory entry (offsets: 8 flags,
    10 method, 20 compressed size, 24 size)."""
    data = bytearray(path.read_bytes())
    encoded = name.encode()
    at = data.find(b"PK\x01\x02" + b"\x00" * 0)
    while data[at + 46:at + 46 + len(encoded)] != encoded:
        at = data.find(b"PK\x01\x02", at + 1)
    struct.pack_into(fmt, data, at + field, value)
    path.write_bytes(bytes(data))
    return path


def test_a_declared_size_beyond_the_bound_is_refused_from_the_header(tmp_path):
    path = patched(write_zip(tmp_path / "big.keras", members_of()), "config.json", 24,
                   1 << 30, "<L")
    refused(path, r"member 'config\.json' declares 1,073,741,824 bytes, more than the 16,777,216")


def test_a_compression_ratio_beyond_the_bound_is_refused_from_the_header(tmp_path):
    members = {**members_of(), "config.json": b" " * (8 << 20)}
    path = write_zip(tmp_path / "bomb.keras", members, zipfile.ZIP_DEFLATED)
    refused(path, r"member 'config\.json' would inflate [\d,]+ bytes to 8,388,608 .*zip bomb")


def test_a_member_inflating_past_its_declared_size_stops_there(tmp_path):
    """A deflate stream of 512 MiB declared as 1,000 bytes: zipfile inflates 1,000
    bytes and no more (the CRC then fails), in bounded time and memory."""
    members = {**members_of(), "config.json": b"[" * (512 << 20)}
    path = write_zip(tmp_path / "liar.keras", members, zipfile.ZIP_DEFLATED)
    path = patched(path, "config.json", 24, 1000, "<L")
    seconds, peak = refused(path, r"config\.json")
    print(f"\nlying deflate member: refused in {seconds:.3f} s, peak {peak / 1e6:.1f} MB")


def test_an_encrypted_member(tmp_path):
    path = patched(write_zip(tmp_path / "secret.keras", members_of()), "config.json", 8, 1, "<H")
    refused(path, r"member 'config\.json' is encrypted")


def test_an_unsupported_compression_method(tmp_path):
    path = write_zip(tmp_path / "bz.keras", members_of(), zipfile.ZIP_BZIP2)
    refused(path, r"uses zip compression method 12; minires reads stored and deflated members")


def test_a_file_keras_2_wrote(tmp_path):
    members = {**members_of(), "metadata.json": b'{"keras_version": "2.15.0"}'}
    refused(write_zip(tmp_path / "old.keras", members), r"keras_version '2\.15\.0'")


# --- the JSON --------------------------------------------------------------------------------
@pytest.mark.parametrize("data, match", [
    (b"\xff\xfe not utf-8", r"UnicodeDecodeError"),
    (b'{"class_name": "Functional"', r"JSONDecodeError"),
    (b'{"a": NaN}', r"config\.json holds NaN"),
    (b'{"a": 1, "a": 2}', r"config\.json repeats the key\(s\) \['a'\]"),
    (b"[" * 200_000 + b"]" * 200_000, r"RecursionError"),
    (b"1" * 10_000, r"ValueError"),
    (b'"a config"', r"expected a JSON object"),
])
def test_a_config_that_is_not_a_config(tmp_path, data, match):
    refused(write_zip(tmp_path / "json.keras", {**members_of(), "config.json": data}), match)


def test_a_class_outside_the_supported_set_is_never_imported(tmp_path):
    def edit(config):
        entry(config, "re_lu").update(module="os", class_name="system",
                                      registered_name="os>system")
    refused(with_config(tmp_path, edit), r"class 'system' \(module 'os'\) is not one minires has")

    def sneaky(config):
        entry(config, "re_lu").update(module="minires_hostile_module", class_name="ReLU")
    refused(with_config(tmp_path, sneaky), r"class 'ReLU' \(module 'minires_hostile_module'\)")
    assert "minires_hostile_module" not in sys.modules


def test_a_function_in_a_config_is_refused(tmp_path):
    def edit(config):
        conv = entry(config, "dense")
        conv["config"]["activation"] = {"module": "builtins", "class_name": "__lambda__",
                                        "config": {"code": "ZXhlYygncm0gLXJmIC8nKQ=="}}
    refused(with_config(tmp_path, edit), r"activation a serialized '__lambda__' object is not "
                                         r"supported; minires takes activations by name")


def resized(value, old, new):
    """``value`` (a config) with every shape list ``old`` (without its batch axis) made ``new``."""
    if isinstance(value, dict):
        return {k: resized(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        if len(value) == len(old) + 1 and value[0] is None and value[1:] == old:
            return [None, *new]
        return [resized(v, old, new) for v in value]
    return value


def all_shapes(old, new):
    def edit(config):
        config.update(resized(config, old, new))
    return edit


@pytest.mark.parametrize("edit", [
    lambda c: entry(c, "dense")["config"].update(units=1 << 40),
    lambda c: entry(c, "conv2d")["config"].update(filters=10 ** 9),
    lambda c: entry(c, "conv2d")["config"].update(kernel_size=[30000, 30000]),
    all_shapes([8, 8, 3], [8, 8, 10 ** 9]),
])
def test_huge_weights_are_refused_before_they_exist(tmp_path, edit):
    seconds, peak = refused(with_config(tmp_path, edit), r"weights would hold more than "
                                                         r"536,870,912 values")
    print(f"\nhuge weights: refused in {seconds:.3f} s, peak {peak / 1e6:.1f} MB")
    assert peak < 8 << 20


def test_huge_but_weightless_shapes_build_without_memory(tmp_path):
    """Sizes of images only bound the inputs a model takes: a symbolic
    100000 x 100000 input costs nothing until arrays of that size come."""
    def edit(config):
        for channels in (3, 4):
            all_shapes([8, 8, channels], [100_000, 100_000, channels])(config)
    tracemalloc.start()
    model = load_model(with_config(tmp_path, edit))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert model.inputs[0].shape == (None, 100_000, 100_000, 3) and peak < 8 << 20


@pytest.mark.parametrize("edit, match", [
    (lambda c: entry(c, "re_lu")["inbound_nodes"][0]["args"][0]["config"].update(
        keras_history=["re_lu", 0, 0]), r"depend on each other in a cycle"),
    (lambda c: entry(c, "re_lu")["inbound_nodes"][0]["args"][0]["config"].update(
        keras_history=["nowhere", 0, 0]), r"reads \('nowhere', 0\), which no layer call produces"),
    (lambda c: entry(c, "re_lu")["inbound_nodes"][0]["args"][0]["config"].update(
        keras_history=["conv2d", 7, 0]), r"reads \('conv2d', 7\)"),
    (lambda c: entry(c, "re_lu")["inbound_nodes"][0]["args"][0]["config"].update(
        keras_history=["conv2d", 0, 1]), r"reads output 1 of a layer call"),
    (lambda c: entry(c, "re_lu")["inbound_nodes"][0]["args"][0]["config"].update(
        shape=[None, 9, 9, 4]), r"has shape \(None, 8, 8, 4\) here, but the config says "
                                r"\(None, 9, 9, 4\)"),
    (lambda c: entry(c, "re_lu")["inbound_nodes"][0]["kwargs"].update(mask=[1]),
     r"call argument mask=\[1\] is not supported"),
    (lambda c: entry(c, "re_lu")["inbound_nodes"][0]["kwargs"].update(training=True),
     r"call argument training=True is not supported"),
    (lambda c: entry(c, "re_lu")["inbound_nodes"].append([["conv2d", 0, 0, {}]]),
     r"an inbound node in Keras 2's form"),
    (lambda c: layers_of(c).append(dict(entry(c, "re_lu"))), r"two layers are named 're_lu'"),
    (lambda c: c["config"].update(output_layers=["nowhere", 0, 0]),
     r"output_layers \['nowhere', 0, 0\] names tensors the graph does not compute"),
    (lambda c: layers_of(c).append({**entry(c, "re_lu"), "name": "unused", "config": {
        **entry(c, "re_lu")["config"], "name": "unused"}}),
     r"\['unused'\] lead to none of the outputs"),
])
def test_a_graph_that_does_not_hold_together(tmp_path, edit, match):
    refused(with_config(tmp_path, edit), match)


def test_too_many_layers(tmp_path):
    def edit(config):
        relu = entry(config, "re_lu")
        layers_of(config).extend({**relu, "name": f"r{i}", "inbound_nodes": [],
                                  "config": {**relu["config"], "name": f"r{i}"}}
                                 for i in range(20_001))
    seconds, peak = refused(with_config(tmp_path, edit), r"more than 20,000 layers")
    print(f"\n20,001 layers: refused in {seconds:.2f} s, peak {peak / 1e6:.1f} MB")


def test_models_nested_too_deep(tmp_path):
    def edit(config):
        inner = entry(config, "inner")
        for _ in range(40):
            wrapped = json.loads(json.dumps(inner))
            wrapped["config"]["layers"] = [wrapped["config"]["layers"][0],
                                           {**inner, "inbound_nodes": []}]
            inner = wrapped
        layers_of(config)[layers_of(config).index(entry(config, "inner"))] = inner
    refused(with_config(tmp_path, edit), r"models nested more than 32 deep")


# --- the weights -----------------------------------------------------------------------------
def test_a_missing_weight(tmp_path):
    path = with_weights(tmp_path, lambda f: f.__delitem__("layers/dense/vars/1"))
    refused(path, r"'layers/dense/vars' holds \['0'\], not the datasets|layer 'dense' has 2 weights",
            into=target_model())
    path = with_weights(tmp_path, lambda f: f.__delitem__("layers/sequential/layers/conv2d"))
    refused(path, r"no weights at 'layers/sequential/layers/conv2d/vars' for layer 'conv2d_\d+'",
            into=target_model())


def test_a_weight_of_another_shape(tmp_path):
    def edit(f):
        del f["layers/dense/vars/0"]
        f["layers/dense/vars"].create_dataset("0", data=np.zeros((5, 3), "float32"))
    refused(with_weights(tmp_path, edit), r"layer 'dense', weight 'kernel': the model expects "
                                          r"shape \(4, 3\), 'layers/dense/vars' holds \(5, 3\)",
            into=target_model())


def test_weights_no_layer_has(tmp_path):
    def edit(f):
        f.create_group("layers/stowaway/vars").create_dataset("0", data=np.ones(3, "float32"))
    refused(with_weights(tmp_path, edit), r"'layers/stowaway/vars' holds weights that no layer of "
                                          r"model 'nested' has", into=target_model())


def test_non_finite_weights(tmp_path):
    def edit(f):
        f["layers/sequential/layers/batch_normalization/vars/3"][1] = np.inf
    path = with_weights(tmp_path, edit)
    refused(path, r"holds 1 non-finite value", into=target_model())
    refused(path, r"holds 1 non-finite value")


def test_a_weights_member_that_is_not_hdf5(tmp_path):
    members = {**members_of(), "model.weights.h5": os.urandom(4096)}
    refused(write_zip(tmp_path / "h5.keras", members), r"h5\.keras: model\.weights\.h5 is not a "
                                                       r"readable HDF5 file", into=target_model())


def test_links_in_the_weights_are_not_followed(tmp_path):
    def edit(f):
        del f["layers/dense/vars/0"]
        f["layers/dense/vars/0"] = h5py.ExternalLink("/etc/passwd", "/x")
    refused(with_weights(tmp_path, edit), r"is an external link to '/x' in the file '/etc/passwd'",
            into=target_model())

    def soft(f):
        del f["layers/dense/vars/1"]
        f["layers/dense/vars/1"] = h5py.SoftLink("/layers/dense/vars/1")
    refused(with_weights(tmp_path, soft), r"is a soft link", into=target_model())


def test_a_huge_declared_dataset_is_never_read(tmp_path):
    def edit(f):
        del f["layers/dense/vars/0"]
        f["layers/dense/vars"].create_dataset("0", shape=(1 << 40,), dtype="float32",
                                              chunks=(1 << 16,))
    refused(with_weights(tmp_path, edit), r"expects shape \(4, 3\).*holds \(1099511627776,\)",
            into=target_model())


def test_a_weights_h5_file_is_checked_alike(tmp_path):
    """A Keras 3 .weights.h5 file on its own: the same checks, naming that file."""
    path = tmp_path / "w.weights.h5"
    target_model().save_weights(path)
    with h5py.File(path, "r+") as f:
        f["layers/dense/vars/1"][0] = np.nan
    refused(path, r"w\.weights\.h5: '/layers/dense/vars/1' holds 1 non-finite value",
            into=target_model())
    with h5py.File(path, "r+") as f:
        f.create_group("layers/stowaway/vars").create_dataset("0", data=np.ones(2))
    refused(path, r"'layers/stowaway/vars' holds weights that no layer", into=target_model())


def test_optimizer_variables_that_do_not_fit(tmp_path):
    members = members_of(HERE / "data" / "sequential_cnn.keras")
    buffer = io.BytesIO(members["model.weights.h5"])
    with h5py.File(buffer, "r+") as f:
        del f["optimizer/vars/5"]
        f["optimizer/vars"].create_dataset("5", data=np.zeros(7, "float32"))
    members["model.weights.h5"] = buffer.getvalue()
    path = write_zip(tmp_path / "opt.keras", members)
    refused(path, r"'optimizer/vars' variable 5 has shape \(7,\), but SGD on model "
                  r"'sequential_cnn' needs \(6,\) there; load with compile=False")
    assert load_model(path, compile=False).compiled is None
    with h5py.File(buffer, "r+") as f:
        del f["optimizer/vars/3"]
    members["model.weights.h5"] = buffer.getvalue()
    refused(write_zip(path, members), r"'optimizer/vars' holds \['0', '1', .*not the datasets")


# --- byte flips --------------------------------------------------------------------------------
ALARM_S = 10
GOOD = ("refused", "same", "different")


def child(job_path):
    """Load each mutation of the job's file both ways; one JSON line per mutation."""
    job = json.loads(pathlib.Path(job_path).read_text())
    original = pathlib.Path(job["original"]).read_bytes()
    model = target_model()
    start = [w.copy() for w in model.get_weights()]
    model.load_weights(job["original"])
    written = [w.copy() for w in model.get_weights()]

    def outcome(load):
        model.set_weights(start)
        signal.alarm(ALARM_S)
        try:
            load()
            after = model.get_weights()
            return "same" if all(np.array_equal(a, b) for a, b in zip(after, written)) else (
                "different" if all(np.isfinite(w).all() for w in after) else "non-finite")
        except KerasFileError:
            unchanged = all(np.array_equal(a, b) for a, b in zip(start, model.get_weights()))
            return "refused" if unchanged else "refused after changing the model"
        except Exception as error:  # noqa: BLE001 - what this test looks for
            return f"{type(error).__name__}: {error}"[:300]
        finally:
            signal.alarm(0)

    def whole_model(path):
        model.set_weights(load_model(path).get_weights())

    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("hang")))
    for index, offset, value in job["mutations"]:
        data = bytearray(original)
        data[offset] = value
        path = pathlib.Path(job["folder"]) / f"m{index}.keras"
        path.write_bytes(bytes(data))
        outcomes = {"load_weights": outcome(lambda: model.load_weights(path)),
                    "load_model": outcome(lambda: whole_model(path))}
        if path.read_bytes() != bytes(data):
            outcomes["file"] = "changed by a load"
        path.unlink()
        print(json.dumps([index, outcomes]), flush=True)


@pytest.mark.parametrize("source", ["keras", "minires"])
def test_byte_flips_of_a_keras_file(tmp_path, source):
    """Every flip is refused (the zip's CRC-32 covers each member) or changes
    nothing that is read (dates, attributes); no crash, hang or other error."""
    original = tmp_path / "original.keras"
    if source == "keras":
        original.write_bytes(SOURCE.read_bytes())
    else:
        target_model().save(original)
    data = original.read_bytes()
    rng = np.random.default_rng(0 if source == "keras" else 1)
    offsets = sorted(rng.choice(len(data), size=min(300, len(data)), replace=False).tolist())
    mutations = [[i, o, data[o] ^ int(rng.integers(1, 256))] for i, o in enumerate(offsets)]
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"original": str(original), "folder": str(tmp_path),
                               "mutations": mutations}))
    run = subprocess.run([sys.executable, __file__, str(job)], capture_output=True, text=True,
                         timeout=600, env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                             [str(HERE.parent), str(HERE)])))
    results = dict(json.loads(line) for line in run.stdout.splitlines() if line.startswith("["))
    assert run.returncode == 0 and len(results) == len(mutations), run.stderr[-2000:]
    tally = {}
    for outcomes in results.values():
        for loader, outcome in outcomes.items():
            key = (loader, outcome if outcome in GOOD else "OTHER")
            tally[key] = tally.get(key, 0) + 1
    print(f"\n{source} .keras, {len(data)} bytes, {len(mutations)} flips: " + ", ".join(
        f"{loader} {outcome} {n}" for (loader, outcome), n in sorted(tally.items())))
    bad = {i: o for i, o in results.items() if any(v not in GOOD for v in o.values())}
    assert not bad, f"{len(bad)} bad outcomes, e.g. {list(bad.items())[:3]}"
    assert tally.get(("load_model", "refused"), 0) > len(mutations) // 2


if __name__ == "__main__":
    child(sys.argv[1])
