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

A forward pass runs a plan of the graph (minires/planner.py, the one place
where speed rewrites it): the layers as written, or, by default, fast ops in
their place (Winograd convs and BN+ReLU pairs when a backward follows; BN
folded into convs for inference). Each step of a plan is an op with
``forward -> (y, cache)`` and ``backward(dy, cache)`` (minires/ops.py).

A forward pass that will be followed by backward keeps each step's cache;
backward hands each cache back to its op, newest step first, and drops it
once used. An inference pass keeps none and leaves the kept ones alone, so
``predict`` between a training forward and its backward changes nothing.
A model used as a layer inside another is one step there; its cache is its
own steps' caches.

Backward is the chain rule applied step by step from the outputs back: each
op turns the gradient of its output into gradients of its inputs, and where
one tensor feeds several steps (a residual shortcut) the gradients arriving
from them are summed. A layer called at several nodes adds up its weight
gradients over them. The engine below knows no op.
"""

from . import planner
from .backend import keep_memory_for_training
from .compile import TrainingAPI
from .graph import Graph, as_list, check_batch, predict_in_batches, run_steps, tensors_needing_grads
from .layers.activations import activation_name
from .layers.base import KerasTensor, Layer, is_symbolic, unique_name
from .layers.input_layer import Input, InputLayer
from .model_weights import LayersAndWeights


class Model(TrainingAPI, LayersAndWeights, Graph, Layer):
    """A model from ``inputs`` to ``outputs`` (KerasTensors or lists of them),
    or, without them, a subclass whose ``call`` is traced on its first call."""

    # False: every layer as written (the 'layers' plan), to compare, instead of the
    fast_inference = True    # 'inference' plan (predict, forward(x, training=False)),
    fast_training = True     # the 'gradient' plan (forwards that keep caches, their backward)

    def __init__(self, inputs=None, outputs=None, name=None, **kwargs):
        if name is None and type(self) is Model:
            name = unique_name("functional")
        super().__init__(name=name, **kwargs)
        self.training = False
        self.compiled = None             # compile()'s optimizer, loss and metrics
        self.stop_training = False       # set by callbacks (EarlyStopping) to end fit
        self._caches = None              # (steps, their caches) of the last forward that kept them
        self._plans = {}                 # kind -> planner.Plan, made at first use
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
        self.set_graph(inputs, outputs)
        self._plans, self.built = {}, True
        self.params.touch()              # a new graph: an outer model's plan of the old one is stale
        names = [layer.name for layer in self.layers]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"model {self.name!r}: layer names must be unique, repeated: {repeated}")

    @property
    def traced(self):
        """True for models whose graph comes from tracing ``call`` (subclasses, Sequential)."""
        return type(self).call is not Model.call

    def build(self, input_shape, like_array=None):
        """Trace ``call`` on symbolic inputs of ``input_shape`` (with the batch
        axis, e.g. (None, 32, 32, 3); a list of shapes for several inputs)."""
        if self.built:
            return
        if not self.traced:
            raise ValueError(f"model {self.name!r} has no graph: give Model(inputs, outputs), "
                             "or subclass Model and write call()")
        several = isinstance(input_shape, list)
        inputs = [Input(tuple(shape[1:])) for shape in (input_shape if several else [input_shape])]
        self._set_graph(inputs if several else inputs[0], self.call(inputs if several else inputs[0]))

    def build_like(self, inputs):
        """Build a model traced at its first call for ``inputs`` (arrays or
        KerasTensors, one or a list): how every caller builds one."""
        if not self.built:
            shapes = [(None, *tuple(x.shape)[1:]) for x in as_list(inputs)]
            self.build(shapes if isinstance(inputs, (list, tuple)) else shapes[0])

    @property
    def layers(self):
        """The layers, as ``keras.Model.layers``: a functional model's in graph
        order (InputLayers included), a subclassed model's in the order its
        attributes were set, then any its ``call`` created."""
        if not self.traced:
            return list(self._graph_layers)
        tracked = list(self.__dict__.get("_tracked", ()))
        if self.built:
            tracked += [layer for layer in self._graph_layers
                        if not isinstance(layer, InputLayer) and all(layer is not t for t in tracked)]
        return tracked

    # --- as a layer inside another model ----------------------------------------
    def __call__(self, inputs, training=None):
        if is_symbolic(inputs):
            return self._call_symbolic(inputs)
        return self.forward(inputs, training=training)

    def _call_symbolic(self, inputs):
        tensors = as_list(inputs)
        self.build_like(inputs)
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
    @property
    def runs_its_graph(self):
        """Whether forward runs this model's graph: a subclass may override
        forward_with_caches, which then is what runs (no inference plan)."""
        return type(self).forward_with_caches is Model.forward_with_caches

    def plan(self, kind):
        """This model's plan of ``kind``, 'layers', 'gradient' or 'inference'
        (minires/planner.py): made at first use, once per graph, and the
        inference plan again when a weight it was folded from changed."""
        self.require_graph(f"{kind} plan")
        plan = self._plans.pop(kind, None)
        if plan is not None and plan.is_current():
            self._plans[kind] = plan
            return plan
        del plan                               # the old folded copies go before new ones are made
        self._plans[kind] = planner.make_plan(self, kind)
        return self._plans[kind]

    def forward(self, inputs, training=None, keep_cache=None):
        """Outputs for ``inputs`` (one array, or a list matching ``model.inputs``).

        training=None uses the model's mode (``train()`` / ``eval()``, default eval).
        keep_cache: keep what ``backward`` needs (default: when training); pass
        True for gradients in inference mode (a gradient check, a saliency map).
        An inference forward that keeps nothing runs as ``predict_arrays``.
        """
        training = self.training if training is None else training
        keep_cache = training if keep_cache is None else keep_cache
        if training:           # the step after goes on to change the weights: free the folded copies
            self._plans.pop("inference", None)
        if not (training or keep_cache):
            return self.predict_arrays(inputs)
        outputs, cache = self.forward_with_caches(inputs, training, keep_cache)
        if keep_cache:
            self._caches = cache
        return outputs

    def forward_with_caches(self, inputs, training, keep_cache):
        """(outputs, cache) of one forward pass: the cache is the steps that ran
        and their caches, None unless ``keep_cache``. Forwards that keep them run
        the 'gradient' plan (unless ``fast_training`` is False), others every
        layer as written. What a nested model runs as a step (ops.ModelCall)."""
        if keep_cache:
            keep_memory_for_training()     # once: backend's speed settings
        self.build_like(inputs)
        plan = self.plan("gradient" if keep_cache and self.fast_training else "layers")
        outputs, caches = run_steps(self, plan.steps, inputs, training, keep_cache)
        return outputs, ((plan.steps, caches) if keep_cache else None)

    def predict_arrays(self, x, batch_size=None):
        """Inference on ``x`` in batches of at most ``batch_size`` (None: as many
        as the plan runs at once), outputs concatenated: the 'inference' plan,
        unless ``fast_inference`` is False or forward_with_caches is not the
        model's own (then that runs, every layer as written)."""
        check_batch(x)
        self.build_like(x)
        for tensor, array in zip(self.inputs, as_list(x)):   # whole, so an error names the caller's shape
            tensor.layer.check(array, self.name)
        if not (self.fast_inference and self.runs_its_graph):
            return predict_in_batches(lambda batch: self.forward_with_caches(batch, False, False)[0],
                                      x, batch_size)
        plan = self.plan("inference")
        limit = min(filter(None, (batch_size, plan.batch_size)), default=None)
        return predict_in_batches(lambda batch: run_steps(self, plan.steps, batch)[0], x, limit)

    def backward(self, d_outputs, skip_output_softmax=False, input_grads=True):
        """Gradients of the inputs from gradients of the outputs, through the
        caches of the last forward that kept them; fills layer.grads (from zero).

        skip_output_softmax: ``d_outputs`` is the gradient of the logits that
        the output's softmax reads (a cross-entropy's stable p - y), so the
        backward starts below that softmax.
        input_grads=False: only the weights' gradients are wanted (a training
        step, whose inputs are images), so None is returned for the inputs and
        no op computes a gradient that only they would need (the first
        convolution's dX and col2im); the weights' gradients are the same.
        """
        if self._caches is None:
            raise RuntimeError(f"model {self.name!r}: backward needs a forward pass that kept its "
                               "caches first: forward(x, training=True), or keep_cache=True "
                               "(each forward's caches serve one backward)")
        cache, self._caches = self._caches, None
        self.zero_grads()
        return self.backward_with_caches(d_outputs, cache, skip_output_softmax, input_grads)

    def backward_with_caches(self, d_outputs, cache, skip_output_softmax=False, input_grads=True):
        """Backward through one forward's ``cache`` (used up), adding to the
        grads: the chain rule, over the steps that ran, newest first, so a step
        runs once every step reading its output has sent back its share. Only
        tensors that depend on weights (or, with ``input_grads``, on an input)
        receive a gradient."""
        steps, caches = cache
        d_outputs = as_list(d_outputs)
        if len(d_outputs) != len(self.outputs):
            raise ValueError(f"model {self.name!r} has {len(self.outputs)} outputs, backward got "
                             f"{len(d_outputs)} gradients")
        if skip_output_softmax and not self.output_applies_softmax():
            raise ValueError(f"model {self.name!r}: skip_output_softmax, but its output does not "
                             "come from a softmax")
        needed = tensors_needing_grads(steps, self.inputs if input_grads else [])
        grads = {}
        for tensor, g in zip(self.outputs, d_outputs):
            _accumulate(grads, tensor, g)
        for step in reversed(steps):
            step_cache, dy = caches.pop(), grads.pop(id(step.output), None)
            if dy is None or id(step.output) not in needed:       # nothing depends on it
                continue
            wanted = [id(source) in needed for source in step.inputs]
            from_logits = skip_output_softmax and step.output is self.outputs[0]
            d_inputs = step.op.backward(dy, step_cache, any(wanted), from_logits)
            for source, d, want in zip(step.inputs, d_inputs, wanted):
                if want:
                    _accumulate(grads, source, d)
        results = [grads.get(id(t)) for t in self.inputs]
        return results[0] if self._single_input else results

    def output_applies_softmax(self):
        """True when the (single) output's layer applies a softmax last (a nested
        model: its output's layer)."""
        self.require_graph("output")
        layer = self.outputs[0].layer
        if len(self.outputs) != 1 or isinstance(layer, InputLayer):
            return False
        return layer.output_applies_softmax() if isinstance(layer, Model) \
            else activation_name(layer) == "softmax"

    def train(self):
        """Make training=True the default of forward (batch statistics in BN)."""
        self.training = True
        return self

    def eval(self):
        """Make training=False the default of forward (moving statistics in BN)."""
        self.training = False
        return self


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
        """Append ``layer`` (or set the Input); a layer that does not fit the stack
        raises and leaves the model as it was."""
        if isinstance(layer, KerasTensor) and isinstance(layer.layer, InputLayer):
            self._retrace(self._stack, layer)    # keras.Input(...) as the first entry
        elif isinstance(layer, Layer):
            self._retrace([*self._stack, layer], self._input)
        else:
            raise TypeError(f"Sequential {self.name!r}: add() takes a layer or an Input, "
                            f"got {type(layer).__name__}")

    def pop(self):
        """Remove the last layer and return it, as Keras's ``Sequential.pop()``."""
        if not self._stack:
            raise TypeError(f"Sequential {self.name!r} has no layers to pop")
        layer = self._stack[-1]
        self._retrace(self._stack[:-1], self._input)
        return layer

    def _retrace(self, stack, input_tensor):
        """Make ``stack`` the layers and trace it again where the input shape is
        known; if that fails, everything is left as it was. The old trace's
        tensors are forgotten, so that each layer's ``output`` is this trace's
        (``Model(seq.inputs, [l.output for l in seq.layers])``)."""
        before = dict(self.__dict__)
        traced_before = {id(t) for t in (self._order if self.built else [])}
        self._stack, self._input = list(stack), input_tensor
        self.built, self._caches, self._plans = False, None, {}   # the graph changed: trace again
        shape = input_tensor.shape if input_tensor is not None else (
            stack[0].declared_input_shape if stack else None)
        layers = list(stack)
        counts = [len(layer.call_outputs) for layer in layers]
        try:
            if shape is not None:
                self.build(shape)
        except Exception:
            for layer, count in zip(layers, counts):    # the failed trace's tensors
                del layer.call_outputs[count:]
            self.__dict__.clear()
            self.__dict__.update(before)         # the stack, graph and plans as they were
            raise
        for layer in layers:
            layer.call_outputs[:] = [t for t in layer.call_outputs if id(t) not in traced_before]

    @property
    def layers(self):
        return list(self._stack)

    def call(self, inputs, training=None):
        x = inputs
        for layer in self._stack:
            x = layer(x, training=training)
        return x


def _accumulate(grads, tensor, g):
    """grads[tensor] += g, without writing into an array another branch holds."""
    key = id(tensor)
    grads[key] = g if key not in grads else grads[key] + g
