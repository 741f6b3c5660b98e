"""Model: a graph of layer calls, run forward in topological order and
backward in reverse, as Keras's functional API builds it.

    x = Input(shape=(32, 32, 3))
    y = Conv2D(8, 3, padding="same", activation="relu")(x)
    model = Model(inputs=x, outputs=Dense(10)(GlobalAveragePooling2D()(y)))
    logits = model.forward(images, training=True)
    d_images = model.backward(d_logits)      # fills every layer's grads

Backward is the chain rule applied node by node from the outputs back: each
layer turns the gradient of its output into gradients of its inputs, and where
one tensor feeds several layers (a residual shortcut) the gradients arriving
from those layers are summed.
"""
import difflib

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
        self.layers = self._layers_in_keras_order()
        self._check_unique_names()
        self.training = False

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

    # --- running it --------------------------------------------------------------
    def __call__(self, inputs, training=None):
        return self.forward(inputs, training=training)

    def forward(self, inputs, training=None):
        """Outputs for ``inputs`` (one array, or a list matching ``model.inputs``).

        training=None uses the model's mode (``train()`` / ``eval()``, default eval).
        """
        training = self.training if training is None else training
        arrays = _as_list(inputs)
        if len(arrays) != len(self.inputs):
            raise ValueError(f"model {self.name!r} has {len(self.inputs)} inputs, got {len(arrays)} arrays")
        values = {}
        for tensor, x in zip(self.inputs, arrays):
            tensor.layer.check(x, self.name)
            values[id(tensor)] = x
        self._check_devices(arrays)
        uses = self._count_uses()
        for tensor in self._order:
            if id(tensor) in values:
                continue
            args = [values[id(s)] for s in tensor.inbound]
            values[id(tensor)] = tensor.layer.forward(args if tensor.list_input else args[0],
                                                      training=training)
            for source in tensor.inbound:            # free what no later layer reads
                uses[id(source)] -= 1
                if uses[id(source)] == 0:
                    del values[id(source)]
        results = [values[id(t)] for t in self.outputs]
        return results[0] if self._single_output else results

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

    def _readers(self):
        """{id(tensor): [the tensors computed from it]}, over the whole graph."""
        readers = {}
        for tensor in self._order:
            for source in tensor.inbound:
                readers.setdefault(id(source), []).append(tensor)
        return readers

    def _count_uses(self):
        """How many times each tensor will still be read (outputs once more, by
        the caller): a tensor is freed when its count reaches zero."""
        readers = self._readers()
        uses = {id(t): len(readers.get(id(t), ())) for t in self._order}
        for output in self.outputs:
            uses[id(output)] += 1
        return uses

    def backward(self, d_outputs):
        """Gradients of the inputs from gradients of the outputs; fills layer.grads.

        Walks the forward order backwards, so a layer runs only once every
        layer reading its output has sent back its share of the gradient.
        """
        self._check_no_shared_layers()
        d_outputs = _as_list(d_outputs)
        if len(d_outputs) != len(self.outputs):
            raise ValueError(f"model {self.name!r} has {len(self.outputs)} outputs, backward got "
                             f"{len(d_outputs)} gradients")
        grads = {}
        for tensor, g in zip(self.outputs, d_outputs):
            _accumulate(grads, tensor, g)
        for tensor in reversed(self._order):
            if isinstance(tensor.layer, InputLayer) or id(tensor) not in grads:
                continue
            d_inputs = tensor.layer.backward(grads.pop(id(tensor)))
            for source, d in zip(tensor.inbound, _as_list(d_inputs)):
                _accumulate(grads, source, d)
        results = [grads.get(id(t)) for t in self.inputs]
        return results[0] if self._single_input else results

    def _check_no_shared_layers(self):
        calls = {}
        for tensor in self._order:
            calls[id(tensor.layer)] = calls.get(id(tensor.layer), 0) + 1
        shared = [layer.name for layer in self.layers if calls[id(layer)] > 1]
        if shared:
            raise NotImplementedError(f"model {self.name!r}: backward through layers called more "
                                      f"than once is not supported (each keeps one cache): {shared}")

    def predict(self, x, batch_size=32):
        """Inference in batches of ``batch_size``; outputs concatenated."""
        arrays = _as_list(x)
        n = arrays[0].shape[0]
        chunks = []
        for start in range(0, n, batch_size):
            out = self.forward([a[start:start + batch_size] for a in arrays], training=False)
            chunks.append(_as_list(out))
        xp = get_array_module(*chunks[0])
        results = [xp.concatenate([c[i] for c in chunks]) for i in range(len(self.outputs))]
        return results[0] if self._single_output else results

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
        """Forget every layer's gradients (backward overwrites them anyway)."""
        for layer in self.layers:
            layer.grads.clear()

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


def _accumulate(grads, tensor, g):
    """grads[tensor] += g, without writing into an array another branch holds."""
    key = id(tensor)
    grads[key] = g if key not in grads else grads[key] + g
