"""Keras 3's ``.keras`` file and ``.weights.h5`` weights, both ways, without Keras.

    model = load_model("m.keras")          # config.json -> model, weights, compile
    save_model(model, "m.keras")           # what Keras writes, atomically
    save_weights(model, "w.weights.h5")    # Keras 3's weights file ('.h5': the classic layout)

A ``.keras`` file is a zip of three members:

    metadata.json     {"keras_version": "3.15.1", "date_saved": "..."}
    config.json       the model's config (minires/saving.py reads and writes it)
    model.weights.h5  every variable at its object path: ``layers/<path>/vars/0, 1, ...``

An object path comes from Keras's walk over the model (``object_paths``): a
Functional's or Sequential's ``layers`` first, each layer named by its class in
snake case with a counter in that list (``conv2d``, ``conv2d_1``, a nested
``sequential/layers/dense``), then the model's attributes holding layers, by
name (a subclassed model: ``conv``, ``blocks/dense_1``); every object once, at
its first path. ``vars`` holds the weights in the layer's order (kernel, bias;
gamma, beta, moving_mean, moving_variance) and the object's name as attribute;
``optimizer/vars`` holds the optimizer's variables (saving.optimizer_variables).

A file handed to a loader is untrusted, and only ever read:

  the zip   its end record first (at most MAX_MEMBERS entries, a directory of at
            most MAX_DIRECTORY_BYTES), then each entry's header: only the three
            names above, each once; stored or deflated, not encrypted; a
            declared size within its bound and, deflated, a ratio of at most
            MAX_RATIO; an entry is then read up to its declared size, never
            further (zipfile stops there and checks the CRC);
  the JSON  UTF-8, without NaN or duplicate keys; the config is rebuilt by
            minires/saving.py, which imports and evaluates nothing and bounds
            the weights a config may create;
  the HDF5  copied to a private temporary file and read through
            minires/io/h5_safety.py (no links followed, sizes, types and
            filters checked from metadata, compression bombs refused, NaN and
            inf refused); every weight the model expects must be there with its
            exact shape, and nothing else may hold weights.

Everything is checked before any data is read, and everything read before the
model is touched: a failed load changes nothing. Every problem is one
KerasFileError naming the file and what in it is wrong.
"""
import contextlib
import datetime
import io
import json
import os
import shutil
import struct
import tempfile
import zipfile
import zlib

import h5py
import numpy as np

from .. import saving
from ..backend import like, to_device
from ..graph import Graph
from ..layers.base import Layer, snake_case
from .atomic import atomic_write
from .checkpoint import file_kind
from .h5_safety import WeightsFileError, find, inspect, names, open_file, require, text_attribute
from .keras_h5 import MAX_LISTED_PROBLEMS, MAX_READ_BYTES, assign
from .validate import require_built

METADATA, CONFIG, WEIGHTS = "metadata.json", "config.json", "model.weights.h5"
KERAS_VERSION = "3.15.1"            # the Keras whose files these are (metadata adds saved_by)
MAX_MEMBERS = 16
MAX_DIRECTORY_BYTES = 1 << 20
MEMBER_BOUNDS = {METADATA: 1 << 16, CONFIG: 16 << 20,
                 WEIGHTS: 3 * MAX_READ_BYTES + (64 << 20)}    # weights, and an optimizer's two slots
MAX_RATIO = 200                      # inflated / stored, for deflated entries over RATIO_FLOOR bytes
RATIO_FLOOR = 1 << 16
MAX_TREE_OBJECTS = 1_000_000         # groups and datasets walked in one weights file
MAX_TREE_DEPTH = 64
STATE_GROUPS = ("optimizer",)        # top-level groups of Keras's own state, not layers
END_RECORD = struct.Struct("<4s4H2LH")
ZIP64_LOCATOR = struct.Struct("<4sLQL")
ZIP64_END_RECORD = struct.Struct("<4sQ2H2L4Q")
# What zipfile, zlib and json raise on a damaged or foreign file (NotImplementedError: an
# unknown compression; RuntimeError: encryption; RecursionError: JSON nested too deep).
READ_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, struct.error,
               NotImplementedError, RuntimeError, RecursionError)


class KerasFileError(WeightsFileError):
    """A .keras or Keras 3 weights file that cannot be read, or does not fit the model."""


