"""Reading Keras HDF5 weight files with h5py (read only; nothing is pickled).

Two layouts exist:
  legacy (Keras 1/2 ``save_weights('w.h5')``, any Keras ``model.save('m.h5')``):
      root (or group ``model_weights``) attribute ``layer_names``; one group per
      layer with attribute ``weight_names``; each weight at ``<layer>/<weight name>``
      (a '/' in the weight name is a subgroup).  Attributes may be bytes or str.
  Keras 3 ``save_weights('w.weights.h5')``:
      ``layers/<path>/vars/0, 1, ...`` where <path> is the class name in snake
      case with a counter (conv2d, conv2d_1, ...) and ``vars`` carries the layer
      name as attribute ``name``.
Within a layer, weights come in Keras's order (kernel, bias; gamma, beta,
moving_mean, moving_variance), which is also the order of ``layer.params``.

Weight names across Keras generations (``weight_slot`` maps them all):
  Keras 1  ``conv1_W:0``, ``conv1_b:0``, ``bn_conv1_gamma:0``, ``bn_conv1_running_mean:0``,
           ``bn_conv1_running_std:0`` (which holds the variance, despite its name)
  Keras 2  ``conv1_conv/kernel:0``, ``conv1_bn/moving_variance:0``
  Keras 3  legacy .h5: ``conv1_conv/kernel``; .weights.h5: positions 0, 1, ... only
"""
import os

import h5py
import numpy as np

from ..backend import like
from ..layers.base import snake_case


class WeightsFileError(ValueError):
    """A weights file that cannot be read, or whose contents do not fit the model."""


def _text(values):
    """An HDF5 string attribute (array of bytes or str, possibly empty) as a list of str."""
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in np.asarray(values).ravel()]


def read_layer_weights(filepath):
    """[(layer name, [(weight name, array), ...], keras3_path), ...] in file order,
    weightless layers included; keras3_path is None in the legacy layout."""
    if not os.path.isfile(filepath):
        raise FileNotFoundError(f"weights file not found: {filepath}")
    try:
        handle = h5py.File(filepath, "r")
    except OSError as error:
        raise WeightsFileError(f"{filepath} is not a readable HDF5 file (empty, truncated or "
                               f"another format): {error}") from None
    with handle:
        try:
            return _read_layers(handle, filepath)
        except (OSError, KeyError) as error:       # a damaged dataset or a dangling name
            raise WeightsFileError(f"{filepath} is damaged: {error}") from None


def _read_layers(handle, filepath):
    root = handle["model_weights"] if "model_weights" in handle else handle
    if "layer_names" in root.attrs:
        return [(name, [(w, np.asarray(root[name][w])) for w in _text(root[name].attrs["weight_names"])], None)
                for name in _text(root.attrs["layer_names"])]
    if "layers" in root:
        return [_read_keras3_layer(path, group) for path, group in root["layers"].items()]
    raise WeightsFileError(f"{filepath} is HDF5 but holds no Keras weights: no 'layer_names' "
                           "attribute and no 'layers' group")


def _read_keras3_layer(path, group):
    variables = group.get("vars")
    if variables is None:
        return path, [], path
    name = _text(variables.attrs.get("name", path))[0]
    return name, [(f"{name}/{i}", np.asarray(variables[str(i)])) for i in range(len(variables))], path


def keras3_paths(layers):
    """Keras 3's path of each layer: its class in snake case, then _1, _2, ... per class."""
    counts, paths = {}, []
    for layer in layers:
        base = snake_case(type(layer).__name__)
        paths.append(base if base not in counts else f"{base}_{counts[base]}")
        counts[base] = counts.get(base, 0) + 1
    return paths


def load_weights(model, filepath, by_name=False, skip_mismatch=False):
    """Copy the weights of a Keras HDF5 file into ``model``, as Keras's load_weights.

    by_name=False: the file's layers that have weights are paired, in order, with
    the model's layers that have weights (Keras 3 files: by Keras 3's layer
    paths); the counts must match.
    by_name=True: each file layer goes to the model layer of the same name;
    model layers absent from the file are left as they are.
    Any shape mismatch raises ValueError naming layer and weight, unless
    skip_mismatch=True (with by_name), which skips that layer and returns its name.
    """
    entries = [e for e in read_layer_weights(filepath) if e[1]]
    if by_name:
        layers = {layer.name: layer for layer in model.layers}
        pairs = [(layers[name], name, weights) for name, weights, _ in entries if name in layers]
    else:
        pairs = _pairs_by_order(model, entries, filepath)
    skipped = []
    for layer, file_name, weights in pairs:
        problem = _mismatch(layer, file_name, weights)
        if problem and by_name and skip_mismatch:
            skipped.append(layer.name)
        elif problem:
            raise ValueError(f"{filepath}: {problem}")
        else:
            for slot, (_, array) in zip(layer.params, weights):
                target = layer.params[slot]
                target[...] = like(array.astype(target.dtype), target)
    return skipped


