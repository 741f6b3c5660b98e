"""Reading Keras HDF5 weight files with h5py (read only; nothing is pickled).

Two layouts exist:
  legacy (Keras 1/2 ``save_weights('w.h5')``, any Keras ``model.save('m.h5')``):
      root (or group ``model_weights``) attribute ``layer_names``; one group per
      layer with attribute ``weight_names``; each weight at ``<layer>/<weight name>``
      (a '/' in the weight name is a subgroup).  Attributes may be bytes or str,
      and Keras splits a long one into ``layer_names0``, ``layer_names1``, ...
  Keras 3 ``save_weights('w.weights.h5')``:
      ``layers/<path>/vars/0, 1, ...`` where <path> is the class name in snake
      case with a counter (conv2d, conv2d_1, ...) and ``vars`` carries the layer
      name as attribute ``name``.
Within a layer, weights come in Keras's order (kernel, bias; gamma, beta,
moving_mean, moving_variance), which is also the order of ``layer.params``.

Weight names across Keras generations (``weight_slot`` maps them all):
  Keras 1  ``conv1_W:0``, ``conv1_b:0``, ``bn_conv1_gamma:0``, ``bn_conv1_running_mean:0``,
           ``bn_conv1_running_std:0`` (which holds the variance, despite its name)
  Keras 2  ``conv1_conv/kernel:0``, ``conv1_bn/moving_variance:0``; DepthwiseConv2D's
           ``dw/depthwise_kernel:0`` (Keras 3's ``kernel``); SeparableConv2D's
           ``sep/depthwise_kernel:0``, ``sep/pointwise_kernel:0`` (Keras 3 too)
  Keras 3  legacy .h5: ``conv1_conv/kernel``; .weights.h5: positions 0, 1, ... only

A load happens in three steps, and the model is touched only in the last:
  1. the file's layout: names, shapes and types, from its metadata alone, every
     name looked up without following links (``KerasWeightsFile``, through
     ``minires.io.h5_safety``, which lists what it refuses);
  2. the plan: each model parameter paired with one stored array of exactly
     its shape; every problem is found here, before any data is read;
  3. the data: all planned arrays (floats, within ``max_bytes`` in total) read,
     checked finite and converted, and only then copied into the model.
So a failed load leaves the model as it was, whatever went wrong, and every
failure is one WeightsFileError (a ValueError) naming the file and what in it;
a missing file is a FileNotFoundError.
"""
import contextlib
import os
from collections import namedtuple

import h5py
import numpy as np

from ..backend import like
from ..layers.base import snake_case
from .h5_safety import (WeightsFileError, find, inspect, names, open_file, path_of, reading,
                        require, text_attribute)
from .validate import MAX_LISTED_PROBLEMS, dtype_problem, listing, require_built

MAX_READ_BYTES = 2 << 30      # the most one load reads, all arrays together (None: no bound;
                              # ResNet-50 takes 0.1 GB, VGG-19 0.57 GB)

# One layer of the file: its name, [(weight name, StoredArray)], its Keras 3 path (None
# in the legacy layout).  A StoredArray knows its shape and dtype; its data waits.
FileLayer = namedtuple("FileLayer", "name weights keras3_path")