# === the zip container ======================================================================
class KerasArchive:
    """A .keras file opened for reading: its directory checked at once, members on request."""

    def __init__(self, path):
        self.path = os.fspath(path)
        _check_regular_file(self.path)
        with self.reading("its zip directory"):
            _check_end_record(self.path)
            self.zip = zipfile.ZipFile(self.path)
        try:
            self.members = self._check_members()
        except BaseException:
            self.zip.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.zip.close()

    def error(self, what):
        return KerasFileError(f"{self.path}: {what}")

    @contextlib.contextmanager
    def reading(self, what):
        try:
            yield
        except WeightsFileError:
            raise
        except READ_ERRORS as error:
            raise KerasFileError(f"{self.path} is not a readable .keras file (damaged, truncated "
                                 f"or another kind of file): {what}: "
                                 f"{type(error).__name__}: {error}") from None

    def _check_members(self):
        members = {}
        for info in self.zip.infolist():
            name = info.filename
            if name in members:
                raise self.error(f"it holds two members named {name!r}")
            if name not in MEMBER_BOUNDS:
                unsafe = name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/") \
                    or ":" in name
                raise self.error(f"{'unsafe member name' if unsafe else 'unexpected member'} "
                                 f"{name!r}: a .keras file minires reads holds only "
                                 f"{', '.join(MEMBER_BOUNDS)}")
            self._check_member(info)
            members[name] = info
        for name in (CONFIG, WEIGHTS):
            if name not in members:
                raise self.error(f"it has no {name!r} member (is it a .keras file?)")
        return members

    def _check_member(self, info):
        name, size = info.filename, info.file_size
        if info.flag_bits & 0x1:
            raise self.error(f"member {name!r} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise self.error(f"member {name!r} uses zip compression method {info.compress_type}; "
                             "minires reads stored and deflated members")
        if size > MEMBER_BOUNDS[name]:
            raise self.error(f"member {name!r} declares {size:,} bytes, more than the "
                             f"{MEMBER_BOUNDS[name]:,} minires reads")
        if info.compress_type == zipfile.ZIP_DEFLATED and size > RATIO_FLOOR \
                and size > MAX_RATIO * max(info.compress_size, 1):
            raise self.error(f"member {name!r} would inflate {info.compress_size:,} bytes to "
                             f"{size:,} (more than {MAX_RATIO}x: a zip bomb?)")
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != size:
            raise self.error(f"member {name!r} is stored as {info.compress_size:,} bytes but "
                             f"declares {size:,}")

    def read_json(self, name):
        """A JSON member, read within its declared size (None if absent)."""
        info = self.members.get(name)
        if info is None:
            return None
        with self.reading(f"member {name!r}"):
            with self.zip.open(info) as stream:
                data = stream.read(info.file_size + 1)
            if len(data) != info.file_size:
                raise self.error(f"member {name!r} holds {len(data):,} bytes, not its declared "
                                 f"{info.file_size:,}")
            return json.loads(data.decode("utf8"), object_pairs_hook=_unique_keys(self, name),
                              parse_constant=_no_constant(self, name))

    def check_metadata(self):
        """metadata.json, when there is one, must say Keras 3 wrote the file."""
        metadata = self.read_json(METADATA)
        if metadata is None:
            return
        version = metadata.get("keras_version") if isinstance(metadata, dict) else None
        if not isinstance(version, str) or not version.startswith("3."):
            raise self.error(f"metadata.json says keras_version {version!r}; minires reads the "
                             ".keras files of Keras 3")

    @contextlib.contextmanager
    def weights(self):
        """(open h5py file, its name for messages): the weights member, copied to a
        private temporary file within its declared size, opened read-only."""
        info = self.members[WEIGHTS]
        folder = tempfile.mkdtemp(prefix="minires-keras-")
        try:
            copy = os.path.join(folder, WEIGHTS)
            with self.reading(f"member {WEIGHTS!r}"):
                with self.zip.open(info) as source, open(copy, "wb") as target:
                    shutil.copyfileobj(source, target, 1 << 20)
            if os.path.getsize(copy) != info.file_size:
                raise self.error(f"member {WEIGHTS!r} holds {os.path.getsize(copy):,} bytes, not "
                                 f"its declared {info.file_size:,}")
            shown = f"{self.path}: {WEIGHTS}"
            with _opened_h5(copy, shown) as handle:
                yield handle, shown
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def _check_regular_file(path):
    if not os.path.exists(path):
        raise FileNotFoundError(f".keras file not found: {path}")
    if not os.path.isfile(path):
        raise KerasFileError(f"{path} is not a regular file")
    if file_kind(path) == "hdf5":
        raise KerasFileError(f"{path} is an HDF5 file, not a .keras zip: Keras's .h5 files hold "
                             "weights that model.load_weights(path) reads into a model built in "
                             "code")