def _pairs_by_order(model, entries, filepath):
    weighted = [layer for layer in model.layers if layer.params]
    if len(weighted) != len(entries):
        raise ValueError(f"{filepath} holds weights for {len(entries)} layers but model "
                         f"{model.name!r} has {len(weighted)} layers with weights; "
                         "load by_name=True if the architectures differ")
    if not entries or entries[0][2] is None:
        return [(layer, name, weights) for layer, (name, weights, _) in zip(weighted, entries)]
    by_path = {path: (name, weights) for name, weights, path in entries}
    pairs = []
    for layer, path in zip(model.layers, keras3_paths(model.layers)):
        if layer.params:
            if path not in by_path:
                raise ValueError(f"{filepath}: no weights at 'layers/{path}' for layer {layer.name!r}")
            pairs.append((layer, *by_path[path]))
    return pairs


def _mismatch(layer, file_name, weights):
    """Why ``weights`` do not fit ``layer``, or None."""
    if len(weights) != len(layer.params):
        return (f"layer {layer.name!r} has {len(layer.params)} weights {list(layer.params)}, the "
                f"file's layer {file_name!r} has {len(weights)}")
    for slot, (weight_name, array) in zip(layer.params, weights):
        expected = tuple(layer.params[slot].shape)
        if tuple(array.shape) != expected:
            return (f"layer {layer.name!r}, weight {slot!r}: model expects shape {expected}, "
                    f"the file's {weight_name!r} has shape {tuple(array.shape)}")
    return None



KERAS1_SLOTS = {"W": "kernel", "b": "bias", "running_mean": "moving_mean",
                "running_std": "moving_variance"}   # Keras 1 stored the variance as "std"


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
    return short if short in layer.params else None


def load_by_name(model, filepath, renames=None, strict=True):
    """Load by names: every weighted layer of the model gets its weights from the
    file layer of the same name, each array from the weight of the same name.
    Positions never decide anything, so files that list layers in another
    order (the two ResNet-50 generations do) load correctly.

    ``renames`` maps file layer names to model layer names (e.g. the old
    'probs' to 'predictions').
    strict=True: every problem (model layers missing from the file, file layers
    not in the model, unknown or missing weights, shape mismatches with both
    shapes) is collected and raised in one WeightsFileError; the model is
    changed only when the whole file fits.
    strict=False: whatever fits is loaded; returns the list of problems skipped.
    A missing path raises FileNotFoundError; a file that is not HDF5, is empty,
    truncated or damaged raises WeightsFileError.
    """
    renames = renames or {}
    stored = {renames.get(name, name): (name, weights)
              for name, weights, _ in read_layer_weights(filepath) if weights}
    weighted = {layer.name: layer for layer in model.layers if layer.params}
    problems = [f"model layer {name!r} is missing from the file" for name in weighted if name not in stored]
    problems += [f"file layer {stored[name][0]!r} is not in the model" for name in stored if name not in weighted]
    plans = []
    for name in (n for n in weighted if n in stored):
        arrays, layer_problems = _layer_plan(weighted[name], *stored[name])
        problems += layer_problems
        if not layer_problems:
            plans.append((weighted[name], arrays))
    if strict and problems:
        raise WeightsFileError(f"{filepath} does not fit model {model.name!r} "
                               f"({len(problems)} problems):\n  " + "\n  ".join(problems))
    for layer, arrays in plans:
        for slot, array in arrays.items():
            layer.params[slot][...] = like(array.astype(layer.params[slot].dtype), layer.params[slot])
    return problems


def _layer_plan(layer, file_name, weights):
    """({param: array}, problems) for one layer, every name and shape checked."""
    arrays, problems = {}, []
    for weight_name, array in weights:
        slot = weight_slot(layer, file_name, weight_name)
        if slot is None or slot in arrays:
            problems.append(f"layer {layer.name!r}: the file's weight {weight_name!r} matches none "
                            f"of its weights {list(layer.params)}")
            continue
        expected, found = tuple(layer.params[slot].shape), tuple(array.shape)
        if found != expected:
            problems.append(f"layer {layer.name!r}, weight {slot!r}: expected shape {expected}, "
                            f"found {found} ({weight_name!r}){_theano_hint(expected, found)}")
            continue
        arrays[slot] = array
    problems += [f"layer {layer.name!r}: weight {slot!r} is missing from the file"
                 for slot in layer.params if slot not in arrays
                 and not any(f"weight {slot!r}" in p for p in problems)]
    return arrays, problems


def _theano_hint(expected, found):
    """Theano-ordered ('th') files store conv kernels as (out, in, kh, kw), and
    spatially flipped; minires reads only 'tf' files, as their name says."""
    if len(expected) == 4 and found == (expected[3], expected[2], expected[0], expected[1]):
        return ("; this looks like a Theano 'th' dim-ordering file (kernels (out, in, kh, kw)): "
                "use the '..._tf_dim_ordering_tf_kernels' file instead")
    return ""