class KerasWeightsFile:
    """A Keras HDF5 weights file, opened read-only: ``layers`` (FileLayer, in file
    order, weightless layers included) is read from its metadata at once; data
    only through ``read_plan``.  Use as a context manager, which closes it."""

    def __init__(self, filepath):
        self.filepath = os.fspath(filepath)
        self._handle = open_file(self.filepath)
        try:
            self.layers = self._read_layout()
        except BaseException:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self):
        try:
            self._handle.close()
        except Exception:  # noqa: BLE001 - closing a damaged file read-only loses nothing
            pass

    def _read_layout(self):
        path = self.filepath
        root = find(self._handle, "model_weights", path, h5py.Group) or self._handle
        layer_names = _keras_text(root, "layer_names", path)
        if layer_names is not None:
            return [self._legacy_layer(root, name) for name in layer_names]
        layers = find(root, "layers", path, h5py.Group)
        if layers is not None:
            return [self._keras3_layer(layers, key) for key in names(layers, path)]
        raise WeightsFileError(f"{path} is HDF5 but holds no Keras weights: no 'layer_names' "
                               "attribute and no 'layers' group")

    def _legacy_layer(self, root, name):
        path = self.filepath
        group = require(root, name, path, h5py.Group, "'layer_names'")
        weight_names = _keras_text(group, "weight_names", path) or []
        datasets = [require(group, w, path, h5py.Dataset, "'weight_names'") for w in weight_names]
        return FileLayer(name, [(w, inspect(d, path)) for w, d in zip(weight_names, datasets)], None)

    def _keras3_layer(self, layers, key):
        path = self.filepath
        group = require(layers, key, path, h5py.Group, repr(path_of(layers)))
        variables = find(group, "vars", path, h5py.Group)
        if variables is None:
            return FileLayer(key, [], key)
        name = (text_attribute(variables, "name", path) or [key])[0]
        where = repr(path_of(variables))
        with reading(path, where):
            count = len(variables)
        datasets = [require(variables, str(i), path, h5py.Dataset, where) for i in range(count)]
        return FileLayer(name, [(f"{name}/{i}", inspect(d, path)) for i, d in enumerate(datasets)],
                         key)

    def read_plan(self, plan, max_bytes=None):
        """Read the arrays of ``plan`` ([(layer, [(param name, StoredArray), ...])],
        shapes already checked): their stored dtypes must be floats (integers are
        never cast into weights) and their total size is checked against
        ``max_bytes`` (None: ``MAX_READ_BYTES``) before anything is read; each
        array comes back finite, in its parameter's dtype, on its parameter's
        device.  Nothing is written into the layers here (see ``assign``)."""
        for _, weights in plan:
            for _, stored in weights:
                problem = dtype_problem(stored.dtype)
                if problem:
                    raise WeightsFileError(f"{self.filepath}: {stored.key} has {problem}")
        limit = MAX_READ_BYTES if max_bytes is None else max_bytes
        total = sum(stored.size * np.dtype(layer.params[slot].dtype).itemsize
                    for layer, weights in plan for slot, stored in weights)
        if limit is not None and total > limit:
            raise WeightsFileError(f"{self.filepath}: loading it would read {total:,} bytes, more "
                                   f"than the bound of {limit:,} bytes (max_bytes=, or "
                                   "minires.io.keras_h5.MAX_READ_BYTES)")
        return [(layer, {slot: like(stored.read(np.dtype(layer.params[slot].dtype)), layer.params[slot])
                         for slot, stored in weights})
                for layer, weights in plan]


@contextlib.contextmanager
def opened(filepath):
    """``filepath`` as an open KerasWeightsFile: opened here and closed after, or
    used as it is if it already is one (so several steps share one opening)."""
    if isinstance(filepath, KerasWeightsFile):
        yield filepath
    else:
        with KerasWeightsFile(filepath) as file:
            yield file


def assign(staged):
    """Copy arrays read by ``read_plan`` into their layers; shapes, dtypes and
    devices already match, so this step cannot fail halfway."""
    for layer, arrays in staged:
        for slot, array in arrays.items():
            layer.params[slot][...] = array
        layer.weights_changed()               # written in place: folded inference plans are stale


def _keras_text(group, name, filepath):
    """A text attribute as Keras writes it: whole, or split in ``name0``, ``name1``, ...
    when too long for an HDF5 object header; None if absent."""
    whole = text_attribute(group, name, filepath)
    if whole is not None:
        return whole
    parts = []
    while True:
        part = text_attribute(group, f"{name}{len(parts)}", filepath)
        if part is None:
            return None if not parts else [text for chunk in parts for text in chunk]
        parts.append(part)


def read_layer_names(filepath):
    """The file's layer names, in order, weightless layers included (metadata only)."""
    with opened(filepath) as file:
        return [layer.name for layer in file.layers]


def read_layer_weights(filepath, max_bytes=None):
    """[(layer name, [(weight name, array), ...], keras3_path), ...] in file order,
    weightless layers included; keras3_path is None in the legacy layout.  Every
    array is read, in the dtype it is stored as, within ``max_bytes`` in total."""
    with opened(filepath) as file:
        limit = MAX_READ_BYTES if max_bytes is None else max_bytes
        total = sum(stored.size * stored.dtype.itemsize for layer in file.layers
                    for _, stored in layer.weights)
        if limit is not None and total > limit:
            raise WeightsFileError(f"{file.filepath} declares {total:,} bytes of weights, more than "
                                   f"the bound of {limit:,} bytes (max_bytes=)")
        return [(layer.name, [(name, stored.read(stored.dtype)) for name, stored in layer.weights],
                 layer.keras3_path) for layer in file.layers]


def keras3_paths(layers):
    """Keras 3's path of each layer: its class in snake case, then _1, _2, ... per class."""
    counts, paths = {}, []
    for layer in layers:
        base = snake_case(type(layer).__name__)
        paths.append(base if base not in counts else f"{base}_{counts[base]}")
        counts[base] = counts.get(base, 0) + 1
    return paths


