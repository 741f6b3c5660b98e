"""What Dense and Conv2D share: a kernel, an optional bias, an optional activation,
optional weight penalties; and what Conv2D and its relatives share: a sliding window."""
from .. import initializers, regularizers
from ..kernels import column_sums
from ..padding import PADDINGS
from .activations import get_activation, linear
from .base import Layer, as_pair, check_choice, window_pads


class KernelLayer(Layer):
    """A kernel whose axis -2 matches the input's last axis, an optional bias,
    and an optional activation y = act(z) applied after z = (x * kernel) + bias.

    ``backward(dy, cache, through_activation=False)`` takes dy as dL/dz
    itself: a cross-entropy on a softmax output hands over the logits'
    gradient p - y, which is exact where the softmax's own backward would
    divide by probabilities that underflow (minires.losses)."""
    input_name = "channels"

    def __init__(self, activation, use_bias, kernel_initializer, bias_initializer, name,
                 kernel_regularizer=None, bias_regularizer=None, activity_regularizer=None, **kwargs):
        super().__init__(name=name, **kwargs)
        if activity_regularizer is not None:
            raise ValueError(f"layer {self.name!r}: activity_regularizer={activity_regularizer!r} is "
                             "not implemented in minires (a penalty on the layer's outputs; "
                             "kernel_regularizer and bias_regularizer are)")
        owner = f"layer {self.name!r}"
        self.regularizers = {name: regularizer for name, regularizer in (
            ("kernel", regularizers.get(kernel_regularizer, owner)),
            ("bias", regularizers.get(bias_regularizer, owner))) if regularizer is not None}
        self.activation = activation
        self.activation_forward, self.activation_backward = get_activation(activation, self.name)
        self.use_bias = use_bias
        self.kernel_initializer = initializers.get(kernel_initializer, f"layer {self.name!r}")
        self.bias_initializer = initializers.get(bias_initializer, f"layer {self.name!r}")

    def output_for_backward(self, y):
        """What the cache keeps of the output y: y itself when the activation's
        gradient needs it, None for linear (the usual case before a BN, where
        keeping y would double a convolution's memory)."""
        return None if self.activation_forward is linear else y

    def add_kernel_and_bias(self, kernel_shape, like_array):
        self.add_weight("kernel", kernel_shape, self.kernel_initializer, like_array)
        if self.use_bias:
            self.add_weight("bias", kernel_shape[-1:], self.bias_initializer, like_array)

    def _check_built_shape(self, shape):
        expected = self.params["kernel"].shape[-2]
        if shape[-1] != expected:
            raise ValueError(f"layer {self.name!r} was built for {expected} input {self.input_name}, "
                             f"got an input of shape {tuple(shape)}")


# --- what Conv2D and its relatives share (conv.py, conv_transpose.py, depthwise.py) ------------
# Keras arguments that minires does not implement, each with the values that ask for nothing
# (Keras code often spells the defaults out); any other value is refused, never ignored.
# (kernel_regularizer and bias_regularizer are KernelLayer's.)
UNIMPLEMENTED = {"dilation_rate": (1, (1, 1)), "groups": (1,), "data_format": (None, "channels_last"),
                 **{name: (None,) for name in (
                     "depthwise_regularizer", "pointwise_regularizer", "kernel_constraint",
                     "depthwise_constraint", "pointwise_constraint", "bias_constraint")}}


def take_unimplemented(kwargs, unimplemented):
    """Remove Keras's unimplemented arguments from ``kwargs`` and return them
    (Layer would reject them as unknown, without saying what they ask for)."""
    return {name: kwargs.pop(name) for name in list(kwargs) if name in unimplemented}


def refuse_unimplemented(arguments, unimplemented, layer_name):
    """A ValueError naming the first argument whose value asks for what minires does not do."""
    for name, value in arguments.items():
        if (tuple(value) if isinstance(value, list) else value) not in unimplemented[name]:
            accepted = " or ".join(map(repr, unimplemented[name]))
            raise ValueError(f"layer {layer_name!r}: {name}={value!r} is not implemented in "
                             f"minires (it accepts only {accepted})")


class WindowKernelLayer(KernelLayer):
    """A (kh, kw) window sliding with strides over (N, H, W, C) data, Keras's
    'valid'/'same' padding, an optional bias and activation, and Keras's
    arguments that minires does not implement refused by name.

    ``channel_weight`` and ``channel_axis`` say which weight's axis matches the
    input's channels: a built layer refuses any other channel count."""
    input_rank = 4
    channel_weight, channel_axis = "kernel", -2
    unimplemented = UNIMPLEMENTED

    def __init__(self, kernel_size, strides, padding, activation, use_bias, kernel_initializer,
                 bias_initializer, name, **kwargs):
        unimplemented = take_unimplemented(kwargs, self.unimplemented)
        super().__init__(activation, use_bias, kernel_initializer, bias_initializer, name, **kwargs)
        refuse_unimplemented(unimplemented, self.unimplemented, self.name)
        self.kernel_size = as_pair(kernel_size, "kernel_size", self.name)
        self.strides = as_pair(strides, "strides", self.name)
        self.padding = check_choice(padding, PADDINGS, "padding", self.name)

    def pads(self, x_shape):
        """((top, bottom), (left, right)) padding and (OH, OW) for inputs of ``x_shape``."""
        return window_pads(self, x_shape, self.kernel_size, self.strides, self.padding)

    def add_bias(self, size, like_array):
        if self.use_bias:
            self.add_weight("bias", (size,), self.bias_initializer, like_array)

    def bias_and_activation(self, z):
        """y = act(z + b); z is this call's own array, so b is added in place."""
        if self.use_bias:
            z += self.params["bias"]
        return self.activation_forward(z)

    def bias_and_activation_backward(self, dy, y, out_shape, through_activation):
        """dz = dL/dz from dy = dL/dy (dy is dL/dz itself when not
        ``through_activation``); adds dL/db = sum of dz over every output pixel."""
        dy = self._check_grad(dy, out_shape)
        dz = self.activation_backward(dy, y) if through_activation else dy
        if self.use_bias:
            self.add_grad("bias", column_sums(dz.reshape(-1, dz.shape[-1])))
        return dz

    def _check_built_shape(self, shape):
        expected = self.params[self.channel_weight].shape[self.channel_axis]
        if shape[-1] != expected:
            raise ValueError(f"layer {self.name!r} was built for {expected} input channels, "
                             f"got an input of shape {tuple(shape)}")
