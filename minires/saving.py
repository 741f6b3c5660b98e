"""Keras 3's model configs (a ``.keras`` file's config.json, ``to_json``) and minires models.

    entry = model_entry(model)                  # {"module", "class_name", "config", ...}
    model, orders = model_from_entry(entry)     # the same architecture, fresh weights

What Keras writes, and what is read here:

  Functional  {"name", "trainable", "layers": [...], "input_layers", "output_layers"};
              each layer {"module", "class_name", "config", "registered_name",
              "build_config", "name", "inbound_nodes"}; a node is {"args": [input],
              "kwargs": {}}, where input is a ``__keras_tensor__`` (or a list of them
              for merge layers) whose ``keras_history`` [layer, node, tensor] says
              which call of which layer produced it.
  Sequential  {"name", "trainable", "dtype", "layers": [InputLayer?, ...],
              "build_input_shape"}: the layers alone, in order.
  other       a subclassed model or custom layer: ``custom_objects`` must name its
              class, whose ``from_config`` gets the config (as in Keras).

Layers are minires's own classes, looked up by class name in ``LAYER_CLASSES``
(or ``custom_objects``): nothing a config names is ever imported or evaluated, so
a Lambda layer or a serialized function is refused whatever ``safe_mode`` says.
Each layer's arguments go through ``Layer.from_config`` (minires/layers/config.py),
which refuses what minires does not implement. Graphs are rebuilt node by node
in dependency order, each call's input shapes checked against those the config
declares, and weights are bounded before any layer creates them
(``MAX_WEIGHTS``): a config cannot make minires allocate more than a weights
file could fill. Every problem is one ConfigError naming where it is.

``orders`` maps each rebuilt Functional or Sequential (by id) to its layers in
the config's order, which is the order Keras named its weight paths by.

The compile configuration (optimizer, loss, metrics) goes both ways where
minires has the same thing (``compile_entry``, ``compile_from_entry``), and so
does the optimizer's state, as Keras's list of optimizer variables.

This module cannot import minires.models (which imports it back through
model_weights); ``model_classes`` finds Model and Sequential from a model class.
"""
import math

import numpy as np

from . import losses, metrics
from .graph import Graph, as_list
from .layers import (Activation, Add, Average, AveragePooling2D, BatchNormalization, Concatenate,
                     Conv2D, Conv2DTranspose, Dense, DepthwiseConv2D, Dropout, Flatten,
                     GlobalAveragePooling2D, GlobalMaxPooling2D, LeakyReLU, Maximum, MaxPooling2D,
                     Minimum, Multiply, ReLU, Rescaling, Reshape, SeparableConv2D, Softmax,
                     SyncBatchNormalization, UpSampling2D, ZeroPadding2D)
from .layers.base import Layer, snake_case
from .layers.config import accepted_arguments, dtype_policy, layer_config, policy_dtype
from .layers.input_layer import InputLayer
from .backend import like, to_device
from .optim import KERAS_OPTIONS, SGD, Adam, KerasAdam, KerasRMSprop, KerasSGD, RMSprop

LAYER_CLASSES = {cls.__name__: cls for cls in (
    Activation, Add, Average, AveragePooling2D, BatchNormalization, Concatenate, Conv2D,
    Conv2DTranspose, Dense, DepthwiseConv2D, Dropout, Flatten, GlobalAveragePooling2D,
    GlobalMaxPooling2D, InputLayer, LeakyReLU, Maximum, MaxPooling2D, Minimum, Multiply, ReLU,
    Rescaling, Reshape, SeparableConv2D, Softmax, UpSampling2D, ZeroPadding2D)}
# minires classes that Keras writes as one of its own with an argument: their class
# name in a file (the argument is in their config)
KERAS_FORMS = {SyncBatchNormalization: "BatchNormalization"}     # BatchNormalization(synchronized=True)
FUNCTIONAL_NAMES = ("Functional", "Model")
MAX_LAYERS = 20_000           # layer entries in one config, nested models included (ResNet-152: ~520)
MAX_NODES = 100_000           # layer calls in one config
MAX_DEPTH = 32                # models nested in models
MAX_WEIGHTS = 1 << 29         # weight values all layers may create: minires.io.keras_h5.MAX_READ_BYTES
                              # of float32, the most a load would ever read into them
FUNCTIONAL_MODULE = "keras.src.models.functional"
EXECUTION_KEYS = ("run_eagerly", "steps_per_execution", "jit_compile", "auto_scale_loss")


class ConfigError(ValueError):
    """A Keras config that minires cannot rebuild as written."""


def model_classes():
    """(Model, Sequential) of minires.models, found as subclasses of Graph: this
    module cannot import minires.models (see the docstring), which is loaded
    whenever a model exists."""
    model = _subclass(Graph, "Model")
    return model, _subclass(model, "Sequential")


def _subclass(base, name):
    return next(c for c in base.__subclasses__() if c.__name__ == name
                and c.__module__ == "minires.models")


def kind_of(model):
    """'Functional' (a graph given as inputs and outputs), 'Sequential', or
    'subclass' (a model of the user's class, traced from its call)."""
    if not model.traced:
        return "Functional"
    return "Sequential" if type(model) is model_classes()[1] else "subclass"


def keras_class_name(obj):
    """The class name Keras gives ``obj``: 'Functional' for minires's Model."""
    return kind_of(obj) if isinstance(obj, Graph) and kind_of(obj) != "subclass" \
        else type(obj).__name__


def container_order(model, orders=None):
    """A model's layers in Keras's order: the config's where it was read from one."""
    return list((orders or {}).get(id(model), model.layers))


