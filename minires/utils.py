"""Keras's ``keras.utils`` helpers that tutorials call: plot_model, set_random_seed."""
import os
import shutil
import subprocess

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
