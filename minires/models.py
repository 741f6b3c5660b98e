"""Model: a graph of layer calls, run forward in topological order and
backward in reverse, built the three ways Keras builds models.

    x = Input(shape=(32, 32, 3))                       # 1. functional
    y = Conv2D(8, 3, padding="same", activation="relu")(x)
    model = Model(inputs=x, outputs=Dense(10)(GlobalAveragePooling2D()(y)))

    model = Sequential([Conv2D(8, 3, activation="relu"), Flatten(), Dense(10)])   # 2.

    class Block(Model):                                # 3. subclassed
        def __init__(self):
            super().__init__()
            self.conv, self.relu = Conv2D(8, 3, padding="same"), ReLU()
        def call(self, x, training=None):
            return self.relu(self.conv(self.relu(x)))  # one layer object, two calls

    logits = model.forward(images, training=True)   # keeps one cache per node
    d_images = model.backward(d_logits)             # uses them up; fills every layer's grads

All three end as the same graph (minires/graph.py): its nodes are
KerasTensors, each the output of one layer call. A subclassed model (and a
Sequential one) is traced: on its first call (or ``build``), ``call`` runs
once on symbolic inputs of that call's shape, and every layer call it makes
becomes a node. So ``call`` must compose layers; Python control flow on
array values cannot be traced (it raises), and ``training`` is None while
tracing (pass it on to the layers, which see the real value at run time).

A forward pass that will be followed by backward keeps each node's cache
(what its layer's backward needs, returned by ``layer.forward``); backward
hands each cache back to its layer, newest node first, and drops it once
used. An inference pass keeps none and leaves the kept ones alone, so
``predict`` between a training forward and its backward changes nothing.
A model used as a layer inside another is one node there; its cache is its
own nodes' caches.

Backward is the chain rule applied node by node from the outputs back: each
layer turns the gradient of its output into gradients of its inputs, and where
one tensor feeds several layers (a residual shortcut) the gradients arriving
from those layers are summed. A layer called at several nodes adds up its
weight gradients over them.
"""
import difflib
import functools

from . import fast_training
from .backend import check_device, device_of, is_array, keep_memory_for_training, to_device
from .graph import (as_list, layers_in_keras_order, predict_in_batches, reader_map, run_graph,
                    topological_order)
from .layers.activations import Activation, Softmax
from .layers.conv import Conv2D
from .layers.base import KerasTensor, Layer, is_symbolic, unique_name
from .layers.input_layer import Input, InputLayer
from .layers.kernel import KernelLayer