# === minires -> config ===================================================================
def model_entry(model, with_compile=True):
    """Keras's serialized form of ``model``: what config.json and ``to_json`` hold."""
    kind = kind_of(model)
    entry = {"module": {"Functional": FUNCTIONAL_MODULE, "Sequential": "keras"}.get(
                 kind, type(model).__module__),
             "class_name": type(model).__name__ if kind == "subclass" else kind,
             "config": model_config(model),
             "registered_name": {"Functional": "Functional", "Sequential": None}.get(
                 kind, type(model).__name__),
             "build_config": {"input_shape": _input_shapes(model)
                              if kind != "Functional" and model.built else None}}
    if with_compile:
        entry["compile_config"] = compile_entry(model)
    return entry


def model_config(model):
    """Keras's ``model.get_config()``: the 'config' part of ``model_entry``."""
    kind = kind_of(model)
    if kind == "Functional":
        return _functional_config(model)
    if kind == "Sequential":
        return _sequential_config(model)
    return layer_config(model)


def _functional_config(model):
    return {"name": model.name, "trainable": model.trainable,
            "layers": [_layer_entry(layer, model) for layer in model.layers],
            "input_layers": _references(model.input, model),
            "output_layers": _references(model.output, model)}


def _sequential_config(model):
    layers = [_layer_entry(layer) for layer in model.layers]
    config = {"name": model.name, "trainable": model.trainable, "dtype": dtype_policy(model.dtype)}
    if model.built:
        source = model.inputs[0].layer
        layers.insert(0, {"module": "keras.layers", "class_name": "InputLayer",
                          "config": source.get_config(), "registered_name": None})
        config["build_input_shape"] = list(model.inputs[0].shape)
    config["layers"] = layers
    return config


def _layer_entry(layer, graph_model=None):
    """One entry of a config's 'layers': the layer, and in a Functional its calls."""
    if isinstance(layer, Graph):
        entry = model_entry(layer, with_compile=False)
    else:
        class_name = KERAS_FORMS.get(type(layer), type(layer).__name__)
        builtin = type(layer) in KERAS_FORMS or LAYER_CLASSES.get(class_name) is type(layer)
        if not builtin and type(layer).__module__.startswith("minires."):
            raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}): minires does not write "
                             "this layer's Keras configuration yet, so neither Keras nor minires "
                             "could rebuild the file: save the weights alone (model.save_weights "
                             "with '.weights.h5', '.h5' or '.npz')")
        entry = {"module": "keras.layers" if builtin else type(layer).__module__,
                 "class_name": class_name, "config": layer.get_config(),
                 "registered_name": None if builtin else type(layer).__name__}
        if layer.call_outputs and layer.call_outputs[0].inbound:
            first = layer.call_outputs[0]                       # the call that built it
            shapes = [list(t.shape) for t in first.inbound]
            entry["build_config"] = {"input_shape": shapes if first.list_input else shapes[0]}
    if graph_model is not None:
        entry["name"] = layer.name
        entry["inbound_nodes"] = [_node_entry(node, graph_model) for node in _calls(layer, graph_model)]
    return entry


def _calls(layer, model):
    """The outputs of ``layer``'s calls inside ``model``'s graph, in call order (an
    InputLayer's one tensor is no call)."""
    if isinstance(layer, InputLayer):
        return []
    in_graph = {id(t) for t in model.nodes}
    return [t for t in layer.call_outputs if id(t) in in_graph]


def _node_entry(node, model):
    tensors = [_keras_tensor(t, model) for t in node.inbound]
    return {"args": [tensors if node.list_input else tensors[0]], "kwargs": {}}


def _keras_tensor(tensor, model):
    return {"class_name": "__keras_tensor__",
            "config": {"shape": list(tensor.shape), "dtype": tensor.dtype,
                       "keras_history": _reference(tensor, model)}}


def _reference(tensor, model):
    """[layer name, node index, tensor index]: which call of which layer made ``tensor``."""
    layer = tensor.layer
    index = 0 if isinstance(layer, InputLayer) else \
        [id(t) for t in _calls(layer, model)].index(id(tensor))
    return [layer.name, index, 0]


def _references(tensors, model):
    """Keras's input_layers / output_layers: one reference, or a list for a list."""
    if isinstance(tensors, list):
        return [_reference(t, model) for t in tensors]
    return _reference(tensors, model)


def _input_shapes(model):
    inputs = model.input
    return [list(t.shape) for t in inputs] if isinstance(inputs, list) else list(inputs.shape)


# === config -> minires ===================================================================
def model_from_entry(entry, custom_objects=None):
    """(model, orders) rebuilt from a serialized model (``model_entry``'s form)."""
    builder = _Builder(custom_objects or {})
    model = builder.top_level(entry)
    return model, builder.orders


def model_from_config(cls, config, custom_objects=None):
    """``cls.from_config(config)`` for a model class, from ``model.get_config()``'s
    form: Model and Sequential rebuild their graph; a subclass of the user's is
    built as Keras does, ``cls(**config)``, and traced at its first call."""
    model_class, sequential_class = model_classes()
    builder = _Builder(custom_objects or {})
    if not isinstance(config, dict):
        raise ConfigError(f"{cls.__name__}.from_config takes a dict, got {type(config).__name__}")
    if cls is sequential_class:
        return builder.sequential(config, "", 0)
    if cls is model_class:
        return builder.functional(config, "", 0)
    return subclass_from_config(cls, config)


