"""The planner: the one place where speed rewrites a model's graph.

A model's graph says what to compute, one layer call per node. A plan says
how: steps in an order where every input is computed before it is read,
each step one op (minires/ops.py) from some tensors of the graph to one.
Three plans of one graph, by ``kind``:

  'layers'     every layer call as written (ops.LayerCall; a nested model
               through its own plan, ops.ModelCall): the reference, what
               ``model.fast_training = False`` / ``fast_inference = False`` run.
  'gradient'   forwards whose backward follows (training, a gradient check):
               the same, except 3x3 stride-1 convs by Winograd
               (fast_ops.WinogradConv), and a BatchNormalization whose only
               reader is a ReLU fused with it (layers' BatchNormReLU: one step
               for two nodes).
  'inference'  forwards alone (predict): Conv2D [+ BN folded in] [+ the
               residual Add of a value already computed] [+ ReLU] as one step
               (fast_ops.FoldedConv), Add [+ ReLU] in place (fast_ops.AddRelu),
               from the weights as they are: it is made again when any weight
               it read changed (each layer's ``weights_version``). Its batch
               size is chosen for the device here too.

``Model.plan(kind)`` makes each once per graph. Every step's op has forward
-> (y, cache) and backward(dy, cache), so the engine (Model.forward_with_caches
and backward_with_caches) runs a plan without knowing any op: backward is the
chain rule over the steps, newest first.
"""
import operator

from .fast_ops import AddRelu, FoldedConv, WinogradConv
from .graph import Graph
from .layers import Activation, Add, BatchNormalization, Conv2D
from .layers.activations import activation_name
from .layers.normalization import BatchNormReLU
from .ops import InferenceCall, LayerCall, ModelCall, NestedInference

KINDS = ("layers", "gradient", "inference")

# Inference batches on the CPU: small batches are faster per image, not slower,
# as the activations of 4 images at 56x56 stay in cache between layers.
# Measured on 2 cores, ResNet-50, 32 images: 13.4 images/s in one batch, 18.2
# in batches of 4. A GPU has no such cache to keep: it takes the batch whole.
CPU_BATCH = 4


class Step:
    """``op`` applied to the arrays of the tensors ``inputs``, computing ``output``'s."""

    def __init__(self, op, inputs, output):
        self.op, self.inputs, self.output = op, list(inputs), output

    def __repr__(self):
        return f"Step({type(self.op).__name__} -> {self.output!r})"


class Plan:
    """The steps that compute a model's outputs, in order; ``batch_size``: the
    most samples to run at once (None: as many as given)."""

    def __init__(self, steps, batch_size=None):
        self.steps, self.batch_size = steps, batch_size

    def is_current(self):
        """Whether the plan still computes what the model does (a layers or
        gradient plan reads no weight values: always, for its graph)."""
        return True


class InferencePlan(Plan):
    """The inference plan, folded from the weights as they were when it was made."""

    def __init__(self, model):
        self.layers = layers_read(model)
        self.versions = current_versions(self.layers)      # before folding: a change during it shows
        device = model.device
        super().__init__(inference_steps(model), CPU_BATCH if device in (None, "cpu") else None)

    def is_current(self):
        """Whether no layer it read has changed since (a few microseconds)."""
        return current_versions(self.layers) == self.versions


def make_plan(model, kind):
    """A new plan of ``kind`` (see KINDS) for ``model``'s graph."""
    if kind == "inference":
        if not model.runs_its_graph:
            raise ValueError(f"model {model.name!r} overrides forward_with_caches, so its graph is "
                             "not what it runs: no inference plan of it can stand in for it")
        return InferencePlan(model)
    if kind == "gradient":
        return Plan(gradient_steps(model))
    if kind == "layers":
        return Plan([plain_step(node) for node in model.layer_calls()])
    raise ValueError(f"unknown plan kind {kind!r}; minires plans {', '.join(map(repr, KINDS))}")


def plain_step(node, call=LayerCall):
    """The node's layer call as written; a nested model runs its own plan."""
    op = ModelCall if isinstance(node.layer, Graph) else call
    return Step(op(node.layer, node.list_input), node.inbound, node)


# --- the gradient plan --------------------------------------------------------
def gradient_steps(model):
    steps, fused = [], set()
    for node in model.layer_calls():
        if id(node) in fused:
            continue
        relu = relu_after_batch_norm(model, node)
        if relu is not None:
            fused.add(id(relu))
            steps.append(Step(LayerCall(BatchNormReLU(node.layer)), node.inbound, relu))
        elif winograd_trains(node.layer):
            steps.append(Step(WinogradConv(node.layer), node.inbound, node))
        else:
            steps.append(plain_step(node))
    return steps


