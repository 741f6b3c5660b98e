"""Fast inference: the same network, fewer passes over memory.

A forward that keeps caches for a backward runs every layer as written (or
its twin in minires.fast_training, with the same cache), which is what
training and reading need. For inference alone four rewrites give the same
outputs (to float rounding) with less work:

1. Batch norm folded into the conv before it. In inference BN is an affine
   map per channel, y = s * z + t with s = gamma / sqrt(var + eps) and
   t = beta - s * mean, and z = x * W + b is linear, so
       y = x * (W s) + (b s + t):
   one conv with a scaled kernel and a new bias, and no BN pass at all.
2. The conv's bias, the residual Add of a ResNet block (when its other
   input is already computed) and the ReLU after them applied in ONE
   in-place pass over the conv's output (kernels.add_relu_), instead of
   four passes and an Add layer's new array.
3. 3x3 stride-1 convs by Winograd's F(4x4, 3x3) or F(2x2, 3x3)
   (kernels/winograd.py): 4x or 2.25x fewer multiplications than im2col,
   the kernel transformed once here; which one, or im2col, is chosen per
   layer from its shape (winograd_tile_size).
4. Every intermediate freed as soon as nothing reads it; convs work in
   chunks of images (``backend.im2col_limit()``), and 1x1 convs need no
   im2col at all.

    fast = InferenceModel(model)         # folds the model's weights now
    probs = fast.predict(images)

``model.predict`` and ``model.forward(x, training=False)`` run one of these
by themselves (``Model.inference_plan``). The model is not changed. The plan
notes the ``weights_version`` of every layer it read (minires/layers/base.py)
and folds again, before its next forward, when any of them changed; a
weight written into in place needs ``layer.weights_changed()`` to be seen.
Inputs are taken as ``Model.forward`` takes them: integer and bool arrays (uint8
images) and other float types are cast to each layer's float type where that
layer reads them, and the caller's arrays are never written into.
"""
import operator

from . import kernels
from .backend import get_array_module, is_array
from .kernels.winograd import transform_kernel, winograd_pays_at, winograd_tile_size
from .layers import Activation, Add, BatchNormalization, Conv2D, ReLU
from .layers.activations import relu
from .graph import as_list, predict_in_batches, run_graph
from .models import Model, call_forward