def subclass_from_config(cls, config):
    """``cls(**config)``; name, trainable and dtype are set after if ``cls``'s
    constructor does not take them."""
    accepted = accepted_arguments(cls)
    owner = f"model class {cls.__name__}"
    unknown = sorted(set(config) - accepted - {"name", "trainable", "dtype"})
    if unknown:
        raise ConfigError(f"{owner}: its constructor takes no argument "
                          f"{', '.join(map(repr, unknown))} (override from_config to read them)")
    arguments = dict(config)
    try:
        if "dtype" in arguments:
            arguments["dtype"] = policy_dtype(arguments["dtype"], owner)
        model = cls(**{k: v for k, v in arguments.items() if k in accepted})
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{owner}: {error}") from None
    if "name" in arguments and "name" not in accepted:
        model.name = arguments["name"]
    if "trainable" in arguments and "trainable" not in accepted:
        model.trainable = bool(arguments["trainable"])
    return model


def _where(*parts):
    return ": ".join(str(p) for p in parts if p)


def _require(mapping, key, kind, where):
    """``mapping[key]``, which must be of ``kind``."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(mapping).__name__}")
    if key not in mapping:
        raise ConfigError(f"{where}: {key!r} is missing")
    value = mapping[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise ConfigError(f"{where}: {key!r} must be a {names}, got {type(value).__name__}")
    return value


class _Builder:
    """One config being rebuilt: its bounds, classes and the orders found."""

    def __init__(self, custom_objects):
        if not isinstance(custom_objects, dict):
            raise TypeError(f"custom_objects must be a dict of name -> class, got "
                            f"{type(custom_objects).__name__}")
        self.custom_objects = custom_objects
        self.layers = self.nodes = self.weights = 0
        self.orders, self.shared = {}, {}

    # --- classes ---------------------------------------------------------------------
    def top_level(self, entry):
        return self.object(entry, "", depth=0)

    def object(self, entry, where, depth):
        """A layer or model from its serialized entry; an entry carrying the
        ``shared_object_id`` of one built before is that object (Keras writes a
        layer two models share in both, with one id)."""
        shared = entry.get("shared_object_id") if isinstance(entry, dict) else None
        if isinstance(shared, int) and shared in self.shared:
            return self.shared[shared]
        kind, cls = self.resolve(entry, where)
        config = _require(entry, "config", dict, where)
        if kind == "Functional":
            obj = self.functional(config, where, depth)
        elif kind == "Sequential":
            obj = self.sequential(config, where, depth)
        else:
            obj = self.from_class(cls, entry, config, where)
        if isinstance(shared, int):
            self.shared[shared] = obj
        return obj

    def resolve(self, entry, where):
        """('Functional' | 'Sequential' | 'layer', class) of a serialized entry; never imports."""
        class_name = _require(entry, "class_name", str, where)
        registered = entry.get("registered_name")
        for name in (registered, class_name):
            if isinstance(name, str) and name in self.custom_objects:
                return "layer", self._custom_class(name, where)
        module = entry.get("module")
        keras_module = isinstance(module, str) and (module == "keras" or module.startswith("keras."))
        if class_name in ("Lambda", "__lambda__"):
            raise ConfigError(f"{where}: a Lambda layer holds Python code, which minires never "
                              "runs from a file (safe_mode=True refuses it in Keras too); write "
                              "it as a minires layer and pass it in custom_objects")
        if keras_module and class_name in FUNCTIONAL_NAMES + ("Sequential",):
            return ("Sequential" if class_name == "Sequential" else "Functional"), None
        if keras_module and class_name in LAYER_CLASSES:
            return "layer", LAYER_CLASSES[class_name]
        raise ConfigError(f"{where}: class {class_name!r} (module {module!r}) is not one minires "
                          f"has; minires rebuilds {', '.join(sorted(LAYER_CLASSES))}, Functional "
                          "and Sequential from Keras, and your own classes given as "
                          f"custom_objects={{{class_name!r}: YourClass}}")

    def _custom_class(self, name, where):
        cls = self.custom_objects[name]
        if not (isinstance(cls, type) and issubclass(cls, Layer)):
            raise ConfigError(f"{where}: custom_objects[{name!r}] must be a minires Layer or Model "
                              f"class, got {cls!r}")
        return cls

    def from_class(self, cls, entry, config, where):
        """A minires layer, or a class from custom_objects, by its ``from_config``."""
        try:
            obj = cls.from_config(config)
        except ConfigError:
            raise
        except (TypeError, ValueError, NotImplementedError) as error:
            text, label = str(error), f"layer {config.get('name')!r}"
            if text.startswith(label):            # the layer names itself: say it once
                where = where.rpartition(f": {label}")[0] if where.endswith(label) else where
            raise ConfigError(_where(where, text)) from None
        if isinstance(obj, Graph) and not obj.built:
            self.build_from_config(obj, entry, where)
        return obj

    def build_from_config(self, model, entry, where):
        """Build a subclassed model at its ``build_config`` input shape (Keras's way)."""
        build = entry.get("build_config") or {}
        shape = build.get("input_shape") if isinstance(build, dict) else None
        if shape is None:
            return
        shapes = shape if shape and isinstance(shape[0], list) else [shape]
        for s in shapes:
            _check_shape(s, where, "build_config input_shape")
        try:
            model.build([tuple(s) for s in shapes] if len(shapes) > 1 else tuple(shapes[0]))
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{where}: building it at input shape {shape}: {error}") from None
        self.count_built(model, where)

    # --- bounds ------------------------------------------------------------------------
    def count_layers(self, entries, where):
        """Count a model's layer entries, before any is built."""
        self.layers += len(entries)
        if self.layers > MAX_LAYERS:
            raise ConfigError(f"{where}: more than {MAX_LAYERS:,} layers; no model minires runs "
                              "has that many")

    def check_weights(self, layer, inputs, where):
        """Refuse, before ``layer`` creates its weights on ``inputs``, a config that
        would make them (all layers' together) larger than MAX_WEIGHTS."""
        if layer.built or isinstance(layer, Graph) or type(layer).build is Layer.build:
            return
        shape = as_list(inputs)[0].shape
        axis = getattr(layer, "axis", -1)
        axis = axis if isinstance(axis, int) and -len(shape) <= axis < len(shape) else -1
        size = shape[axis] if shape else None
        if not isinstance(size, int):
            return                                   # the layer refuses an unknown size itself
        per_input = math.prod(getattr(layer, "kernel_size", ())) * (
            getattr(layer, "filters", None) or getattr(layer, "units", None) or 4)
        self.add_weights(size * per_input, where)

    def add_weights(self, count, where):
        self.weights += count
        if self.weights > MAX_WEIGHTS:
            raise ConfigError(f"{where}: its weights would hold more than {MAX_WEIGHTS:,} values "
                              "(more than a weights file minires reads may hold)")

    def count_built(self, model, where):
        self.add_weights(sum(int(layer.params[name].size)
                             for layer, name in model.parameters(trainable_only=False)), where)

    # --- Functional --------------------------------------------------------------------
    def model_header(self, config, where, depth):
        """(name, where, layer entries) of a model's config, its bounds checked."""
        name = _require(config, "name", str, where)
        where = _where(where, f"model {name!r}")
        if depth > MAX_DEPTH:
            raise ConfigError(f"{where}: models nested more than {MAX_DEPTH} deep")
        entries = _require(config, "layers", list, where)
        self.count_layers(entries, where)
        return name, where, entries

    def functional(self, config, where, depth):
        name, where, entries = self.model_header(config, where, depth)
        layers = {}
        for i, entry in enumerate(entries):
            layer_name = self.entry_name(entry, f"{where}: layer entry {i}")
            if layer_name in layers:
                raise ConfigError(f"{where}: two layers are named {layer_name!r}")
            layers[layer_name] = (self.layer(entry, _where(where, f"layer {layer_name!r}"), depth),
                                  entry)
        tensors = _Graph(self, layers, where).run()
        inputs = self.endpoints(config, "input_layers", tensors, where)
        outputs = self.endpoints(config, "output_layers", tensors, where)
        try:
            model = model_classes()[0](inputs, outputs, name=name)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{where}: {error}") from None
        unused = [n for n, (layer, _) in layers.items() if all(layer is not m for m in model.layers)]
        if unused:
            raise ConfigError(f"{where}: layer(s) {unused[:5]} lead to none of the outputs; "
                              "refused rather than dropped")
        model.trainable = self.flag(config, "trainable", where)
        self.orders[id(model)] = [layer for layer, _ in layers.values()]
        return model

    def entry_name(self, entry, where):
        name = entry.get("name") if isinstance(entry, dict) else None
        if name is None and isinstance(entry, dict) and isinstance(entry.get("config"), dict):
            name = entry["config"].get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: a layer needs a name (a non-empty string)")
        return name

    def layer(self, entry, where, depth):
        """A layer entry's object: a nested model one level deeper."""
        kind, _ = self.resolve(entry, where)
        return self.object(entry, where, depth + 1 if kind != "layer" else depth)

    def endpoints(self, config, key, tensors, where):
        refs = _require(config, key, list, where)
        single = bool(refs) and isinstance(refs[0], str)
        found = [tensors.get(_history(ref, f"{where}: {key}")) for ref in ([refs] if single else refs)]
        if not found or any(t is None for t in found):
            raise ConfigError(f"{where}: {key} {refs} names tensors the graph does not compute")
        return found[0] if single else found

    def flag(self, config, key, where):
        value = config.get(key, True)
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key!r} must be true or false, got {value!r}")
        return value

    # --- Sequential --------------------------------------------------------------------
    def sequential(self, config, where, depth):
        name, where, entries = self.model_header(config, where, depth)
        layers = [self.layer(entry, _where(where, f"layer {i}"), depth)
                  for i, entry in enumerate(entries)]
        start = None
        if layers and isinstance(layers[0], InputLayer):
            start = layers.pop(0).output
        elif config.get("build_input_shape") is not None:
            shape = _check_shape(config["build_input_shape"], where, "build_input_shape")
            start = InputLayer(tuple(shape)).output
        if any(isinstance(layer, InputLayer) for layer in layers):
            raise ConfigError(f"{where}: an InputLayer may only come first")
        if start is not None:
            self.trace(layers, start, where)
        try:
            model = model_classes()[1](name=name)
            for layer in layers:                  # the input last: one trace, already checked
                model.add(layer)
            if start is not None:
                model.add(start)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{where}: {error}") from None
        model.trainable = self.flag(config, "trainable", where)
        self.orders[id(model)] = layers
        return model

    def trace(self, layers, tensor, where):
        """Call ``layers`` in turn on ``tensor``, each after its weights are bounded;
        the calls are forgotten after (the Sequential traces them again)."""
        counts = [len(layer.call_outputs) for layer in layers]
        try:
            for layer in layers:
                tensor = self.call(layer, tensor, _where(where, f"layer {layer.name!r}"))
        finally:
            for layer, count in zip(layers, counts):
                del layer.call_outputs[count:]

    def call(self, layer, inputs, where):
        """``layer(inputs)`` on KerasTensors, weights bounded first."""
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise ConfigError(f"{where}: more than {MAX_NODES:,} layer calls")
        self.check_weights(layer, inputs, where)
        if isinstance(layer, model_classes()[1]) and not layer.built:
            self.trace(layer.layers, as_list(inputs)[0], where)
        try:
            return layer(inputs)
        except (TypeError, ValueError, NotImplementedError) as error:
            raise ConfigError(f"{where}: {error}") from None


