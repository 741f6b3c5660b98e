"""The graph of layer calls that a model holds: its order, its readers, running a plan of it.

Its nodes are KerasTensors: each is the output of one layer call
(``node.layer``) on its ``node.inbound`` tensors; an ``Input`` is a node
with no inbound tensors. ``minires.models.Model`` holds one such graph (the
Graph part of it is here); minires/planner.py turns it into the steps that
``run_steps`` runs.
"""
import collections

from .backend import get_array_module, is_array
from .layers.base import KerasTensor
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


class Graph:
    """The graph a model holds, from ``inputs`` to ``outputs`` (KerasTensors):
    a part of minires.models.Model. A layer that is a Graph is a nested model,
    which the planner and the engine open."""

    def set_graph(self, inputs, outputs):
        """Check and order the graph between ``inputs`` and ``outputs`` (a
        tensor, or a list of them: outputs are then lists too)."""
        self._single_output = not isinstance(outputs, (list, tuple))
        self._single_input = not isinstance(inputs, (list, tuple))
        self.inputs, self.outputs = as_list(inputs), as_list(outputs)
        for t in self.inputs + self.outputs:
            if not isinstance(t, KerasTensor):
                raise TypeError(f"model {self.name!r}: inputs and outputs must be KerasTensors "
                                f"(from Input(...) and layer calls), got {type(t).__name__}")
        if not all(isinstance(t.layer, InputLayer) for t in self.inputs):
            raise ValueError(f"model {self.name!r}: inputs must come from Input(...)")
        self._order = topological_order(self.inputs, self.outputs, self.name)
        self._readers = reader_map(self._order)
        self._graph_layers = layers_in_keras_order(self._order, self.outputs)   # read at every forward

    def require_graph(self, what):
        if not self.built:
            raise ValueError(f"model {self.name!r} has not been built yet, so it has no {what}: "
                             "call it on a batch, or model.build(input_shape), first")

    @property
    def input(self):
        """The input tensor (a list for several inputs), as ``keras.Model.input``."""
        self.require_graph("input")
        return self.inputs[0] if self._single_input else self.inputs

    @property
    def output(self):
        """The output tensor (a list for several outputs). Feature extraction:
        ``Model(m.input, [m.get_layer(name).output for name in names])``."""
        self.require_graph("output")
        return self.outputs[0] if self._single_output else self.outputs

    @property
    def nodes(self):
        """Every tensor of the graph, each after the tensors it is computed
        from (inputs first): the order of the layer calls as written."""
        self.require_graph("nodes")
        return list(self._order)

    def readers(self, tensor):
        """The nodes computed directly from ``tensor`` (one entry per read)."""
        return list(self._readers.get(id(tensor), ()))

    def layer_calls(self):
        """The nodes that call a layer (every node but the inputs), in forward order."""
        return [node for node in self.nodes if not isinstance(node.layer, InputLayer)]


def run_steps(model, steps, inputs, training=False, keep_cache=False):
    """Run a plan's ``steps`` (minires/planner.py) on the input arrays of ``model``:
    (its outputs, the steps' caches in order, or None unless ``keep_cache``).
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
    uses = collections.Counter(id(t) for step in steps for t in step.inputs)
    uses.update(id(t) for t in model.outputs)           # read once more, by the caller
    caches = [] if keep_cache else None
    for step in steps:
        y, cache = step.op.forward([values[id(t)] for t in step.inputs], training, keep_cache)
        values[id(step.output)] = y
        if keep_cache:
            caches.append(cache)
        for t in step.inputs:
            uses[id(t)] -= 1
            if uses[id(t)] == 0:
                del values[id(t)]
    outputs = [values[id(t)] for t in model.outputs]
    return (outputs if isinstance(model.output, list) else outputs[0]), caches


def tensors_needing_grads(steps, inputs):
    """ids of the tensors whose gradient a backward through ``steps`` must compute:
    those that depend on some layer's weights, or on one of ``inputs`` (the model
    inputs whose gradients are wanted). The others (an input, its zero padding)
    need none, nor do their readers need to compute dL/d(them)."""
    needed = {id(t) for t in inputs}
    for step in steps:
        if step.op.has_weights or any(id(source) in needed for source in step.inputs):
            needed.add(id(step.output))
    return needed


def predict_in_batches(forward, x, batch_size=None):
    """forward() on slices of ``batch_size`` samples of ``x`` (None: all at
    once); its outputs (one or a list) concatenated.

    ``x`` is what check_batch takes. An empty batch gives empty outputs of the right shape: forward runs once on one sample of
    zeros, for the shapes alone (not every layer takes a batch of none).
    """
    arrays = check_batch(x)
    counts = [a.shape[0] for a in arrays]

    def run(batch):
        return forward(batch if isinstance(x, (list, tuple)) else batch[0])

    if counts[0] == 0:
        xp = get_array_module(*arrays)
        outputs = run([xp.zeros((1, *a.shape[1:]), a.dtype) for a in arrays])
        return [y[:0].copy() for y in outputs] if isinstance(outputs, list) else outputs[:0].copy()
    batch_size = batch_size or counts[0]
    chunks = [run([a[start:start + batch_size] for a in arrays])
              for start in range(0, counts[0], batch_size)]
    if not isinstance(chunks[0], list):
        return get_array_module(chunks[0]).concatenate(chunks)
    xp = get_array_module(*chunks[0])
    return [xp.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]


def check_batch(x):
    """The arrays of ``x``, an array or a list of arrays, one per model input, as
    Keras takes them: a list is never one array, so a model with one input
    takes [x] too, and a list of numbers is refused (np.asarray it first);
    every array has a batch axis, and all the same number of samples."""
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
    return arrays
