"""What Dense and Conv2D share: a kernel, an optional bias, an optional activation."""
from .. import initializers, regularizers
from .activations import get_activation, linear
from .base import Layer


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
            raise ValueError(f"layer {self.name!r}: minires has no activity_regularizer (a penalty "
                             "on the layer's outputs); kernel_regularizer and bias_regularizer work")
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
