"""Model: a graph of layer calls, run forward in topological order and
backward in reverse, as Keras's functional API builds it.

    x = Input(shape=(32, 32, 3))
    y = Conv2D(8, 3, padding="same", activation="relu")(x)
    model = Model(inputs=x, outputs=Dense(10)(GlobalAveragePooling2D()(y)))
    logits = model.forward(images, training=True)   # keeps one cache per node
    d_images = model.backward(d_logits)             # uses them up; fills every layer's grads

The graph's nodes are the KerasTensors: each is the output of one layer call
(``node.layer``) on its ``node.inbound`` tensors. A forward pass that will be
followed by backward keeps each node's cache (what its layer's backward
needs, returned by ``layer.forward``); backward hands each cache back to its
layer, newest node first, and drops it once used. An inference pass keeps
none and leaves the kept ones alone, so ``predict`` between a training
forward and its backward changes nothing.

Backward is the chain rule applied node by node from the outputs back: each
layer turns the gradient of its output into gradients of its inputs, and where
one tensor feeds several layers (a residual shortcut) the gradients arriving
from those layers are summed. A layer called at several nodes adds up its
weight gradients over them.
"""
import collections
import difflib
import functools

from .backend import check_device, device_of, get_array_module, like, to_device
from .layers.base import KerasTensor, unique_name
from .layers.input_layer import InputLayer


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


