"""What every layer shares: its name, its weights, input checks, lazy building.

A layer holds its configuration and
  params  -- its weights by Keras's names, in Keras's order (the order the
             weight files use), e.g. kernel, bias or gamma, beta, moving_mean,
             moving_variance;
  grads   -- dL/d(param) for each trainable param, ADDED to by backward;
and never an activation. It implements

  forward(x, training=False) -> (y, cache)   cache: what backward needs from this call
  backward(dy, cache) -> dx                  dL/dx from dL/dy; adds dL/dW to grads

The cache belongs to the call, not to the layer: whoever runs forward keeps
it (``minires.models.Model`` keeps one per node of the graph) and hands it
back to backward. So one layer object may be called at several places of a
network (Keras code keeps one ``self.relu`` and calls it twice), each call's
backward adds its share to ``grads`` (dL/dW sums over every use of W), and
an inference pass between a forward and its backward changes nothing.
``zero_grads()`` forgets the sums; ``Model.backward`` does it first.

Weights are created on the first forward pass, when the input's channel
count is known (Keras calls this ``build``).

Every change of a layer's weights changes its ``weights_version``, which is
how a model's inference plan (``model.plan('inference')``, minires/planner.py,
with folded copies of the weights) knows it is stale: assigning
``params[name] = array`` (``params`` is a ``Params`` dict), ``set_weights``,
the optimisers, BN's moving statistics, the weight loaders and flipping
``trainable`` all do it. Code that writes INTO a weight array in place
(``layer.params["kernel"][...] = w``, ``+=``) must say so with
``layer.weights_changed()`` (or ``model.weights_changed()`` for all of a
model's layers); nothing else can see such a write without a pass over
the weights.

Called on an array, a layer returns only y (eager, as in Keras). Called on a
KerasTensor (from ``Input``), it records a node of the graph instead and
returns a new KerasTensor of its output shape: that is Keras's functional
API, which ``minires.models.Model`` then runs.
"""
import itertools
import numbers
import re

import numpy as np

from .. import initializers
from ..backend import floatx, is_array, like
from ..padding import window_padding_2d

_name_counts = {}
_weight_clock = itertools.count(1)   # one clock for every layer: a stamp is never reused


def clear_session():
    """Reset automatic layer names, so the next Conv2D is 'conv2d' again (as in Keras)."""
    _name_counts.clear()


def snake_case(name):
    """'MaxPooling2D' -> 'max_pooling2d', 'ReLU' -> 're_lu' (Keras's rule)."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def unique_name(base):
    """'conv2d', then 'conv2d_1', 'conv2d_2', ... until ``clear_session()``."""
    count = _name_counts.get(base, 0)
    _name_counts[base] = count + 1
    return base if count == 0 else f"{base}_{count}"


class KerasTensor:
    """A symbolic tensor: its shape (None for the batch and unknown sizes), and
    the layer call that produces it from its ``inbound`` tensors."""

    def __init__(self, shape, dtype, layer, inbound=(), list_input=False):
        self.shape = tuple(shape)
        self.dtype = dtype
        self.layer = layer
        self.inbound = list(inbound)
        self.list_input = list_input       # the layer was called on a list (merge layers)
        self.name = unique_name("keras_tensor")

    @property
    def ndim(self):
        return len(self.shape)

    def __repr__(self):
        return f"<KerasTensor shape={self.shape} from layer {self.layer.name!r}>"

    def __add__(self, other):
        """``x + shortcut`` in a model's call(): an Add layer, as Keras records it."""
        from .merge import Add
        return Add()([self, other])

    __radd__ = __add__

    def __bool__(self):
        raise TypeError(f"{self!r} has no values yet: minires traces a model's call() once, "
                        "on symbolic tensors, so call() cannot branch on array values "
                        "(an `if` or `while` on a tensor); compute both paths with layers instead")

    def _no_values(self, *args, **kwargs):
        raise TypeError(f"{self!r} has no values yet: minires traces a model's call() once, on "
                        "symbolic tensors, and records only layer calls (and `a + b`, an Add "
                        "layer), so call() cannot compute with them directly (a comparison, "
                        "`x * 2.0`, numpy.mean(x)); write a layer instead: Activation, "
                        "Dense, GlobalAveragePooling2D, Add, Concatenate ...")

    # Python arithmetic and comparisons, and NumPy's conversion, on a value that does not exist yet
    __array__ = __array_function__ = __array_ufunc__ = _no_values
    __lt__ = __le__ = __gt__ = __ge__ = __neg__ = __pos__ = __abs__ = _no_values
    __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = _no_values
    __floordiv__ = __rfloordiv__ = __pow__ = __rpow__ = __matmul__ = __rmatmul__ = _no_values
    __mod__ = __rmod__ = __float__ = __int__ = __index__ = __len__ = __iter__ = _no_values
    __getitem__ = _no_values