def _check_shape(shape, where, what):
    if not isinstance(shape, list) or not shape or not all(
            s is None or (isinstance(s, int) and not isinstance(s, bool) and s > 0) for s in shape):
        raise ConfigError(f"{where}: {what} must be a list of positive ints and nulls, got {shape!r}")
    return shape


def _history(ref, where):
    """(layer name, node index) from a [layer, node, tensor] reference."""
    if not (isinstance(ref, list) and len(ref) == 3 and isinstance(ref[0], str)
            and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ref[1:])):
        raise ConfigError(f"{where}: {ref!r} is not a [layer name, node index, tensor index] "
                          "reference")
    if ref[2] != 0:
        raise ConfigError(f"{where}: {ref!r} reads output {ref[2]} of a layer call; minires's "
                          "layers have one output each")
    return ref[0], ref[1]


class _Graph:
    """The calls of one Functional config, run as soon as their inputs exist
    (Kahn's algorithm), each layer's calls in their order."""

    def __init__(self, builder, layers, where):
        self.builder, self.layers, self.where = builder, layers, where
        self.tensors = {}                        # (layer name, node index) -> KerasTensor
        self.calls = []                          # (layer name, node index, refs, list input)
        for name, (layer, entry) in layers.items():
            self.read_nodes(name, layer, entry)

    def read_nodes(self, name, layer, entry):
        where = _where(self.where, f"layer {name!r}")
        nodes = entry.get("inbound_nodes", [])
        if not isinstance(nodes, list):
            raise ConfigError(f"{where}: 'inbound_nodes' must be a list")
        if isinstance(layer, InputLayer):
            if nodes:
                raise ConfigError(f"{where}: an InputLayer is called on nothing")
            self.tensors[(name, 0)] = layer.output
            return
        for index, node in enumerate(nodes):
            refs, list_input = _node_inputs(node, _where(where, f"node {index}"))
            self.calls.append((name, index, refs, list_input))

    def run(self):
        known = set(self.tensors) | {(name, index) for name, index, _, _ in self.calls}
        waiting, readers = {}, {}
        for call in self.calls:
            name, index, refs, _ = call
            needs = {(r[0], r[1]) for r in refs} | ({(name, index - 1)} if index else set())
            missing = needs - known
            if missing:
                raise ConfigError(f"{self.where}: layer {name!r} node {index} reads "
                                  f"{sorted(missing)[0]}, which no layer call produces")
            waiting[(name, index)] = [call, len(needs - set(self.tensors))]
            for need in needs:
                readers.setdefault(need, []).append((name, index))
        ready = [key for key, (_, count) in waiting.items() if count == 0]
        while ready:
            key = ready.pop()
            self.tensors[key] = self.run_call(*waiting.pop(key)[0])
            for reader in readers.get(key, ()):
                waiting[reader][1] -= 1
                if waiting[reader][1] == 0:
                    ready.append(reader)
        if waiting:
            raise ConfigError(f"{self.where}: the calls of layer(s) "
                              f"{sorted({name for name, _ in waiting})[:5]} depend on each other "
                              "in a cycle")
        return self.tensors

    def run_call(self, name, index, refs, list_input):
        layer, _ = self.layers[name]
        where = _where(self.where, f"layer {name!r} node {index}")
        inputs = [self.tensors[(r[0], r[1])] for r in refs]
        for tensor, ref in zip(inputs, refs):
            declared = ref[2]
            if declared is not None and not _shapes_agree(tensor.shape, declared):
                raise ConfigError(f"{where}: its input from {ref[0]!r} has shape {tensor.shape} "
                                  f"here, but the config says {tuple(declared)}")
        return self.builder.call(layer, inputs if list_input else inputs[0], where)