def _check_end_record(path):
    """The zip's end record, before zipfile reads the directory it points at: a
    bounded number of entries in a bounded directory (zip64 too)."""
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        start = max(0, size - END_RECORD.size - 0xFFFF)
        handle.seek(start)
        tail = handle.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or at + END_RECORD.size > len(tail):
            raise zipfile.BadZipFile("no zip end record (empty or truncated?)")
        _, _, _, _, entries, directory, offset, _ = END_RECORD.unpack_from(tail, at)
        if entries == 0xFFFF or directory == 0xFFFFFFFF or offset == 0xFFFFFFFF:
            entries, directory = _zip64_sizes(handle, start + at)
    if entries > MAX_MEMBERS or directory > MAX_DIRECTORY_BYTES:
        raise KerasFileError(f"{path}: its zip directory lists {entries:,} members in "
                             f"{directory:,} bytes; a .keras file has 3")


def _zip64_sizes(handle, end_record_at):
    handle.seek(max(0, end_record_at - ZIP64_LOCATOR.size))
    locator = ZIP64_LOCATOR.unpack(handle.read(ZIP64_LOCATOR.size))
    if locator[0] != b"PK\x06\x07":
        raise zipfile.BadZipFile("a zip64 end record is announced but missing")
    handle.seek(locator[2])
    record = ZIP64_END_RECORD.unpack(handle.read(ZIP64_END_RECORD.size))
    if record[0] != b"PK\x06\x06":
        raise zipfile.BadZipFile("a zip64 end record is announced but missing")
    return record[7], record[8]


def _unique_keys(archive, name):
    def pairs(items):
        unique = dict(items)
        if len(unique) != len(items):
            keys = [key for key, _ in items]
            repeated = sorted({k for k in keys if keys.count(k) > 1})
            raise archive.error(f"{name} repeats the key(s) {repeated[:5]} in one object: which "
                                "value is meant is unclear")
        return unique
    return pairs


def _no_constant(archive, name):
    def refuse(constant):
        raise archive.error(f"{name} holds {constant}, which no config value may be")
    return refuse


@contextlib.contextmanager
def _opened_h5(path, shown):
    """h5_safety.open_file(path), closed after; whatever minires.io.h5_safety refuses,
    in it or in the block, raised as one KerasFileError naming ``shown``."""
    try:
        handle = open_file(path)
    except WeightsFileError as error:
        raise KerasFileError(str(error).replace(path, shown)) from None
    try:
        yield handle
    except KerasFileError:
        raise
    except WeightsFileError as error:
        raise KerasFileError(str(error)) from None
    finally:
        handle.close()


# === object paths ===========================================================================
def object_paths(model, orders=None):
    """[(path, object)]: the model ('') and every layer and nested model reachable
    from it, each once, at the object path Keras gives it (module docstring)."""
    found, visited, containers = [], set(), set()

    def visit(obj, path):
        if id(obj) in visited:
            return
        visited.add(id(obj))
        found.append((path, obj))
        if isinstance(obj, Graph):
            for attribute, child in _children(obj, orders):
                (visit if isinstance(child, Layer) else container)(child, _join(path, attribute))

    def container(items, path):
        if id(items) in containers:
            return
        containers.add(id(items))
        used = {}
        for item in (items.values() if isinstance(items, dict) else items):
            if isinstance(item, Layer):
                visit(item, _join(path, _unique(snake_case(saving.keras_class_name(item)), used)))
            elif isinstance(item, (list, tuple, dict)):
                container(item, _join(path, _unique("container", used)))

    visit(model, "")
    return found


def _children(model, orders):
    """(attribute, layer or container) in Keras's walk order: a Functional's or
    Sequential's ``layers`` first, then the attributes holding layers by name."""
    attributes = sorted((name, value) for name, value in vars(model).items()
                        if not name.startswith("_") and _holds_layers(value))
    layers = ("layers", saving.container_order(model, orders))
    if saving.kind_of(model) == "subclass":
        return sorted(attributes + [layers], key=lambda pair: pair[0])
    return [layers] + attributes


