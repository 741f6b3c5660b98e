"""The graph of layer calls that a model runs: building its order, running it.

Its nodes are KerasTensors: each is the output of one layer call
(``node.layer``) on its ``node.inbound`` tensors; an ``Input`` is a node
with no inbound tensors. ``minires.models.Model`` holds one such graph.
"""
import collections

from .backend import get_array_module, is_array
from .layers.input_layer import InputLayer


def as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def topological_order(inputs, outputs, model_name):
    """Every tensor after the tensors it is computed from: depth-first from
    the outputs, visiting a call's inputs in order (Keras's own traversal)."""
    order, seen = [], set()

    def visit(tensor):
        if id(tensor) in seen:
            return
        seen.add(id(tensor))
        if isinstance(tensor.layer, InputLayer) and all(tensor is not t for t in inputs):
            raise ValueError(f"model {model_name!r}: graph disconnected: an output depends on "
                             f"input layer {tensor.layer.name!r}, which is not among the inputs")
        for source in tensor.inbound:
            visit(source)
        order.append(tensor)

    for output in outputs:
        visit(output)
    return order


def reader_map(order):
    """{id(tensor): [the nodes computed from it]}, over the whole graph."""
    readers = {}
    for node in order:
        for source in node.inbound:
            readers.setdefault(id(source), []).append(node)
    return readers


def layers_in_keras_order(order, outputs):
    """Layers by decreasing depth (distance to the outputs), ties in traversal
    order: the order of ``model.layers``, summary() and the weight files."""
    depth = {id(t): 0 for t in outputs}
    for tensor in reversed(order):
        for source in tensor.inbound:
            depth[id(source)] = max(depth.get(id(source), 0), depth[id(tensor)] + 1)
    layer_depth, position = {}, {}
    for index, tensor in enumerate(order):
        layer = tensor.layer
        position.setdefault(id(layer), index)
        layer_depth[id(layer)] = max(layer_depth.get(id(layer), 0), depth[id(tensor)])
    layers = {id(t.layer): t.layer for t in order}
    ranked = sorted(layers, key=lambda k: (-layer_depth[k], position[k]))
    return [layers[k] for k in ranked]


def run_graph(model, inputs, steps):
    """Run ``steps`` on the input arrays of ``model``; returns its outputs.

    steps: (input tensors, output tensor, function(arrays, last_use) -> array)
    in an order where every input is computed before it is read; last_use[i]
    says that no later step reads input i (its array may be overwritten).
    Each value is freed as soon as its last reader has run.
    """
    arrays = as_list(inputs)
    if len(arrays) != len(model.inputs):
        raise ValueError(f"model {model.name!r} has {len(model.inputs)} inputs, got {len(arrays)} arrays")
    values = {}
    for tensor, x in zip(model.inputs, arrays):
        tensor.layer.check(x, model.name)
        values[id(tensor)] = x
    model.check_devices(arrays)
    uses = collections.Counter(id(t) for sources, _, _ in steps for t in sources)
    uses.update(id(t) for t in model.outputs)           # read once more, by the caller
    for sources, output, function in steps:
        values[id(output)] = function([values[id(t)] for t in sources],
                                      [uses[id(t)] == 1 for t in sources])
        for t in sources:
            uses[id(t)] -= 1
            if uses[id(t)] == 0:
                del values[id(t)]
    results = [values[id(t)] for t in model.outputs]
    return results if isinstance(model.output, list) else results[0]


def predict_in_batches(forward, x, batch_size):
    """forward() on slices of ``batch_size`` samples of ``x``; its outputs (one
    or a list) concatenated.

    ``x`` is an array, or a list of arrays, one per model input, as Keras takes
    them: a list is never one array, so a model with one input takes [x] too,
    and a list of numbers is refused (np.asarray it first). An empty batch
    gives empty outputs of the right shape: forward runs once on one sample of
    zeros, for the shapes alone (not every layer takes a batch of none).
    """
    arrays = as_list(x)
    if not arrays or not all(is_array(a) and a.ndim > 0 for a in arrays):
        def kind(a):
            return "0-d array" if is_array(a) and a.ndim == 0 else type(a).__name__
        several = isinstance(x, (list, tuple))
        got = f"a {type(x).__name__} of {', '.join(sorted(set(map(kind, arrays))))}" if several else kind(x)
        raise TypeError(f"predict takes an array with a batch axis, or a list of them, one per "
                        f"model input; got {got if arrays else f'an empty {type(x).__name__}'} "
                        "(a list of numbers: np.asarray it first)")
    counts = [a.shape[0] for a in arrays]
    if len(set(counts)) != 1:
        raise ValueError(f"predict: the input arrays hold different numbers of samples: {counts}")

    def run(batch):
        return forward(batch if isinstance(x, (list, tuple)) else batch[0])

    if counts[0] == 0:
        xp = get_array_module(*arrays)
        outputs = run([xp.zeros((1, *a.shape[1:]), a.dtype) for a in arrays])
        return [y[:0].copy() for y in outputs] if isinstance(outputs, list) else outputs[:0].copy()
    chunks = [run([a[start:start + batch_size] for a in arrays])
              for start in range(0, counts[0], batch_size)]
    if not isinstance(chunks[0], list):
        return get_array_module(chunks[0]).concatenate(chunks)
    xp = get_array_module(*chunks[0])
    return [xp.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]