def _shapes_agree(shape, declared):
    return isinstance(declared, list) and len(declared) == len(shape) and all(
        a is None or b is None or a == b for a, b in zip(shape, declared))


def _node_inputs(node, where):
    """([(layer, node, declared shape), ...], called on a list?) of one inbound node."""
    if isinstance(node, list):
        raise ConfigError(f"{where}: an inbound node in Keras 2's form; minires reads Keras 3's "
                          "configs")
    args = _require(node, "args", list, where)
    kwargs = node.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{where}: 'kwargs' must be a JSON object")
    for key, value in kwargs.items():
        # training=False: what Keras records while building the graph; the mode of each
        # call replaces it, as in minires. training=True (dropout also at inference) and
        # a mask minires does not have.
        if not (key in ("training", "mask") and value in (None, False)):
            raise ConfigError(f"{where}: call argument {key}={value!r} is not supported")
    if len(args) != 1:
        raise ConfigError(f"{where}: a layer call takes one input (or one list of inputs), "
                          f"got {len(args)} arguments")
    list_input = isinstance(args[0], list)
    tensors = args[0] if list_input else [args[0]]
    return [_tensor_reference(t, where) for t in tensors], list_input


def _tensor_reference(tensor, where):
    if not (isinstance(tensor, dict) and tensor.get("class_name") == "__keras_tensor__"):
        raise ConfigError(f"{where}: a layer input must be a __keras_tensor__, got "
                          f"{str(tensor)[:80]}")
    config = _require(tensor, "config", dict, where)
    name, index = _history(_require(config, "keras_history", list, where), where)
    return name, index, config.get("shape")


# === compile configuration ================================================================
KERAS_LOSSES = {"SparseCategoricalCrossentropy": losses.SparseCategoricalCrossentropy,
                "CategoricalCrossentropy": losses.CategoricalCrossentropy}