class InferenceModel:
    """A model's inference forward pass with BN folded, bias, Add and ReLU fused."""

    def __init__(self, model):
        if not plannable(model):
            raise ValueError(f"model {model.name!r} overrides forward_with_caches, so its graph is "
                             "not what it runs: InferenceModel cannot plan it")
        self.model = model
        self.fold()

    def fold(self):
        """Plan the steps from the model's graph and weights as they are now."""
        self.steps = []                   # the old folded copies go first: one plan in memory at a time
        self.layers = layers_read(self.model)
        versions = self.current_versions()
        self.steps = self._plan()
        self.versions = versions

    def current_versions(self):
        return list(map(_weights_version, self.layers))     # map: ~25 us for ResNet-50's 177 layers

    def is_current(self):
        """Whether no layer it read has changed since the last fold (a few microseconds)."""
        return self.current_versions() == self.versions

    # --- planning: which layer calls merge into which ------------------------
    def _plan(self):
        steps, absorbed = [], set()
        ready = {id(t) for t in self.model.inputs}       # values that earlier steps produce
        for tensor in self.model.layer_calls():
            if id(tensor) in absorbed:
                continue
            if isinstance(tensor.layer, Conv2D):
                step, chain = self._plan_conv(tensor, ready)
            elif isinstance(tensor.layer, Add):
                relu = self._relu_reading(tensor)
                step = AddRelu(tensor, relu is not None, self.model.inputs)
                chain = [tensor] + ([relu] if relu is not None else [])
            elif isinstance(tensor.layer, Model) and plannable(tensor.layer):
                step, chain = NestedModel(tensor), [tensor]
            else:
                step, chain = LayerCall(tensor), [tensor]
            absorbed.update(id(t) for t in chain)
            step.output = chain[-1]
            ready.add(id(step.output))
            steps.append(step)
        return steps

    def _plan_conv(self, tensor, ready):
        """Conv2D [+ BN] [+ Add of a value already computed] [+ ReLU]: one step."""
        chain, bn, residual = [tensor], None, None
        if tensor.layer.activation in (None, "linear"):
            bn = self._only_reader(tensor, BatchNormalization)
            chain += [bn] if bn is not None else []
            add = self._only_reader(chain[-1], Add)
            other = [t for t in add.inbound if t is not chain[-1]] if add is not None else []
            if len(other) == 1 and len(add.inbound) == 2 and id(other[0]) in ready:
                chain.append(add)
                residual = other[0]
        relu = self._relu_reading(chain[-1])
        chain += [relu] if relu is not None else []
        return FoldedConv(tensor, bn, residual, relu is not None), chain

    def _relu_reading(self, tensor):
        relu = self._only_reader(tensor, (Activation, ReLU))
        return relu if relu is not None and _is_relu(relu.layer) else None

    def _only_reader(self, tensor, kinds):
        """The single layer call reading ``tensor``, if it is one of ``kinds``
        and ``tensor`` is not a model output (then it must stay visible)."""
        readers = self.model.readers(tensor)
        if len(readers) == 1 and isinstance(readers[0].layer, kinds) \
                and all(tensor is not out for out in self.model.outputs):
            return readers[0]
        return None

    # --- running -------------------------------------------------------------------
    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):
        """Outputs for one input array (a batch), or a list of them, one per model input;
        folded again first if a weight changed since."""
        for tensor, array in zip(self.model.inputs, as_list(x)):
            check_numbers(array, self.model.name, tensor.layer.name)
        if not self.is_current():
            self.fold()
        return run_graph(self.model, x, [(step.inputs, step.output, step.run) for step in self.steps])

    def predict(self, x, batch_size=4):
        """``forward`` in batches of ``batch_size``, outputs concatenated; as
        ``Model.predict_arrays`` (a list is one array per model input, an empty
        batch gives empty outputs).

        Small batches are faster per image here, not slower: the activations of
        4 images at 56x56 stay in cache between layers. Measured on 2 cores,
        32 images: 13.4 images/s in one batch, 18.2 in batches of 4.
        """
        return predict_in_batches(self.forward, x, batch_size)


# --- the kinds of step ---------------------------------------------------------
class LayerCall:
    """Any other layer (or a model that cannot be planned), run as it is, in inference mode."""

    def __init__(self, tensor):
        self.layer, self.inputs, self.list_input = tensor.layer, tensor.inbound, tensor.list_input

    def run(self, inputs, last_use):
        y, _ = call_forward(self.layer, inputs if self.list_input else inputs[0], False, False)
        return not_an_input(y, inputs)


class NestedModel:
    """A model used as a layer: its own fast path."""

    def __init__(self, tensor):
        self.fast, self.inputs, self.list_input = InferenceModel(tensor.layer), tensor.inbound, tensor.list_input

    def run(self, inputs, last_use):
        return not_an_input(self.fast.forward(inputs if self.list_input else inputs[0]), inputs)


class FoldedConv:
    """Conv2D [+ BatchNormalization folded in] [+ residual Add] [+ ReLU], the
    last three in one pass over the conv's output."""

    def __init__(self, tensor, bn, residual, relu):
        self.conv, self.relu = tensor.layer, relu
        self.inputs = list(tensor.inbound) + ([residual] if residual is not None else [])
        kernel = self.conv.params["kernel"]
        xp = get_array_module(kernel)
        bias = self.conv.params["bias"] if self.conv.use_bias else xp.zeros(kernel.shape[-1], kernel.dtype)
        if bn is not None:
            p = bn.layer.params
            scale = p["gamma"] / xp.sqrt(p["moving_variance"] + bn.layer.epsilon)
            kernel, bias = kernel * scale, (bias - p["moving_mean"]) * scale + p["beta"]
        self.kernel, self.bias = kernel.astype(kernel.dtype), bias.astype(kernel.dtype)
        self.activation = None if self.conv.activation in (None, "linear") else self.conv.activation_forward
        winograd = self.conv.kernel_size == (3, 3) and self.conv.strides == (1, 1) and self.activation is None
        # m of Winograd F(m x m, 3x3), or None for im2col
        self.tile_size = winograd_tile_size(tensor.shape[1:3], *self.kernel.shape[2:], self.kernel.itemsize) \
            if winograd else None
        self.winograd_kernel = None if self.tile_size is None else transform_kernel(self.kernel, self.tile_size)

    def run(self, inputs, last_use):
        x, *residual = [as_dtype(a, self.kernel.dtype) for a in inputs]    # as Conv2D, Add cast
        residual = residual[0] if residual else None
        pads, out_size = self.conv.pads(x.shape)
        if self.winograd_kernel is not None and winograd_pays_at(x.shape[0], out_size, self.tile_size):
            return kernels.winograd_conv3x3(x, self.winograd_kernel, pads, out_size,
                                            self.bias, residual, self.relu)
        z = kernels.conv2d(x, self.kernel, pads, self.conv.strides)
        if self.activation is None:
            return kernels.add_relu_(z, self.bias, residual, self.relu)
        z = self.activation(kernels.add_relu_(z, self.bias, None, False))   # the conv's own
        return relu(z) if self.relu else z