class Params(dict):
    """A layer's weights by name: a dict whose ``stamp`` is renewed whenever
    it changes (an assignment, a deletion) or ``touch()`` says an array in it
    was written into in place. ``Layer.weights_version`` is this stamp."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.touch()

    def touch(self):
        self.stamp = next(_weight_clock)


def _touching(method):
    def changed(self, *args, **kwargs):
        result = method(self, *args, **kwargs)
        self.touch()
        return result
    return changed


# dict's own update, pop, setdefault, ... do not go through __setitem__: wrap each mutator.
for _name in ("__setitem__", "__delitem__", "__ior__", "update", "pop", "popitem", "clear",
              "setdefault"):
    setattr(Params, _name, _touching(getattr(dict, _name)))


def is_symbolic(inputs):
    items = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    return any(isinstance(x, KerasTensor) for x in items)


class Layer:
    input_rank = None          # required rank of the input, None for any
    min_input_rank = 1         # ... or the lowest rank it accepts
    regularizers = {}          # param name -> weight penalty (minires/regularizers.py)

    def __init__(self, name=None, dtype=None, trainable=True, input_shape=None,
                 batch_input_shape=None, input_dim=None, batch_size=None):
        self.name = name if name is not None else unique_name(snake_case(type(self).__name__))
        self.dtype = floatx() if dtype is None else _float_dtype_name(dtype, self.name)
        self.params = {}
        self.trainable = trainable
        self.grads = {}
        self.non_trainable_names = set()
        self.built = False
        self.call_outputs = []     # the KerasTensors of its symbolic calls, in call order
        self.declared_input_shape = _declared_batch_shape(input_shape, batch_input_shape,
                                                          input_dim, batch_size)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r}>"

    # --- what a fast inference plan checks to know it is stale -------------------
    @property
    def params(self):
        return self._params

    @params.setter
    def params(self, weights):
        self._params = weights if isinstance(weights, Params) else Params(weights)

    @property
    def trainable(self):
        return self._trainable

    @trainable.setter
    def trainable(self, value):
        self._trainable = value
        self._params.touch()        # inference never reads it today; a layer's forward may

    @property
    def weights_version(self):
        """Changes whenever the weights do (see the module docstring); cheap to read."""
        return self._params.stamp

    def weights_changed(self):
        """Say that a weight array was written into in place (``params[name][...] = w``):
        the fast inference plans folded from the old values are rebuilt on their next use."""
        self._params.touch()

    def __call__(self, inputs, training=False):
        if is_symbolic(inputs):
            return self._call_symbolic(inputs)
        y, _ = self.forward(inputs, training=training)
        return y

    def _call_symbolic(self, inputs):
        list_input = isinstance(inputs, (list, tuple))
        if list_input and not all(isinstance(x, KerasTensor) for x in inputs):
            raise TypeError(f"layer {self.name!r}: mix of symbolic and concrete inputs")
        shape = [x.shape for x in inputs] if list_input else inputs.shape
        if not list_input:
            self._check_input_shape(shape, None)
        output = KerasTensor(self.compute_output_shape(shape), self.dtype, self,
                             inputs if list_input else [inputs], list_input)
        self.call_outputs.append(output)
        return output

    def compute_output_shape(self, input_shape):
        """Output shape for an input shape (None = unknown size); same by default."""
        return tuple(input_shape)

    @property
    def output(self):
        """The output KerasTensor of this layer's (first) symbolic call."""
        if not self.call_outputs:
            raise AttributeError(f"layer {self.name!r} has not been called on a symbolic input")
        return self.call_outputs[0]

    def add_grad(self, name, value):
        """grads[name] += value: a layer called at several nodes sums the gradients
        of all its calls (a new array the first time, so no caller's array is aliased)."""
        self.grads[name] = value if name not in self.grads else self.grads[name] + value

    def zero_grads(self):
        """Forget the gradients summed so far (before the next backward)."""
        self.grads.clear()

    def count_params(self):
        return sum(int(p.size) for p in self.params.values())

    # --- Keras's weight accessors ---------------------------------------------
    @property
    def weights(self):
        """Every weight array (live, not copies), in Keras's order."""
        return list(self.params.values())

    @property
    def trainable_weights(self):
        return [self.params[name] for name in self.trainable_names()]

    @property
    def non_trainable_weights(self):
        trainable = set(self.trainable_names())
        return [value for name, value in self.params.items() if name not in trainable]

    def get_weights(self):
        """Copies of the weights, in Keras's order (as ``keras.layers.Layer``)."""
        return [value.copy() for value in self.weights]

    def set_weights(self, weights):
        """Copy ``weights`` (in get_weights's order) in place; all are checked
        before any is written, so a bad list changes nothing."""
        slots = list(self.params.items())
        if len(weights) != len(slots):
            raise ValueError(f"layer {self.name!r} has {len(slots)} weight arrays "
                             f"({', '.join(name for name, _ in slots) or 'none'}), got {len(weights)}")
        for (name, param), value in zip(slots, weights):
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(f"layer {self.name!r}: weight {name!r} has shape "
                                 f"{tuple(param.shape)}, got {tuple(value.shape)}")
        for (_, param), value in zip(slots, weights):
            param[...] = like(value, param)                   # CuPy refuses NumPy here
        self.weights_changed()

    # --- weights -------------------------------------------------------------
    def add_weight(self, name, shape, initializer, like_array, trainable=True):
        """Create ``params[name]`` on the device of ``like_array``."""
        init = initializers.get(initializer, owner=f"layer {self.name!r}")
        self.params[name] = like(init(tuple(shape), dtype=self.dtype), like_array)
        if not trainable:
            self.non_trainable_names.add(name)
        return self.params[name]

    def trainable_names(self):
        """Names of the params that training updates (Keras order)."""
        if not self.trainable:
            return []
        return [k for k in self.params if k not in self.non_trainable_names]

    def build(self, input_shape, like_array):
        """Create the weights for inputs of ``input_shape``; weightless layers do nothing."""

    def known_size(self, shape, axis):
        """shape[axis], which weights are sized by, so it must be known."""
        if shape[axis] is None:
            raise ValueError(f"layer {self.name!r} needs a known size on axis {axis} to create "
                             f"its weights, got input shape {tuple(shape)}")
        return shape[axis]

    # --- input checks --------------------------------------------------------
    def _prepare(self, x):
        """Check one input, cast it to this layer's float type, build on first use."""
        x = self.as_float_array(x)
        self._check_input_shape(x.shape, x)
        return x

    def _check_input_shape(self, shape, like_array):
        """Rank checks, then build (weights on the device of ``like_array``; NumPy
        for None), then the checks that need the weights."""
        shape = tuple(shape)
        if self.input_rank is not None and len(shape) != self.input_rank:
            raise ValueError(f"layer {self.name!r} ({type(self).__name__}) expects a "
                             f"{self.input_rank}-D input {self.input_layout()}, got shape {shape}")
        if len(shape) < self.min_input_rank:
            raise ValueError(f"layer {self.name!r} ({type(self).__name__}) expects an input of "
                             f"rank {self.min_input_rank} or more, got shape {shape}")
        if not self.built:
            self.build(shape, like_array)
            self.built = True
        self._check_built_shape(shape)

    def input_layout(self):
        return "(N, H, W, C)" if self.input_rank == 4 else ""

    def _check_built_shape(self, shape):
        """Raise when a built layer sees an input its weights do not fit."""

    def as_float_array(self, x):
        """Float arrays are cast to the layer dtype; integer and bool arrays too
        (like Keras, so uint8 images can go straight in); anything else is a TypeError."""
        check_real_array(x, f"layer {self.name!r}")
        return x if x.dtype == self.dtype else x.astype(self.dtype)

    def _check_grad(self, dy, expected_shape):
        if tuple(dy.shape) != tuple(expected_shape):
            raise ValueError(f"layer {self.name!r}: backward got a gradient of shape "
                             f"{tuple(dy.shape)}, but its output has shape {tuple(expected_shape)}")
        return dy

    # --- Keras's config (minires/layers/config.py) ---------------------------------
    def get_config(self):
        """Keras's config of this layer: its constructor arguments under Keras's
        keys and in Keras's serialized forms (see minires/layers/config.py)."""
        from .config import layer_config
        return layer_config(self)

    @classmethod
    def from_config(cls, config):
        """A new layer from ``get_config``'s dict (Keras's); an argument minires
        does not implement raises a ValueError naming it."""
        from .config import layer_arguments
        return cls(**layer_arguments(cls, config))