# keras.optimizers class name -> (minires's Keras-form class, Keras's default ``name``, the
# arguments of its own beside learning_rate and weight_decay, in Keras's order).
KERAS_OPTIMIZERS = {
    "SGD": (KerasSGD, "sgd", ("momentum", "nesterov")),
    "Adam": (KerasAdam, "adam", ("beta_1", "beta_2", "epsilon", "amsgrad")),
    "RMSprop": (KerasRMSprop, "rm_sprop", ("rho", "momentum", "epsilon", "centered")),
}
EMA_SETTINGS = ("ema_momentum", "ema_overwrite_frequency")    # any value while use_ema is false
METRIC_CLASSES = {cls.__name__: cls for cls in (
    metrics.Mean, metrics.Accuracy, metrics.BinaryAccuracy, metrics.CategoricalAccuracy,
    metrics.SparseCategoricalAccuracy)}
METRIC_FUNCTIONS = {fn.__name__: fn for fn in (
    metrics.accuracy, metrics.binary_accuracy, metrics.categorical_accuracy,
    metrics.sparse_categorical_accuracy)}
BY_SHAPES = ("accuracy", "acc")       # compile's strings whose metric is chosen from the shapes


def compile_entry(model):
    """Keras's compile_config of ``model`` ({} when not compiled)."""
    state = getattr(model, "compiled", None)
    if state is None:
        return {}
    return {"optimizer": optimizer_entry(state.optimizer), "loss": loss_entry(state.loss),
            "loss_weights": None, "metrics": [metric_entry(m) for m in state.metrics.values()]
            or None, "weighted_metrics": None, "run_eagerly": False, "steps_per_execution": 1,
            "jit_compile": False}


def _unwritable(what):
    return ValueError(f"{what} has no Keras equivalent, so the model's compile configuration "
                      "cannot be written as Keras's: save the weights alone (model.save_weights), "
                      "or compile with choices Keras shares")


def _keras_object(module, class_name, config):
    return {"module": module, "class_name": class_name, "config": config, "registered_name": None}


# --- optimizers ------------------------------------------------------------------------
def keras_class(optimizer):
    """The keras.optimizers class name of a Keras-form optimizer (None for another)."""
    return next((name for name, (cls, _, _) in KERAS_OPTIMIZERS.items()
                 if type(optimizer) is cls), None)


def keras_form(optimizer):
    """The Keras-form optimizer (KerasSGD, KerasAdam, KerasRMSprop) that trains as
    ``optimizer`` does from its present state, that state included: a Keras-form
    one is itself; minires's PyTorch-form SGD and its RMSprop convert where the
    update is the same formula, anything else is a ValueError saying why.

    SGD: without momentum p -= lr (g + wd p) is Keras's step with decoupled decay;
    with momentum, Keras's momentum is -lr times the velocity (v <- mu v + g,
    p -= lr v; Keras m <- mu m - lr g, p += m), exact at the present rate, but the
    decay would pass through v, so not with weight decay. RMSprop: Keras's rule,
    when no decay enters g^2. Adam: epsilon is added to sqrt(v / (1 - b2^t)), in
    Keras to sqrt(v), which no constant converts."""
    if keras_class(optimizer):
        return optimizer
    kind, decay = type(optimizer), getattr(optimizer, "weight_decay", None) or None
    if kind is SGD and not (optimizer.momentum and decay):
        twin = KerasSGD(optimizer.learning_rate, optimizer.momentum, weight_decay=decay)
        rate = optimizer.learning_rate
        twin.slots = {"momentum": {key: -rate * v for key, v in
                                   optimizer.slots.get("velocity", {}).items()}}
    elif kind is RMSprop and not decay:
        twin = KerasRMSprop(optimizer.learning_rate, optimizer.rho, epsilon=optimizer.epsilon)
        twin.slots = {"v": dict(optimizer.slots.get("v", {}))}
    else:
        raise ValueError(f"optimizer {kind.__module__}.{kind.__name__}"
                         f"{_why_not_keras(optimizer)}: Keras would train it differently, so it "
                         "is not written as a Keras optimizer; compile with "
                         "minires.keras.optimizers.SGD, Adam or RMSprop (Keras's forms) to save "
                         "the model, or save the weights alone (model.save_weights)")
    twin.iterations = optimizer.iterations
    return twin


def _why_not_keras(optimizer):
    if type(optimizer) is Adam:
        return (" (PyTorch's Adam) adds epsilon to sqrt(v / (1 - beta_2^t)), Keras's Adam to "
                "sqrt(v)")
    if type(optimizer) in (SGD, RMSprop):
        return (f"(weight_decay={optimizer.weight_decay:g}) adds weight_decay * w to the "
                "gradient, which its momentum or running mean then carries; Keras's weight decay "
                "shrinks the weights directly")
    return " has no Keras equivalent"


def optimizer_entry(optimizer):
    """Keras's serialized optimizer (``keras_form`` refuses what Keras trains otherwise)."""
    optimizer = keras_form(optimizer)
    name = keras_class(optimizer)
    _, default_name, arguments = KERAS_OPTIMIZERS[name]
    config = {"name": default_name, "learning_rate": float(optimizer.learning_rate),
              "weight_decay": optimizer.weight_decay, **KERAS_OPTIONS,
              **{key: _plain(getattr(optimizer, key)) for key in arguments}}
    return _keras_object("keras.optimizers", name, config)


def _plain(value):
    return value if isinstance(value, bool) else float(value)