def _holds_layers(value):
    if isinstance(value, Layer):
        return True
    items = value.values() if isinstance(value, dict) else value
    return isinstance(value, (list, tuple, dict)) and any(_holds_layers(v) for v in items)


def _unique(name, used):
    if name in used:
        used[name] += 1
        return f"{name}_{used[name]}"
    used[name] = 0
    return name


def _join(path, name):
    return f"{path}/{name}" if path else name


def weighted_layers(model, orders=None):
    """[(path, layer)] of the layers with weights, in walk order."""
    return [(path, obj) for path, obj in object_paths(model, orders)
            if not isinstance(obj, Graph) and obj.params]


# === reading weights ========================================================================
def _listed(problems):
    shown = "\n  ".join(problems[:MAX_LISTED_PROBLEMS])
    more = len(problems) - MAX_LISTED_PROBLEMS
    return shown + (f"\n  ... and {more} more" if more > 0 else "")


def _stored_vars(handle, path, shown):
    """[StoredArray] of the datasets '0', '1', ... in group ``path`` (None if there
    is no such group), or a problem if its names are not exactly those."""
    group = find(handle, path, shown, h5py.Group)
    if group is None:
        return None, None
    found = names(group, shown)
    expected = [str(i) for i in range(len(found))]
    if sorted(found) != sorted(expected):
        return None, f"'{path}' holds {sorted(found)[:8]}, not the datasets '0', '1', ..."
    return [inspect(require(group, name, shown, h5py.Dataset, repr(path)), shown)
            for name in expected], None


def weights_plan(handle, shown, model, orders=None, skip_mismatch=False):
    """([(layer, [(param, StoredArray)])], skipped layer names): every weighted
    layer of ``model`` paired with its datasets, shapes checked, from metadata
    alone; and nothing else in the file holds weights."""
    plan, problems, skipped, expected = [], [], [], set()
    for path, layer in weighted_layers(model, orders):
        where = _join(path, "vars")
        expected.add(where)
        stored, problem = _stored_vars(handle, where, shown)
        if stored is None and problem is None:
            problem = f"no weights at '{where}' for layer {layer.name!r}"
        elif stored is not None:
            problem = _mismatch(layer, where, stored)
        if problem and skip_mismatch:
            skipped.append(layer.name)
        elif problem:
            problems.append(problem)
        else:
            plan.append((layer, list(zip(layer.params, stored))))
    problems += [f"'{path}' holds weights that no layer of model {model.name!r} has"
                 for path in _weighted_groups(handle, shown) if path not in expected]
    if problems:
        count = f"{len(problems)} problem{'s' * (len(problems) > 1)}"
        raise KerasFileError(f"{shown} does not fit model {model.name!r} ({count}):\n  "
                             + _listed(problems))
    return plan, skipped


def _mismatch(layer, where, stored):
    if len(stored) != len(layer.params):
        return (f"layer {layer.name!r} has {len(layer.params)} weights {list(layer.params)}, "
                f"'{where}' holds {len(stored)}")
    for name, array in zip(layer.params, stored):
        expected = tuple(layer.params[name].shape)
        if array.shape != expected:
            return (f"layer {layer.name!r}, weight {name!r}: the model expects shape {expected}, "
                    f"'{where}' holds {array.shape}")
    return None


def _weighted_groups(handle, shown):
    """Every group path holding datasets (or anything) under a 'vars' group, the
    state groups of Keras's own (optimizer) left out; a bounded walk."""
    found, stack, walked = [], [("", handle, 0)], 0
    while stack:
        path, group, depth = stack.pop()
        for name in names(group, shown):
            walked += 1
            if walked > MAX_TREE_OBJECTS or depth >= MAX_TREE_DEPTH:
                raise KerasFileError(f"{shown}: its groups nest deeper than {MAX_TREE_DEPTH} or "
                                     f"hold more than {MAX_TREE_OBJECTS:,} objects")
            if not path and name in STATE_GROUPS:
                continue
            node = find(group, name, shown, object)
            if name == "vars" and isinstance(node, h5py.Group):
                if names(node, shown):
                    found.append(_join(path, "vars"))
            elif isinstance(node, h5py.Group):
                stack.append((_join(path, name), node, depth + 1))
            else:
                found.append(_join(path, name))
    return found