def load_weights(model, filepath, by_name=False, skip_mismatch=False, max_bytes=None):
    """Copy the weights of a Keras HDF5 file into ``model``, as Keras's load_weights.

    by_name=False: the file's layers that have weights are paired, in order, with
    the model's layers that have weights (Keras 3 files: by Keras 3's layer
    paths); the counts must match.
    by_name=True: each file layer goes to the model layer of the same name;
    model layers absent from the file are left as they are.
    Any shape mismatch raises WeightsFileError naming layer and weight, unless
    skip_mismatch=True (with by_name), which skips that layer and returns its name.
    ``max_bytes``: the most this load may read (default ``MAX_READ_BYTES``).
    Everything is checked and read before the model is changed: a failed load
    changes nothing.  ``filepath``: a path, or an open KerasWeightsFile.
    A model not built yet raises ValueError (it has no weights to load into).
    """
    require_built(model, "load into")
    with opened(filepath) as file:
        entries = [layer for layer in file.layers if layer.weights]
        if by_name:
            pairs = _pairs_by_name(model, entries, file.filepath)
        else:
            pairs = _pairs_by_order(model, entries, file.filepath)
        plan, skipped = [], []
        for layer, entry in pairs:
            problem = _mismatch(layer, entry)
            if problem and by_name and skip_mismatch:
                skipped.append(layer.name)
            elif problem:
                raise WeightsFileError(f"{file.filepath}: {problem}")
            else:
                plan.append((layer, list(zip(layer.params, (stored for _, stored in entry.weights)))))
        staged = file.read_plan(plan, max_bytes)
    assign(staged)
    return skipped


def _pairs_by_name(model, entries, filepath):
    layers = {layer.name: layer for layer in model.layers}
    seen = set()
    for entry in entries:
        if entry.name in seen:
            raise WeightsFileError(f"{filepath} lists layer {entry.name!r} twice: which one is meant "
                                   "is unclear")
        seen.add(entry.name)
    return [(layers[entry.name], entry) for entry in entries if entry.name in layers]


def _pairs_by_order(model, entries, filepath):
    weighted = [layer for layer in model.layers if layer.params]
    if len(weighted) != len(entries):
        raise WeightsFileError(f"{filepath} holds weights for {len(entries)} layers but model "
                               f"{model.name!r} has {len(weighted)} layers with weights; "
                               "load by_name=True if the architectures differ")
    if not entries or entries[0].keras3_path is None:
        return list(zip(weighted, entries))
    by_path = {entry.keras3_path: entry for entry in entries}
    pairs = []
    for layer, path in zip(model.layers, keras3_paths(model.layers)):
        if layer.params:
            if path not in by_path:
                raise WeightsFileError(f"{filepath}: no weights at 'layers/{path}' for layer "
                                       f"{layer.name!r}")
            pairs.append((layer, by_path[path]))
    return pairs


def _mismatch(layer, entry):
    """Why the file layer ``entry`` does not fit ``layer``, or None."""
    if len(entry.weights) != len(layer.params):
        return (f"layer {layer.name!r} has {len(layer.params)} weights {list(layer.params)}, the "
                f"file's layer {entry.name!r} has {len(entry.weights)}")
    for slot, (weight_name, stored) in zip(layer.params, entry.weights):
        expected = tuple(layer.params[slot].shape)
        if stored.shape != expected:
            return (f"layer {layer.name!r}, weight {slot!r}: model expects shape {expected}, "
                    f"the file's {weight_name!r} has shape {stored.shape}")
    return None


KERAS1_SLOTS = {"W": "kernel", "b": "bias", "running_mean": "moving_mean",
                "running_std": "moving_variance"}   # Keras 1 stored the variance as "std"
# Keras 2's DepthwiseConv2D named its kernel 'depthwise_kernel', Keras 3's (and minires's)
# 'kernel'; SeparableConv2D keeps 'depthwise_kernel' and 'pointwise_kernel' in both.
RENAMED_SLOTS = {"DepthwiseConv2D": {"depthwise_kernel": "kernel"}}


def weight_slot(layer, file_layer_name, weight_name):
    """The parameter of ``layer`` that a stored weight fills, from its name alone:
    'conv1_conv/kernel:0' -> 'kernel', 'bn_conv1_running_std:0' -> 'moving_variance'
    (Keras 1 prefixes the layer name), Keras 3's positions ('conv1_conv/1') ->
    the layer's second parameter. None if the name means nothing here."""
    name = weight_name.split(":")[0]
    if "/" in name:
        short = name.rsplit("/", 1)[1]
    elif name.startswith(file_layer_name + "_"):
        short = name[len(file_layer_name) + 1:]
    else:
        short = name
    if short.isdigit():
        slots = list(layer.params)
        return slots[int(short)] if int(short) < len(slots) else None
    short = KERAS1_SLOTS.get(short, short)
    short = RENAMED_SLOTS.get(type(layer).__name__, {}).get(short, short)
    return short if short in layer.params else None