def optimizer_from_entry(entry, where):
    """A Keras-form optimizer from Keras's serialized one (or its name): every argument
    the class takes; EMA settings ignored while use_ema is off, as Keras does."""
    where = _where(where, "optimizer")
    if isinstance(entry, str):
        entry = {"class_name": {"sgd": "SGD", "adam": "Adam", "rmsprop": "RMSprop"}.get(
            entry.lower(), entry), "module": "keras.optimizers", "config": {}}
    name = _require(entry, "class_name", str, where)
    module = entry.get("module")
    if name not in KERAS_OPTIMIZERS or not str(module).startswith("keras"):
        raise _refused(where, f"optimizer {name!r} (module {module!r}); minires has "
                              f"{', '.join(KERAS_OPTIMIZERS)}")
    config = dict(_require(entry, "config", dict, where))
    if not config.get("use_ema"):
        for key in EMA_SETTINGS:
            config.pop(key, None)
    rate = config.get("learning_rate")
    if isinstance(rate, dict):
        raise _refused(where, f"{name} learning_rate {str(rate)[:80]} (a learning-rate schedule)")
    if isinstance(rate, (int, float)) and not isinstance(rate, bool):
        config["learning_rate"] = float32_decimal(rate)
    try:
        return KERAS_OPTIMIZERS[name][0](**config)
    except (TypeError, ValueError) as error:      # refuse_keras_options names the argument
        raise ConfigError(f"{where}: {error} (load with compile=False to skip the compile "
                          "configuration)") from None


def float32_decimal(value):
    """Keras keeps the learning rate in float32 (0.002 is written 0.0020000000949949026):
    the shortest decimal of that float32, the number the user gave."""
    single = np.float32(value)
    return float(str(single)) if float(single) == value else float(value)


# --- losses ------------------------------------------------------------------------------
def loss_entry(loss):
    if loss is None:
        return None
    name = type(loss).__name__
    if KERAS_LOSSES.get(name) is not type(loss):
        raise _unwritable(f"loss {name}")
    config = {"name": snake_case(name), "reduction": "sum_over_batch_size",
              "from_logits": loss.from_logits}
    config.update({"ignore_class": None} if loss.sparse else {"label_smoothing": 0.0, "axis": -1})
    return _keras_object("keras.losses", name, config)


def loss_from_entry(entry, where):
    where = _where(where, "loss")
    if entry is None:
        return None
    if isinstance(entry, str):
        if entry.lower() in ("sparse_categorical_crossentropy", "categorical_crossentropy"):
            return losses.get(entry)
        raise _refused(where, f"loss {entry!r}")
    name = _require(entry, "class_name", str, where)
    if name not in KERAS_LOSSES or not str(entry.get("module")).startswith("keras"):
        raise _refused(where, f"loss {name!r}")
    config = dict(_require(entry, "config", dict, where))
    from_logits = config.pop("from_logits", False)
    expected = {"reduction": "sum_over_batch_size", "ignore_class": None, "label_smoothing": 0,
                "axis": -1}
    for key, value in config.items():
        if key not in ("name", "dtype") and (key not in expected or value != expected[key]):
            raise _refused(where, f"{name} argument {key}={value!r}")
    try:
        return KERAS_LOSSES[name](from_logits=from_logits)
    except TypeError as error:
        raise ConfigError(f"{where}: {error}") from None


# --- metrics -----------------------------------------------------------------------------
def metric_entry(metric):
    """What Keras writes for one compiled metric: 'accuracy' / 'acc' as the string,
    a keras.metrics class as its object, one of Keras's metric functions as the
    function (given bare) or a MeanMetricWrapper of it."""
    kind, fn = type(metric), getattr(metric, "fn", None)
    if kind is metrics.MeanMetricWrapper and fn is metrics.accuracy_by_shapes \
            and metric.name in BY_SHAPES:
        return metric.name
    config = {"name": metric.name, "dtype": metric.dtype or "float32"}
    if METRIC_CLASSES.get(kind.__name__) is kind:
        extra = {"threshold": float(metric.fn_kwargs["threshold"])} \
            if kind is metrics.BinaryAccuracy else {}
        return _keras_object("keras.metrics", kind.__name__, {**config, **extra})
    if kind is metrics.MeanMetricWrapper and not metric.fn_kwargs \
            and METRIC_FUNCTIONS.get(getattr(fn, "__name__", None)) is fn:
        function = {"module": "builtins", "class_name": "function", "config": fn.__name__,
                    "registered_name": "function"}
        return function if metric.name == fn.__name__ else \
            _keras_object("keras.metrics", "MeanMetricWrapper", {**config, "fn": function})
    raise _unwritable(f"metric {metric.name!r} ({kind.__name__}"
                      f"{' of ' + getattr(fn, '__name__', '?') if fn is not None else ''})")


def metrics_from_entry(entry, where):
    """compile's metrics from Keras's list: names, keras.metrics objects, functions."""
    where = _where(where, "metrics")
    if entry is None:
        return None
    if not isinstance(entry, list):
        raise _refused(where, f"metrics {str(entry)[:80]} (one list for one output)")
    return [_metric_from_entry(item, where) for item in entry]