class Model(Layer):
    """A model from ``inputs`` to ``outputs`` (KerasTensors or lists of them),
    or, without them, a subclass whose ``call`` is traced on its first call."""

    # Inference (predict, forward(x, training=False)) runs the fast plan (inference_plan);
    # model.fast_inference = False runs every layer as written instead, to compare.
    fast_inference = True
    # Forwards that keep caches (training, gradients) and their backward run the
    # twins of minires.fast_training (Winograd convs, BN + ReLU pairs) where they
    # pay; model.fast_training = False runs every layer as written.
    fast_training = True

    def __init__(self, inputs=None, outputs=None, name=None, **kwargs):
        if name is None and type(self) is Model:
            name = unique_name("functional")
        super().__init__(name=name, **kwargs)
        self.training = False
        self.compiled = None             # compile()'s optimizer, loss and metrics
        self.stop_training = False       # set by callbacks (EarlyStopping) to end fit
        self._graph = False              # no graph yet: traced on the first call
        self._caches = None              # {id(node): cache} of the last forward that kept them
        self._inference = None           # the InferenceModel of inference_plan(), made at first use
        if inputs is not None or outputs is not None:
            self._set_graph(inputs, outputs)

    def __setattr__(self, name, value):
        """Remember layers assigned as attributes (alone or in lists), in
        order: a subclassed model's ``layers`` and weights follow it (Keras's
        attribute tracking)."""
        if not name.startswith("_"):
            tracked = self.__dict__.setdefault("_tracked", [])
            for layer in as_list(value):
                if isinstance(layer, Layer) and all(layer is not t for t in tracked):
                    tracked.append(layer)
        super().__setattr__(name, value)

    # --- building the graph ------------------------------------------------------
    def _set_graph(self, inputs, outputs):
        self._single_input = not isinstance(inputs, (list, tuple))
        self._single_output = not isinstance(outputs, (list, tuple))
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
        self._graph = True
        self.params.touch()              # a new graph: a plan of the old one is stale
        self.built = True
        self._check_unique_names()

    @property
    def traced(self):
        """True for models whose graph comes from tracing ``call`` (subclasses, Sequential)."""
        return type(self).call is not Model.call

    def build(self, input_shape, like_array=None):
        """Trace ``call`` on symbolic inputs of ``input_shape`` (with the batch
        axis, e.g. (None, 32, 32, 3); a list of shapes for several inputs)."""
        if self._graph:
            return
        if not self.traced:
            raise ValueError(f"model {self.name!r} has no graph: give Model(inputs, outputs), "
                             "or subclass Model and write call()")
        several = isinstance(input_shape, list)
        inputs = [Input(tuple(shape[1:])) for shape in (input_shape if several else [input_shape])]
        self._set_graph(inputs if several else inputs[0], self.call(inputs if several else inputs[0]))

    def _require_graph(self, what):
        if not self._graph:
            raise ValueError(f"model {self.name!r} has not been built yet, so it has no {what}: "
                             "call it on a batch, or model.build(input_shape), first")

    def _check_unique_names(self):
        names = [layer.name for layer in self.layers]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"model {self.name!r}: layer names must be unique, repeated: {repeated}")

    @property
    def layers(self):
        """The layers, as ``keras.Model.layers``: a functional model's in graph
        order (InputLayers included), a subclassed model's in the order its
        attributes were set, then any its ``call`` created."""
        if not self.traced:
            return list(self._graph_layers)
        tracked = list(self.__dict__.get("_tracked", ()))
        if self._graph:
            tracked += [layer for layer in self._graph_layers
                        if not isinstance(layer, InputLayer) and all(layer is not t for t in tracked)]
        return tracked

    @property
    def input(self):
        """The input tensor (a list for several inputs), as ``keras.Model.input``."""
        self._require_graph("input")
        return self.inputs[0] if self._single_input else self.inputs

    @property
    def output(self):
        """The output tensor (a list for several outputs). Feature extraction:
        ``Model(m.input, [m.get_layer(name).output for name in names])``."""
        self._require_graph("output")
        return self.outputs[0] if self._single_output else self.outputs

    # --- the graph: a small public API for code that walks it -----------------------
    @property
    def nodes(self):
        """Every tensor of the graph, each after the tensors it is computed
        from (inputs first): the order forward runs the layer calls in."""
        self._require_graph("nodes")
        return list(self._order)

    def readers(self, tensor):
        """The nodes computed directly from ``tensor`` (one entry per read)."""
        return list(self._readers.get(id(tensor), ()))

    def layer_calls(self):
        """The nodes that call a layer (every node but the inputs), in forward order."""
        return [node for node in self.nodes if not isinstance(node.layer, InputLayer)]

    # --- as a layer inside another model ----------------------------------------
    def __call__(self, inputs, training=None):
        if is_symbolic(inputs):
            return self._call_symbolic(inputs)
        return self.forward(inputs, training=training)

    def _call_symbolic(self, inputs):
        tensors = as_list(inputs)
        if not self._graph:
            shapes = [t.shape for t in tensors]
            self.build(shapes if isinstance(inputs, (list, tuple)) else shapes[0])
        if len(tensors) != len(self.inputs):
            raise ValueError(f"model {self.name!r} has {len(self.inputs)} inputs, called on {len(tensors)}")
        for tensor, expected in zip(tensors, self.inputs):
            if len(tensor.shape) != len(expected.shape) or any(
                    a is not None and b is not None and a != b
                    for a, b in zip(tensor.shape[1:], expected.shape[1:])):
                raise ValueError(f"model {self.name!r} expects inputs of shape {expected.shape}, "
                                 f"called on {tensor.shape}")
        if len(self.outputs) != 1:
            raise NotImplementedError(f"model {self.name!r}: a model with several outputs cannot "
                                      "be called as a layer inside another model")
        output = KerasTensor(self.compute_output_shape(tensors[0].shape), self.dtype, self,
                             tensors, isinstance(inputs, (list, tuple)))
        self.call_outputs.append(output)
        return output

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.outputs[0].shape[1:])

    def call(self, inputs, training=None):
        """The computation: a functional model runs its graph; subclasses write their own."""
        return self.forward(inputs, training=training)

    # --- running it --------------------------------------------------------------
    def forward(self, inputs, training=None, keep_cache=None):
        """Outputs for ``inputs`` (one array, or a list matching ``model.inputs``).

        training=None uses the model's mode (``train()`` / ``eval()``, default eval).
        keep_cache: keep what ``backward`` needs (default: when training); pass
        True for gradients in inference mode (a gradient check, a saliency map).
        An inference forward that keeps nothing runs ``inference_plan()``, in
        cache-sized batches (InferenceModel.predict); every other runs each layer
        (or its twin in minires.fast_training, unless ``fast_training`` is False).
        """
        training = self.training if training is None else training
        keep_cache = training if keep_cache is None else keep_cache
        if training:           # the step after goes on to change the weights: free the folded copies
            self._inference = None
        plan = None if training or keep_cache else self.inference_plan(inputs)
        if plan is not None:
            self._check_input_shapes(inputs)
            return plan.predict(inputs)
        outputs, caches = self.forward_with_caches(inputs, training, keep_cache)
        if keep_cache:
            self._caches = caches
        return outputs

    def forward_with_caches(self, inputs, training, keep_cache):
        """(outputs, {id(node): cache}) of one forward pass; the caches are
        empty unless ``keep_cache``. The layer contract, for a model as a node."""
        if keep_cache:
            keep_memory_for_training()     # once: backend's speed settings
        if not self._graph:
            shapes = [(None, *a.shape[1:]) for a in as_list(inputs)]
            self.build(shapes if isinstance(inputs, (list, tuple)) else shapes[0])
        caches = {}
        fast = keep_cache and self.fast_training
        twins = fast_training.bn_relu_pairs(self) if fast else {}

        def call(node, arrays, last_use):
            x = arrays if node.list_input else arrays[0]
            twin = twins.get(id(node))
            y, cache = twin(node.layer, x, training) if twin else call_forward(
                node.layer, x, training, keep_cache, fast=fast)
            if keep_cache:
                caches[id(node)] = cache
            return y

        steps = [(node.inbound, node, functools.partial(call, node)) for node in self.layer_calls()]
        return run_graph(self, inputs, steps), caches

    def _check_input_shapes(self, inputs):
        """Each input array's shape checked whole, before the fast path splits the
        batch, so that an error names the caller's shape (what is no array with a
        batch axis, predict_in_batches refuses)."""
        for tensor, array in zip(self.inputs, as_list(inputs)):
            if is_array(array) and array.ndim > 0:
                tensor.layer.check(array, self.name)

    def inference_plan(self, like_inputs=None):
        """The InferenceModel (minires/inference.py: BN folded, bias, Add and ReLU
        fused, Winograd) that inference forwards and ``predict`` run, made at
        first use; it folds again by itself whenever a weight it read changed.
        None where every layer runs as written instead: ``fast_inference`` is
        False, or a subclass overrides ``forward_with_caches`` (its graph is then
        not what it runs). A model traced at its first call is traced here, for
        inputs like ``like_inputs``."""
        from .inference import InferenceModel, plannable
        from .train import build_for
        if not (self.fast_inference and plannable(self)):
            return None
        if like_inputs is not None:
            build_for(self, like_inputs)
        self._require_graph("inference plan")
        if self._inference is None:
            self._inference = InferenceModel(self)
        return self._inference

    def check_devices(self, arrays):
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

    def backward(self, d_outputs, skip_output_softmax=False, input_grads=True):
        """Gradients of the inputs from gradients of the outputs, through the
        caches of the last forward that kept them; fills layer.grads (from zero).

        skip_output_softmax: ``d_outputs`` is the gradient of the logits that
        the output's softmax reads (a cross-entropy's stable p - y), so the
        backward starts below that softmax.
        input_grads=False: only the weights' gradients are wanted (a training
        step, whose inputs are images), so None is returned for the inputs and
        no layer computes a gradient that only they would need (the first
        convolution's dX and col2im); the weights' gradients are the same.
        """
        if self._caches is None:
            raise RuntimeError(f"model {self.name!r}: backward needs a forward pass that kept its "
                               "caches first: forward(x, training=True), or keep_cache=True "
                               "(each forward's caches serve one backward)")
        caches, self._caches = self._caches, None
        self.zero_grads()
        return self.backward_with_caches(d_outputs, caches, skip_output_softmax, input_grads)

    def backward_with_caches(self, d_outputs, caches, skip_output_softmax=False, input_grads=True):
        """Backward through one forward's ``caches`` (used up), adding to the
        grads. Walks the forward order backwards, so a layer runs only once
        every layer reading its output has sent back its share of the gradient.
        Only tensors in ``tensors_needing_grads(input_grads)`` receive one."""
        d_outputs = as_list(d_outputs)
        if len(d_outputs) != len(self.outputs):
            raise ValueError(f"model {self.name!r} has {len(self.outputs)} outputs, backward got "
                             f"{len(d_outputs)} gradients")
        if skip_output_softmax and not self.output_applies_softmax():
            raise ValueError(f"model {self.name!r}: skip_output_softmax, but its output does not "
                             "come from a softmax")
        needed = self.tensors_needing_grads(input_grads)
        grads = {}
        for tensor, g in zip(self.outputs, d_outputs):
            _accumulate(grads, tensor, g)
        for node in reversed(self.layer_calls()):
            cache = caches.pop(id(node))
            if id(node) not in grads or id(node) not in needed:   # nothing depends on it
                continue
            skip = skip_output_softmax and node is self.outputs[0]
            wanted = [id(source) in needed for source in node.inbound]
            d_inputs = call_backward(node.layer, grads.pop(id(node)), cache, skip, any(wanted),
                                     fast=self.fast_training)
            for source, d, want in zip(node.inbound, as_list(d_inputs), wanted):
                if want:
                    _accumulate(grads, source, d)
        results = [grads.get(id(t)) for t in self.inputs]
        return results[0] if self._single_input else results

    def tensors_needing_grads(self, input_grads=True):
        """ids of the tensors whose gradient backward must compute: those that
        depend on some layer's weights, or (``input_grads``) on a model input.
        The others (an input, its zero padding) need none, nor do their readers
        need to compute dL/d(them)."""
        needed = {id(t) for t in self.inputs} if input_grads else set()
        for node in self.layer_calls():
            if has_weights(node.layer) or any(id(source) in needed for source in node.inbound):
                needed.add(id(node))
        return needed

    def output_applies_softmax(self):
        """True when the (single) output is a softmax: a Softmax or
        Activation('softmax') layer, a Dense or Conv2D with activation
        'softmax', or a nested model whose output is one."""
        self._require_graph("output")
        node = self.outputs[0]
        return len(self.outputs) == 1 and not isinstance(node.layer, InputLayer) \
            and applies_softmax(node.layer)

    def predict_arrays(self, x, batch_size=32):
        """Inference in batches of ``batch_size`` (each run by ``forward``, so
        through the fast plan unless ``fast_inference`` is False); outputs concatenated."""
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

    # --- Keras's training API (minires/compile.py; the loop is minires.train.fit) --
    def compile(self, optimizer="rmsprop", loss=None, metrics=None):
        from .compile import compile_model
        compile_model(self, optimizer=optimizer, loss=loss, metrics=metrics)

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, initial_epoch=0):
        from .compile import fit_model
        return fit_model(self, x, y, batch_size=batch_size, epochs=epochs, verbose=verbose,
                         callbacks=callbacks, validation_split=validation_split,
                         validation_data=validation_data, shuffle=shuffle,
                         initial_epoch=initial_epoch)

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto"):
        from .compile import evaluate_model
        return evaluate_model(self, x, y, batch_size=batch_size, verbose=verbose)

    def predict(self, x, batch_size=None, verbose="auto"):
        from .compile import predict_model
        return predict_model(self, x, batch_size=batch_size, verbose=verbose)

    def train_on_batch(self, x, y):
        from .compile import train_on_batch_model
        return train_on_batch_model(self, x, y)

    def test_on_batch(self, x, y):
        from .compile import test_on_batch_model
        return test_on_batch_model(self, x, y)

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

    def leaf_layers(self):
        """Every layer that is not a model, nested models opened, each once, in Keras order."""
        leaves, seen = [], set()
        for layer in self.layers:
            for leaf in (layer.leaf_layers() if isinstance(layer, Model) else [layer]):
                if id(leaf) not in seen:
                    seen.add(id(leaf))
                    leaves.append(leaf)
        return leaves

    def parameters(self, trainable_only=True):
        """Yield (layer, param name) for every (trainable) parameter, in Keras
        order, opening nested models (a frozen one, trainable=False, has none
        to train); a layer shared between nested models counts once."""
        if trainable_only and not self.trainable:
            return
        seen = set()
        for layer in self.layers:
            if isinstance(layer, Model):
                pairs = layer.parameters(trainable_only)
            else:
                pairs = ((layer, name) for name in (layer.trainable_names() if trainable_only
                                                    else list(layer.params)))
            for leaf, name in pairs:
                if (id(leaf), name) not in seen:
                    seen.add((id(leaf), name))
                    yield leaf, name

    def trainable_names(self):
        return []

    def zero_grads(self):
        """Forget every layer's gradients (backward starts from zero anyway)."""
        for layer in self.leaf_layers():
            layer.zero_grads()

    def count_params(self):
        return sum(int(layer.params[name].size) for layer, name in self.parameters(False))

    def count_trainable_params(self):
        return sum(int(layer.params[name].size) for layer, name in self.parameters())

    @property
    def weights(self):
        return [layer.params[name] for layer, name in self.parameters(False)]

    @property
    def trainable_weights(self):
        return [layer.params[name] for layer, name in self.parameters()]

    @property
    def non_trainable_weights(self):
        trainable = {id(w) for w in self.trainable_weights}
        return [w for w in self.weights if id(w) not in trainable]

    def set_weights(self, weights):
        """Copy ``weights`` (arrays in get_weights's order, NumPy or CuPy, whatever
        the model's device) into the parameters, in place; all are checked
        before any is written, so a bad list changes nothing."""
        slots = list(self.parameters(trainable_only=False))
        if len(weights) != len(slots):
            raise ValueError(f"model {self.name!r} has {len(slots)} weight arrays, got {len(weights)}")
        for (layer, name), value in zip(slots, weights):
            if tuple(value.shape) != tuple(layer.params[name].shape):
                raise ValueError(f"layer {layer.name!r}: weight {name!r} has shape "
                                 f"{tuple(layer.params[name].shape)}, got {tuple(value.shape)}")
        for (layer, name), value in zip(slots, weights):
            layer.params[name][...] = to_device(value, device_of(layer.params[name]))
        self.weights_changed()

    def weights_changed(self):
        """Say that weights of this model's layers were written into in place:
        every fast inference plan folded from one of them (this model's, or
        another model's that shares the layer) folds again at its next use."""
        for layer in self.leaf_layers():
            layer.weights_changed()
        super().weights_changed()

    def to(self, device):
        """Move every parameter to ``device`` ('cpu' or 'cuda'); returns the model.
        Inputs must then live on the same device."""
        check_device(device)
        for layer in self.leaf_layers():
            for name, value in layer.params.items():
                layer.params[name] = to_device(value, device)    # a new array: the plan refolds
            layer.grads.clear()
        return self

    def summary(self, line_length=None, print_fn=None):
        """Keras's table of layers, output shapes and parameter counts."""
        from .summary import summary_text
        self._require_graph("summary")
        (print_fn or print)(summary_text(self, line_length))

    def load_weights(self, filepath, by_name=False, skip_mismatch=False):
        """Read a minires ``.npz`` checkpoint (see minires.io.checkpoint; it returns
        the checkpoint's ``extra``) or a Keras HDF5 weights file (see
        minires.io.keras_h5.load_weights; it returns the layers skipped).

        The file's first bytes decide, whatever its name: a zip is a checkpoint,
        HDF5 is Keras's, so whatever ``save_weights`` wrote loads back. A file
        that is neither is reported by the checkpoint reader if its name ends in
        '.npz' (any case), else by the HDF5 reader. by_name and skip_mismatch
        apply to HDF5 files only: a checkpoint always pairs weights by name.
        """
        from .io.checkpoint import file_kind, load_checkpoint
        kind = file_kind(filepath)
        if kind == "npz" or (kind is None and str(filepath).lower().endswith(".npz")):
            return load_checkpoint(self, filepath)
        from .io.keras_h5 import load_weights
        return load_weights(self, filepath, by_name=by_name, skip_mismatch=skip_mismatch)

    def save_weights(self, filepath):
        """Write every parameter and BN statistic to a ``.npz`` checkpoint at
        exactly ``filepath`` (no suffix is added), atomically. minires never
        writes HDF5 (Keras's files are only read), so a name ending in '.h5',
        '.hdf5' or '.keras' is refused with a ValueError, before any file is touched."""
        from .io.checkpoint import save_checkpoint
        save_checkpoint(self, filepath)


