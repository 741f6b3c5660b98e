"""Optimisers and learning-rate schedules.

An optimiser turns the gradients that ``model.backward`` left in every
layer's ``grads`` into a change of its ``params``. Only trainable parameters
move (``model.parameters()``): a layer with ``trainable = False`` keeps its
weights, and BatchNormalization's moving statistics are never touched here
(BN updates them itself in its training-mode forward).

SGD and Adam follow PyTorch's conventions (``torch.optim.SGD`` and
``torch.optim.Adam``), RMSprop Keras's; weight decay included: it is L2 regularisation added to the gradient,
g <- g + weight_decay * p, before momentum or moments see it.

    optimizer = SGD(learning_rate=0.1, momentum=0.9, weight_decay=5e-4)
    model.backward(loss.backward())
    optimizer.step(model)
"""
import math


from .backend import get_array_module, quiet_overflow
from .utils import all_finite, check_number


def check_learning_rate(rate, where):
    """``rate`` as a float if it is a usable learning rate: a finite number >= 0
    (0 takes no step, as Keras and PyTorch allow). ONE check for every way a rate
    arrives (an optimiser's constructor, its ``learning_rate`` attribute, a step's
    rate, fit's schedule, LearningRateScheduler), ``where`` naming which: nan or
    inf would write nan into every weight, a negative rate would climb the loss."""
    return check_number(rate, f"{where}: learning rate", low=0.0)


class Optimizer:
    """What the optimisers share: the learning rate, weight decay, a step count
    and per-parameter state arrays keyed 'layer/param'.

    A subclass writes ``direction(key, grad, t)``: the direction of step t for the
    parameter ``key`` from its gradient (weight decay added), and the new values
    of that parameter's state arrays, without writing them (``step`` does, once
    every update was found finite).
    """

    def __init__(self, learning_rate, weight_decay):
        self._learning_rate = check_learning_rate(learning_rate,
                                                  f"{type(self).__name__}(learning_rate=...)")
        self.weight_decay = check_number(weight_decay, f"{type(self).__name__}: weight_decay", 0.0)
        self.iterations = 0
        self.slots = {}            # {slot name: {'layer/param': array}}

    @property
    def learning_rate(self):
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, rate):          # callbacks and users set it between steps
        self._learning_rate = check_learning_rate(rate, f"{type(self).__name__}.learning_rate")

    def step(self, model, learning_rate=None):
        """Update every trainable parameter of ``model`` from its gradient, in place,
        all or nothing: every update and the state it leaves are computed and
        checked first, then written. A missing or non-finite gradient, or an update
        that would make a weight nan or inf, raises and changes nothing (weights,
        state arrays, iterations)."""
        name = type(self).__name__
        lr = self.learning_rate if learning_rate is None else \
            check_learning_rate(learning_rate, f"{name}.step(learning_rate=...)")
        pairs = list(model.parameters())
        for layer, param_name in pairs:
            if param_name not in layer.grads:
                raise RuntimeError(f"{name}: layer {layer.name!r} has no gradient "
                                   f"for {param_name!r}; run model.backward(...) before step()")
        t = self.iterations + 1
        updates = [self.planned_update(layer, param_name, lr, t) for layer, param_name in pairs]
        for (layer, param_name), (update, slots) in zip(pairs, updates):
            layer.params[param_name] -= update
            layer.weights_changed()              # in place, so say so: a folded inference plan is stale
            key = f"{layer.name}/{param_name}"
            for kind, value in slots.items():
                self.slots.setdefault(kind, {})[key] = value
        self.iterations = t

    def planned_update(self, layer, param_name, lr, t):
        """(what step t subtracts from the parameter, its new state arrays),
        checked finite, nothing written."""
        key, param, grad = f"{layer.name}/{param_name}", layer.params[param_name], layer.grads[param_name]
        if not all_finite(grad):
            raise FloatingPointError(f"{type(self).__name__}: the gradient of {key!r} holds nan or "
                                     "inf (the backward pass overflowed: training diverged; lower "
                                     "the learning rate); no weight was changed")
        if self.weight_decay:
            grad = grad + self.weight_decay * param
        direction, slots = self.direction(key, grad, t)
        update = lr * direction
        with quiet_overflow():                                 # found here, and raised as such
            finite = all_finite(param - update)
        if not finite:
            raise FloatingPointError(f"{type(self).__name__}: a step at learning rate {lr:g} would "
                                     f"make {key!r} nan or inf (training diverged; lower the "
                                     "learning rate); no weight was changed")
        return update, slots

    def previous(self, kind, key, like):
        """The state array ``kind`` of parameter ``key`` so far: zeros before its first step."""
        value = self.slots.get(kind, {}).get(key)
        return get_array_module(like).zeros_like(like) if value is None else value

    def state(self):
        """Everything needed to resume: {'iterations': n, '<kind>/<layer>/<param>': array}."""
        arrays = {"iterations": self.iterations}
        for kind, table in self.slots.items():
            arrays.update({f"{kind}/{key}": value for key, value in table.items()})
        return arrays

    def load_state(self, arrays):
        """Restore what ``state()`` returned (after a checkpoint round trip)."""
        self.iterations = int(arrays["iterations"])
        self.slots = {}
        for full_key, value in arrays.items():
            if full_key != "iterations":
                kind, key = full_key.split("/", 1)
                self.slots.setdefault(kind, {})[key] = value.copy()   # ours, not the caller's