def relu_after_batch_norm(model, node):
    """The ReLU node that alone reads ``node``'s output, where ``node`` is a
    BatchNormalization whose forward and backward are BN's own (a subclass may
    change only its statistics' hooks: SyncBatchNormalization); else None."""
    layer = node.layer
    if (isinstance(layer, BatchNormalization) and layer.built
            and type(layer).forward is BatchNormalization.forward
            and type(layer).backward is BatchNormalization.backward):
        return relu_reading(model, node)
    return None


def winograd_trains(layer):
    """A 3x3 stride-1 Conv2D without activation, as written in layers/conv.py
    (a subclass may compute something else), already built."""
    return (type(layer).forward is Conv2D.forward and type(layer).backward is Conv2D.backward
            and layer.built and layer.kernel_size == (3, 3) and layer.strides == (1, 1)
            and activation_name(layer) in (None, "linear"))


# --- the inference plan -------------------------------------------------------
def inference_steps(model):
    steps, absorbed = [], set()
    ready = {id(t) for t in model.inputs}              # values that earlier steps produce
    for node in model.layer_calls():
        if id(node) in absorbed:
            continue
        if isinstance(node.layer, Conv2D):
            step, chain = conv_chain(model, node, ready)
        elif isinstance(node.layer, Add):
            relu = relu_reading(model, node)
            chain = [node] + ([relu] if relu is not None else [])
            step = Step(AddRelu(node.layer.dtype, relu is not None, []), node.inbound, chain[-1])
        elif isinstance(node.layer, Graph) and node.layer.runs_its_graph:
            op = NestedInference(node.layer, InferencePlan(node.layer), node.list_input)
            step, chain = Step(op, node.inbound, node), [node]
        else:
            step, chain = plain_step(node, InferenceCall), [node]
        absorbed.update(id(t) for t in chain)
        ready.add(id(step.output))
        steps.append(step)
    mark_writable(model, steps)
    return steps


def conv_chain(model, node, ready):
    """Conv2D [+ BN] [+ Add of a value already computed] [+ ReLU]: one step."""
    chain, bn, residual = [node], None, []
    if activation_name(node.layer) in (None, "linear"):
        bn = only_reader(model, node, BatchNormalization)
        chain += [bn] if bn is not None else []
        add = only_reader(model, chain[-1], Add)
        other = [t for t in add.inbound if t is not chain[-1]] if add is not None else []
        if len(other) == 1 and len(add.inbound) == 2 and id(other[0]) in ready:
            chain.append(add)
            residual = other
    relu = relu_reading(model, chain[-1])
    chain += [relu] if relu is not None else []
    op = FoldedConv(node, bn.layer if bn is not None else None, relu is not None)
    return Step(op, [*node.inbound, *residual], chain[-1]), chain


def relu_reading(model, node):
    """The node that alone reads ``node``'s output (no model output), if it is a
    ReLU as written, of the same float type (another one casts); else None."""
    relu = only_reader(model, node, Activation)
    if relu is None or type(relu.layer).forward is not Activation.forward:
        return None
    return relu if activation_name(relu.layer) == "relu" and relu.layer.dtype == node.layer.dtype else None


def only_reader(model, node, kind):
    """The single layer call reading ``node``, if it is a ``kind`` and ``node`` is
    not a model output (which must stay visible)."""
    readers = model.readers(node)
    if len(readers) == 1 and isinstance(readers[0].layer, kind) and not is_output(model, node):
        return readers[0]
    return None


def mark_writable(model, steps):
    """Tell each AddRelu which inputs it may write its sum into: those no later
    step reads, that are no model input or output, and that it reads once."""
    last_reader = {}
    for index, step in enumerate(steps):
        for tensor in step.inputs:
            last_reader[id(tensor)] = index
    kept = {id(t) for t in model.inputs + model.outputs}
    for index, step in enumerate(steps):
        if isinstance(step.op, AddRelu):
            ids = [id(t) for t in step.inputs]
            step.op.writable = [last_reader[i] == index and i not in kept and ids.count(i) == 1
                                for i in ids]


def is_output(model, node):
    return any(node is out for out in model.outputs)


def layers_read(model):
    """The model and every layer of its graph, nested models' opened, each once:
    whatever an inference plan of it is folded from."""
    found = {id(model): model}
    for node in model.layer_calls():
        inner = layers_read(node.layer) if isinstance(node.layer, Graph) else [node.layer]
        found.update((id(layer), layer) for layer in inner)
    return list(found.values())


_weights_version = operator.attrgetter("weights_version")


def current_versions(layers):
    return list(map(_weights_version, layers))     # map: ~25 us for ResNet-50's 177 layers