def check_real_array(x, owner):
    """Raise a TypeError naming ``owner`` unless ``x`` is a NumPy or CuPy array of
    real numbers: float, integer or bool, what a layer casts to its float type."""
    if not is_array(x):
        raise TypeError(f"{owner} expects a NumPy or CuPy array, got {type(x).__name__}")
    if x.dtype.kind not in "fiub":
        raise TypeError(f"{owner} expects a float (or integer) array, "
                        f"got dtype {x.dtype} with shape {x.shape}")


def _declared_batch_shape(input_shape, batch_input_shape, input_dim, batch_size):
    """Keras's ways of declaring a first layer's input: input_shape=(H, W, C)
    (without the batch), batch_input_shape=(N, H, W, C), or input_dim=D.
    Returns the batch shape (None for the batch unless given), or None."""
    if batch_input_shape is not None:
        return tuple(batch_input_shape)
    if input_dim is not None:
        input_shape = (input_dim,)
    if input_shape is None:
        return None
    shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
    return (batch_size, *shape)


def _float_dtype_name(dtype, layer_name):
    if np.dtype(dtype).kind != "f":
        raise TypeError(f"layer {layer_name!r}: dtype must be a float type, got {dtype!r}")
    return np.dtype(dtype).name


def as_pair(value, what, layer_name, allow_zero=False):
    """Keras's int-or-tuple arguments: 3 -> (3, 3); (1, 2) stays; positive ints only."""
    values = list(value) if isinstance(value, (tuple, list)) else [value, value]
    lowest = 0 if allow_zero else 1
    if len(values) != 2 or not all(is_int(v) and v >= lowest for v in values):
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"layer {layer_name!r}: {what} must be a {kind} int or a pair "
                         f"of them, got {value!r}")
    return int(values[0]), int(values[1])