def check_fraction(value, where):
    """A momentum or decay rate: a number in [0, 1)."""
    return check_number(value, where, 0.0, 1.0)


def check_epsilon(value, where):
    return check_number(value, where, 0.0, include_low=False)


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, PyTorch's form:

        v <- momentum * v + g          (v = g at the first step)
        p <- p - lr * v

    (Keras writes v <- momentum * v - lr * g, p <- p + v: the same for a
    constant learning rate, different when the rate changes.)
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, weight_decay=0.0):
        super().__init__(learning_rate, weight_decay)
        self.momentum = check_fraction(momentum, "SGD: momentum")

    def direction(self, key, grad, t):
        if not self.momentum:
            return grad, {}
        before = self.slots.get("velocity", {}).get(key)
        velocity = grad.copy() if before is None else before * self.momentum + grad   # first step: v = g
        return velocity, {"velocity": velocity}


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015), PyTorch's form: running means of g and g^2,
    corrected for their start at zero, give a step of about lr per parameter
    whatever the gradient's scale:

        m <- b1 m + (1 - b1) g          v <- b2 v + (1 - b2) g^2
        p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + epsilon)
    """

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 weight_decay=0.0):
        super().__init__(learning_rate, weight_decay)
        self.beta_1 = check_fraction(beta_1, "Adam: beta_1")
        self.beta_2 = check_fraction(beta_2, "Adam: beta_2")
        self.epsilon = check_epsilon(epsilon, "Adam: epsilon")

    def direction(self, key, grad, t):
        xp = get_array_module(grad)
        m = self.previous("m", key, grad) * self.beta_1 + (1 - self.beta_1) * grad
        v = self.previous("v", key, grad) * self.beta_2 + (1 - self.beta_2) * grad * grad
        m_hat = m / (1 - self.beta_1 ** t)
        v_hat = v / (1 - self.beta_2 ** t)
        return m_hat / (xp.sqrt(v_hat) + self.epsilon), {"m": m, "v": v}


class RMSprop(Optimizer):
    """RMSprop (Hinton's lecture notes), Keras's form and defaults (compile's
    default optimizer): a running mean of g^2 scales each parameter's step,

        v <- rho v + (1 - rho) g^2
        p <- p - lr * g / sqrt(v + epsilon)

    (PyTorch adds epsilon outside the square root: the same but for tiny v.)
    """

    def __init__(self, learning_rate=0.001, rho=0.9, epsilon=1e-7, weight_decay=0.0):
        super().__init__(learning_rate, weight_decay)
        self.rho = check_fraction(rho, "RMSprop: rho")
        self.epsilon = check_epsilon(epsilon, "RMSprop: epsilon")

    def direction(self, key, grad, t):
        v = self.previous("v", key, grad) * self.rho + (1 - self.rho) * grad * grad
        return grad / get_array_module(grad).sqrt(v + self.epsilon), {"v": v}


OPTIMIZERS = {"adam": lambda: Adam(learning_rate=0.001),      # Keras's defaults
              "sgd": lambda: SGD(learning_rate=0.01),
              "rmsprop": lambda: RMSprop(learning_rate=0.001)}


def get(identifier):
    """An optimiser from Keras's name (a new one, with Keras's defaults) or an
    optimiser object (anything with ``step``) as it is."""
    if isinstance(identifier, str) and identifier.lower() in OPTIMIZERS:
        return OPTIMIZERS[identifier.lower()]()
    if not isinstance(identifier, (str, type)) and callable(getattr(identifier, "step", None)):
        return identifier
    raise ValueError(f"unknown optimizer {identifier!r}; minires has 'rmsprop', 'adam', 'sgd', "
                     "or an optimizer object such as minires.optim.SGD(0.1, momentum=0.9)")


# --- learning-rate schedules: epoch (a float: 2.5 = halfway through the third) -> rate
class StepDecay:
    """lr = initial * drop ** floor(epoch / every)   (torch's StepLR)."""

    def __init__(self, initial, drop=0.1, every=30):
        self.initial = check_learning_rate(initial, "StepDecay: initial")
        self.drop = check_number(drop, "StepDecay: drop", 0.0)
        self.every = check_number(every, "StepDecay: every", 0.0, include_low=False)

    def __call__(self, epoch):
        return self.initial * self.drop ** math.floor(epoch / self.every)


class CosineDecay:
    """lr = final + (initial - final) (1 + cos(pi epoch / epochs)) / 2: from
    ``initial`` down to ``final`` along half a cosine, flat after ``epochs``."""

    def __init__(self, initial, epochs, final=0.0):
        self.initial = check_learning_rate(initial, "CosineDecay: initial")
        self.epochs = check_number(epochs, "CosineDecay: epochs", 0.0, include_low=False)
        self.final = check_learning_rate(final, "CosineDecay: final")

    def __call__(self, epoch):
        progress = min(epoch / self.epochs, 1.0)
        return self.final + (self.initial - self.final) * (1 + math.cos(math.pi * progress)) / 2
