"""Fast inference: the same network, fewer passes over memory.

``Model.forward`` runs every layer as written, which is what training and
reading need. For inference alone four rewrites give the same outputs
(to float rounding) with less work:

1. Batch norm folded into the conv before it. In inference BN is an affine
   map per channel, y = s * z + t with s = gamma / sqrt(var + eps) and
   t = beta - s * mean, and z = x * W + b is linear, so
       y = x * (W s) + (b s + t):
   one conv with a scaled kernel and a new bias, and no BN pass at all.
2. The conv's bias, the residual Add of a ResNet block (when its other
   input is already computed) and the ReLU after them applied in ONE
   in-place pass over the conv's output (kernels.add_relu_), instead of
   four passes and an Add layer's new array.
3. 3x3 stride-1 convs by Winograd's F(2x2, 3x3) (kernels/winograd.py):
   2.25x fewer multiplications than im2col, the kernel transformed once here.
4. Every intermediate freed as soon as nothing reads it; convs work in
   chunks of images (``backend.im2col_limit()``), and 1x1 convs need no
   im2col at all.

    fast = InferenceModel(model)         # reads the model's weights now
    probs = fast.predict(images)

The model is not changed; after changing its weights, build a new InferenceModel.
"""
from . import kernels
from .backend import get_array_module
from .kernels.winograd import transform_kernel
from .layers import Activation, Add, BatchNormalization, Conv2D, ReLU
from .layers.activations import relu
from .graph import predict_in_batches, run_graph
from .models import Model


class InferenceModel:
    """A model's inference forward pass with BN folded, bias, Add and ReLU fused."""

    def __init__(self, model):
        self.model = model
        self.steps = self._plan()

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
                step, chain = AddRelu(tensor, relu is not None), [tensor] + ([relu] if relu is not None else [])
            elif isinstance(tensor.layer, Model):
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
        """Outputs for one input array (a batch)."""
        return run_graph(self.model, x, [(step.inputs, step.output, step.run) for step in self.steps])

    def predict(self, x, batch_size=4):
        """``forward`` in batches of ``batch_size``, outputs concatenated.

        Small batches are faster per image here, not slower: the activations of
        4 images at 56x56 stay in cache between layers. Measured on 2 cores,
        32 images: 13.4 images/s in one batch, 18.2 in batches of 4.
        """
        return predict_in_batches(self.forward, x, batch_size)


# --- the kinds of step ---------------------------------------------------------
class LayerCall:
    """Any other layer, run as it is, in inference mode."""

    def __init__(self, tensor):
        self.layer, self.inputs, self.list_input = tensor.layer, tensor.inbound, tensor.list_input

    def run(self, inputs, last_use):
        y, _ = self.layer.forward(inputs if self.list_input else inputs[0], training=False)
        return y


class NestedModel:
    """A model used as a layer: its own fast path."""

    def __init__(self, tensor):
        self.fast, self.inputs, self.list_input = InferenceModel(tensor.layer), tensor.inbound, tensor.list_input

    def run(self, inputs, last_use):
        y = self.fast.forward(inputs if self.list_input else inputs[0])
        # an empty Sequential hands its input back: a copy, as a later step may write into it
        return y.copy() if any(y is x for x in inputs) else y


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
        self.winograd_kernel = transform_kernel(self.kernel) if winograd else None

    def run(self, inputs, last_use):
        residual = inputs[1] if len(inputs) > 1 else None
        pads, out_size = self.conv.pads(inputs[0].shape)
        if self.winograd_kernel is not None:
            return kernels.winograd_conv3x3(inputs[0], self.winograd_kernel, pads, out_size,
                                            self.bias, residual, self.relu)
        z = kernels.conv2d(inputs[0], self.kernel, pads, self.conv.strides)
        if self.activation is None:
            return kernels.add_relu_(z, self.bias, residual, self.relu)
        z = self.activation(kernels.add_relu_(z, self.bias, None, False))   # the conv's own
        return relu(z) if self.relu else z


class AddRelu:
    """Add [+ ReLU], writing into an input that nothing else reads."""

    def __init__(self, tensor, relu):
        self.inputs, self.relu = tensor.inbound, relu

    def run(self, inputs, last_use):
        owned = [i for i, free in enumerate(last_use) if free]
        out = inputs[owned[0]] if owned else inputs[0].copy()
        others = [x for x in inputs if x is not out]
        no_bias = get_array_module(out).zeros(out.shape[-1], out.dtype)
        for i, x in enumerate(others):
            kernels.add_relu_(out, no_bias, x, self.relu and i == len(others) - 1)
        return out


def _is_relu(layer):
    return isinstance(layer, ReLU) or getattr(layer, "activation", None) == "relu"