class AddRelu:
    """Add [+ ReLU], writing into an input that nothing else reads."""

    def __init__(self, tensor, relu, model_inputs):
        self.inputs, self.relu, self.dtype = tensor.inbound, relu, tensor.layer.dtype
        self.callers = [any(t is given for given in model_inputs) for t in self.inputs]

    def run(self, inputs, last_use):
        arrays = [as_dtype(x, self.dtype) for x in inputs]              # as the Add layer casts
        free = [self.may_write(array, x, last, caller)
                for array, x, last, caller in zip(arrays, inputs, last_use, self.callers)]
        first = free.index(True) if any(free) else 0
        out = arrays[first] if free[first] else arrays[first].copy()
        others = arrays[:first] + arrays[first + 1:]
        no_bias = get_array_module(out).zeros(out.shape[-1], out.dtype)
        for i, x in enumerate(others):
            kernels.add_relu_(out, no_bias, x, self.relu and i == len(others) - 1)
        return out

    @staticmethod
    def may_write(array, given, last_use, caller):
        """Whether the sum may go into ``array`` (``given`` cast): a copy made here
        may; else only an array that no later step reads, that is not the
        caller's (a model input), and that is no view into another array."""
        return array is not given or (last_use and not caller and array.base is None)


def plannable(model):
    """Whether ``model`` runs its graph (a subclass may override forward_with_caches)."""
    return type(model).forward_with_caches is Model.forward_with_caches


def layers_read(model):
    """The model and every layer of its graph, nested models' opened, each once:
    whatever a plan of it is folded from."""
    found = {id(model): model}
    for node in model.layer_calls():
        inner = layers_read(node.layer) if isinstance(node.layer, Model) else [node.layer]
        found.update((id(layer), layer) for layer in inner)
    return list(found.values())


_weights_version = operator.attrgetter("weights_version")


def _is_relu(layer):
    return isinstance(layer, ReLU) or getattr(layer, "activation", None) == "relu"


def check_numbers(x, model_name, input_name):
    """Raise a TypeError unless ``x`` is an array of numbers (float, integer or
    bool: what a layer casts to its float type, as Keras does), before any step runs."""
    if not is_array(x):
        raise TypeError(f"model {model_name!r}: input {input_name!r} must be a NumPy or CuPy "
                        f"array, got {type(x).__name__}")
    if x.dtype.kind not in "fiub":
        raise TypeError(f"model {model_name!r}: input {input_name!r} must hold real numbers "
                        f"(float, integer or bool), got dtype {x.dtype} with shape {x.shape}")


def not_an_input(y, inputs):
    """``y``, or a copy if it is one of ``inputs`` (an empty Sequential, Dropout in
    inference and a linear Activation hand their input back): a later step may
    write into it, and it may be the caller's array."""
    return y.copy() if any(y is x for x in inputs) else y


def as_dtype(x, dtype):
    """``x`` in ``dtype``, as a layer casts its input (Layer.as_float_array): a copy only when needed."""
    return x if x.dtype == dtype else x.astype(dtype)
