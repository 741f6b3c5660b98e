"""Keras's ``keras.utils`` helpers that tutorials call (plot_model, set_random_seed), and
the argument checks that the training API shares (fit, the optimisers, the callbacks)."""
import math
import numbers
import os
import shutil
import subprocess

import numpy as np

from .backend import get_array_module
from .initializers import set_random_seed  # noqa: F401  (keras.utils.set_random_seed)
from .io.atomic import atomic_write
from .summary import shape_text


def model_to_dot(model, show_shapes=False, show_layer_names=True):
    """The model's graph in Graphviz's DOT language: one box per layer, an
    arrow from each layer to the layers that read its output."""
    lines = ["digraph model {", "  rankdir=TB;", '  node [shape=record, fontname="Helvetica"];']
    for layer in model.layers:
        label = type(layer).__name__
        if show_layer_names:
            label = f"{layer.name}: {label}"
        if show_shapes:
            shapes = [shape_text(t.shape) for t in model.nodes if t.layer is layer]
            label += "\\n" + " ".join(shapes)
        label = label.replace('"', '\\"')
        lines.append(f'  "{layer.name}" [label="{label}"];')
    for tensor in model.nodes:
        for source in tensor.inbound:
            lines.append(f'  "{source.layer.name}" -> "{tensor.layer.name}";')
    lines.append("}")
    return "\n".join(lines) + "\n"


def plot_model(model, to_file="model.png", show_shapes=False, show_layer_names=True):
    """Write the graph to ``to_file``: DOT text for '.dot'/'.gv', or a picture
    for '.png'/'.svg'/'.pdf', which needs Graphviz's ``dot`` program."""
    dot = model_to_dot(model, show_shapes, show_layer_names)
    extension = os.path.splitext(to_file)[1].lower().lstrip(".")
    if extension in ("dot", "gv"):
        with atomic_write(to_file) as handle:
            handle.write(dot.encode())
        return to_file
    if extension not in ("png", "svg", "pdf"):
        raise ValueError(f"plot_model: cannot write {to_file!r}; use .dot, .gv, .png, .svg or .pdf")
    program = shutil.which("dot")
    if program is None:
        raise RuntimeError(f"plot_model: writing {to_file!r} needs Graphviz's 'dot' program "
                           "(e.g. apt-get install graphviz); a '.dot' file needs nothing")
    picture = subprocess.run([program, f"-T{extension}"], input=dot.encode(),
                             capture_output=True, check=True).stdout
    with atomic_write(to_file) as handle:
        handle.write(picture)
    return to_file


# --- reading device values on the host ---------------------------------------------
# On CuPy, every value read on the host (bool(), float(), int() of a device array)
# waits for the GPU to finish all the work queued before it. A training step checks
# hundreds of arrays (each gradient, each update, each BN statistic): it computes
# their flags on the device, where nothing waits, and reads them all at once.
def finite_flag(array):
    """A 0-d boolean array on ``array``'s device: no entry is nan or inf. Nothing waits."""
    return get_array_module(array).isfinite(array).all()


def flags_all(flags):
    """A 0-d boolean array on the flags' device: every one of ``flags`` (0-d
    boolean arrays) is True; True for none. Nothing waits."""
    flags = list(flags)
    return get_array_module(*flags).stack(flags).all() if flags else np.True_


def all_true(flags):
    """Whether every one of ``flags`` is True: ONE read on the host."""
    return bool(flags_all(flags))


def read_on_host(*values):
    """``values`` (0-d arrays on one device, or numbers) as Python floats: ONE read on the host."""
    xp = get_array_module(*values)
    return xp.stack([xp.asarray(value, dtype="float64").reshape(()) for value in values]).tolist()


def all_finite(array):
    """True when no entry of ``array`` (NumPy or CuPy) is nan or inf: one read on the host."""
    return bool(finite_flag(array))


# --- argument checks: one clear error naming the argument, before anything runs -------
def check_int(value, where, lowest=0):
    """``value`` as an int if it is an integer >= ``lowest``: a TypeError naming
    ``where`` for a bool, a float or a string ('2' is not 2), a ValueError below."""
    wanted = {0: "a non-negative integer", 1: "a positive integer"}.get(lowest,
                                                                        f"an integer >= {lowest}")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{where} must be {wanted}, got {value!r} ({type(value).__name__})")
    if value < lowest:
        raise ValueError(f"{where} must be {wanted}, got {value!r}")
    return int(value)


def check_number(value, where, low=-math.inf, high=math.inf, include_low=True):
    """``value`` as a float if it is a real number in [low, high), so finite (or
    (low, high) without ``include_low``); a 0-d array of one counts. A TypeError naming ``where`` for a bool,
    a string or None ('0.1' is not 0.1), a ValueError for nan, inf or out of range."""
    zero_d = getattr(value, "ndim", None) == 0 and getattr(value, "dtype", np.dtype(object)).kind in "iuf"
    if isinstance(value, (bool, np.bool_)) or not (isinstance(value, numbers.Real) or zero_d):
        raise TypeError(f"{where} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)                 # a 0-d array too (a schedule's np.asarray(...)), as Keras
    above_low = value >= low if include_low else value > low
    if not (math.isfinite(value) and above_low and value < high):
        interval = f"{'[' if include_low and math.isfinite(low) else '('}{low:g}, {high:g})"
        raise ValueError(f"{where} must be in {interval}, got {value!r}")
    return value


def check_flag(value, where):
    """``value`` as a bool if it is True or False (a NumPy bool too), else a TypeError."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{where} must be True or False, got {value!r}")
    return bool(value)