def load_by_name(model, filepath, renames=None, strict=True, max_bytes=None):
    """Load by names: every weighted layer of the model gets its weights from the
    file layer of the same name, each array from the weight of the same name.
    Positions never decide anything, so files that list layers in another
    order (the two ResNet-50 generations do) load correctly.

    ``renames`` maps file layer names to model layer names (e.g. the old
    'probs' to 'predictions'); two file layers for one model layer (both
    'probs' and 'predictions') are a problem, never a silent choice.
    strict=True: every problem (model layers missing from the file, file layers
    not in the model, unknown or missing weights, shape mismatches with both
    shapes) is collected and raised in one WeightsFileError; the model is
    changed only when the whole file fits.
    strict=False: whatever fits is loaded; returns the list of problems skipped.
    Either way, a file that cannot be read (see ``KerasWeightsFile``), holds
    NaN or inf, or needs more than ``max_bytes`` (default ``MAX_READ_BYTES``)
    raises WeightsFileError and changes nothing.  A missing path raises
    FileNotFoundError.  ``filepath``: a path, or an open KerasWeightsFile.
    A model not built yet raises ValueError (it has no weights to load into).
    """
    require_built(model, "load into")
    renames = renames or {}
    with opened(filepath) as file:
        stored, ambiguous, problems = {}, set(), []
        for entry in (layer for layer in file.layers if layer.weights):
            target = renames.get(entry.name, entry.name)
            if target in stored:
                ambiguous.add(target)
                problems.append(f"file layers {stored[target].name!r} and {entry.name!r} both hold "
                                f"weights for model layer {target!r}: which one is meant is unclear")
            else:
                stored[target] = entry
        weighted = {layer.name: layer for layer in model.layers if layer.params}
        problems += [f"model layer {name!r} is missing from the file" for name in weighted
                     if name not in stored]
        problems += [f"file layer {stored[name].name!r} is not in the model" for name in stored
                     if name not in weighted]
        plan = []
        for name in (n for n in weighted if n in stored and n not in ambiguous):
            arrays, layer_problems = _layer_plan(weighted[name], stored[name])
            problems += layer_problems
            if not layer_problems:
                plan.append((weighted[name], list(arrays.items())))
        if strict and problems:
            count = f"{len(problems)} problem{'s' * (len(problems) > 1)}"
            raise WeightsFileError(f"{file.filepath} does not fit model {model.name!r} ({count}):"
                                   "\n  " + _listed(problems))
        staged = file.read_plan(plan, max_bytes)
    assign(staged)
    return problems


def _listed(problems):
    more = " (strict=False returns them all)" if len(problems) > MAX_LISTED_PROBLEMS else ""
    return listing(problems) + more


def _layer_plan(layer, entry):
    """({param: StoredArray}, problems) for one layer, every name and shape checked."""
    arrays, problems, misshapen = {}, [], set()
    for weight_name, stored in entry.weights:
        slot = weight_slot(layer, entry.name, weight_name)
        if slot is None or slot in arrays:
            problems.append(f"layer {layer.name!r}: the file's weight {weight_name!r} matches none "
                            f"of its weights {list(layer.params)}")
            continue
        expected, found = tuple(layer.params[slot].shape), stored.shape
        if found != expected:
            problems.append(f"layer {layer.name!r}, weight {slot!r}: expected shape {expected}, "
                            f"found {found} ({weight_name!r}){_theano_hint(expected, found)}")
            misshapen.add(slot)
            continue
        arrays[slot] = stored
    problems += [f"layer {layer.name!r}: weight {slot!r} is missing from the file"
                 for slot in layer.params if slot not in arrays and slot not in misshapen]
    return arrays, problems


def _theano_hint(expected, found):
    """Theano-ordered ('th') files store conv kernels as (out, in, kh, kw), and
    spatially flipped; minires reads only 'tf' files, as their name says."""
    if len(expected) == 4 and found == (expected[3], expected[2], expected[0], expected[1]):
        return ("; this looks like a Theano 'th' dim-ordering file (kernels (out, in, kh, kw)): "
                "use the '..._tf_dim_ordering_tf_kernels' file instead")
    return ""
