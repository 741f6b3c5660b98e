"""model.summary(): Keras's table of layers, output shapes and parameter counts."""


def shape_text(shape):
    return "(" + ", ".join("None" if s is None else str(s) for s in shape) + (",)" if len(shape) == 1 else ")")


def _connections(model, layer):
    """'source[call][0]' for each tensor feeding the layer's calls in this model."""
    sources = [s for t in model.nodes if t.layer is layer for s in t.inbound]
    return ", ".join(f"{s.layer.name}[{s.layer.call_outputs.index(s)}][0]" for s in sources) or "-"


def summary_rows(model):
    """(name (type), output shape, params, connected to) for each layer, in Keras order."""
    rows = []
    for layer in model.layers:
        shapes = [t.shape for t in model.nodes if t.layer is layer]
        shape = " ".join(shape_text(s) for s in shapes)
        rows.append((f"{layer.name} ({type(layer).__name__})", shape,
                     f"{layer.count_params():,}", _connections(model, layer)))
    return rows


def summary_text(model, line_length=None):
    """The table; ``line_length`` widens its rules (Keras's argument). Models
    traced from call() (Sequential, subclassed) show no "Connected to"
    column, as in Keras: their layers read one another in call()'s order."""
    header = ("Layer (type)", "Output Shape", "Param #", "Connected to")
    rows = summary_rows(model)
    if model.traced:
        header, rows = header[:3] + ("",), [r[:3] + ("",) for r in rows]
    widths = [max(len(r[i]) for r in [header, *rows]) + 3 for i in range(3)]

    def line(cells):
        return "".join(cell.ljust(w) for cell, w in zip(cells[:3], widths)) + cells[3]

    total = model.count_params()
    trainable = model.count_trainable_params()
    width = max(sum(widths) + max(len(r[3]) for r in [header, *rows]), line_length or 0)
    return "\n".join([
        f'Model: "{model.name}"', "_" * width, line(header).rstrip(), "=" * width,
        *(line(r).rstrip() for r in rows), "=" * width,
        f"Total params: {total:,}", f"Trainable params: {trainable:,}",
        f"Non-trainable params: {total - trainable:,}", "_" * width,
    ])