def is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive_int(value, what, layer_name):
    """``value`` as an int if it is a positive integer, else a ValueError naming the layer."""
    if not is_int(value) or value < 1:
        raise ValueError(f"layer {layer_name!r}: {what} must be a positive int, got {value!r}")
    return int(value)


def check_choice(value, choices, what, layer_name):
    """``value`` (lower-cased, as Keras does) if it is one of ``choices``,
    else a ValueError naming the layer."""
    value = value.lower() if isinstance(value, str) else value
    if value not in choices:
        raise ValueError(f"layer {layer_name!r}: unknown {what} {value!r}; "
                         f"choose one of {', '.join(map(repr, choices))}")
    return value


def window_pads(layer, shape, window, strides, padding):
    """Padding and output size of a sliding window over (N, H, W, C) ``shape``,
    or a ValueError when the window does not fit the padded input."""
    pads, out = window_padding_2d(shape[1], shape[2], window, strides, padding)
    if min(out) < 1:
        padded = (shape[1] + sum(pads[0]), shape[2] + sum(pads[1]))
        raise ValueError(f"layer {layer.name!r}: window {window} is larger than its padded "
                         f"input {padded} (input shape {tuple(shape)}, padding {padding!r})")
    return pads, out


def window_output_shape(layer, shape, window, strides, padding, channels):
    """(N, OH, OW, channels) for a symbolic shape; unknown sizes stay None."""
    n, height, width, _ = shape
    stand_ins = [window[0] if height is None else height, window[1] if width is None else width]
    _, (out_h, out_w) = window_pads(layer, (n, *stand_ins, channels), window, strides, padding)
    return n, None if height is None else out_h, None if width is None else out_w, channels