def _metric_from_entry(item, where):
    if isinstance(item, str):
        if item.lower() in metrics.METRICS:
            return item
        raise _refused(where, f"metric {item!r}")
    kind = _require(item, "class_name", str, where)
    if kind == "function":
        return _metric_function(item, where)
    cls = metrics.MeanMetricWrapper if kind == "MeanMetricWrapper" else METRIC_CLASSES.get(kind)
    if cls is None or not str(item.get("module")).startswith("keras"):
        raise _refused(where, f"metric {kind!r} (module {item.get('module')!r}); minires has "
                              f"{', '.join(METRIC_CLASSES)}, MeanMetricWrapper and the functions "
                              f"{', '.join(METRIC_FUNCTIONS)}")
    config = dict(_require(item, "config", dict, where))
    allowed = {"name", "dtype"} | ({"threshold"} if cls is metrics.BinaryAccuracy else set())
    fn = _metric_function(config.pop("fn", None), where) if cls is metrics.MeanMetricWrapper \
        else None
    unknown = sorted(set(config) - allowed)
    if unknown or not all(isinstance(config.get(key), (str, type(None))) for key in ("name", "dtype")):
        raise _refused(where, f"{kind} config {str(item['config'])[:120]}")
    try:
        return cls(fn, **config) if fn else cls(**config)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where}: {kind}: {error}") from None


def _metric_function(item, where):
    """One of Keras's metric functions, serialized as Keras writes it."""
    name = item.get("config") if isinstance(item, dict) and item.get("module") == "builtins" \
        and item.get("class_name") == "function" else None
    if name not in METRIC_FUNCTIONS:
        raise _refused(where, f"metric function {str(item)[:80]}; minires has "
                              f"{', '.join(METRIC_FUNCTIONS)}")
    return METRIC_FUNCTIONS[name]


# --- the whole compile configuration --------------------------------------------------
def compile_from_entry(model, entry, where):
    """Compile ``model`` as Keras's compile_config ``entry`` says ({} or None: not compiled)."""
    if not entry:
        return
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: compile_config must be a JSON object")
    for key, value in entry.items():
        if key in ("optimizer", "loss", "metrics") or key in EXECUTION_KEYS:
            continue
        if value is not None:
            raise ConfigError(f"{where}: compile argument {key}={value!r} is not supported "
                              "(load with compile=False to skip the compile configuration)")
    optimizer = optimizer_from_entry(entry.get("optimizer", "rmsprop"), where)
    loss = loss_from_entry(entry.get("loss"), where)
    chosen = metrics_from_entry(entry.get("metrics"), where)
    try:
        model.compile(optimizer=optimizer, loss=loss, metrics=chosen)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where}: compiling it: {error}") from None


def _refused(where, what):
    return ConfigError(f"{where}: {what} is not supported by minires (load with compile=False to "
                       "skip the compile configuration)")


# === optimizer state as Keras's list of variables =========================================
def slot_groups(optimizer):
    """A Keras-form optimizer's state kinds in the order of Keras's variables: one
    group per ``add_optimizer_variables`` call of its ``build``, which adds, for
    each trainable weight in turn, that group's kinds (Adam: momentum and velocity
    interleaved, then every velocity_hat)."""
    name = keras_class(optimizer)
    if name == "SGD":
        return [["momentum"]] if optimizer.momentum else []
    if name == "Adam":
        return [["m", "v"]] + ([["v_hat"]] if optimizer.amsgrad else [])
    return [["v"]] + ([["momentum"]] if optimizer.momentum > 0 else []) \
        + ([["mean_grad"]] if optimizer.centered else [])


def trainable_slots(model, orders=None):
    """(layer, param) of every trainable weight, in Keras's order (its optimizer's)."""
    slots, seen = [], set()

    def visit(owner):
        if not owner.trainable:
            return
        for layer in container_order(owner, orders):
            if isinstance(layer, Graph):
                visit(layer)
            else:
                for name in layer.trainable_names():
                    if (id(layer), name) not in seen:
                        seen.add((id(layer), name))
                        slots.append((layer, name))
    visit(model)
    return slots


def state_layout(model, orders=None):
    """[(kind, layer, param)] of Keras's optimizer variables after the first two
    (iterations, learning rate), in order."""
    weights = trainable_slots(model, orders)
    return [(kind, layer, name) for group in slot_groups(keras_form(model.compiled.optimizer))
            for layer, name in weights for kind in group]


def has_keras_state(model):
    """Whether ``model`` is compiled with an optimizer Keras has (``keras_form``)."""
    try:
        return getattr(model, "compiled", None) is not None \
            and keras_form(model.compiled.optimizer) is not None
    except ValueError:
        return False


def optimizer_variables(model):
    """Keras's variables of the compiled optimizer: [iterations (int32), learning
    rate (float32), then the state arrays in ``state_layout``'s order], zeros
    where minires has none yet (a fresh state in both libraries)."""
    optimizer = keras_form(model.compiled.optimizer)
    arrays = [np.array(optimizer.iterations, np.int32),
              np.array(optimizer.learning_rate, np.float32)]
    for kind, layer, name in state_layout(model):
        value = optimizer.slots.get(kind, {}).get(f"{layer.name}/{name}")
        arrays.append(np.zeros(layer.params[name].shape, np.float32) if value is None
                      else to_device(value, "cpu").astype(np.float32))
    return arrays


def optimizer_shapes(model, orders=None):
    """The shapes Keras's optimizer variables of ``model`` have, in order."""
    return [(), ()] + [tuple(layer.params[name].shape)
                       for _, layer, name in state_layout(model, orders)]


def set_optimizer_variables(model, arrays, orders=None):
    """The inverse of ``optimizer_variables`` for a Keras-form optimizer (shapes
    already checked); two arrays (an optimizer Keras had not built yet) set the
    step count alone."""
    optimizer = model.compiled.optimizer
    optimizer.iterations = int(arrays[0])
    optimizer.slots = {}
    if len(arrays) == 2:
        return
    for (kind, layer, name), value in zip(state_layout(model, orders), arrays[2:]):
        optimizer.slots.setdefault(kind, {})[f"{layer.name}/{name}"] = \
            like(value.astype(layer.params[name].dtype), layer.params[name])