class Model:
    """A functional model from ``inputs`` to ``outputs`` (KerasTensors or lists)."""

    def __init__(self, inputs, outputs, name=None):
        self.name = name if name is not None else unique_name("functional")
        self._single_input = not isinstance(inputs, (list, tuple))
        self._single_output = not isinstance(outputs, (list, tuple))
        self.inputs, self.outputs = _as_list(inputs), _as_list(outputs)
        for t in self.inputs + self.outputs:
            if not isinstance(t, KerasTensor):
                raise TypeError(f"model {self.name!r}: inputs and outputs must be KerasTensors "
                                f"(from Input(...) and layer calls), got {type(t).__name__}")
        if not all(isinstance(t.layer, InputLayer) for t in self.inputs):
            raise ValueError(f"model {self.name!r}: inputs must come from Input(...)")
        self._order = self._topological_order()
        self._readers = self._reader_map()
        self.layers = self._layers_in_keras_order()
        self._check_unique_names()
        self.training = False
        self._caches = {}            # {id(node): cache} of the last forward that kept them

    # --- the graph -------------------------------------------------------------
    def _topological_order(self):
        """Every tensor after the tensors it is computed from: depth-first from
        the outputs, visiting a call's inputs in order (Keras's own traversal)."""
        order, seen = [], set()

        def visit(tensor):
            if id(tensor) in seen:
                return
            seen.add(id(tensor))
            if isinstance(tensor.layer, InputLayer) and tensor not in self.inputs:
                raise ValueError(f"model {self.name!r}: graph disconnected: an output depends on "
                                 f"input layer {tensor.layer.name!r}, which is not among the inputs")
            for source in tensor.inbound:
                visit(source)
            order.append(tensor)

        for output in self.outputs:
            visit(output)
        return order

    def _reader_map(self):
        """{id(tensor): [the nodes computed from it]}, over the whole graph."""
        readers = {}
        for node in self._order:
            for source in node.inbound:
                readers.setdefault(id(source), []).append(node)
        return readers

    def _layers_in_keras_order(self):
        """Layers by decreasing depth (distance to the outputs), ties in traversal
        order: the order of ``model.layers``, summary() and the weight files."""
        depth = {id(t): 0 for t in self.outputs}
        for tensor in reversed(self._order):
            for source in tensor.inbound:
                depth[id(source)] = max(depth.get(id(source), 0), depth[id(tensor)] + 1)
        layer_depth, position = {}, {}
        for index, tensor in enumerate(self._order):
            layer = tensor.layer
            position.setdefault(id(layer), index)
            layer_depth[id(layer)] = max(layer_depth.get(id(layer), 0), depth[id(tensor)])
        layers = {id(t.layer): t.layer for t in self._order}
        ranked = sorted(layers, key=lambda k: (-layer_depth[k], position[k]))
        return [layers[k] for k in ranked]

    def _check_unique_names(self):
        names = [layer.name for layer in self.layers]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"model {self.name!r}: layer names must be unique, repeated: {repeated}")

    @property
    def input(self):
        """The input tensor (a list for several inputs), as ``keras.Model.input``."""
        return self.inputs[0] if self._single_input else self.inputs

    @property
    def output(self):
        """The output tensor (a list for several outputs). Feature extraction:
        ``Model(m.input, [m.get_layer(name).output for name in names])``."""
        return self.outputs[0] if self._single_output else self.outputs

    # --- the graph: a small public API for code that walks it -----------------------
    @property
    def nodes(self):
        """Every tensor of the graph, each after the tensors it is computed
        from (inputs first): the order forward runs the layer calls in."""
        return list(self._order)

    def readers(self, tensor):
        """The nodes computed directly from ``tensor`` (one entry per read)."""
        return list(self._readers.get(id(tensor), ()))

    # --- running it --------------------------------------------------------------
    def __call__(self, inputs, training=None):
        return self.forward(inputs, training=training)

    def forward(self, inputs, training=None, keep_cache=None):
        """Outputs for ``inputs`` (one array, or a list matching ``model.inputs``).

        training=None uses the model's mode (``train()`` / ``eval()``, default eval).
        keep_cache: keep what ``backward`` needs (default: when training); pass
        True for gradients in inference mode (a gradient check, a saliency map).
        """
        training = self.training if training is None else training
        keep_cache = training if keep_cache is None else keep_cache
        caches = {}

        def call(node, arrays, last_use):
            y, cache = node.layer.forward(arrays if node.list_input else arrays[0], training=training)
            if keep_cache:
                caches[id(node)] = cache
            return y

        steps = [(node.inbound, node, functools.partial(call, node)) for node in self.layer_calls()]
        outputs = run_graph(self, inputs, steps)
        if keep_cache:
            self._caches = caches
        return outputs

    def layer_calls(self):
        """The nodes that call a layer (every node but the inputs), in forward order."""
        return [node for node in self._order if not isinstance(node.layer, InputLayer)]

    def _check_devices(self, arrays):
        """One clear error when inputs and weights are not all on one device."""
        devices = {device_of(a) for a in arrays}
        weights_on = set() if self.device is None else {self.device}
        if len(devices | weights_on) > 1:
            raise ValueError(f"model {self.name!r}: inputs on {sorted(devices)} but weights on "
                             f"{sorted(weights_on)}; move one of them: model.to(device) or "
                             "minires.backend.to_device(x, device)")

    @property
    def device(self):
        """'cpu' or 'cuda': where the weights live (``model.to`` moves them all
        together), or None for a model without weights."""
        first = next((layer.params[name] for layer, name in self.parameters(False)), None)
        return None if first is None else device_of(first)

    def backward(self, d_outputs):
        """Gradients of the inputs from gradients of the outputs, through the
        caches of the last forward that kept them; fills layer.grads (from zero).

        Walks the forward order backwards, so a layer runs only once every
        layer reading its output has sent back its share of the gradient.
        """
        if not self._caches:
            raise RuntimeError(f"model {self.name!r}: backward needs a forward pass that kept its "
                               "caches first: forward(x, training=True), or keep_cache=True "
                               "(each forward's caches serve one backward)")
        d_outputs = _as_list(d_outputs)
        if len(d_outputs) != len(self.outputs):
            raise ValueError(f"model {self.name!r} has {len(self.outputs)} outputs, backward got "
                             f"{len(d_outputs)} gradients")
        self.zero_grads()
        caches, self._caches = self._caches, {}
        grads = {}
        for tensor, g in zip(self.outputs, d_outputs):
            _accumulate(grads, tensor, g)
        for node in reversed(self.layer_calls()):
            cache = caches.pop(id(node))
            if id(node) not in grads:            # nothing downstream depends on it
                continue
            d_inputs = node.layer.backward(grads.pop(id(node)), cache)
            for source, d in zip(node.inbound, _as_list(d_inputs)):
                _accumulate(grads, source, d)
        results = [grads.get(id(t)) for t in self.inputs]
        return results[0] if self._single_input else results

    def predict(self, x, batch_size=32):
        """Inference in batches of ``batch_size``; outputs concatenated."""
        return predict_in_batches(lambda batch: self.forward(batch, training=False, keep_cache=False),
                                  x, batch_size)

    def train(self):
        """Make training=True the default of forward (batch statistics in BN)."""
        self.training = True
        return self

    def eval(self):
        """Make training=False the default of forward (moving statistics in BN)."""
        self.training = False
        return self

    # --- layers and parameters ---------------------------------------------------
    def get_layer(self, name=None, index=None):
        """A layer by name (KeyError with near matches if unknown) or by index."""
        if index is not None:
            return self.layers[index]
        for layer in self.layers:
            if layer.name == name:
                return layer
        near = difflib.get_close_matches(str(name), [layer.name for layer in self.layers], n=3)
        hint = f"; did you mean {', '.join(map(repr, near))}?" if near else ""
        raise KeyError(f"model {self.name!r} has no layer named {name!r}{hint}")

    def parameters(self, trainable_only=True):
        """Yield (layer, param name) for every (trainable) parameter, in Keras order."""
        for layer in self.layers:
            names = layer.trainable_names() if trainable_only else list(layer.params)
            for name in names:
                yield layer, name

    def zero_grads(self):
        """Forget every layer's gradients (backward starts from zero anyway)."""
        for layer in self.layers:
            layer.zero_grads()

    def count_params(self):
        return sum(layer.count_params() for layer in self.layers)

    def count_trainable_params(self):
        return sum(int(layer.params[name].size) for layer, name in self.parameters())

    def get_weights(self):
        """A copy of every parameter array, layer by layer in Keras order (as Keras)."""
        return [layer.params[name].copy() for layer, name in self.parameters(trainable_only=False)]

    def set_weights(self, weights):
        """Copy ``weights`` (arrays in get_weights's order, NumPy or CuPy, whatever
        the model's device) into the parameters, in place."""
        slots = list(self.parameters(trainable_only=False))
        if len(weights) != len(slots):
            raise ValueError(f"model {self.name!r} has {len(slots)} weight arrays, got {len(weights)}")
        for (layer, name), value in zip(slots, weights):
            if tuple(value.shape) != tuple(layer.params[name].shape):
                raise ValueError(f"layer {layer.name!r}: weight {name!r} has shape "
                                 f"{tuple(layer.params[name].shape)}, got {tuple(value.shape)}")
            layer.params[name][...] = like(value, layer.params[name])   # CuPy refuses NumPy here

    def to(self, device):
        """Move every parameter to ``device`` ('cpu' or 'cuda'); returns the model.
        Inputs must then live on the same device."""
        check_device(device)
        for layer in self.layers:
            for name, value in layer.params.items():
                layer.params[name] = to_device(value, device)
            layer.grads.clear()
        return self

    def summary(self, print_fn=print):
        from .summary import summary_text
        print_fn(summary_text(self))

    def load_weights(self, filepath, by_name=False, skip_mismatch=False):
        """Read a Keras HDF5 weights file (see minires.io.keras_h5.load_weights),
        or a minires ``.npz`` checkpoint (see minires.io.checkpoint)."""
        if str(filepath).endswith(".npz"):
            from .io.checkpoint import load_checkpoint
            return load_checkpoint(self, filepath)
        from .io.keras_h5 import load_weights
        return load_weights(self, filepath, by_name=by_name, skip_mismatch=skip_mismatch)

    def save_weights(self, filepath):
        """Write every parameter and BN statistic to a ``.npz`` checkpoint,
        atomically (minires never writes HDF5: Keras's files are only read)."""
        from .io.checkpoint import save_checkpoint
        save_checkpoint(self, filepath)


