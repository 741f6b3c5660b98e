"""What a plan's steps run: ops, each a forward and the backward that takes its cache.

minires/planner.py turns a model's graph into steps; a step applies one op
to some tensors of the graph. Every op has

    forward(inputs, training, keep_cache) -> (y, cache)      inputs: a list of arrays
    backward(dy, cache, input_grad=True, from_logits=False) -> [dL/d(input), ...]
    has_weights                          whether backward adds to some layer's grads

from_logits: dy is the gradient of the logits that the op's softmax reads
(a cross-entropy's p - t, minires/losses.py), so backward starts below it.
input_grad=False: no one needs dL/d(inputs) (they are images): an op may
skip computing them and return None in their place.

The ops here run what the graph says: a layer as written (LayerCall) or a
nested model through its own plan (ModelCall, NestedInference). The fast
variants the planner puts in their place, with their derivations, are in
minires/fast_ops.py and, beside BatchNormalization's, layers/normalization.py.
"""
from .graph import as_list, run_steps
from .layers.kernel import KernelLayer


class LayerCall:
    """One call of a layer's own forward and backward (layers/)."""

    def __init__(self, layer, list_input=False):
        self.layer, self.list_input = layer, list_input

    @property
    def has_weights(self):
        return bool(self.layer.params)

    def forward(self, inputs, training, keep_cache):
        return self.layer.forward(inputs if self.list_input else inputs[0], training=training)

    def backward(self, dy, cache, input_grad=True, from_logits=False):
        layer = self.layer
        if isinstance(layer, KernelLayer):    # Dense, Conv2D: may skip dx, may start below their softmax
            return [layer.backward(dy, cache, through_activation=not from_logits, input_grad=input_grad)]
        if from_logits:                       # a Softmax (or Activation) layer: dy is its input's
            return [dy]
        return as_list(layer.backward(dy, cache)) if self.list_input else [layer.backward(dy, cache)]


class InferenceCall(LayerCall):
    """A layer call in an inference plan, whose steps may write into the arrays
    they read (ops.AddRelu): an output that IS its input (Dropout, a linear
    Activation, an empty Sequential hand theirs back) is copied, as that array
    is another tensor's, maybe the caller's."""

    def forward(self, inputs, training, keep_cache):
        y, _ = super().forward(inputs, training, keep_cache)
        return not_an_input(y, inputs), None


class ModelCall:
    """A model used as a layer: its own forward and backward (the chain rule
    over its own plan); its cache is its steps' caches."""

    def __init__(self, model, list_input=False):
        self.model, self.list_input = model, list_input

    @property
    def has_weights(self):
        return any(leaf.params for leaf in self.model.leaf_layers())

    def forward(self, inputs, training, keep_cache):
        return self.model.forward_with_caches(inputs if self.list_input else inputs[0], training,
                                              keep_cache)

    def backward(self, dy, cache, input_grad=True, from_logits=False):
        return as_list(self.model.backward_with_caches(dy, cache, from_logits, input_grad))


class NestedInference:
    """A model used as a layer inside an inference plan: its own inference plan's steps."""

    def __init__(self, model, plan, list_input=False):
        self.model, self.plan, self.list_input = model, plan, list_input

    def forward(self, inputs, training, keep_cache):
        y, _ = run_steps(self.model, self.plan.steps, inputs if self.list_input else inputs[0])
        return not_an_input(y, inputs), None


def not_an_input(y, inputs):
    """``y``, or a copy if it is one of ``inputs``."""
    return y.copy() if any(y is x for x in inputs) else y