class Sequential(Model):
    """A stack of layers, each reading the one before: ``Sequential([...])`` or
    ``.add(layer)``, as in Keras. With an ``Input`` first, or ``input_shape=``
    on the first layer, it is built at once (summary() works); otherwise on
    its first call. An empty Sequential passes its input through (tutorials
    use one as an identity shortcut and ``add`` a projection only when needed).
    """

    def __init__(self, layers=None, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self._stack, self._input = [], None
        for layer in layers or []:
            self.add(layer)

    def add(self, layer):
        if isinstance(layer, KerasTensor) and isinstance(layer.layer, InputLayer):
            self._input = layer                  # keras.Input(...) as the first entry
        elif isinstance(layer, Layer):
            self._stack.append(layer)
        else:
            raise TypeError(f"Sequential {self.name!r}: add() takes a layer or an Input, "
                            f"got {type(layer).__name__}")
        self._graph, self.built, self._caches = False, False, None   # the graph changed: trace again
        shape = self._input.shape if self._input is not None else (
            self._stack[0].declared_input_shape if self._stack else None)
        if shape is not None:
            self.build(shape)

    @property
    def layers(self):
        return list(self._stack)

    def call(self, inputs, training=None):
        x = inputs
        for layer in self._stack:
            x = layer(x, training=training)
        return x


# --- one node: a layer's forward and backward, or a nested model's ------------------
def call_forward(layer, inputs, training, keep_cache, fast=False):
    """(y, cache) of one layer call; a nested model's cache is its own nodes'
    caches. fast: a twin in minires.fast_training may run it (the same cache)."""
    if isinstance(layer, Model):
        return layer.forward_with_caches(inputs, training, keep_cache)
    if fast and fast_training.takes(layer, inputs):
        return fast_training.conv_forward(layer, inputs)
    return layer.forward(inputs, training=training)


def call_backward(layer, dy, cache, skip_softmax=False, input_grad=True, fast=False):
    """dL/d(inputs) of one layer call from its cache. skip_softmax: dy is the
    gradient of the logits that the layer's softmax reads. input_grad=False:
    no one needs dL/d(inputs), so the layers that can skip it (Conv2D, Dense,
    a nested model) return None; the others compute it anyway. fast: as in
    call_forward (a twin's backward serves either forward's cache)."""
    if isinstance(layer, Model):
        return layer.backward_with_caches(dy, cache, skip_softmax, input_grad)
    if cache is fast_training.RELU_APPLIED:          # a BN + ReLU pair: the BN masks dy
        return dy
    if isinstance(cache, fast_training.BnReluCache):
        return cache.backward(layer, dy)
    if fast and isinstance(layer, Conv2D) and fast_training.takes(layer, cache[0]):
        return fast_training.conv_backward(layer, dy, cache, input_grad)
    options = {} if input_grad or not isinstance(layer, KernelLayer) else {"input_grad": False}
    if not skip_softmax:
        return layer.backward(dy, cache, **options)
    if isinstance(layer, (Softmax, Activation)):
        return dy                                # the softmax layer itself: dy is its input's
    return layer.backward(dy, cache, through_activation=False, **options)


def has_weights(layer):
    """Whether backward fills gradients of ``layer`` (or of a nested model's layers)."""
    if isinstance(layer, Model):
        return any(leaf.params for leaf in layer.leaf_layers())
    return bool(layer.params)


def applies_softmax(layer):
    if isinstance(layer, Model):
        return layer.output_applies_softmax()
    return isinstance(layer, Softmax) or getattr(layer, "activation", None) == "softmax"


def _accumulate(grads, tensor, g):
    """grads[tensor] += g, without writing into an array another branch holds."""
    key = id(tensor)
    grads[key] = g if key not in grads else grads[key] + g