def read_plan(plan, shown, max_bytes=None):
    """The arrays of ``plan``, read (within ``max_bytes``, default MAX_READ_BYTES),
    finite, in each parameter's dtype and on its device; nothing is assigned."""
    limit = MAX_READ_BYTES if max_bytes is None else max_bytes
    total = sum(stored.size * layer.params[slot].dtype.itemsize
                for layer, pairs in plan for slot, stored in pairs)
    if total > limit:
        raise KerasFileError(f"{shown}: loading it would read {total:,} bytes, more than the "
                             f"bound of {limit:,}")
    return [(layer, {slot: like(stored.read(layer.params[slot].dtype), layer.params[slot])
                     for slot, stored in pairs}) for layer, pairs in plan]


def optimizer_arrays(handle, shown, model, orders=None):
    """The optimizer's variables of a compiled ``model`` from 'optimizer/vars' (None
    when the file has none), every count and shape checked first."""
    stored, problem = _stored_vars(handle, "optimizer/vars", shown)
    if problem:
        raise KerasFileError(f"{shown}: {problem}")
    if not stored:
        return None
    shapes = saving.optimizer_shapes(model, orders)
    found = [array.shape for array in stored]
    if found != shapes and found != shapes[:2]:         # two: Keras had not built its optimizer
        optimizer = f"{saving.keras_class(model.compiled.optimizer)} on model {model.name!r}"
        wrong = next((i for i, (a, b) in enumerate(zip(found, shapes)) if a != b), None)
        problem = (f"holds {len(found)} variables, but {optimizer} has {len(shapes)}"
                   if wrong is None else f"variable {wrong} has shape {found[wrong]}, but "
                   f"{optimizer} needs {shapes[wrong]} there")
        raise KerasFileError(f"{shown}: 'optimizer/vars' {problem}; load with compile=False to "
                             "skip the optimizer")
    if sum(array.size for array in stored) * 8 > 2 * MAX_READ_BYTES:
        raise KerasFileError(f"{shown}: the optimizer's variables are larger than minires reads")
    return [array.read(np.float64 if i else np.int64) for i, array in enumerate(stored)]


# === loading ================================================================================
def load_model(filepath, custom_objects=None, compile=True, safe_mode=True):
    """The model a .keras file holds: its architecture, every weight, and (with
    ``compile``) its compile configuration and optimizer state. See the module
    docstring for what is checked; every problem is one KerasFileError.
    ``safe_mode`` is Keras's argument: minires never runs code from a file, so a
    Lambda layer is refused whatever it says."""
    with KerasArchive(filepath) as archive:
        archive.check_metadata()
        entry = archive.read_json(CONFIG)
        model, orders = _rebuild(archive, entry, custom_objects)
        if compile:
            _compile(archive, model, entry)
        with archive.weights() as (handle, shown):
            plan, _ = weights_plan(handle, shown, model, orders)
            state = optimizer_arrays(handle, shown, model, orders) \
                if compile and model.compiled is not None else None
            staged = read_plan(plan, shown)
    assign(staged)
    if state is not None:
        saving.set_optimizer_variables(model, state, orders)
    return model


def _rebuild(archive, entry, custom_objects):
    try:
        return saving.model_from_entry(entry, custom_objects)
    except saving.ConfigError as error:
        raise archive.error(f"config.json: {error}") from None


def _compile(archive, model, entry):
    try:
        saving.compile_from_entry(model, entry.get("compile_config"), "compile_config")
    except saving.ConfigError as error:
        raise archive.error(f"config.json: {error}") from None


def load_weights(model, filepath, skip_mismatch=False):
    """Copy the weights of a .keras file or a Keras 3 ``.weights.h5`` file into
    ``model``, by Keras's object paths; returns the names of the layers skipped
    (``skip_mismatch``: a layer whose weights do not fit is left as it is). A
    ``.weights.h5`` file in the classic layout goes to minires.io.keras_h5."""
    path = os.fspath(filepath)
    if path.lower().endswith(".keras"):
        with KerasArchive(path) as archive, archive.weights() as (handle, shown):
            plan, skipped = weights_plan(handle, shown, model, skip_mismatch=skip_mismatch)
            staged = read_plan(plan, shown)
    else:
        with _opened_h5(path, path) as handle:
            classic = text_attribute(handle, "layer_names", path) is not None \
                or find(handle, "layers", path, h5py.Group) is None
            if not classic:
                plan, skipped = weights_plan(handle, path, model, skip_mismatch=skip_mismatch)
                staged = read_plan(plan, path)
        if classic:
            from .keras_h5 import load_weights as load_classic
            return load_classic(model, path, skip_mismatch=skip_mismatch)
    assign(staged)
    return skipped