def run_graph(model, inputs, steps):
    """Run ``steps`` on the input arrays of ``model``; returns its outputs.

    steps: (input tensors, output tensor, function(arrays, last_use) -> array)
    in an order where every input is computed before it is read; last_use[i]
    says that no later step reads input i (its array may be overwritten).
    Each value is freed as soon as its last reader has run.
    """
    arrays = _as_list(inputs)
    if len(arrays) != len(model.inputs):
        raise ValueError(f"model {model.name!r} has {len(model.inputs)} inputs, got {len(arrays)} arrays")
    values = {}
    for tensor, x in zip(model.inputs, arrays):
        tensor.layer.check(x, model.name)
        values[id(tensor)] = x
    model._check_devices(arrays)
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
    return results[0] if model._single_output else results


def predict_in_batches(forward, x, batch_size):
    """forward() on slices of ``batch_size`` samples of ``x`` (an array, or a
    list of arrays for several inputs); its outputs (one or a list) concatenated."""
    arrays = _as_list(x)
    chunks = []
    for start in range(0, arrays[0].shape[0], batch_size):
        batch = [a[start:start + batch_size] for a in arrays]
        chunks.append(forward(batch if isinstance(x, (list, tuple)) else batch[0]))
    if not isinstance(chunks[0], list):
        return get_array_module(chunks[0]).concatenate(chunks)
    xp = get_array_module(*chunks[0])
    return [xp.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]


def _accumulate(grads, tensor, g):
    """grads[tensor] += g, without writing into an array another branch holds."""
    key = id(tensor)
    grads[key] = g if key not in grads else grads[key] + g