# === writing ================================================================================
def save_model(model, filepath):
    """Write ``model`` as Keras 3's .keras file at ``filepath``, atomically: its
    config, metadata, weights and (if compiled) its optimizer's variables.
    Everything is computed before the file is touched."""
    entry = saving.model_entry(model)            # refuses a compile Keras has no form for
    with_optimizer = getattr(model, "compiled", None) is not None
    members = {METADATA: _json_bytes(metadata()), CONFIG: _json_bytes(entry),
               WEIGHTS: _h5_bytes(lambda f: write_weights(f, model, with_optimizer))}
    with atomic_write(filepath, suffix=".keras") as handle:
        with zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED) as archive:
            for name, data in members.items():
                archive.writestr(name, data)


def metadata():
    return {"keras_version": KERAS_VERSION,
            "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
            "saved_by": "minires"}


def to_json(model, **kwargs):
    """Keras's ``model.to_json()``: the model's config, without compile configuration."""
    return json.dumps(saving.model_entry(model, with_compile=False), default=_json_default,
                      **kwargs)


def _json_bytes(value):
    return json.dumps(value, default=_json_default).encode("utf8")


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"a {type(value).__name__} cannot be written in a Keras config")


def _h5_bytes(write):
    """The bytes of an HDF5 file that ``write(h5py.File)`` fills, in memory."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        write(f)
    return buffer.getvalue()


def write_weights(f, model, with_optimizer=False):
    """Keras 3's weights layout: ``<path>/vars/<i>`` for every object (module docstring)."""
    for path, obj in object_paths(model):
        group = f.create_group(_join(path, "vars"))
        group.attrs["name"] = obj.name
        if not isinstance(obj, Graph):
            for i, value in enumerate(obj.params.values()):
                group.create_dataset(str(i), data=to_device(value, "cpu"))
    if with_optimizer and getattr(model, "compiled", None) is not None:
        group = f.create_group("optimizer/vars")
        group.attrs["name"] = saving.optimizer_entry(model.compiled.optimizer)["config"]["name"]
        for i, value in enumerate(saving.optimizer_variables(model)):
            group.create_dataset(str(i), data=value)


def save_weights(model, filepath):
    """``model.save_weights`` for Keras's names: '.weights.h5' in Keras 3's layout,
    '.h5' or '.hdf5' in the classic layout (minires.io.keras_h5 reads both);
    written atomically. '.keras' is refused: that is ``model.save``."""
    path = os.fspath(filepath)
    lowered = path.lower()
    if lowered.endswith(".keras"):
        raise ValueError(f"{path}: a .keras file holds a whole model: write it with "
                         "model.save(path); save_weights writes '.weights.h5' (Keras 3), "
                         "'.h5' (Keras's classic layout) or minires's '.npz' checkpoints")
    require_built(model, "save")
    if lowered.endswith(".weights.h5"):
        data = _h5_bytes(lambda f: write_weights(f, model, saving.has_keras_state(model)))
    else:
        data = _h5_bytes(lambda f: write_classic_weights(f, model))
    with atomic_write(path, suffix=".h5") as handle:
        handle.write(data)


def write_classic_weights(f, model):
    """Keras's classic layout (REFERENCE.md section 2): the attribute layer_names,
    per layer a group with attribute weight_names, each weight at
    ``<layer>/<layer>/<param>``; a nested model is one group of all its weights."""
    model.require_graph("weights")
    for layer in model.layers:
        if "/" in layer.name:
            raise ValueError(f"layer {layer.name!r}: a '/' in a layer name cannot be written in "
                             "Keras's classic layout (it names an HDF5 group); rename it")
    f.attrs["layer_names"] = np.array([layer.name.encode("utf8") for layer in model.layers], "S")
    f.attrs["backend"] = "numpy"
    f.attrs["keras_version"] = KERAS_VERSION
    for layer in model.layers:
        group = f.create_group(layer.name)
        pairs = list(layer.parameters(trainable_only=False)) if isinstance(layer, Graph) \
            else [(layer, name) for name in layer.params]
        weight_names = [f"{owner.name}/{name}" for owner, name in pairs]
        group.attrs["weight_names"] = np.array([n.encode("utf8") for n in weight_names], "S")
        for name, (owner, param) in zip(weight_names, pairs):
            group.create_dataset(name, data=to_device(owner.params[param], "cpu"))
